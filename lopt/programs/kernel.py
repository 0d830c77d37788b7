"""The batched interpreter as one Pallas kernel: a program's step with its registers on chip.

`run_encoded` keeps a register file in memory: every slot reads its arguments from it and writes
its result back, and under XLA those reads are materialised (a write in place into a buffer that
is read at dynamic rows cannot be fused with the reads). Measured on an H200 at a GPU search's
shape (128 programs × 10 runs × 9,026 parameters, 2 rounds; benchmarks/interpreter_anatomy.py):
3.18 ms a step, of which 2.81 ms remain with every function replaced by `add`, against 0.11 ms
for AdamW written directly. The interpreter is bound by register traffic, not by arithmetic.

Here one kernel instance takes a block of one run's flat parameters, loads w, g, m, v once,
runs every slot on values held in registers and stores the update, m and v. A slot's function
number and argument registers are the same for the whole block, so they are scalars: each
argument is picked by a scalar branch (`lax.switch` over the registers written so far, lowered
to `scf.if`), and the function by another, so only the program's own function is computed (a
vmapped `run_encoded` computes every function of the slot's group and selects). The numbers
are the library's own functions (`lopt.programs.library`).

Tree-level functions (norms, dot products, global clipping) reduce over all parameters and
cannot run inside one block: programs that use them run through `run_encoded`
(`meta_train.search.fitness` splits a batch), and the kernel requires the tree slots to be
empty (it computes zeros there, as a NOP does).

On CPUs `interpret=True` runs the kernel through Pallas' interpreter (tests); the Triton
lowering itself can be checked without a GPU by exporting for 'cuda' (tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lopt.learned.kernels import flat_table
from lopt.programs.analysis import Graph
from lopt.programs.interpret import GROUP_OF, GROUPS, MAX_ARGS, NUM_INPUTS, ROUND, Encoded
from lopt.programs.library import FUNCTIONS

# Parameters per kernel instance. Every register stays live to the end of the step (a later slot
# may read any of them), so a block holds (6 + slots) values: at 4 warps, 256 parameters are 2 per
# thread, ~50 32-bit registers for 2 rounds, where 1,024 would spill (`benchmarks/interpreter_step.py
# --kernel-blocks` times the choices).
BLOCK = 256


def uses_tree(graph: Graph) -> bool:
    """Whether a (pruned) graph has a tree-level statement, which the kernel cannot run."""
    return any(GROUP_OF[op] == "tree" for op, _ in graph.nodes)


def _table(program: Encoded, lr: jax.Array, t: jax.Array) -> jax.Array:
    """The program as one flat float32 operand: op [S], ref [S·3], const [S·3], outputs [3], lr,
    t (register numbers and function numbers are small integers, exact in float32), padded to
    a power of two (`flat_table`: Triton's block sizes)."""
    parts = [program.op, program.ref.reshape(-1), program.const.reshape(-1), program.outputs,
             jnp.reshape(lr, (1,)), jnp.reshape(t, (1,))]
    return flat_table(jnp.concatenate([jnp.asarray(p, jnp.float32).reshape(-1) for p in parts]))


def _pick(index: jax.Array, values: list[jax.Array]) -> jax.Array:
    """values[index] by a scalar branch (only the chosen value is moved)."""
    if len(values) == 1:
        return values[0]
    return jax.lax.switch(jnp.clip(index, 0, len(values) - 1), [lambda v=v: v for v in values])


def _slot(group: str, op: jax.Array, args: list[jax.Array], zeros: jax.Array) -> jax.Array:
    """The slot's function (number `op` within `group`; past the end: NOP, zeros) on its arguments."""
    branches = [lambda name=name: FUNCTIONS[name].fn(*args[:FUNCTIONS[name].arity]) for name in GROUPS[group]]
    return jax.lax.switch(jnp.clip(op, 0, len(branches)), branches + [lambda: zeros])


def _step_block(table, w, g, m, v, slots: int, block: int) -> list[jax.Array]:
    """One step on a block held in registers; `table` is indexable by static positions."""
    as_int = lambda x: x.astype(jnp.int32)  # noqa: E731
    ref_at, const_at, out_at = slots, 4 * slots, 7 * slots
    lr, t = table[out_at + 3], table[out_at + 4]
    zeros = jnp.zeros((block,), jnp.float32)
    registers = [w, g, m, v, zeros + lr, zeros + t]
    for s in range(slots):
        group = ROUND[s % len(ROUND)]
        if group == "tree":  # empty in every program the kernel is given
            registers.append(zeros)
            continue
        args = []
        for a in range(MAX_ARGS):
            constant = zeros + table[const_at + MAX_ARGS * s + a]
            # ref −1 (a constant) picks entry 0, register k entry k + 1
            args.append(_pick(as_int(table[ref_at + MAX_ARGS * s + a]) + 1, [constant, *registers]))
        registers.append(_slot(group, as_int(table[s]), args, zeros))
    return [_pick(as_int(table[out_at + i]), registers) for i in range(3)]


def run_kernel(
    program: Encoded, w: jax.Array, g: jax.Array, m: jax.Array, v: jax.Array, lr: jax.Array, t: jax.Array,
    sizes: tuple[int, ...], *, block: int = BLOCK, num_warps: int = 4, interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`run_encoded` for a program without tree-level statements, as one Pallas kernel over blocks
    of the flat vectors [P]; returns (update, m, v). vmap it over programs and runs as
    `run_encoded` (each vmap adds a grid axis). interpret: None runs the Pallas interpreter
    off GPUs."""
    size = w.shape[0]
    if sum(sizes) != size:
        raise ValueError(f"tensor sizes {sizes} do not add up to the flat vector's {size}")
    if block <= 0 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    slots = program.op.shape[0]
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    table = _table(program, lr, t)

    def kernel(table_ref, w_ref, g_ref, m_ref, v_ref, update_ref, m_out_ref, v_out_ref):
        valid = pl.program_id(0) * block + jax.lax.broadcasted_iota(jnp.int32, (block,), 0) < size
        loaded = [plgpu.load(r, mask=valid, other=0.0).astype(jnp.float32) for r in (w_ref, g_ref, m_ref, v_ref)]
        table_values = [table_ref[i] for i in range(7 * slots + 5)]
        outputs = _step_block(table_values, *loaded, slots=slots, block=block)
        for ref, value in zip((update_ref, m_out_ref, v_out_ref), outputs):
            plgpu.store(ref, value, mask=valid)

    tiled = pl.BlockSpec((block,), lambda i: (i,))
    flat = jax.ShapeDtypeStruct((size,), jnp.float32)
    params = {} if interpret else {"compiler_params": plgpu.CompilerParams(num_warps=num_warps, num_stages=1)}
    update, m, v = pl.pallas_call(
        kernel,
        out_shape=[flat] * 3,
        grid=(pl.cdiv(size, block),),
        in_specs=[pl.BlockSpec(table.shape, lambda i: (0,)), *[tiled] * 4],
        out_specs=[tiled] * 3,
        interpret=interpret,
        name="lopt_program_step",
        **params,
    )(table, *(x.astype(jnp.float32) for x in (w, g, m, v)))
    return update, m, v


__all__ = ["BLOCK", "NUM_INPUTS", "run_kernel", "uses_tree"]
