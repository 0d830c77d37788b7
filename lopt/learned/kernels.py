"""Pallas kernels for the per-parameter part of a learned update, for wide networks on GPUs.

A learned optimizer's per-parameter work is elementwise over a few flat arrays: build features
from the gradient, parameters and accumulators, normalise each by its RMS over the tensor, run
the shared MLP, form the step. Written in jnp, XLA fuses it into one pass when the MLP is
narrow, but an MLP of width H costs ≈ F·H + H² multiply-adds per parameter on the CUDA cores:
for small_fc_lopt's 32×2 that is ~1,400 per parameter, and the pass becomes compute-bound at
several times adam. The per-tensor normalisers are a second problem: XLA computes one reduction
per feature, or, as one variadic reduction, a slow one (8× adam for the small MLP's 11 features
at 124M parameters; docs/benchmarks.md).

So the per-parameter work runs as two kernels over blocks of `block` parameters:

1. `statistics_pass` reads the arrays once and writes, per block, the sum of squares of every
   feature (masked past the end); XLA adds the per-block sums, giving each feature's mean square.
2. `network_pass` reads the arrays again, rebuilds the features, normalises them, and runs the
   MLP: the first layer as broadcast multiply-adds into a [block, H] tile, hidden layers as
   [block, H] @ [H, H] matrix products on the tensor cores (TF32 on NVIDIA GPUs), the two
   outputs as row reductions. It writes only the step.

Nothing of width H leaves the chip, so both passes are memory-bound. For these two kernels the
accumulators are updated by XLA (one fused elementwise pass) and the kernels read the new ones.

Narrow networks whose weights are runtime values (VeLO's bank mixtures) run over 2-D blocks of
a matrix instead (`lopt.learned.kernels_2d`).

Pallas' Triton backend does not mask a block that runs past the end of an array: `ref[...]`
reads and writes the whole block. Every load and store here is masked explicitly; without that,
the last block of a tensor whose size is not a multiple of `block` wrote into whatever buffer
came next (seen on a GPU as wrong accumulators and NaN meta-gradients).

Each kernel has a custom VJP whose backward pass is the VJP of the same function on whole arrays
in jnp, so meta-gradients through the kernels equal the reference path's. On CPUs
`interpret=True` runs the kernels through Pallas' interpreter (tests).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lopt.learned import per_param_mlp

Layer = tuple[jax.Array, jax.Array]  # (weights [in, out], bias [out])
Network = Callable[[Sequence[jax.Array]], tuple[jax.Array, jax.Array]]
# features(arrays) -> raw features; body(arrays, scalars, network) -> step. Arrays are flat blocks
# inside the kernels and whole flat tensors in the references; scalars are lists of 0-d values.
Features = Callable[[list[jax.Array]], list[jax.Array]]
Body = Callable[[list[jax.Array], list[jax.Array], Network], jax.Array]

MIN_DOT = 16  # Triton's smallest matrix-product dimension


def _padded(n: int) -> int:
    return max(MIN_DOT, pl.next_power_of_2(n))


def pad_layers(layers: Sequence[Layer]) -> list[jax.Array]:
    """The network as kernel operands, zero-padded to power-of-two widths ≥ 16 (padded hidden
    units have zero weights and bias, so relu(0) = 0 and they change nothing):
    first weights [F', H1'], then per layer its bias [H'] and (for hidden→hidden) weights
    [H', H''], and last the output weights transposed [2, H_last'] and output bias [2]."""
    if len(layers) < 2:
        raise ValueError("the kernel's network needs at least one hidden layer")
    operands = []
    first_w, first_b = layers[0]
    fan_in, width = first_w.shape
    operands.append(jnp.zeros((_padded(fan_in), _padded(width)), jnp.float32).at[:fan_in, :width].set(first_w))
    operands.append(jnp.zeros((_padded(width),), jnp.float32).at[:width].set(first_b))
    for weights, bias in layers[1:-1]:
        a, b = weights.shape
        operands.append(jnp.zeros((_padded(a), _padded(b)), jnp.float32).at[:a, :b].set(weights))
        operands.append(jnp.zeros((_padded(b),), jnp.float32).at[:b].set(bias))
    out_w, out_b = layers[-1]
    width = out_w.shape[0]
    operands.append(jnp.zeros((2, _padded(width)), jnp.float32).at[:, :width].set(out_w[:, :2].T))
    operands.append(jnp.asarray(out_b[:2], jnp.float32))
    return operands


def _kernel_network(refs: Sequence, num_hidden: int, num_features: int) -> Network:
    """The MLP inside a kernel on [block] feature vectors, reading `pad_layers`' operands."""

    def network(features: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
        if len(features) != num_features:
            raise ValueError(f"the network expects {num_features} features, got {len(features)}")
        first_w, first_b = refs[0], refs[1]
        h = first_b[...][None, :]
        for i, f in enumerate(features):
            h = h + f[:, None] * first_w[i, :][None, :]
        h = jnp.maximum(h, 0.0)
        for layer in range(num_hidden - 1):
            weights, bias = refs[2 + 2 * layer], refs[3 + 2 * layer]
            h = jnp.dot(h, weights[...], preferred_element_type=jnp.float32)
            h = jnp.maximum(h + bias[...][None, :], 0.0)
        out_w, out_b = refs[2 * num_hidden], refs[2 * num_hidden + 1]
        direction = jnp.sum(h * out_w[0, :][None, :], axis=1) + out_b[0]
        magnitude = jnp.sum(h * out_w[1, :][None, :], axis=1) + out_b[1]
        return direction, magnitude

    return network


def reference_network(layers: Sequence[Layer]) -> Network:
    """The same MLP on whole arrays with matrix products (`per_param_mlp.reference`)."""
    return lambda features: per_param_mlp.reference(features, layers)


def scalar_list(scalars: jax.Array) -> list[jax.Array]:
    return [scalars[i] for i in range(scalars.shape[0])]


def reference_statistics(features: Features, arrays: Sequence[jax.Array]) -> jax.Array:
    """`statistics_pass` in jnp: [F] mean square of each feature."""
    return jnp.stack([jnp.mean(jnp.square(f)) for f in features(list(arrays))])


def reference_network_pass(
    body: Body, arrays: Sequence[jax.Array], scalars: jax.Array, layers: Sequence[Layer]
) -> jax.Array:
    """`network_pass` in jnp, with the matmul network."""
    return body(list(arrays), scalar_list(scalars), reference_network(layers))


def _check(arrays: Sequence[jax.Array], block: int) -> int:
    shapes = {x.shape for x in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"the kernels take flat arrays of one size, got shapes {sorted(shapes)}")
    if block <= 0 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    return arrays[0].shape[0]


def _call(
    kernel,
    operands: Sequence[jax.Array],
    arrays: Sequence[jax.Array],
    outputs: list[tuple[jax.ShapeDtypeStruct, pl.BlockSpec]],
    block: int,
    num_warps: int,
    interpret: bool,
    name: str,
):
    """pallas_call over blocks of the flat `arrays`, with small `operands` passed whole."""
    whole = lambda x: pl.BlockSpec(x.shape, lambda i, n=x.ndim: (0,) * n)
    tiled = pl.BlockSpec((block,), lambda i: (i,))
    return pl.pallas_call(
        kernel,
        out_shape=[shape for shape, _ in outputs],
        grid=(pl.cdiv(arrays[0].shape[0], block),),
        in_specs=[*[whole(o) for o in operands], *[tiled] * len(arrays)],
        out_specs=[spec for _, spec in outputs],
        interpret=interpret,
        name=name,
        **compiler_params(num_warps, interpret),
    )(*operands, *arrays)


def compiler_params(num_warps: int, interpret: bool) -> dict:
    """Triton launch settings (none for the interpreter)."""
    if interpret:
        return {}
    return {"compiler_params": plgpu.CompilerParams(num_warps=num_warps, num_stages=1)}


def in_bounds(block: int, size: int, axis: int = 0) -> jax.Array:
    """[block] mask of this program's positions along grid `axis` that lie inside the arrays."""
    return pl.program_id(axis) * block + jax.lax.broadcasted_iota(jnp.int32, (block,), 0) < size


def _load_blocks(refs: Sequence, valid: jax.Array) -> list[jax.Array]:
    return [plgpu.load(r, mask=valid, other=0.0).astype(jnp.float32) for r in refs]


def with_reference_vjp(fast: Callable, reference: Callable) -> Callable:
    """`fast(*args)` (a kernel) differentiated as `reference(*args)` (the same numbers in jnp):
    Pallas kernels have no reverse-mode rule of their own."""

    @jax.custom_vjp
    def run(*args):
        return fast(*args)

    def forward(*args):
        return fast(*args), args

    def backward(args, cotangent):
        _, vjp = jax.vjp(reference, *args)
        return vjp(cotangent)

    run.defvjp(forward, backward)
    return run


def statistics_pass(
    features: Features,
    arrays: Sequence[jax.Array],
    *,
    num_features: int,
    block: int = 1024,
    num_warps: int = 4,
    interpret: bool = False,
) -> jax.Array:
    """Kernel 1 (module docstring): [F] mean square of each feature over the arrays."""
    size = _check(arrays, block)
    num_blocks = pl.cdiv(size, block)
    sum_spec = (jax.ShapeDtypeStruct((num_blocks,), jnp.float32), pl.BlockSpec((1,), lambda i: (i,)))

    def kernel(*refs):
        array_refs, out_refs = refs[: len(arrays)], refs[len(arrays) :]
        valid = in_bounds(block, size)
        values = features(_load_blocks(array_refs, valid))
        if len(values) != num_features:
            raise ValueError(f"features returned {len(values)} arrays, expected {num_features}")
        for ref, value in zip(out_refs, values):
            ref[0] = jnp.sum(jnp.where(valid, jnp.square(value), 0.0))

    def run(arrays):
        sums = _call(kernel, [], arrays, [sum_spec] * num_features, block, num_warps, interpret, "lopt_statistics_pass")
        return jnp.stack(sums).sum(axis=1) / size  # one reduction, not one per feature

    return with_reference_vjp(run, lambda arrays: reference_statistics(features, arrays))(list(arrays))


def flat_table(table: jax.Array) -> jax.Array:
    """A small array as one whole kernel operand: flattened, zero-padded to a power of two
    (Triton's block sizes). For `network_2d`, a [T, S] per-tensor table made once per step and
    shared by every tensor's kernel."""
    flat = jnp.ravel(table).astype(jnp.float32)
    return jnp.pad(flat, (0, pl.next_power_of_2(max(flat.size, 1)) - flat.size))


def network_pass(
    body: Body,
    arrays: Sequence[jax.Array],
    scalars: jax.Array,
    layers: Sequence[Layer],
    *,
    block: int = 256,
    num_warps: int = 4,
    interpret: bool = False,
) -> jax.Array:
    """Kernel 2 (module docstring): the float32 step for every parameter."""
    size = _check(arrays, block)
    num_hidden, num_features = len(layers) - 1, layers[0][0].shape[0]

    def kernel(scalar_ref, *refs):
        weight_refs, array_refs, out_ref = refs[: 2 * num_hidden + 2], refs[2 * num_hidden + 2 : -1], refs[-1]
        valid = in_bounds(block, size)
        values = [scalar_ref[i] for i in range(scalars.shape[0])]
        step = body(_load_blocks(array_refs, valid), values, _kernel_network(weight_refs, num_hidden, num_features))
        plgpu.store(out_ref, step, mask=valid)

    def run(arrays, scalars, layers):
        spec = (jax.ShapeDtypeStruct((size,), jnp.float32), pl.BlockSpec((block,), lambda i: (i,)))
        (step,) = _call(
            kernel,
            [flat_table(scalars), *pad_layers(layers)],
            arrays,
            [spec],
            block,
            num_warps,
            interpret,
            "lopt_network_pass",
        )
        return step

    reference = lambda arrays, scalars, layers: reference_network_pass(body, arrays, scalars, layers)
    return with_reference_vjp(run, reference)(
        list(arrays), jnp.asarray(scalars, jnp.float32), [tuple(layer) for layer in layers]
    )
