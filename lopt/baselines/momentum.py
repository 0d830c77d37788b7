"""SGD-with-momentum relatives from the literature that optax does not ship (SGD-SaI, Gravity,
the generalized Polyak step size with momentum, ALR-SMAG, and SANIA's preconditioned Polyak
step), Adan (adaptive Nesterov momentum) as its paper writes it, AEGD and the Lion-𝒦 family."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.baselines._common import (
    TINY,
    as_matrix,
    bias_correction,
    from_matrix,
    global_norm_sq,
    increment,
    map_unzip,
    zeros_like,
)


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
    learning_rate: float | jax.Array = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0, eps: float = 1e-8
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
        return SgdSaiState(
            jnp.zeros([], jnp.int32), jax.tree.map(lambda _: jnp.zeros([], jnp.float32), params), zeros_like(params)
        )

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
    learning_rate: float | jax.Array = 0.1, alpha: float = 0.01, beta: float = 0.9, seed: int = 0
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
    learning_rate: float | jax.Array = 1.0,
    momentum: float = 0.9,
    lower_bound: float = 0.0,
    c: float = 1.0,
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


def scale_by_adan(
    b1: float = 0.98, b2: float = 0.92, b3: float = 0.99, eps: float = 1e-8
) -> optax.GradientTransformation:
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

        d, m, v, n, previous = map_unzip(leaf, updates, *state[1:])
        return d, ScaleByAdanState(count, m, v, n, previous)

    return optax.GradientTransformation(init, update)


def adan(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Adan (`scale_by_adan`) with decoupled weight decay, as optax's `adan` but with the paper's
    weighting of the gradient difference."""
    return optax.chain(
        scale_by_adan(b1, b2, b3, eps),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


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

        step, energy = map_unzip(leaf, updates, state.energy)
        return step, AEGDState(energy)

    return optax.GradientTransformationExtraArgs(init, update)


def _kappa_l1(c: jax.Array) -> jax.Array:
    return jnp.sign(c)


def _kappa_l2(c: jax.Array) -> jax.Array:
    return c / jnp.maximum(jnp.linalg.norm(c), TINY)


def _kappa_linf(c: jax.Array) -> jax.Array:
    """A subgradient of ‖c‖_∞: sign(c_i) on the coordinates of largest |c_i|, split evenly."""
    top = jnp.abs(c) == jnp.max(jnp.abs(c))
    return jnp.where(top, jnp.sign(c), 0.0) / jnp.maximum(jnp.sum(top), 1)


def _kappa_nuclear(c: jax.Array) -> jax.Array:
    """∇‖C‖_* = U Vᵀ (the polar factor) of a kernel's matrix view; a vector's nuclear norm is its
    ℓ2 norm."""
    if c.ndim < 2:
        return _kappa_l2(c)
    U, _, Vh = jnp.linalg.svd(as_matrix(c), full_matrices=False)
    return from_matrix(U @ Vh, c.shape)


LION_KAPPAS = {"l1": _kappa_l1, "l2": _kappa_l2, "linf": _kappa_linf, "nuclear": _kappa_nuclear}


class LionKState(NamedTuple):
    momentum: Any


def scale_by_lion_k(b1: float = 0.9, b2: float = 0.99, kappa: str = "l2") -> optax.GradientTransformation:
    """The Lion-𝒦 direction ∇𝒦(β1 m + (1−β1) g), m ← β2 m + (1−β2) g (see `lion_k`)."""
    if kappa not in LION_KAPPAS:
        raise ValueError(f"lion_k: unknown kappa {kappa!r}; valid: {', '.join(LION_KAPPAS)}")
    gradient_of_kappa = LION_KAPPAS[kappa]

    def init(params):
        return LionKState(zeros_like(params))

    def update(updates, state, params=None):
        del params
        direction = jax.tree.map(lambda m, g: gradient_of_kappa(b1 * m + (1 - b1) * g), state.momentum, updates)
        return direction, LionKState(jax.tree.map(lambda m, g: b2 * m + (1 - b2) * g, state.momentum, updates))

    return optax.GradientTransformation(init, update)


def lion_k(
    learning_rate: optax.ScalarOrSchedule = 1e-4,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: float = 0.0,
    kappa: str = "l2",
) -> optax.GradientTransformation:
    """Lion-𝒦 (Chen, Liu, Liang & Liu 2023): Lion with sign(·) replaced by ∇𝒦 of a convex 𝒦.

        m_{t+1} = β2 m_t − (1−β2) ∇f(x_t)
        x_{t+1} = x_t + ε (∇𝒦(β1 m_t − (1−β1) ∇f(x_t)) − λ x_t)

    written here with m holding +∇f (every 𝒦 below is even, so ∇𝒦 is odd). With λ > 0 and a
    norm 𝒦 the iterates minimise f over the dual-norm ball ‖x‖_* ≤ 1/λ: the bound-constraint
    view of decoupled weight decay.

        kappa   ∇𝒦(c)                            constraint with weight decay λ
        l1      sign(c)              (= Lion)    ‖x‖_∞ ≤ 1/λ  (a box)
        l2      c / ‖c‖₂  per tensor             ‖x‖₂ ≤ 1/λ
        linf    sign(c_i) on argmax |c_i|        ‖x‖₁ ≤ 1/λ
        nuclear U Vᵀ of C = U Σ Vᵀ per kernel    spectral norm ≤ 1/λ  (Muon's geometry)

    Defaults: β1 0.9, β2 0.99 (Lion's); 'l2' so the entry differs from the registry's lion.

    References:
      Chen, Liu, Liang & Liu, "Lion Secretly Solves Constrained Optimization, As Lyapunov
      Predicts", ICLR 2024 (arXiv:2310.05898).
    """
    return optax.chain(
        scale_by_lion_k(b1, b2, kappa),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


class SaniaState(NamedTuple):
    count: jax.Array
    nu: Any  # the diagonal preconditioner's accumulator: Σ g² (AdaGrad-SQR) or its EMA (Adam-SQR)


def sania(
    learning_rate: float | jax.Array = 1.0, preconditioner: str = "adam_sqr", b2: float = 0.999, eps: float = 1e-30
) -> optax.GradientTransformationExtraArgs:
    """SANIA (Abdukhakimov et al. 2023): the Polyak step in the metric of a preconditioner B_t,

        w_{t+1} = w_t − η · f(w_t) / ‖∇f(w_t)‖²_{B_t⁻¹} · B_t⁻¹ ∇f(w_t),   ‖g‖²_{B⁻¹} = gᵀ B⁻¹ g

    (the closest point to w_t, in B_t's norm, where the loss's linearisation reaches f* = 0),
    with the square-root-free diagonal preconditioners that make it scale invariant:

        adagrad_sqr   B_t = diag(Σ_{s≤t} g_s²)
        adam_sqr      B_t = diag(v_t / (1 − β2^t)),  v_t = β2 v_{t−1} + (1−β2) g_t²

    Rescaling a coordinate of w by s rescales its gradient by 1/s and B by 1/s², so the step in
    the original coordinates is unchanged: no learning rate to tune (η is a multiplier, 1 by
    default). f is the minibatch loss (extra argument `loss=`); the step is global over the
    pytree. ε = 1e-30 only guards coordinates whose gradient has been exactly zero (lopt's
    choice): a larger ε breaks the invariance for coordinates whose gradients are below √ε.

    References:
      Abdukhakimov, Xiang, Kamzolov, Gower & Takáč, "SANIA: Polyak-type Optimization Framework
      Leads to Scale Invariant Stochastic Algorithms", arXiv:2312.17369, 2023.
    """
    if preconditioner not in ("adam_sqr", "adagrad_sqr"):
        raise ValueError(f"sania: unknown preconditioner {preconditioner!r}; valid: adam_sqr, adagrad_sqr")

    def init(params):
        return SaniaState(jnp.zeros([], jnp.int32), zeros_like(params))

    def update(updates, state, params=None, *, loss=None, **extra):
        del params, extra
        if loss is None:
            raise ValueError("sania needs the minibatch loss: call update(..., loss=loss)")
        count = increment(state.count)
        if preconditioner == "adagrad_sqr":
            nu = jax.tree.map(lambda n, g: n + g * g, state.nu, updates)
            diagonal = jax.tree.map(lambda n: n + eps, nu)
        else:
            nu = jax.tree.map(lambda n, g: b2 * n + (1 - b2) * g * g, state.nu, updates)
            diagonal = jax.tree.map(lambda n: n / bias_correction(b2, count) + eps, nu)
        direction = jax.tree.map(lambda g, b: g / b, updates, diagonal)
        metric = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(updates), jax.tree.leaves(direction)))
        step = learning_rate * jnp.maximum(jnp.asarray(loss, jnp.float32), 0.0) / jnp.maximum(metric, TINY)
        return jax.tree.map(lambda d: -step * d, direction), SaniaState(count, nu)

    return optax.GradientTransformationExtraArgs(init, update)
