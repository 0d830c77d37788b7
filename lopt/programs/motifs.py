"""Which known algorithmic ideas a program contains: the motifs Chen et al. (2023) read off the
programs their search found (Lion's sign of an interpolated momentum, update clipping, Adam's
second-moment normalisation, decoupled weight decay), detected on the pruned dataflow graph so
renamings, reorderings and dead code do not matter.

A search records these for its best programs (`meta_train.search.pipeline`), which answers "what
did it rediscover?" without reading every program. Each motif is a property of the graph:

- momentum: the next m (or v) is an average of the gradient and its own previous value;
- second moment: a state averages the squared gradient (square(g), g·g);
- adaptive normalisation: a division by a square root (or power) of a state;
- sign of an interpolated momentum: sign() of a value that mixes the gradient with a state;
- sign descent: sign() of a value that reads the gradient but no state;
- update clipping: clip, clip_by_global_norm, tanh, arctan, or min/max with a constant on the
  update's path;
- decoupled weight decay: the weights w reach the update other than through the gradient;
- norm scaling: a per-tensor or global norm on the update's path;
- orthogonalised momentum (Muon): orthogonalize, on the update's path, of a value that mixes the
  gradient with a state;
- factored second moment (Adafactor, NorMuon): a state averages a row or column mean of squares
  (row_ms, col_ms) of a value that reads the gradient.
"""

from __future__ import annotations

from collections.abc import Callable

from lopt.programs.analysis import GRAPH_INPUTS, NUM_INPUTS, Graph, prune, reads
from lopt.programs.lang import Const

W, G, M, V = (GRAPH_INPUTS.index(name) for name in ("w", "g", "m", "v"))
STATES = (M, V)


def _reaches(graph: Graph, node: int) -> set[int]:
    """Every node id (inputs included) that `node` reads, transitively, itself included."""
    return reads(graph, {node})


def _on_update_path(graph: Graph) -> set[int]:
    """The statements (not inputs) the update reads."""
    return {n for n in _reaches(graph, graph.outputs[0]) if n >= NUM_INPUTS}


def _is_square_of_g(graph: Graph, node: int) -> bool:
    op, args = graph.op(node), graph.args(node)
    return (
        (op == "square" and args[0] == G)
        or (op == "mul" and args[0] == G and args[1] == G)
        or (op == "power" and args[0] == G and isinstance(args[1], Const) and args[1].value == 2.0)
    )


def _momentum(graph: Graph) -> bool:
    return any(
        graph.outputs[1 + i] != state and {G, state} <= _reaches(graph, graph.outputs[1 + i])
        for i, state in enumerate(STATES)
    )


def _second_moment(graph: Graph) -> bool:
    for i, state in enumerate(STATES):
        read = _reaches(graph, graph.outputs[1 + i])
        if graph.outputs[1 + i] != state and state in read and any(_is_square_of_g(graph, n) for n in read):
            return True
    return False


def _adaptive_normalisation(graph: Graph) -> bool:
    path = _on_update_path(graph)
    for node in path:
        op, args = graph.op(node), graph.args(node)
        if op == "div" and isinstance(args[1], int):
            denominator = _reaches(graph, args[1])
            if any(graph.op(n) in ("sqrt", "power") for n in denominator) and denominator & set(STATES):
                return True
    return False


def _sign_of(graph: Graph, wanted: Callable[[set[int]], bool]) -> bool:
    return any(
        graph.op(n) == "sign" and isinstance(graph.args(n)[0], int) and wanted(_reaches(graph, graph.args(n)[0]))
        for n in _on_update_path(graph)
    )


def _clipping(graph: Graph) -> bool:
    for node in _on_update_path(graph):
        op, args = graph.op(node), graph.args(node)
        if op in ("clip", "clip_by_global_norm", "tanh", "arctan"):
            return True
        if op in ("min", "max") and any(isinstance(a, Const) for a in args):
            return True
    return False


def _weight_decay(graph: Graph) -> bool:
    return any(W in graph.args(n) and graph.op(n) in ("add", "sub", "mul", "interp") for n in _on_update_path(graph))


def _norm_scaling(graph: Graph) -> bool:
    return any(graph.op(n) in ("norm", "global_norm", "cosine_sim") for n in _on_update_path(graph))


def _orthogonalised_momentum(graph: Graph) -> bool:
    """Muon's motif: orthogonalize, on the update's path, of a value mixing the gradient with a state."""
    written = {state for i, state in enumerate(STATES) if graph.outputs[1 + i] != state}  # a state never written is 0
    for node in _on_update_path(graph):
        arg = graph.args(node)[0] if graph.op(node) == "orthogonalize" else None
        if isinstance(arg, int) and G in _reaches(graph, arg) and _reaches(graph, arg) & written:
            return True
    return False


def _factored_second_moment(graph: Graph) -> bool:
    """Adafactor's and NorMuon's motif: a state averages a row or column mean of squares of a value
    that reads the gradient (a statistic per row or per output unit, not per element)."""
    for i, state in enumerate(STATES):
        read = _reaches(graph, graph.outputs[1 + i])
        if graph.outputs[1 + i] == state or state not in read:
            continue
        for node in read:
            if node >= NUM_INPUTS and graph.op(node) in ("row_ms", "col_ms"):
                arg = graph.args(node)[0]
                if isinstance(arg, int) and G in _reaches(graph, arg):
                    return True
    return False


MOTIFS: dict[str, Callable[[Graph], bool]] = {
    "momentum": _momentum,
    "second moment": _second_moment,
    "adaptive normalisation": _adaptive_normalisation,
    "sign of an interpolated momentum": lambda graph: _sign_of(graph, lambda r: G in r and bool(r & set(STATES))),
    "sign descent": lambda graph: _sign_of(graph, lambda r: G in r and not r & set(STATES)),
    "update clipping": _clipping,
    "decoupled weight decay": _weight_decay,
    "norm scaling": _norm_scaling,
    "orthogonalised momentum": _orthogonalised_momentum,
    "factored second moment": _factored_second_moment,
}


def motifs(graph: Graph) -> list[str]:
    """The names of the motifs (module docstring) the pruned `graph` contains, in MOTIFS order."""
    graph = prune(graph)
    return [name for name, present in MOTIFS.items() if present(graph)]
