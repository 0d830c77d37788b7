"""The Pallas program kernel (lopt.programs.kernel) against the scan interpreter, through Pallas'
interpreter on the CPU, and its Triton lowering, checked without a GPU by exporting for 'cuda'."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from lopt.programs import check, parse, seed
from lopt.programs.batched import GROUPS, ROUND, Encoded, encode_population, run_encoded
from lopt.programs.kernel import run_kernel, uses_tree
from lopt.programs.library import FUNCTIONS
from lopt.meta_train.search import mutation


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
    names = [n for group, members in GROUPS.items() if group not in ("tree", "matrix") for n in members]
    graphs = []
    for name in names:
        args = ["g", "m", "w"][: FUNCTIONS[name].arity]
        call = f" {FUNCTIONS[name].infix} ".join(args) if FUNCTIONS[name].infix else f"{name}({', '.join(args)})"
        graphs.append(
            check(parse(f"def train(w, g, m, v, lr):\n  x = {call}\n  update = x * lr\n  return update, m, v\n"))
        )
    encoded = jax.tree.map(jnp.asarray, encode_population(graphs, len(graphs), 8))
    x = jnp.linspace(-0.9, 0.9, 300)
    w, g, m, v = (jnp.broadcast_to(x * s, (len(graphs), 300)) for s in (0.5, 1.0, -0.7, 0.0))
    outs = [
        jax.jit(jax.vmap(lambda p, w, g, m, v, f=f: f(p, w, g, m, v, jnp.float32(0.3), jnp.float32(1.0), (300,))))(
            encoded, w, g, m, v
        )[0]
        for f in (run_encoded, run_kernel)
    ]
    np.testing.assert_allclose(np.asarray(outs[1]), np.asarray(outs[0]), rtol=1e-4, atol=1e-7)


def test_the_kernel_refuses_matrix_functions_with_a_clear_error():
    """Matrix functions run in the batched interpreter only; the kernel says so rather than run
    an encoding whose round it does not know."""
    graph = check(
        parse("def train(w, g, m, v, lr):\n  x = orthogonalize(g)\n  update = x * lr\n  return update, m, v\n")
    )
    encoded = jax.tree.map(jnp.asarray, encode_population([graph], 1))
    x = jnp.ones((1, 6))
    with pytest.raises(ValueError, match="batched interpreter only"):
        jax.vmap(lambda p, w: run_kernel(p, w, w, w, w, jnp.float32(0.1), jnp.float32(1.0), ((2, 3),)))(encoded, x)


@pytest.mark.parametrize("tree", [False, True])
def test_the_kernel_lowers_to_triton_for_a_gpu(tree):
    """Lowered for 'cuda' on this CPU machine (Pallas' Triton lowering, no GPU needed): a
    population of 4 rounds (40 slots) under three vmaps becomes one Triton call, or five with
    the tree passes."""
    slots, programs, size = 40, 4, 3000
    spec = Encoded(
        jax.ShapeDtypeStruct((programs, slots), jnp.int32),
        jax.ShapeDtypeStruct((programs, slots, 3), jnp.int32),
        jax.ShapeDtypeStruct((programs, slots, 3), jnp.float32),
        jax.ShapeDtypeStruct((programs, slots, 3), jnp.bool_),
        jax.ShapeDtypeStruct((programs, 3), jnp.int32),
        jax.ShapeDtypeStruct((programs, len(ROUND)), jnp.int32),
    )
    one = lambda p, lr, w, g, m, v: run_kernel(
        p,
        w,
        g,
        m,
        v,
        lr,
        jnp.float32(3.0),
        (1000, size - 1000),
        tree=tree,  # noqa: E731
        interpret=False,
    )
    fn = jax.jit(jax.vmap(jax.vmap(jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0)), in_axes=(None, 0, 0, 0, 0, 0))))
    x = jax.ShapeDtypeStruct((programs, 3, 2, size), jnp.float32)
    exported = export.export(
        fn, platforms=["cuda"], disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    )(spec, jax.ShapeDtypeStruct((programs, 3), jnp.float32), x, x, x, x)
    assert exported.mlir_module().count("__gpu$xla.gpu.triton") == (5 if tree else 1)


def _tree_programs() -> list:
    """Each tree-level function with tensor arguments and with a scalar one (as the scan's
    agreement test in test_programs.py), and a chain of two tree statements in two rounds."""
    calls = [
        "norm(g)",
        "norm(s)",
        "global_norm(g)",
        "global_norm(s)",
        "dot(g, m)",
        "dot(g, s)",
        "dot(s, s)",
        "cosine_sim(g, m)",
        "cosine_sim(s, m)",
        "clip_by_global_norm(g, s)",
        "clip_by_global_norm(s, s)",
    ]
    texts = [
        f"def train(w, g, m, v, lr):\n  s = global_norm(m)\n  s = s * 0.37\n  x = {call}\n  update = x * g\n"
        "  return update, m, v\n"
        for call in calls
    ]
    texts.append(
        "def train(w, g, m, v, lr):\n  c = clip_by_global_norm(g, 0.5)\n  m = interp(c, m, 0.9)\n  n = norm(m)\n"
        "  d = m / n\n  k = cosine_sim(d, w)\n  update = d * k\n  update = update * lr\n  return update, m, v\n"
    )
    return [check(parse(text)) for text in texts]


def test_the_multi_pass_kernel_equals_the_scan_on_tree_level_functions():
    """tree=True: reductions per round from per-block sums, on four tensors (per-tensor norms
    differ from the global one) with a last block past the end."""
    graphs = _tree_programs()
    assert all(uses_tree(g) for g in graphs)
    count = len(graphs)
    encoded = jax.tree.map(jnp.asarray, encode_population(graphs, count, 16))
    sizes = (300, 7, 450, 243)
    keys = jax.random.split(jax.random.key(1), 4)
    w, g, m, v = (jax.random.normal(k, (count, sum(sizes))) for k in keys)
    outputs = [
        jax.jit(jax.vmap(lambda p, w, g, m, v, f=f: f(p, w, g, m, v, jnp.float32(0.3), jnp.float32(2.0), sizes)))(
            encoded, w, g, m, v
        )
        for f in (run_encoded, functools.partial(run_kernel, tree=True, block=256))
    ]
    for expected, got in zip(*outputs):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=2e-5, atol=1e-6)
