"""Flax (linen) models for the task families: an MLP, a small conv net and a char-level transformer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Look up an activation by name; unknown names list the valid ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Flatten, then Dense layers of `hidden_sizes` with `activation`, then a Dense readout."""

    hidden_sizes: Sequence[int]
    num_outputs: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        act = activation(self.activation)
        for width in self.hidden_sizes:
            x = act(nn.Dense(width)(x))
        return nn.Dense(self.num_outputs)(x)


def patch_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    **kwargs,
) -> jax.Array:
    """`lax.conv_general_dilated` for channels-last inputs as strided slices and one matmul
    (im2col): out[n, *p, o] = Σ_{k, i} x_pad[n, s·p + k, i] · w[k, i, o].

    Why: a population of conv nets trained under `vmap` (program search, PES) has a kernel per
    member, and XLA's batching rule for a convolution with a batched kernel is a grouped
    convolution with one group per member, slow on GPUs; here a batched kernel is a batched
    matmul. Plain convolutions (no dilation, no groups, channels-last) take this path; anything
    else goes to `lax.conv_general_dilated`. The sums are the same, in another order."""
    spatial = lhs.ndim - 2
    channels_last = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    plain = (
        feature_group_count == 1
        and not kwargs
        and all(d == 1 for d in (lhs_dilation or ()))
        and all(d == 1 for d in (rhs_dilation or ()))
        and channels_last.lhs_spec == (0, lhs.ndim - 1, *range(1, lhs.ndim - 1))
        and channels_last.rhs_spec == (rhs.ndim - 1, rhs.ndim - 2, *range(rhs.ndim - 2))
        and channels_last.out_spec == channels_last.lhs_spec
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            precision=precision,
            **kwargs,
        )
    window = rhs.shape[:spatial]
    pads = (
        lax.padtype_to_pads(lhs.shape[1:-1], window, window_strides, padding) if isinstance(padding, str) else padding
    )
    x = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
    out = [(x.shape[1 + d] - window[d]) // window_strides[d] + 1 for d in range(spatial)]
    taps = [
        lax.slice(
            x,
            (0, *offset, 0),
            (x.shape[0], *(o + s * (n - 1) + 1 for o, s, n in zip(offset, window_strides, out)), x.shape[-1]),
            (1, *window_strides, 1),
        )
        for offset in itertools.product(*map(range, window))
    ]
    patches = jnp.stack(taps, axis=-2).reshape(*x.shape[:1], *out, math.prod(window) * x.shape[-1])
    return jnp.dot(patches, rhs.reshape(-1, rhs.shape[-1]), precision=precision)


CONV = patch_conv  # how ConvNet convolves (benchmarks/proxy_cost.py swaps in lax.conv_general_dilated)


class ConvNet(nn.Module):
    """Strided convolutions (1-D or 2-D, from the input's rank), global mean pool, Dense readout."""

    channels: Sequence[int]
    num_outputs: int
    activation: str = "relu"
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        spatial = x.ndim - 2  # [batch, *spatial, channels]
        act = activation(self.activation)
        for width in self.channels:
            x = nn.Conv(width, (self.kernel_size,) * spatial, strides=(2,) * spatial, conv_general_dilated=CONV)(x)
            x = act(x)
        x = x.mean(axis=tuple(range(1, 1 + spatial)))
        return nn.Dense(self.num_outputs)(x)


class TransformerBlock(nn.Module):
    """Pre-norm block: causal multi-head self-attention and a 4× GELU MLP, each residual."""

    model_dim: int
    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2], dtype=jnp.int32))
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(h, h, mask=mask)
        h = nn.LayerNorm()(x)
        h = nn.Dense(self.model_dim)(nn.gelu(nn.Dense(4 * self.model_dim)(h)))
        return x + h


class TransformerLM(nn.Module):
    """A small decoder-only language model over tokens: embeddings, blocks, readout to logits."""

    vocab_size: int
    model_dim: int
    num_layers: int
    num_heads: int
    max_length: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = nn.Embed(self.vocab_size, self.model_dim)(tokens)
        positions = self.param("positions", nn.initializers.normal(0.02), (self.max_length, self.model_dim))
        x = x + positions[: tokens.shape[1]]
        for _ in range(self.num_layers):
            x = TransformerBlock(self.model_dim, self.num_heads)(x)
        return nn.Dense(self.vocab_size)(nn.LayerNorm()(x))
