"""SGD-with-momentum relatives from the literature that optax does not ship (SGD-SaI, Gravity,
the generalized Polyak step size with momentum, ALR-SMAG), and Adan (adaptive Nesterov momentum)
as its paper writes it."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.baselines._common import TINY, global_norm_sq, increment, zeros_like


class SgdSaiState(NamedTuple):
    count: jax.Array
    snr: Any
    momentum: Any


def _gradient_snr(g: jax.Array, eps: float) -> jax.Array:
    """‖g‖₂ / (σ(g) + ε) over a tensor's entries; 1 for single-entry tensors (σ undefined)."""
    if g.size == 1:
        return jnp.ones([], jnp.float32)
    return jnp.linalg.norm(g) / (jnp.std(g) + eps)


def sgd_sai(
    learning_rate: float | jax.Array = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """SGD-SaI: SGD with momentum, each tensor's learning rate scaled once, at the first step,
    by its gradient signal-to-noise ratio.

        G_snr = ‖g_1‖₂ / (σ(g_1) + ε)          (per tensor, from the first gradient only)
        m_t = μ m_{t−1} + (1−μ) g_t
        θ ← (1 − ηλ) θ − η G_snr m_t

    σ is the population standard deviation of the tensor's entries; a one-entry tensor (σ
    undefined) keeps scale 1. Weight decay is decoupled (the paper's default).

    References:
      Xu, Xiang, Cai & Wen, "No More Adam: Learning Rate Scaling at Initialization is All You
      Need", arXiv:2412.11768, 2024.
    """

    def init(params):
        return SgdSaiState(jnp.zeros([], jnp.int32), jax.tree.map(lambda _: jnp.zeros([], jnp.float32), params),
                           zeros_like(params))

    def update(updates, state, params=None):
        if params is None and weight_decay:
            raise ValueError("sgd_sai needs params for its weight decay")
        first = state.count == 0
        snr = jax.tree.map(lambda s, g: jnp.where(first, _gradient_snr(g, eps), s), state.snr, updates)
        moment = jax.tree.map(lambda m, g: momentum * m + (1 - momentum) * g, state.momentum, updates)
        step = jax.tree.map(lambda s, m: -learning_rate * s * m, snr, moment)
        if weight_decay:
            step = jax.tree.map(lambda u, w: u - learning_rate * weight_decay * w, step, params)
        return step, SgdSaiState(increment(state.count), snr, moment)

    return optax.GradientTransformation(init, update)


class GravityState(NamedTuple):
    count: jax.Array
    velocity: Any


def gravity(
    learning_rate: float | jax.Array = 0.1, alpha: float = 0.01, beta: float = 0.9, seed: int = 0,
) -> optax.GradientTransformation:
    """Gravity: a velocity that follows a bounded "gravity" term of the gradient.

        β̂_t = (β t + 1) / (t + 2)                      (t = 0, 1, ... steps taken)
        M = 1 / max|g|,   ζ = g / (1 + (g / M)²)
        V_t = β̂_t V_{t−1} + (1 − β̂_t) ζ,   θ ← θ − η V_t

    V_0 ~ N(0, (α/η)²), drawn from `seed` (optax's init takes no key; the seed makes the draw
    reproducible). Defaults η 0.1, α 0.01, β 0.9 (the paper).

    References:
      Bahrami & Zadeh, "Gravity Optimizer: a Kinematic Approach on Optimization in Deep
      Learning", arXiv:2101.09192, 2021.
    """

    def init(params):
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(seed), max(1, len(leaves)))
        velocity = [alpha / learning_rate * jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(keys, leaves)]
        return GravityState(jnp.zeros([], jnp.int32), jax.tree.unflatten(tree, velocity))

    def update(updates, state, params=None):
        del params
        t = state.count.astype(jnp.float32)
        beta_hat = (beta * t + 1.0) / (t + 2.0)

        def leaf(g, v):
            m = 1.0 / jnp.maximum(jnp.max(jnp.abs(g)), TINY)
            zeta = g / (1.0 + (g / m) ** 2)
            return beta_hat * v + (1 - beta_hat) * zeta

        velocity = jax.tree.map(leaf, updates, state.velocity)
        return jax.tree.map(lambda v: -learning_rate * v, velocity), GravityState(increment(state.count), velocity)

    return optax.GradientTransformation(init, update)


class PolyakMomentumState(NamedTuple):
    direction: Any
    step_size: jax.Array


def polyak_momentum(
    learning_rate: float | jax.Array = 1.0, momentum: float = 0.9, lower_bound: float = 0.0, c: float = 1.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Generalized Polyak step size with momentum (ALR-SMAG), capped at `learning_rate`.

        d_t = β d_{t−1} + g_t
        τ_t = min(η_max, (f(θ_t) − f*) / (c ‖d_t‖²))
        θ ← (1 − λ τ_t) θ − τ_t d_t

    f(θ_t) is the minibatch loss, read from the extra argument `loss=` (lopt's training loop
    passes it), and f* the lower bound `lower_bound` (0 for non-negative losses). The step is
    global (one τ for the whole pytree). Defaults β 0.9, c 1 (the paper's ALR-SMAG).

    References:
      Wang, Johansson & Zhang, "Generalized Polyak Step Size for First Order Optimization with
      Momentum", ICML 2023 (arXiv:2305.12939).
    """

    def init(params):
        return PolyakMomentumState(zeros_like(params), jnp.zeros([], jnp.float32))

    def update(updates, state, params=None, *, loss=None, **extra):
        del extra
        if loss is None:
            raise ValueError("polyak_momentum needs the minibatch loss: call update(..., loss=loss)")
        direction = jax.tree.map(lambda d, g: momentum * d + g, state.direction, updates)
        polyak = (loss - lower_bound) / (c * jnp.maximum(global_norm_sq(direction), TINY))
        tau = jnp.minimum(learning_rate, jnp.maximum(polyak, 0.0))
        step = jax.tree.map(lambda d: -tau * d, direction)
        if weight_decay:
            step = jax.tree.map(lambda u, w: u - weight_decay * tau * w, step, params)
        return step, PolyakMomentumState(direction, tau)

    return optax.GradientTransformationExtraArgs(init, update)


class ScaleByAdanState(NamedTuple):
    count: jax.Array
    m: Any
    v: Any
    n: Any
    previous: Any


def scale_by_adan(b1: float = 0.98, b2: float = 0.92, b3: float = 0.99, eps: float = 1e-8) -> optax.GradientTransformation:
    """Adan direction (adaptive Nesterov momentum), Xie et al. Algorithm 1 in optax's β
    convention (b = 1 − the paper's β: b1 0.98, b2 0.92, b3 0.99 are the paper's 0.02, 0.08, 0.01):

        Δ_t = g_t − g_{t−1}  (0 at the first step)
        m = b1·m + (1−b1)·g,   v = b2·v + (1−b2)·Δ,   n = b3·n + (1−b3)·(g + b2·Δ)²
        d = (m̂ + b2·v̂) / (√n̂ + ε)      (hats: bias corrections 1 − b^t)

    The gradient difference enters n and d weighted by b2 = 1 − β2_paper (0.92), as the paper's
    (1 − β2) factor. optax 0.2.8's `adan` weights it by 1 − b2 (0.08) instead, a 11.5× smaller
    Nesterov correction; this implementation follows the paper (issue 21 (3)).

    References:
      Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
      Models", arXiv:2208.06677 (TPAMI 2024), Algorithm 1.
    """

    def init(params):
        z = zeros_like(params)
        return ScaleByAdanState(jnp.zeros([], jnp.int32), z, z, z, z)

    def update(updates, state, params=None):
        del params
        count = increment(state.count)
        t = count.astype(jnp.float32)

        def leaf(g, m, v, n, previous):
            g = g.astype(jnp.float32)
            diff = jnp.where(state.count == 0, jnp.zeros_like(g), g - previous)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * diff
            n = b3 * n + (1 - b3) * jnp.square(g + b2 * diff)
            m_hat, v_hat, n_hat = m / (1 - b1**t), v / (1 - b2**t), n / (1 - b3**t)
            return (m_hat + b2 * v_hat) / (jnp.sqrt(n_hat) + eps), m, v, n, g

        leaves, tree = jax.tree.flatten(updates)
        columns = list(zip(*[leaf(*args) for args in zip(leaves, *(tree.flatten_up_to(x) for x in state[1:]))]))
        d, m, v, n, previous = (jax.tree.unflatten(tree, list(c)) for c in columns)
        return d, ScaleByAdanState(count, m, v, n, previous)

    return optax.GradientTransformation(init, update)


def adan(learning_rate: optax.ScalarOrSchedule = 1e-3, b1: float = 0.98, b2: float = 0.92, b3: float = 0.99,
         eps: float = 1e-8, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adan (`scale_by_adan`) with decoupled weight decay, as optax's `adan` but with the paper's
    weighting of the gradient difference."""
    return optax.chain(scale_by_adan(b1, b2, b3, eps), optax.add_decayed_weights(weight_decay),
                       optax.scale_by_learning_rate(learning_rate))


class AEGDState(NamedTuple):
    energy: Any  # r, per parameter; NaN until the first step sets r_0 = √(f(θ_0) + c)


def aegd(learning_rate: float | jax.Array = 0.1, c: float = 1.0) -> optax.GradientTransformationExtraArgs:
    """AEGD, energy-adaptive gradient descent (Liu & Tian 2020), Algorithm 1:

        v_t = ∇f(θ_t) / (2 √(f(θ_t) + c))            (the gradient of √(f + c))
        r_{t+1} = r_t / (1 + 2η v_t²)                 (elementwise; r_0 = √(f(θ_0) + c))
        θ_{t+1} = θ_t − 2η r_{t+1} v_t

    The energy r only decreases, so the effective step 2η·r/(2√(f+c)) is stable for any η
    (the paper's unconditional energy stability). f is the minibatch loss, read from the extra
    argument `loss=`; c = 1 and η = 0.1 as the paper's defaults for deep networks.

    References:
      Liu & Tian, "AEGD: Adaptive Gradient Descent with Energy", arXiv:2010.05109, 2020.
    """

    def init(params):
        return AEGDState(jax.tree.map(lambda p: jnp.full(jnp.shape(p), jnp.nan, jnp.float32), params))

    def update(updates, state, params=None, *, loss=None, **extra):
        del params, extra
        if loss is None:
            raise ValueError("aegd needs the minibatch loss: call update(..., loss=loss)")
        root = jnp.sqrt(jnp.asarray(loss, jnp.float32) + c)

        def leaf(g, r):
            v = g.astype(jnp.float32) / (2 * root)
            r = jnp.where(jnp.isnan(r), root, r) / (1 + 2 * learning_rate * v * v)
            return (-2 * learning_rate * r * v).astype(g.dtype), r

        leaves, tree = jax.tree.flatten(updates)
        pairs = [leaf(g, r) for g, r in zip(leaves, tree.flatten_up_to(state.energy))]
        return jax.tree.unflatten(tree, [s for s, _ in pairs]), AEGDState(jax.tree.unflatten(tree, [r for _, r in pairs]))

    return optax.GradientTransformationExtraArgs(init, update)
