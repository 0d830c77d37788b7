"""Simplify a found program (Chen et al. 2023 simplified the raw Lion program by hand; this does
the same steps automatically):

1. dead-code elimination across iterations (`analysis.prune`);
2. constant folding: statements whose arguments are all constants become constants;
3. equivalence rewrites, accepted only when the functional hash is unchanged: a statement is
   replaced by one of its arguments, or by sign / abs / negative of one (this turns m/sqrt(m·m)
   into sign(m));
4. ablation (when a fitness function is given): bypass a statement — its uses read its first
   node argument instead — whenever fitness worsens by less than `tolerance` (this removes the
   raw program's clip and arcsin); tolerance 0 accepts only strict improvements.

Every step returns a graph that passes `analysis.check`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from lopt.programs.analysis import NUM_INPUTS, Graph, check, from_graph, prune, to_graph
from lopt.programs.functional import EXTREME_PROBES, PROBES, functional_hashes, probe_values
from lopt.programs.interpret import apply_tree
from lopt.programs.lang import Const, Program, ProgramError
from lopt.programs.library import FUNCTIONS

FitnessFn = Callable[[list[Graph]], np.ndarray]


def _replace_uses(graph: Graph, node: int, replacement: int | Const) -> Graph:
    """References to `node` (after it) now read `replacement`; then prune."""
    nodes = []
    for op, args in graph.nodes:
        nodes.append((op, tuple(replacement if a == node and isinstance(a, int) else a for a in args)))
    outputs = tuple(replacement if o == node else o for o in graph.outputs)
    if any(isinstance(o, Const) for o in outputs):
        raise ProgramError("an output would become a constant")
    return prune(Graph(tuple(nodes), outputs, graph.uses_step))


def _set_node(graph: Graph, node: int, op: str, args: tuple) -> Graph:
    nodes = list(graph.nodes)
    nodes[node - NUM_INPUTS] = (op, args)
    return prune(Graph(tuple(nodes), graph.outputs, graph.uses_step))


def _valid(graph: Graph) -> bool:
    try:
        check(from_graph(graph))
        return True
    except ProgramError:
        return False


def fold_constants(graph: Graph) -> Graph:
    """Replace statements of constants by their value (repeated until none is left)."""
    while True:
        for index, (op, args) in enumerate(graph.nodes):
            if args and all(isinstance(a, Const) for a in args) and FUNCTIONS[op].kind == "elementwise":
                value = float(np.asarray(apply_tree(op, [jnp.float32(a.value) for a in args])))
                node = NUM_INPUTS + index
                if not np.isfinite(value) or node in graph.outputs:
                    continue
                graph = _replace_uses(graph, node, Const(value))
                break
        else:
            return graph


def _equivalence_candidates(graph: Graph) -> list[tuple[str, Graph]]:
    candidates = []
    for index, (op, args) in enumerate(graph.nodes):
        node = NUM_INPUTS + index
        for a in {a for a in args if isinstance(a, int)}:
            for new_op in ("sign", "abs", "negative"):
                if op != new_op:
                    candidates.append(
                        (f"statement {index + 1}: {op}(...) -> {new_op}", _set_node(graph, node, new_op, (a,)))
                    )
            try:
                candidates.append((f"statement {index + 1}: {op}(...) -> its argument", _replace_uses(graph, node, a)))
            except ProgramError:
                pass
    return [(d, g) for d, g in candidates if _valid(g) and len(g.nodes) < len(graph.nodes)]


def _hold_at_extremes(graph: Graph, matches: list[tuple[int, str, Graph]]) -> list[tuple[int, str, Graph]]:
    """The matches that also agree with `graph` on the extreme probes wherever `graph` is finite
    there (a rewrite may turn the original's NaN into a number — m/sqrt(m·m) → sign(m) at m = 0
    — but never a number into NaN or into another number: AdamW's `+ 1e-8` stays)."""
    if not matches:
        return matches
    values = probe_values([graph] + [g for *_, g in matches], probes=EXTREME_PROBES)
    original = values[0]

    def agrees(candidate):
        return all(np.array_equal(o[np.isfinite(o)], c[np.isfinite(o)]) for o, c in zip(original, candidate))

    return [match for match, candidate in zip(matches, values[1:]) if agrees(candidate)]


def rewrite_equivalences(graph: Graph) -> tuple[Graph, list[str]]:
    """Apply functional-hash-preserving rewrites that shorten the program, until none applies."""
    notes = []
    while True:
        candidates = _equivalence_candidates(graph)
        if not candidates:
            return graph, notes
        hashes = functional_hashes([graph] + [g for _, g in candidates], PROBES)
        target, finite = hashes[0]
        if not finite:  # non-finite probe values make every such program look alike
            return graph, notes
        matches = [(len(g.nodes), d, g) for (d, g), (h, ok) in zip(candidates, hashes[1:]) if h == target and ok]
        matches = _hold_at_extremes(graph, matches)
        if not matches:
            return graph, notes
        _, description, graph = min(matches, key=lambda x: x[0])
        notes.append(f"equivalent: {description}")


def ablate(graph: Graph, fitness: FitnessFn, tolerance: float) -> tuple[Graph, list[str]]:
    """Bypass statements while fitness worsens by less than `tolerance` (greedy, best first)."""
    notes = []
    current = float(fitness([graph])[0])
    while True:
        candidates = []
        for index, (op, args) in enumerate(graph.nodes):
            node = NUM_INPUTS + index
            for a in [a for a in args if isinstance(a, int)][:1]:
                try:
                    candidate = _replace_uses(graph, node, a)
                except ProgramError:
                    continue
                if _valid(candidate):
                    candidates.append((f"bypass statement {index + 1} ({op})", candidate))
        if not candidates:
            return graph, notes
        scores = fitness([g for _, g in candidates])
        best = int(np.argmin(scores))
        if not scores[best] < current + tolerance:
            return graph, notes
        description, graph = candidates[best]
        notes.append(f"ablated: {description} (fitness {current:.4f} -> {float(scores[best]):.4f})")
        current = float(scores[best])


def simplify(program: Program, fitness: FitnessFn | None = None, tolerance: float = 0.01) -> tuple[Program, list[str]]:
    """The simplified program and a list of what changed (see the module docstring)."""
    graph = check(program)
    notes = []
    if len(graph.nodes) < len(to_graph(program).nodes):
        notes.append(f"dead code: {len(to_graph(program).nodes) - len(graph.nodes)} statement(s) removed")
    folded = fold_constants(graph)
    if folded != graph:
        notes.append(f"folded constants: {len(graph.nodes) - len(folded.nodes)} statement(s)")
    graph, rewrites = rewrite_equivalences(folded)
    notes += rewrites
    if fitness is not None:
        graph, ablations = ablate(graph, fitness, tolerance)
        notes += ablations
    result = from_graph(graph)
    check(result)
    return result, notes
