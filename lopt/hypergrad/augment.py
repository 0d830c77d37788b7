"""A small data-augmentation network whose weights are hyperparameters, tuned by implicit
differentiation (Lorraine, Vicol & Duvenaud 2020, §5.3, where a U-Net augments CIFAR-10 images).

The augmenter maps an input x and a noise draw ε to x + g_φ([x, ε]), g_φ a one-hidden-layer tanh
network whose output layer starts at zero (the identity augmentation). The training loss averages
the model's loss over a fixed set of noise draws per example, so it is a deterministic function
L_T(w, φ) and `lopt.hypergrad.implicit.hypergradient` gives dL_V/dφ at trained weights w*: the
validation loss sees clean inputs and depends on φ only through w*(φ).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def init(key: jax.Array, dim: int, *, hidden: int = 32, noise_dim: int = 8) -> dict[str, jax.Array]:
    """Augmenter weights φ for inputs of `dim` features (identity at the start: output layer zero)."""
    fan_in = dim + noise_dim
    return {
        "w1": jax.random.normal(key, (fan_in, hidden)) / np.sqrt(fan_in),
        "b1": jnp.zeros(hidden),
        "w2": jnp.zeros((hidden, dim)),
        "b2": jnp.zeros(dim),
    }


def apply(phi: dict[str, jax.Array], x: jax.Array, noise: jax.Array) -> jax.Array:
    """x + g_φ([x, ε]); x: [batch, dim], noise: [batch, noise_dim]."""
    if noise.shape[-1] != phi["w1"].shape[0] - x.shape[-1]:
        raise ValueError(
            f"augmenter expects {phi['w1'].shape[0] - x.shape[-1]} noise features for {x.shape[-1]} input "
            f"features, got noise of shape {noise.shape}"
        )
    h = jnp.tanh(jnp.concatenate([x, noise], -1) @ phi["w1"] + phi["b1"])
    return x + h @ phi["w2"] + phi["b2"]


def noise(key: jax.Array, examples: int, copies: int, phi: dict[str, jax.Array], dim: int) -> jax.Array:
    """Fixed standard-normal draws [copies, examples, noise_dim] for `training_loss`."""
    return jax.random.normal(key, (copies, examples, phi["w1"].shape[0] - dim))


def training_loss(
    loss: Callable[[Any, jax.Array, jax.Array], jax.Array],
    x: jax.Array,
    y: jax.Array,
    draws: jax.Array,
    regularizer: Callable[[Any], jax.Array] | None = None,
) -> Callable[[Any, dict[str, jax.Array]], jax.Array]:
    """L_T(w, φ) = mean over the draws of loss(w, augment(φ, x, ε), y) (+ regularizer(w)): the
    training objective with the augmenter's weights as its hyperparameters, ready for
    `implicit.hypergradient(L_T, L_V, w, φ)`."""

    def objective(w: Any, phi: dict[str, jax.Array]) -> jax.Array:
        per_copy = jax.vmap(lambda eps: loss(w, apply(phi, x, eps), y))(draws)
        return jnp.mean(per_copy) + (0.0 if regularizer is None else regularizer(w))

    return objective
