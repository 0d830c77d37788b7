"""The batched interpreter of optimizer programs: a program is data — its statements scheduled
into rounds of typed slots (`ROUND`: six arithmetic slots and one each for exp/log, inverse,
trigonometric and tree-level functions), each slot holding an opcode within its group, three
argument registers or constants, and output registers — and `run_encoded` executes it on flat
parameter vectors with `lax.scan` over rounds. Under `vmap` a whole population of programs runs
in one compiled call; a slot computes every function of its group and selects, so the grouping
keeps the costly functions out of the arithmetic slots (`benchmarks/search_throughput.py`
measures it beside one jit per program (`lopt.programs.interpret.to_optax`) and a floor).

Matrix functions (`lopt.matrix`: Newton–Schulz, row/column statistics) need each tensor's shape,
so the step takes the tensors' `shapes` in the flat order (an int is a vector of that size). They
get a slot of their own, in `MATRIX_ROUND`: a population uses that round only when one of its
programs calls a matrix function, so programs of the paper's space pay nothing for them. An
encoding carries its round (`Encoded.layout`).

`run_unrolled` is the same step with the slots unrolled and the registers held as values
(slower on a GPU: benchmarks/interpreter_step.py). It agrees with the tree interpreter to float
tolerance (tests/test_programs.py); the transcendental groups are computed from shared calls,
to float32 accuracy.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt.programs.analysis import NUM_INPUTS, Graph, node_types
from lopt.matrix import matrix_view
from lopt.programs.library import FUNCTIONS, MATRIX_NAMES, SCALAR
from lopt.programs.slot_math import explog_results, inverse_results, trig_results

MAX_ARGS = 3

# Slot groups: the library split by cost, so a slot computes only its group's functions. A
# vmapped interpreter computes every function a slot may hold and selects, and a few functions
# cost 10-25× a copy each on the CPU (cbrt, arccos, arcsin, tan, arctan, power, sin, cos), so a
# slot that may hold anything costs ~170× a copy; an arithmetic slot costs about one copy.
GROUPS: dict[str, tuple[str, ...]] = {
    "arith": (
        "add",
        "sub",
        "mul",
        "div",
        "max",
        "min",
        "clip",
        "interp",
        "abs",
        "negative",
        "sign",
        "square",
        "cube",
        "sqrt",
        "reciprocal",
    ),
    "explog": ("exp", "exp2", "exp10", "expm1", "log", "log2", "log10", "log1p", "tanh", "cosh", "sinh"),
    "inverse": ("arcsinh", "arccosh", "arctanh", "cbrt", "power"),
    "trig": ("sin", "cos", "tan", "arcsin", "arccos", "arctan"),
    "tree": ("norm", "global_norm", "dot", "cosine_sim", "clip_by_global_norm"),
    "matrix": MATRIX_NAMES,
}
GROUP_NAMES = tuple(GROUPS)
GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}
# One round of slots: arithmetic is cheap, so a round has six arithmetic slots (AdamW's
# statements are all arithmetic and fit in two rounds) and one of each other group.
ROUND = ("arith", "arith", "arith", "explog", "arith", "arith", "arith", "inverse", "trig", "tree")
MATRIX_ROUND = (*ROUND, "matrix")
LAYOUTS = {len(ROUND): ROUND, len(MATRIX_ROUND): MATRIX_ROUND}  # an encoding's round, by its length
Shapes = tuple  # of ints (vectors) and shape tuples, one per tensor in the flat order


def tensor_sizes(shapes: Shapes) -> tuple[int, ...]:
    """The number of elements of each tensor of `shapes` (module docstring)."""
    return tuple(int(np.prod(s)) if isinstance(s, tuple) else int(s) for s in shapes)


def uses_matrix(graph: Graph) -> bool:
    return any(GROUP_OF[op] == "matrix" for op, _ in graph.nodes)


def round_for(graphs: list[Graph]) -> tuple[str, ...]:
    """The round a population of `graphs` is encoded in: `MATRIX_ROUND` when any calls a matrix
    function, else `ROUND`."""
    return MATRIX_ROUND if any(uses_matrix(g) for g in graphs) else ROUND


class Encoded(NamedTuple):
    """A program as arrays (leading population axis when stacked), scheduled into rounds of
    `ROUND`'s slots: S = rounds × len(ROUND) slots.

    op: [S] int32 index of the slot's function within its group (len(group) = NOP, writes
    zeros). ref: [S, 3] int32 register of each argument, −1 for a constant. const: [S, 3]
    float32 constants. scalar: [S, 3] bool, argument is scalar-typed. outputs: [3] int32 registers
    of (update, m, v). layout: [len(round)] int32, the group (index in GROUP_NAMES) of each slot
    of the encoding's round; its length names the round (`LAYOUTS`). Registers 0..5 are the
    inputs, register 6 + s holds slot s's result.
    """

    op: np.ndarray
    ref: np.ndarray
    const: np.ndarray
    scalar: np.ndarray
    outputs: np.ndarray
    layout: np.ndarray = np.array([GROUP_NAMES.index(g) for g in ROUND], np.int32)


def layout_of(program: Encoded) -> tuple[str, ...]:
    """The round `program` is encoded in (static: read from its layout's length)."""
    return LAYOUTS[program.layout.shape[-1]]


def schedule(graph: Graph, layout: tuple[str, ...] | None = None) -> list[int]:
    """The slot of each statement: list scheduling into repeated rounds of `layout` (None:
    `round_for([graph])`). At each slot the
    ready statement of the slot's group with the longest chain of statements after it goes
    first (its arguments all computed in earlier slots). Every round has a slot of every group,
    so each round places at least one statement: rounds ≤ statements."""
    layout = round_for([graph]) if layout is None else layout
    count = len(graph.nodes)
    deps = [[a - NUM_INPUTS for a in args if isinstance(a, int) and a >= NUM_INPUTS] for _, args in graph.nodes]
    after = [0] * count  # the longest chain of statements that reads this one
    for i in reversed(range(count)):
        for d in deps[i]:
            after[d] = max(after[d], after[i] + 1)
    slot_of = [-1] * count
    remaining, slot = set(range(count)), 0
    while remaining:
        group = layout[slot % len(layout)]
        ready = [
            i
            for i in remaining
            if GROUP_OF[graph.nodes[i][0]] == group and all(0 <= slot_of[d] < slot for d in deps[i])
        ]
        if ready:
            chosen = max(ready, key=lambda i: (after[i], -i))
            slot_of[chosen] = slot
            remaining.remove(chosen)
        slot += 1
    return slot_of


def _rounds(slot_of: list[int], layout: tuple[str, ...]) -> int:
    """Rounds of `layout` a schedule fills (at least 1)."""
    return max(1, -(-(max(slot_of, default=-1) + 1) // len(layout)))


def rounds_needed(graph: Graph) -> int:
    """Rounds the schedule of `graph` fills (at least 1), in its own round (`round_for`)."""
    layout = round_for([graph])
    return _rounds(schedule(graph, layout), layout)


def encode(
    graph: Graph, rounds: int | None = None, slot_of: list[int] | None = None, layout: tuple[str, ...] | None = None
) -> Encoded:
    """Encode a (pruned) graph into `rounds` rounds of `layout` (None: as many as it needs, in
    `round_for([graph])`); `slot_of`: its `schedule` in that layout, when the caller has it."""
    layout = round_for([graph]) if layout is None else layout
    if uses_matrix(graph) and "matrix" not in layout:
        raise ValueError("the program calls a matrix function; encode it in MATRIX_ROUND")
    slot_of = schedule(graph, layout) if slot_of is None else slot_of
    needed = _rounds(slot_of, layout)
    rounds = needed if rounds is None else rounds
    if needed > rounds:
        raise ValueError(f"program needs {needed} rounds of slots; the encoding holds {rounds}")
    types = node_types(graph)
    size = rounds * len(layout)
    op = np.array([len(GROUPS[layout[s % len(layout)]]) for s in range(size)], np.int32)
    ref = np.full((size, MAX_ARGS), -1, np.int32)
    const = np.zeros((size, MAX_ARGS), np.float32)
    scalar = np.ones((size, MAX_ARGS), bool)
    register = lambda node: node if node < NUM_INPUTS else NUM_INPUTS + slot_of[node - NUM_INPUTS]  # noqa: E731
    for i, (name, args) in enumerate(graph.nodes):
        s = slot_of[i]
        op[s] = GROUPS[GROUP_OF[name]].index(name)
        for j, a in enumerate(args):
            if isinstance(a, int):
                ref[s, j], scalar[s, j] = register(a), types[a] == SCALAR
            else:
                const[s, j] = a.value
    outputs = np.asarray([register(o) for o in graph.outputs], np.int32)
    return Encoded(op, ref, const, scalar, outputs, np.array([GROUP_NAMES.index(g) for g in layout], np.int32))


def stack_encoded(items: list[Encoded]) -> Encoded:
    return Encoded(*(np.stack(parts) for parts in zip(*items)))


def encode_population(
    graphs: list[Graph], count: int, max_statements: int | None = None, *, round_up: bool = False, min_rounds: int = 1
) -> Encoded:
    """The graphs encoded with one number of rounds (the most any needs — mutated AdamW programs
    need 1-4, so few shapes compile — at least `min_rounds`, or with `round_up` the next power of
    two, for calls too cheap to be worth a compile per shape) and stacked, padded to `count`
    programs with copies of the first."""
    if not graphs or len(graphs) > count:
        raise ValueError(f"need 1..{count} programs, got {len(graphs)}")
    if max_statements is not None and max(len(g.nodes) for g in graphs) > max_statements:
        raise ValueError(f"a program has more than {max_statements} live statements")
    layout = round_for(graphs)
    schedules = [schedule(g, layout) for g in graphs]
    rounds = max(min_rounds, *(_rounds(slot_of, layout) for slot_of in schedules))
    if round_up:
        rounds = 1 << (rounds - 1).bit_length()
    encoded = [encode(g, rounds, slot_of, layout) for g, slot_of in zip(graphs, schedules)]
    return stack_encoded(encoded + [encoded[0]] * (count - len(graphs)))


def _segment_bounds(shapes: Shapes) -> list[tuple[int, int]]:
    edges = np.cumsum([0, *tensor_sizes(shapes)])
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def _tree_results(args: jax.Array, scalar: jax.Array, shapes: Shapes) -> dict[str, jax.Array]:
    """The tree-level functions on one slot's arguments (args [3, P], scalar flags [3]). They
    share three reductions (Σa₀² per tensor, Σa₁², Σa₀a₁) instead of each reducing on its own."""
    a0, a1 = args[0], args[1]
    s0, s1 = scalar[0], scalar[1]
    squares = a0 * a0
    per_tensor = jnp.stack([jnp.sum(squares[lo:hi]) for lo, hi in _segment_bounds(shapes)])  # Σa₀² of each tensor
    norm0 = jnp.where(s0, jnp.abs(a0[0]), jnp.sqrt(jnp.sum(per_tensor)))
    norm1 = jnp.where(s1, jnp.abs(a1[0]), jnp.sqrt(jnp.sum(a1 * a1)))
    dot = jnp.where(s0 & s1, a0[0] * a1[0], jnp.sum(a0 * a1))
    tensor_norms = jnp.repeat(jnp.sqrt(per_tensor), np.asarray(tensor_sizes(shapes)), total_repeat_length=a0.shape[0])
    return {
        "norm": jnp.where(s0, jnp.abs(a0), tensor_norms),
        "global_norm": jnp.broadcast_to(norm0, a0.shape),
        "dot": jnp.broadcast_to(dot, a0.shape),
        "cosine_sim": jnp.broadcast_to(dot / (norm0 * norm1), a0.shape),
        "clip_by_global_norm": a0 * jnp.minimum(1.0, jnp.abs(a1[0]) / norm0),
    }


def _matrix_results(a: jax.Array, scalar: jax.Array, shapes: Shapes) -> list[jax.Array]:
    """The matrix functions on one slot's argument (flat [P]): each tensor's segment through its
    matrix view (`lopt.matrix`); a scalar-typed argument as a 1×1 matrix, element by element."""
    bounds = _segment_bounds(shapes)
    results = []
    for name in MATRIX_NAMES:
        fn = FUNCTIONS[name].fn
        pieces = []
        for (lo, hi), shape in zip(bounds, shapes):
            rows, cols = matrix_view(shape if isinstance(shape, tuple) else (int(shape),))
            y = fn(a[lo:hi].reshape(rows, cols))
            pieces.append(jnp.broadcast_to(y, (rows, cols)).reshape(-1))
        as_tensor = jnp.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        as_scalar = jax.vmap(lambda e: fn(e.reshape(1, 1)).reshape(()))(a)  # noqa: B023
        results.append(jnp.where(scalar, as_scalar, as_tensor))
    return results


def _arith_results(args: jax.Array, op: jax.Array) -> list[jax.Array]:
    """The arithmetic group's functions, div and reciprocal sharing one division (a/b, or 1/a:
    a division costs several times an add on a GPU)."""
    recip = op == GROUPS["arith"].index("reciprocal")
    quotient = jnp.where(recip, 1.0, args[0]) / jnp.where(recip, args[0], args[1])
    return [
        quotient
        if name in ("div", "reciprocal")
        else FUNCTIONS[name].fn(*(args[i] for i in range(FUNCTIONS[name].arity)))
        for name in GROUPS["arith"]
    ]


def _group_results(group: str, args: jax.Array, scalar: jax.Array, shapes: Shapes, op: jax.Array) -> list[jax.Array]:
    """Each function of `group` on one slot's arguments, in the group's order, then NOP's zeros.
    Only the entry of the slot's function `op` is meaningful: the transcendental groups share
    their costly calls among their functions, with arguments picked by `op`
    (`explog_results`, `inverse_results`, `trig_results`: the library's numbers to float32
    accuracy)."""
    if group == "tree":
        tree = _tree_results(args, scalar, shapes)
        results = [tree[name] for name in GROUPS[group]]
    elif group == "matrix":
        results = _matrix_results(args[0], scalar[0], shapes)
    elif group == "explog":
        results = explog_results(args[0], op)
    elif group == "inverse":
        results = inverse_results(args[0], args[1], op)
    elif group == "trig":
        results = trig_results(args[0], op)
    elif group == "arith":
        results = _arith_results(args, op)
    else:
        results = [FUNCTIONS[name].fn(*(args[i] for i in range(FUNCTIONS[name].arity))) for name in GROUPS[group]]
    return results + [jnp.zeros_like(args[0])]


def _gather_args(registers: jax.Array, program: Encoded, s: jax.Array) -> jax.Array:
    """Slot s's arguments [3, P]: its registers read from the register file, or its constants."""
    refs, consts = program.ref[s], program.const[s]
    return jnp.stack([jnp.where(refs[a] >= 0, registers[jnp.maximum(refs[a], 0)], consts[a]) for a in range(MAX_ARGS)])


def _slot_output(group: str, args: jax.Array, program: Encoded, s: jax.Array, shapes: Shapes) -> jax.Array:
    """Slot s's result: every function of its group, the program's selected."""
    return jax.lax.select_n(program.op[s], *_group_results(group, args, program.scalar[s], shapes, program.op[s]))


def scan_rounds(
    program: Encoded,
    w: jax.Array,
    g: jax.Array,
    m: jax.Array,
    v: jax.Array,
    lr: jax.Array,
    t: jax.Array,
    shapes: Shapes,
    read=_gather_args,
    compute=_slot_output,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`run_encoded`'s machinery: a register file [6 + S, P] (inputs, then slot s's result in row
    6 + s) carried through `lax.scan` over rounds, each slot `read`ing its arguments and writing
    what `compute` makes of them. `benchmarks/interpreter_anatomy.py` swaps `read` and
    `compute` to time the parts."""
    size = w.shape[0]
    if sum(tensor_sizes(shapes)) != size:
        raise ValueError(f"tensor shapes {shapes} do not add up to the flat vector's {size}")
    inputs = jnp.stack([w, g, m, v, jnp.broadcast_to(lr, (size,)), jnp.broadcast_to(t, (size,))]).astype(jnp.float32)
    slots = program.op.shape[0]
    registers = jnp.concatenate([inputs, jnp.zeros((slots, size), jnp.float32)])

    layout = layout_of(program)

    def one_round(registers, first):
        for j, group in enumerate(layout):
            s = first + j
            out = compute(group, read(registers, program, s), program, s, shapes)
            registers = jax.lax.dynamic_update_index_in_dim(registers, out, NUM_INPUTS + s, 0)
        return registers, None

    registers, _ = jax.lax.scan(one_round, registers, jnp.arange(0, slots, len(layout)))
    return tuple(registers[program.outputs[i]] for i in range(3))


def run_encoded(
    program: Encoded,
    w: jax.Array,
    g: jax.Array,
    m: jax.Array,
    v: jax.Array,
    lr: jax.Array,
    t: jax.Array,
    shapes: Shapes,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One step of an encoded program on flat vectors [P]; returns (update, m, v).

    shapes: the parameter tensors' shapes (or sizes, for vectors) in the flat order (static; `norm`
    is per tensor, matrix functions read each tensor's matrix view). vmap
    over `program` (and the vectors) to run a population: each slot computes only its group's
    functions and selects the program's."""
    return scan_rounds(program, w, g, m, v, lr, t, shapes)


def run_unrolled(
    program: Encoded,
    w: jax.Array,
    g: jax.Array,
    m: jax.Array,
    v: jax.Array,
    lr: jax.Array,
    t: jax.Array,
    shapes: Shapes,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`run_encoded` with the slots unrolled and the registers held as values: an argument is a
    select among the registers written before its slot (`lax.select_n` on the program's register
    number), so XLA fuses a whole step, slots and selects, into a few passes over memory instead
    of a gather from and a write to a register file per slot. Same numbers as `run_encoded`.

    The cost moves from memory to arithmetic and compile time: slot s selects among 6 + s
    registers, so a step is O(slots²) selects and its compile grows with the rounds. Measured
    (`benchmarks/interpreter_step.py`, docs/benchmarks.md): faster than the scan on CPUs, several
    times slower on GPUs, so no default uses it;
    `lopt.programs.kernel` is the GPU path."""
    size = w.shape[0]
    if sum(tensor_sizes(shapes)) != size:
        raise ValueError(f"tensor shapes {shapes} do not add up to the flat vector's {size}")
    registers = [
        x.astype(jnp.float32) for x in (w, g, m, v, jnp.broadcast_to(lr, (size,)), jnp.broadcast_to(t, (size,)))
    ]
    for s in range(program.op.shape[0]):
        refs, consts = program.ref[s], program.const[s]
        args = jnp.stack(
            [
                jnp.where(
                    refs[a] >= 0, jax.lax.select_n(jnp.clip(refs[a], 0, len(registers) - 1), *registers), consts[a]
                )
                for a in range(MAX_ARGS)
            ]
        )
        layout = layout_of(program)
        registers.append(_slot_output(layout[s % len(layout)], args, program, s, shapes))
    return tuple(jax.lax.select_n(program.outputs[i], *registers) for i in range(3))
