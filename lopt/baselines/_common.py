"""Small pieces the baseline zoo shares: step counters, bias corrections, matrix views."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

TINY = 1e-30


def increment(count: jax.Array) -> jax.Array:
    """count + 1, saturating instead of overflowing (as optax's counters)."""
    return optax.safe_increment(count)


def bias_correction(decay: float | jax.Array, count: jax.Array) -> jax.Array:
    """1 − decay^count (Kingma & Ba 2015, Algorithm 1), as float32."""
    return 1.0 - jnp.asarray(decay, jnp.float32) ** count.astype(jnp.float32)


def ema(previous: Any, new: Any, decay: float | jax.Array) -> Any:
    """decay · previous + (1 − decay) · new, leaf by leaf."""
    return jax.tree.map(lambda p, n: decay * p + (1.0 - decay) * n, previous, new)


def adam_leaf(g: jax.Array, m: jax.Array, v: jax.Array, b1: float, b2: float, eps: float, count: jax.Array):
    """One tensor's Adam step (Kingma & Ba 2015, Algorithm 1): (m̂ / (√v̂ + ε), m, v)."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return (m / bias_correction(b1, count)) / (jnp.sqrt(v / bias_correction(b2, count)) + eps), m, v


def uncorrected_adam_leaf(g: jax.Array, m: jax.Array, v: jax.Array, b1: float, b2: float, eps: float):
    """(m / (√v + ε), m, v): the AdamW step of GaLore's reference code (and APOLLO's, Fira's),
    whose bias correction √(1 − β2^t) / (1 − β1^t) multiplies the whole step afterwards."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return m / (jnp.sqrt(v) + eps), m, v


def zeros_like(params: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, params)


def as_matrix(x: jax.Array) -> jax.Array:
    """The [fan_out, fan_in] matrix of a kernel in flax layout (..., fan_in, fan_out).

    Papers write weight matrices as W ∈ R^{out × in} (PyTorch layout); flax stores Dense kernels
    as [in, out] and conv kernels as [h, w, in, out]. Viewing every kernel as
    reshape(−1, out)ᵀ lets the zoo apply a paper's matrix equations verbatim, with a conv
    kernel's spatial and input axes flattened into the input dimension (as GaLore, Muon and
    APOLLO do for conv layers)."""
    return x.reshape(-1, x.shape[-1]).T


def from_matrix(m: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of `as_matrix`."""
    return m.T.reshape(shape)


def global_norm_sq(tree: Any) -> jax.Array:
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def map_unzip(fn: Any, tree: Any, *rest: Any) -> tuple[Any, ...]:
    """`fn` applied leaf by leaf to `tree` and `rest` (trees of the same structure, or with it as
    a prefix), where `fn` returns a k-tuple per leaf: k trees, one per output."""
    leaves, treedef = jax.tree.flatten(tree)
    others = [treedef.flatten_up_to(other) for other in rest]
    outputs = [fn(*args) for args in zip(leaves, *others)]
    return tuple(jax.tree.unflatten(treedef, list(column)) for column in zip(*outputs))
