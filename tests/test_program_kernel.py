"""The Pallas program kernel (lopt.programs.kernel) against the scan interpreter, through Pallas'
interpreter on the CPU, and its Triton lowering, checked without a GPU by exporting for 'cuda'."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

from lopt.programs import check, parse, seed
from lopt.programs.interpret import GROUPS, Encoded, encode_population, run_encoded
from lopt.programs.kernel import run_kernel, uses_tree
from lopt.programs.library import FUNCTIONS
from meta_train.search import mutation


def _children(count: int) -> list:
    rng, graphs = np.random.default_rng(3), []
    while len(graphs) < count:
        program = seed("adamw_paper")
        for _ in range(int(rng.integers(1, 5))):
            program, _, graph, _ = mutation.mutate(program, rng, "all", 24)
        if not uses_tree(graph):
            graphs.append(graph)
    return graphs


def test_the_kernel_equals_the_scan_interpreter_on_mutated_programs():
    """Eight children of the AdamW seed, two runs each (lr 0.1 and 1), 1,500 parameters in two
    tensors (a last block past the end): the same updates, m and v, NaNs where the scan has them."""
    graphs = _children(8)
    encoded = jax.tree.map(jnp.asarray, encode_population(graphs, 8, 32))
    sizes = (500, 1000)
    keys = jax.random.split(jax.random.key(0), 4)
    w, g, m, v = (jax.random.normal(k, (8, 2, sum(sizes))) for k in keys)
    lrs = jnp.broadcast_to(jnp.array([0.1, 1.0]), (8, 2))
    outputs = []
    for step in (run_encoded, run_kernel):
        one = lambda p, lr, w, g, m, v, step=step: step(p, w, g, m, v, lr, jnp.float32(3.0), sizes)  # noqa: E731
        outputs.append(jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0, 0, 0, 0, 0))))(encoded, lrs, w, g, m, v))
    for expected, got in zip(*outputs):
        expected, got = np.asarray(expected), np.asarray(got)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_every_elementwise_function_runs_in_the_kernel():
    """One program per non-tree function, its result the update: equal to the scan's."""
    names = [n for group, members in GROUPS.items() if group != "tree" for n in members]
    graphs = []
    for name in names:
        args = ["g", "m", "w"][:FUNCTIONS[name].arity]
        call = f" {FUNCTIONS[name].infix} ".join(args) if FUNCTIONS[name].infix else f"{name}({', '.join(args)})"
        graphs.append(check(parse(f"def train(w, g, m, v, lr):\n  x = {call}\n  update = x * lr\n  return update, m, v\n")))
    encoded = jax.tree.map(jnp.asarray, encode_population(graphs, len(graphs), 8))
    x = jnp.linspace(-0.9, 0.9, 300)
    w, g, m, v = (jnp.broadcast_to(x * s, (len(graphs), 300)) for s in (0.5, 1.0, -0.7, 0.0))
    outs = [jax.jit(jax.vmap(lambda p, w, g, m, v, f=f: f(p, w, g, m, v, jnp.float32(0.3), jnp.float32(1.0), (300,))))(
        encoded, w, g, m, v)[0] for f in (run_encoded, run_kernel)]
    np.testing.assert_allclose(np.asarray(outs[1]), np.asarray(outs[0]), rtol=1e-4, atol=1e-7)


def test_the_kernel_lowers_to_triton_for_a_gpu():
    """Lowered for 'cuda' on this CPU machine (Pallas' Triton lowering, no GPU needed): a
    population of 4 rounds (40 slots) under three vmaps becomes one Triton call."""
    slots, programs, size = 40, 4, 3000
    spec = Encoded(jax.ShapeDtypeStruct((programs, slots), jnp.int32), jax.ShapeDtypeStruct((programs, slots, 3), jnp.int32),
                   jax.ShapeDtypeStruct((programs, slots, 3), jnp.float32), jax.ShapeDtypeStruct((programs, slots, 3), jnp.bool_),
                   jax.ShapeDtypeStruct((programs, 3), jnp.int32))
    one = lambda p, lr, w, g, m, v: run_kernel(p, w, g, m, v, lr, jnp.float32(3.0), (size,), interpret=False)  # noqa: E731
    fn = jax.jit(jax.vmap(jax.vmap(jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0)), in_axes=(None, 0, 0, 0, 0, 0))))
    x = jax.ShapeDtypeStruct((programs, 3, 2, size), jnp.float32)
    exported = export.export(fn, platforms=["cuda"], disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
        spec, jax.ShapeDtypeStruct((programs, 3), jnp.float32), x, x, x, x)
    assert exported.mlir_module().count("__gpu$xla.gpu.triton") == 1
