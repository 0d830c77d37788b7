"""Flax (linen) models for the task families: an MLP, a small conv net and a char-level transformer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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
            x = nn.Conv(width, (self.kernel_size,) * spatial, strides=(2,) * spatial)(x)
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
        positions = self.param(
            "positions", nn.initializers.normal(0.02), (self.max_length, self.model_dim)
        )
        x = x + positions[: tokens.shape[1]]
        for _ in range(self.num_layers):
            x = TransformerBlock(self.model_dim, self.num_heads)(x)
        return nn.Dense(self.vocab_size)(nn.LayerNorm()(x))
