"""Static analysis of optimizer programs: dataflow graph, types, validity, liveness across
iterations, and the canonical structural hash.

The graph is the program in SSA form: node ids 0..5 are the inputs (w, g, m, v, lr, t), then one
node per statement; an argument is a node id or a `Const`. Reassigning a name creates a new
node, so renaming and reordering independent statements leave the graph unchanged.

Liveness across iterations (Chen et al. 2023 found `m = cosh(update)` in the raw Lion program:
written, but overwritten before the next step reads it). The update is live. A state's next
value is live only if some live value reads that state's input — iterated to a fixpoint, since
m can feed v which feeds the update. Dead states are canonicalised to "unchanged" (they stay
zero), and statements that no live value reaches are removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from lopt.programs.lang import INPUTS, STEP_INPUT, Const, Program, ProgramError, Statement, Var
from lopt.programs.library import FUNCTIONS, SCALAR, TENSOR, result_type

GRAPH_INPUTS = INPUTS + (STEP_INPUT,)
INPUT_TYPES = {"w": TENSOR, "g": TENSOR, "m": TENSOR, "v": TENSOR, "lr": SCALAR, "t": SCALAR}
NUM_INPUTS = len(GRAPH_INPUTS)
STATE_INDEX = {"m": GRAPH_INPUTS.index("m"), "v": GRAPH_INPUTS.index("v")}
DEFAULT_MAX_STATEMENTS = 64


@dataclasses.dataclass(frozen=True)
class Graph:
    """nodes: (op, args) per statement, in order, ids from NUM_INPUTS; outputs: node ids of
    (update, next m, next v); lines: the statement index of each node."""

    nodes: tuple[tuple[str, tuple[Any, ...]], ...]
    outputs: tuple[int, int, int]
    uses_step: bool

    def op(self, node: int) -> str | None:
        return None if node < NUM_INPUTS else self.nodes[node - NUM_INPUTS][0]

    def args(self, node: int) -> tuple[Any, ...]:
        return () if node < NUM_INPUTS else self.nodes[node - NUM_INPUTS][1]


def to_graph(program: Program) -> Graph:
    """The SSA dataflow graph of `program`."""
    current = {name: i for i, name in enumerate(GRAPH_INPUTS)}
    nodes = []
    for statement in program.statements:
        args = tuple(current[a.name] if isinstance(a, Var) else a for a in statement.args)
        nodes.append((statement.op, args))
        current[statement.target] = NUM_INPUTS + len(nodes) - 1
    outputs = tuple(current[name] for name in program.returns)
    return Graph(tuple(nodes), outputs, program.uses_step)


def node_types(graph: Graph) -> list[str]:
    """TENSOR or SCALAR per node id."""
    types = [INPUT_TYPES[name] for name in GRAPH_INPUTS]
    for op, args in graph.nodes:
        arg_types = tuple(types[a] if isinstance(a, int) else SCALAR for a in args)
        types.append(result_type(op, arg_types))
    return types


def reads(graph: Graph, roots: set[int]) -> set[int]:
    """All node ids reachable from `roots` (inclusive)."""
    seen, stack = set(), list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(a for a in graph.args(node) if isinstance(a, int))
    return seen


def live_outputs(graph: Graph) -> tuple[bool, bool, bool]:
    """(update, m, v) liveness across iterations (module docstring)."""
    live = {0}
    while True:
        reached = reads(graph, {graph.outputs[i] for i in live})
        grown = set(live)
        for slot, state in ((1, "m"), (2, "v")):
            if STATE_INDEX[state] in reached:
                grown.add(slot)
        if grown == live:
            return tuple(i in live for i in range(3))
        live = grown


def prune(graph: Graph) -> Graph:
    """Dead-code elimination across iterations: dead states become 'unchanged', unreachable
    statements are removed, node ids renumbered."""
    live = live_outputs(graph)
    outputs = tuple(
        out if alive else STATE_INDEX[s] if s else out for out, alive, s in zip(graph.outputs, live, (None, "m", "v"))
    )
    keep = sorted(n for n in reads(graph, set(outputs)) if n >= NUM_INPUTS)
    renumber = {i: i for i in range(NUM_INPUTS)}
    nodes = []
    for node in keep:
        op, args = graph.nodes[node - NUM_INPUTS]
        nodes.append((op, tuple(renumber[a] if isinstance(a, int) else a for a in args)))
        renumber[node] = NUM_INPUTS + len(nodes) - 1
    return Graph(tuple(nodes), tuple(renumber[o] for o in outputs), graph.uses_step)


def redundant_fraction(program: Program) -> float:
    """Fraction of statements that dead-code elimination removes (the paper measured ~70%)."""
    if not program.statements:
        return 0.0
    return 1.0 - len(prune(to_graph(program)).nodes) / len(program.statements)


def check(program: Program, max_statements: int = DEFAULT_MAX_STATEMENTS) -> Graph:
    """Validity before any training; returns the pruned graph or raises `ProgramError`.

    Checks: statement count; type rules (clip_by_global_norm's bound must be a scalar); the
    update is a tensor; the update depends on the gradient (directly or through a state);
    `t` is read only if declared.
    """
    if len(program.statements) > max_statements:
        raise ProgramError(f"{len(program.statements)} statements exceed the limit of {max_statements}")
    graph = to_graph(program)
    types = node_types(graph)
    for index, (op, args) in enumerate(graph.nodes):
        if FUNCTIONS[op].kind == "clip_global" and isinstance(args[1], int) and types[args[1]] == TENSOR:
            raise ProgramError(f"statement {index + 1}: clip_by_global_norm's bound must be a scalar", index + 2)
        if not graph.uses_step and any(a == GRAPH_INPUTS.index(STEP_INPUT) for a in args if isinstance(a, int)):
            raise ProgramError(f"statement {index + 1} reads t, which the program does not declare", index + 2)
    pruned = prune(graph)
    if node_types(pruned)[pruned.outputs[0]] != TENSOR:
        raise ProgramError("the update is a scalar; it must depend on a tensor input")
    live = live_outputs(pruned)
    reached = reads(pruned, {o for o, alive in zip(pruned.outputs, live) if alive})
    if GRAPH_INPUTS.index("g") not in reached:
        raise ProgramError("the update never depends on the gradient g")
    return pruned


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def _const_key(c: Const) -> str:
    return f"c:{float(c.value)!r}"


def structural_hash(program: Program | Graph) -> str:
    """Canonical hash: invariant to variable names, statement order, dead code, the order of
    commutative arguments, and which of the two states plays m or v."""
    graph = prune(to_graph(program) if isinstance(program, Program) else program)

    def digest_with(state_names: dict[int, str]) -> str:
        memo: dict[int, str] = {}

        def node_hash(node: int) -> str:
            if node in memo:
                return memo[node]
            if node < NUM_INPUTS:
                value = _digest("in", state_names.get(node, GRAPH_INPUTS[node]))
            else:
                op, args = graph.nodes[node - NUM_INPUTS]
                parts = [node_hash(a) if isinstance(a, int) else _const_key(a) for a in args]
                if FUNCTIONS[op].commutative:
                    parts.sort()
                value = _digest(op, *parts)
            memo[node] = value
            return value

        outputs = [node_hash(graph.outputs[0])]
        for slot, state in ((1, "m"), (2, "v")):
            out = graph.outputs[slot]
            outputs.append("same" if out == STATE_INDEX[state] else node_hash(out))
        state_outputs = {state_names.get(STATE_INDEX[s], s): o for s, o in zip(("m", "v"), outputs[1:])}
        return _digest(outputs[0], state_outputs["m"], state_outputs["v"])

    m, v = STATE_INDEX["m"], STATE_INDEX["v"]
    return min(digest_with({}), digest_with({m: "v", v: "m"}))


def from_graph(graph: Graph) -> Program:
    """A program for `graph` with generated variable names (x1, x2, ...), the outputs renamed
    update / m / v when that keeps the same graph."""
    names = list(GRAPH_INPUTS) + [f"x{i + 1}" for i in range(len(graph.nodes))]
    statements = tuple(
        Statement(names[NUM_INPUTS + i], op, tuple(Var(names[a]) if isinstance(a, int) else a for a in args))
        for i, (op, args) in enumerate(graph.nodes)
    )
    ssa = Program(statements, tuple(names[o] for o in graph.outputs), graph.uses_step)
    mapping = {}
    for out, name in zip(graph.outputs, ("update", "m", "v")):
        if out >= NUM_INPUTS and names[out] not in mapping:
            mapping[names[out]] = name
    rename = lambda n: mapping.get(n, n)  # noqa: E731
    renamed = Program(
        tuple(
            Statement(rename(s.target), s.op, tuple(Var(rename(a.name)) if isinstance(a, Var) else a for a in s.args))
            for s in statements
        ),
        tuple(rename(r) for r in ssa.returns),
        graph.uses_step,
    )
    return renamed if to_graph(renamed) == to_graph(ssa) else ssa
