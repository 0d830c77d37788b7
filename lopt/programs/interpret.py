"""The tree interpreter of optimizer programs: `to_optax(program)` is the program as an ordinary
`optax.GradientTransformationExtraArgs` (states m, v shaped like the parameters, float32).
Elementwise functions run leaf by leaf, so XLA fuses each tensor's statements into one pass;
tree-level functions reduce over all leaves. One jit per program.

The batched interpreter (a population of programs as data, one compiled call) is
`lopt.programs.batched`, and as a Pallas kernel for GPUs `lopt.programs.kernel`. All follow
the library's semantics (lopt.programs.library), including scalar/tensor broadcasting, and agree
to float tolerance (tests/test_programs.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.programs.analysis import GRAPH_INPUTS, STATE_INDEX, Graph, check
from lopt.programs.lang import Const, Program
from lopt.programs.library import FUNCTIONS, apply_matrix


def _is_tree(x: Any) -> bool:
    return isinstance(x, list)


class TreeOps(NamedTuple):
    """The array operations the tree semantics need, so one definition of them serves every array
    library (JAX here, torch in lopt.torch.program): `function(name)` is a library function's
    elementwise implementation; `matrix(name, x)` a matrix function on one tensor, through the
    library's own layout of weights (`lopt.programs.library.apply_matrix`: flax's [..., in, out]
    here, torch's [out, in, ...] in lopt.torch); the rest reduce, take roots and broadcast."""

    function: Any
    sum: Any
    sqrt: Any
    abs: Any
    at_most_one: Any  # min(1, x)
    broadcast: Any  # (scalar, shape) -> array
    matrix: Any  # (name, tensor) -> tensor


JAX_OPS = TreeOps(
    lambda name: FUNCTIONS[name].fn,
    jnp.sum,
    jnp.sqrt,
    jnp.abs,
    lambda x: jnp.minimum(1.0, x),
    jnp.broadcast_to,
    apply_matrix,
)


def _elementwise(fn, args: list[Any]) -> Any:
    trees = [a for a in args if _is_tree(a)]
    if not trees:
        return fn(*args)
    count = len(trees[0])
    return [fn(*(a[i] if _is_tree(a) else a for a in args)) for i in range(count)]


def _product_sum(x: Any, y: Any, ops: TreeOps) -> Any:
    if not _is_tree(x) and not _is_tree(y):
        return x * y
    return sum(ops.sum(leaf) for leaf in _elementwise(lambda a, b: a * b, [x, y]))


def _global_norm(x: Any, ops: TreeOps) -> Any:
    return ops.sqrt(_product_sum(x, x, ops)) if _is_tree(x) else ops.abs(x)


def apply_tree(op: str, args: list[Any], ops: TreeOps = JAX_OPS) -> Any:
    """One library function on tree values (lists of leaves) and scalars."""
    function = FUNCTIONS[op]
    if function.kind == "elementwise":
        return _elementwise(ops.function(op), args)
    if function.kind == "matrix":
        x = args[0]
        return [ops.matrix(op, leaf) for leaf in x] if _is_tree(x) else ops.matrix(op, x)
    if op == "norm":
        x = args[0]
        if not _is_tree(x):
            return ops.abs(x)
        return [ops.broadcast(ops.sqrt(ops.sum(leaf * leaf)), leaf.shape) for leaf in x]
    if op == "global_norm":
        return _global_norm(args[0], ops)
    if op == "dot":
        return _product_sum(args[0], args[1], ops)
    if op == "cosine_sim":
        return _product_sum(args[0], args[1], ops) / (_global_norm(args[0], ops) * _global_norm(args[1], ops))
    if op == "clip_by_global_norm":
        scale = ops.at_most_one(ops.abs(args[1]) / _global_norm(args[0], ops))
        return _elementwise(lambda x: x * scale, [args[0]])
    raise AssertionError(op)


def evaluate_graph(graph: Graph, inputs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Run the graph on tree inputs (lists of leaves for w, g, m, v; scalars lr, t)."""
    values = [inputs[name] for name in GRAPH_INPUTS]
    for op, args in graph.nodes:
        values.append(
            apply_tree(op, [values[a] if isinstance(a, int) else jnp.asarray(a.value, jnp.float32) for a in args])
        )
    return tuple(values[o] for o in graph.outputs)


class ProgramState(NamedTuple):
    count: jax.Array
    m: Any
    v: Any


def to_optax(
    program: Program,
    learning_rate: float | jax.Array | Callable[[jax.Array], jax.Array] = 1.0,
    *,
    constants: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """The program as an optax transformation. `learning_rate` is the program's `lr` input
    (programs scale it by their own constants, as in the paper's seeds), or a schedule of it
    (optax's convention: called with the 0-based step count). Updates are −update.

    constants: optional array replacing the program's constants in statement order (for
    meta-training or tuning them); None keeps the text's values.
    """
    graph = check(program)
    if constants is not None:
        graph = substitute_constants(graph, constants)
    read = {a for _, args in graph.nodes for a in args if isinstance(a, int)} | {graph.outputs[0]}
    # A state that is never read and never written needs no memory (signSGD, SGD: no state).
    stored = {s: STATE_INDEX[s] in read or graph.outputs[1 + i] != STATE_INDEX[s] for i, s in enumerate(("m", "v"))}

    def init(params):
        zeros = lambda: jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)  # noqa: E731
        return ProgramState(jnp.zeros((), jnp.int32), zeros() if stored["m"] else (), zeros() if stored["v"] else ())

    def update(grads, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("program optimizers read the parameters w: call update(grads, state, params)")
        leaves, treedef = jax.tree.flatten(grads)
        w = [p.astype(jnp.float32) for p in treedef.flatten_up_to(params)]
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        count = state.count + 1
        inputs = {
            "w": w,
            "g": [g.astype(jnp.float32) for g in leaves],
            "m": treedef.flatten_up_to(state.m) if stored["m"] else jnp.float32(0.0),
            "v": treedef.flatten_up_to(state.v) if stored["v"] else jnp.float32(0.0),
            "lr": jnp.asarray(lr, jnp.float32),
            "t": count.astype(jnp.float32),
        }
        step, m, v = evaluate_graph(graph, inputs)
        shapes = [leaf.shape for leaf in leaves]
        as_tree = lambda x: [jnp.broadcast_to(x[i] if _is_tree(x) else x, s) for i, s in enumerate(shapes)]  # noqa: E731
        updates = [(-u).astype(g.dtype) for u, g in zip(as_tree(step), leaves)]
        new_m = treedef.unflatten(as_tree(m)) if stored["m"] else ()
        new_v = treedef.unflatten(as_tree(v)) if stored["v"] else ()
        return treedef.unflatten(updates), ProgramState(count, new_m, new_v)

    return optax.GradientTransformationExtraArgs(init, update)


def constants_of(graph: Graph) -> np.ndarray:
    """The graph's constants in statement order (float32)."""
    return np.array([a.value for _, args in graph.nodes for a in args if isinstance(a, Const)], np.float32)


def substitute_constants(graph: Graph, values: Any) -> Graph:
    """The graph with its constants replaced, in order, by `values` (may be traced)."""
    index, nodes = 0, []
    for op, args in graph.nodes:
        new_args = []
        for a in args:
            if isinstance(a, Const):
                new_args.append(Const(values[index], a.name))
                index += 1
            else:
                new_args.append(a)
        nodes.append((op, tuple(new_args)))
    return Graph(tuple(nodes), graph.outputs, graph.uses_step)
