"""The batched interpreter as one Pallas kernel: a program's step with its registers on chip.

`run_encoded` keeps a register file in memory: every slot reads its arguments from it and writes
its result back, and under XLA those reads are materialised (a write in place into a buffer that
is read at dynamic rows cannot be fused with the reads). At a GPU search's shape
(benchmarks/interpreter_anatomy.py; numbers in docs/benchmarks.md) nearly all of a step's time
remains with every function replaced by `add`: the interpreter is bound by register traffic,
not by arithmetic.

Here one kernel instance takes a block of one run's flat parameters, loads w, g, m, v once,
runs every slot on values held in registers and stores the update, m and v. A slot's function
number and argument registers are the same for the whole block, so they are scalars: each
argument is picked by a scalar branch (`lax.switch` over the registers written so far, lowered
to `scf.if`), and the function by another, so only the program's own function is computed (a
vmapped `run_encoded` computes every function of the slot's group and selects). The numbers
are the library's own functions (`lopt.programs.library`).

Tree-level functions (norms, dot products, global clipping) reduce over all parameters, which one
block cannot: for programs that use them (`tree=True`), a pass per round first runs the slots up
to the round's tree slot and writes per-block sums of its arguments, which XLA adds and the later
passes read (`meta_train.search.fitness` runs such programs in batches of their own, since the
passes cost a read of w, g, m, v each).

On CPUs `interpret=True` runs the kernel through Pallas' interpreter (tests); the Triton
lowering itself can be checked without a GPU by exporting for 'cuda' (tests).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lopt.learned.kernels import flat_table
from lopt.programs.analysis import Graph
from lopt.programs.batched import GROUP_OF, GROUPS, MAX_ARGS, ROUND, Encoded, tensor_sizes
from lopt.programs.library import FUNCTIONS

# Parameters per kernel instance: 1,024 beats 256 everywhere (`benchmarks/interpreter_step.py
# --kernel-blocks`; docs/benchmarks.md), most where programs are long, since a block's scalar
# branch decisions are paid once per block.
BLOCK = 1024


def uses_tree(graph: Graph) -> bool:
    """Whether a (pruned) graph has a tree-level statement (then `run_kernel` needs `tree=True`)."""
    return any(GROUP_OF[op] == "tree" for op, _ in graph.nodes)


class _Layout(NamedTuple):
    """Offsets into the flat table: op [S], ref [S·3], const [S·3], scalar [S·3], outputs [3],
    lr, t, then per tree slot (one per round) its reductions: Σa₀² of each of the T tensors,
    Σa₁², Σa₀a₁ (`width` = T + 2 values)."""

    slots: int
    tensors: int

    @property
    def ref(self) -> int:
        return self.slots

    @property
    def const(self) -> int:
        return 4 * self.slots

    @property
    def scalar(self) -> int:
        return 7 * self.slots

    @property
    def out(self) -> int:
        return 10 * self.slots

    @property
    def sums(self) -> int:
        return 10 * self.slots + 5

    @property
    def width(self) -> int:
        return self.tensors + 2

    @property
    def size(self) -> int:
        return self.sums + len(_tree_slots(self.slots)) * self.width


def _tree_slots(slots: int) -> list[int]:
    return [s for s in range(slots) if ROUND[s % len(ROUND)] == "tree"]


def _table(program: Encoded, lr: jax.Array, t: jax.Array, layout: _Layout, sums: list[jax.Array]) -> jax.Array:
    """The program as one flat float32 operand (`_Layout`; register and function numbers are
    small integers, exact in float32), padded to a power of two (`flat_table`: Triton's block
    sizes). `sums`: the reductions of the tree slots known so far ([width] each)."""
    parts = [
        program.op,
        program.ref.reshape(-1),
        program.const.reshape(-1),
        program.scalar.reshape(-1),
        program.outputs,
        jnp.reshape(lr, (1,)),
        jnp.reshape(t, (1,)),
    ]
    parts += list(sums) + [jnp.zeros(layout.width)] * (len(_tree_slots(layout.slots)) - len(sums))
    return flat_table(jnp.concatenate([jnp.asarray(p, jnp.float32).reshape(-1) for p in parts]))


def _pick(index: jax.Array, values: list[jax.Array]) -> jax.Array:
    """values[index] by a scalar branch (only the chosen value is moved)."""
    if len(values) == 1:
        return values[0]
    return jax.lax.switch(jnp.clip(index, 0, len(values) - 1), [lambda v=v: v for v in values])


def _slot(group: str, op: jax.Array, args: list[jax.Array], zeros: jax.Array) -> jax.Array:
    """The slot's function (number `op` within `group`; past the end: NOP, zeros) on its arguments."""
    branches = [lambda name=name: FUNCTIONS[name].fn(*args[: FUNCTIONS[name].arity]) for name in GROUPS[group]]
    return jax.lax.switch(jnp.clip(op, 0, len(branches)), branches + [lambda: zeros])


def _tensor_masks(position: jax.Array, sizes: tuple[int, ...]) -> list[jax.Array]:
    """[block] membership of each parameter position in each tensor of the flat order."""
    edges = np.cumsum([0, *sizes]).tolist()
    return [(position >= lo) & (position < hi) for lo, hi in zip(edges[:-1], edges[1:])]


def _tree_slot(op, args, flags, sums, masks) -> jax.Array:
    """A tree slot from its arguments and the reductions over the whole vector (`_tree_results`'
    rules: a scalar-typed argument is the same in every position, so |a| stands for |a[0]|)."""
    a0, a1 = args[0], args[1]
    s0, s1 = flags[0] > 0.5, flags[1] > 0.5
    per_tensor = sums[: len(masks)]
    square1, product = sums[len(masks)], sums[len(masks) + 1]
    norm0 = jnp.where(s0, jnp.abs(a0), jnp.sqrt(sum(per_tensor)))
    norm1 = jnp.where(s1, jnp.abs(a1), jnp.sqrt(square1))
    dot = jnp.where(s0 & s1, a0 * a1, product)
    tensor_norm = jnp.zeros_like(a0)
    for mask, total in zip(masks, per_tensor):
        tensor_norm = jnp.where(mask, jnp.sqrt(total), tensor_norm)
    results = {
        "norm": jnp.where(s0, jnp.abs(a0), tensor_norm),
        "global_norm": norm0,
        "dot": dot,
        "cosine_sim": dot / (norm0 * norm1),
        "clip_by_global_norm": a0 * jnp.minimum(1.0, jnp.abs(a1) / norm0),
    }
    return _pick(op, [results[name] for name in GROUPS["tree"]] + [jnp.zeros_like(a0)])


def _run_block(table, w, g, m, v, layout: _Layout, block: int, masks, stop: int | None):
    """Run the slots on a block held in registers (`table` indexable by static positions). With
    `stop` (a tree slot), return that slot's arguments instead of finishing; else (update, m, v).
    Tree slots before `stop` read their reductions from the table; without `masks` (tree=False)
    tree slots are taken to be empty."""
    as_int = lambda x: x.astype(jnp.int32)  # noqa: E731
    zeros = jnp.zeros((block,), jnp.float32)
    registers = [w, g, m, v, zeros + table[layout.out + 3], zeros + table[layout.out + 4]]
    tree_slots = _tree_slots(layout.slots)
    for s in range(layout.slots if stop is None else stop + 1):
        group = ROUND[s % len(ROUND)]
        if group == "tree" and masks is None:  # empty in every program given to a tree=False kernel
            registers.append(zeros)
            continue
        args = []
        for a in range(MAX_ARGS):
            constant = zeros + table[layout.const + MAX_ARGS * s + a]
            # ref −1 (a constant) picks entry 0, register k entry k + 1
            args.append(_pick(as_int(table[layout.ref + MAX_ARGS * s + a]) + 1, [constant, *registers]))
        if s == stop:
            return args
        if group == "tree":
            at = layout.sums + tree_slots.index(s) * layout.width
            sums = [table[at + k] for k in range(layout.width)]
            flags = [table[layout.scalar + MAX_ARGS * s + a] for a in range(2)]
            registers.append(_tree_slot(as_int(table[s]), args, flags, sums, masks))
        else:
            registers.append(_slot(group, as_int(table[s]), args, zeros))
    return [_pick(as_int(table[layout.out + i]), registers) for i in range(3)]


def run_kernel(
    program: Encoded,
    w: jax.Array,
    g: jax.Array,
    m: jax.Array,
    v: jax.Array,
    lr: jax.Array,
    t: jax.Array,
    sizes: tuple,
    *,
    tree: bool = False,
    block: int = BLOCK,
    num_warps: int = 4,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`run_encoded` as Pallas kernels over blocks of the flat vectors [P]; returns (update, m, v).
    vmap it over programs and runs as `run_encoded` (each vmap adds a grid axis).

    tree=False: one kernel, for programs without tree-level statements (their tree slots are
    taken to be empty). tree=True: one pass per round first, each running the slots up to that
    round's tree slot and writing per-block sums of its arguments (Σa₀² per tensor, Σa₁², Σa₀a₁),
    which XLA adds up and the later passes read; then the pass that finishes the step. A pass
    recomputes the slots before it from w, g, m, v: arithmetic is cheap next to a round trip of
    the registers through memory. interpret: None runs the Pallas interpreter off GPUs."""
    size = w.shape[0]
    if program.layout.shape[-1] != len(ROUND):
        raise ValueError(
            "matrix functions (orthogonalize, row_ms, ...) run in the batched interpreter only: "
            "set fitness.interpreter = 'batched'"
        )
    sizes = tensor_sizes(sizes)
    if sum(sizes) != size:
        raise ValueError(f"tensor sizes {sizes} do not add up to the flat vector's {size}")
    if block <= 0 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    layout = _Layout(program.op.shape[0], len(sizes))
    arrays = [x.astype(jnp.float32) for x in (w, g, m, v)]
    blocks = pl.cdiv(size, block)
    width = pl.next_power_of_2(layout.width)
    tiled = pl.BlockSpec((block,), lambda i: (i,))
    params = {} if interpret else {"compiler_params": plgpu.CompilerParams(num_warps=num_warps, num_stages=1)}

    def call(stop: int | None, sums: list[jax.Array]):
        table = _table(program, lr, t, layout, sums)

        def kernel(table_ref, w_ref, g_ref, m_ref, v_ref, *out_refs):
            position = pl.program_id(0) * block + jax.lax.broadcasted_iota(jnp.int32, (block,), 0)
            valid = position < size
            loaded = [plgpu.load(r, mask=valid, other=0.0) for r in (w_ref, g_ref, m_ref, v_ref)]
            values = [table_ref[i] for i in range(layout.size)]
            masks = _tensor_masks(position, sizes) if tree else None
            result = _run_block(values, *loaded, layout, block, masks, stop)
            if stop is None:
                for ref, value in zip(out_refs, result):
                    plgpu.store(ref, value, mask=valid)
                return
            a0 = jnp.where(valid, result[0], 0.0)
            a1 = jnp.where(valid, result[1], 0.0)
            partial = [jnp.sum(jnp.where(mask, a0 * a0, 0.0)) for mask in masks] + [jnp.sum(a1 * a1), jnp.sum(a0 * a1)]
            lane = jax.lax.broadcasted_iota(jnp.int32, (width,), 0)
            row = jnp.zeros((width,), jnp.float32)
            for k, value in enumerate(partial):
                row = jnp.where(lane == k, value, row)
            out_refs[0][...] = row

        if stop is None:
            out_shape, out_specs = [jax.ShapeDtypeStruct((size,), jnp.float32)] * 3, [tiled] * 3
        else:
            out_shape, out_specs = (
                [jax.ShapeDtypeStruct((blocks * width,), jnp.float32)],
                [pl.BlockSpec((width,), lambda i: (i,))],
            )
        return pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=(blocks,),
            in_specs=[pl.BlockSpec(table.shape, lambda i: (0,)), *[tiled] * 4],
            out_specs=out_specs,
            interpret=interpret,
            name="lopt_program_step" if stop is None else "lopt_program_sums",
            **params,
        )(table, *arrays)

    sums: list[jax.Array] = []
    if tree:
        for stop in _tree_slots(layout.slots):
            (partials,) = call(stop, sums)
            sums.append(partials.reshape(blocks, width).sum(axis=0)[: layout.width])
    update, m, v = call(None, sums)
    return update, m, v


__all__ = ["BLOCK", "run_kernel", "uses_tree"]
