"""Pallas kernels over 2-D blocks of a matrix, for narrow learned networks whose weights are
runtime values (VeLO's bank mixtures): `means_2d` for the per-tensor statistics and `network_2d`
for the step, both forming Adafactor preconditioners from row × column factors in-kernel.
VeLO's kernels also take the momenta and rms one step in registers, and `network_2d` writes them
over the old ones. Masking, the reference VJPs and the interpreter for CPUs are as in
`lopt.learned.kernels` (the 1-D kernels), whose helpers these share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lopt.learned import per_param_mlp
from lopt.learned.kernels import compiler_params, in_bounds, scalar_list, with_reference_vjp


def _check_2d(
    full: Sequence[jax.Array], rows: Sequence[jax.Array], cols: Sequence[jax.Array], block: tuple[int, int]
) -> tuple[int, int]:
    """The grid over [R, C] `full` arrays with [R] `rows` and [C] `cols` vectors."""
    num_rows, num_cols = full[0].shape
    if (
        any(x.shape != (num_rows, num_cols) for x in full)
        or any(r.shape != (num_rows,) for r in rows)
        or any(c.shape != (num_cols,) for c in cols)
    ):
        raise ValueError("the 2-D kernels take [R, C] arrays with [R] row and [C] column vectors")
    for b in block:
        if b <= 0 or b & (b - 1):
            raise ValueError(f"block sizes must be powers of two, got {block}")
    return pl.cdiv(num_rows, block[0]), pl.cdiv(num_cols, block[1])


def _specs_2d(block: tuple[int, int], num_full: int, num_rows: int, num_cols: int) -> list[pl.BlockSpec]:
    return [
        *[pl.BlockSpec(block, lambda i, j: (i, j))] * num_full,
        *[pl.BlockSpec((block[0],), lambda i, j: (i,))] * num_rows,
        *[pl.BlockSpec((block[1],), lambda i, j: (j,))] * num_cols,
    ]


def _load_2d(
    full_refs: Sequence, row_refs: Sequence, col_refs: Sequence, shape: tuple[int, int], block: tuple[int, int]
) -> tuple[jax.Array, list[jax.Array], list[jax.Array], list[jax.Array]]:
    """This program's blocks, masked past the edges: (in-bounds mask [br, bc], full blocks
    [br, bc], row blocks [br, 1], column blocks [1, bc])."""
    row_ok, col_ok = in_bounds(block[0], shape[0], axis=0), in_bounds(block[1], shape[1], axis=1)
    ok = row_ok[:, None] & col_ok[None, :]
    return (
        ok,
        [plgpu.load(r, mask=ok, other=0.0).astype(jnp.float32) for r in full_refs],
        [plgpu.load(r, mask=row_ok, other=0.0).astype(jnp.float32)[:, None] for r in row_refs],
        [plgpu.load(r, mask=col_ok, other=0.0).astype(jnp.float32)[None, :] for r in col_refs],
    )


Values2D = Callable[[list[jax.Array], list[jax.Array], list[jax.Array]], list[jax.Array]]


def reference_means_2d(
    values: Values2D, full: Sequence[jax.Array], rows: Sequence[jax.Array], cols: Sequence[jax.Array]
) -> jax.Array:
    """`means_2d` in jnp."""
    shape = full[0].shape
    out = values(list(full), [r[:, None] for r in rows], [c[None, :] for c in cols])
    return jnp.stack([jnp.mean(jnp.broadcast_to(v, shape)) for v in out])


def means_2d(
    values: Values2D,
    full: Sequence[jax.Array],
    rows: Sequence[jax.Array],
    cols: Sequence[jax.Array],
    *,
    num_values: int,
    block: tuple[int, int] = (8, 128),
    num_warps: int = 4,
    interpret: bool = False,
) -> jax.Array:
    """[K] means over an [R, C] tensor of `values(full, rows, cols)`, one pass in one kernel.

    `full` are [R, C] arrays, `rows` [R] and `cols` [C] vectors; `values` receives blocks of
    them as [br, bc], [br, 1] and [1, bc] arrays (so a factored preconditioner is
    rows[k] * cols[k]) and returns K arrays that broadcast to [br, bc]. This is what per-tensor
    statistics with Adafactor-factored accumulators need: XLA on GPUs otherwise materialises the
    features and reduces each in its own kernel (90 separate reductions for VeLO). The default
    block and warps measured fastest on VeLO's statistics (docs/benchmarks.md)."""
    grid = _check_2d(full, rows, cols, block)
    shape = full[0].shape

    def kernel(*refs):
        split = (len(full), len(full) + len(rows), len(full) + len(rows) + len(cols))
        ok, *blocks = _load_2d(refs[: split[0]], refs[split[0] : split[1]], refs[split[1] : split[2]], shape, block)
        out = values(*blocks)
        if len(out) != num_values:
            raise ValueError(f"values returned {len(out)} arrays, expected {num_values}")
        for ref, value in zip(refs[split[2] :], out):
            ref[0, 0] = jnp.sum(jnp.where(ok, value, 0.0))

    def run(full, rows, cols):
        sums = pl.pallas_call(
            kernel,
            out_shape=[jax.ShapeDtypeStruct(grid, jnp.float32)] * num_values,
            grid=grid,
            in_specs=_specs_2d(block, len(full), len(rows), len(cols)),
            out_specs=[pl.BlockSpec((1, 1), lambda i, j: (i, j))] * num_values,
            interpret=interpret,
            name="lopt_means_2d",
            **compiler_params(num_warps, interpret),
        )(*full, *rows, *cols)
        return jnp.stack(sums).sum(axis=(1, 2)) / (shape[0] * shape[1])  # one reduction, not K

    reference = lambda full, rows, cols: reference_means_2d(values, full, rows, cols)
    return with_reference_vjp(run, reference)(list(full), list(rows), list(cols))


class _ScalarWeights:
    """A layer's weights or bias read as scalars from a flat kernel operand: each weight is
    loaded once per program and broadcast in registers, where an XLA loop fusion reloads every
    runtime weight for every parameter (VeLO's bank-mixed 17 → 4 → 4 → 2 network: ~400 loads per
    parameter)."""

    def __init__(self, ref, offset: int, shape: tuple[int, ...]):
        self.ref, self.offset, self.shape = ref, offset, shape

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        flat = 0
        for i, size in zip(index, self.shape):
            flat = flat * size + int(i)
        return self.ref[self.offset + flat]


Body2D = Callable[[list[jax.Array], list[jax.Array], list[jax.Array], list[jax.Array], list], list[jax.Array]]


def reference_network_2d(
    body: Body2D,
    full: Sequence[jax.Array],
    rows: Sequence[jax.Array],
    cols: Sequence[jax.Array],
    scalars: jax.Array,
    weights: jax.Array,
    row: int,
    num_scalars: int,
    layer_sizes: Sequence[int],
) -> list[jax.Array]:
    """`network_2d` in jnp."""
    own_scalars = scalars[row * num_scalars : (row + 1) * num_scalars]
    stride = per_param_mlp.num_layer_weights(layer_sizes)
    layers = per_param_mlp.unflatten_layers(weights[row * stride : (row + 1) * stride], layer_sizes)
    outputs = body(list(full), [r[:, None] for r in rows], [c[None, :] for c in cols], scalar_list(own_scalars), layers)
    return [jnp.broadcast_to(x, full[0].shape) for x in outputs]


def network_2d(
    body: Body2D,
    full: Sequence[jax.Array],
    rows: Sequence[jax.Array],
    cols: Sequence[jax.Array],
    scalars: jax.Array,
    weights: jax.Array,
    *,
    row: int,
    num_scalars: int,
    layer_sizes: Sequence[int],
    num_outputs: int = 1,
    in_place: Sequence[tuple[int, int]] = (),
    block: tuple[int, int] = (4, 128),
    num_warps: int = 4,
    interpret: bool = False,
) -> list[jax.Array]:
    """`num_outputs` float32 [R, C] arrays from `body(full, rows, cols, scalars, layers)` (a list:
    the step, and whatever else is cheaper written here than in a pass of its own, such as
    updated accumulators), for narrow networks whose weights are runtime values (VeLO's bank
    mixtures).

    `scalars` and `weights` are `flat_table`s of every tensor's `num_scalars` scalars and MLP
    weights (`layer_places`' layout for `layer_sizes`); this call reads row `row` of each. Passing
    the step's tables whole, rather than each tensor's slice, spares one small copy per operand
    and tensor (VeLO on GPT-2 shapes: ~150 tensors, so ~300 kernels a step). Blocks as in
    `means_2d`; the layers reach `body` as objects indexed like weight arrays ([i, j] and [j])
    whose entries are scalars, for `per_param_mlp.fused`'s unrolled network.

    `in_place` pairs (k, j) write output j over `full[k]` (an updated accumulator over the old
    one: each block is read before it is written, by the same program). Without that, XLA wrote
    each output to a new buffer and then copied it into the donated state's (196 copies a step
    for VeLO at 124M).

    Block size matters: every feature and hidden unit lives in registers, and (32, 256) blocks
    with 8 warps spilled them; the default (4, 128) with 4 warps does not (docs/benchmarks.md)."""
    grid = _check_2d(full, rows, cols, block)
    stride = per_param_mlp.num_layer_weights(layer_sizes)
    for name, table, width in (("scalars", scalars, num_scalars), ("weights", weights, stride)):
        if table.ndim != 1 or table.shape[0] & (table.shape[0] - 1) or table.shape[0] < (row + 1) * width:
            raise ValueError(f"{name} must be a flat_table holding row {row} of width {width}, got shape {table.shape}")
    shape, places = full[0].shape, per_param_mlp.layer_places(layer_sizes)

    def kernel(scalar_ref, weight_ref, *refs):
        split = (len(full), len(full) + len(rows), len(full) + len(rows) + len(cols))
        ok, *blocks = _load_2d(refs[: split[0]], refs[split[0] : split[1]], refs[split[1] : split[2]], shape, block)
        base = row * stride
        layers = [
            (
                _ScalarWeights(weight_ref, base + places[2 * k][0], places[2 * k][1]),
                _ScalarWeights(weight_ref, base + places[2 * k + 1][0], places[2 * k + 1][1]),
            )
            for k in range(len(layer_sizes) - 1)
        ]
        outputs = body(*blocks, [scalar_ref[row * num_scalars + i] for i in range(num_scalars)], layers)
        if len(outputs) != num_outputs:
            raise ValueError(f"body returned {len(outputs)} arrays, expected {num_outputs}")
        for ref, value in zip(refs[-num_outputs:], outputs):
            plgpu.store(ref, jnp.broadcast_to(value, block), mask=ok)

    def run(full, rows, cols, scalars, weights):
        whole = lambda x: pl.BlockSpec(x.shape, lambda i, j: (0,))
        return list(
            pl.pallas_call(
                kernel,
                out_shape=[jax.ShapeDtypeStruct(shape, jnp.float32)] * num_outputs,
                grid=grid,
                in_specs=[whole(scalars), whole(weights), *_specs_2d(block, len(full), len(rows), len(cols))],
                out_specs=[pl.BlockSpec(block, lambda i, j: (i, j))] * num_outputs,
                input_output_aliases={2 + k: j for k, j in in_place},
                interpret=interpret,
                name="lopt_network_2d",
                **compiler_params(num_warps, interpret),
            )(scalars, weights, *full, *rows, *cols)
        )

    reference = lambda *args: reference_network_2d(body, *args, row, num_scalars, layer_sizes)
    return with_reference_vjp(run, reference)(list(full), list(rows), list(cols), scalars, weights)
