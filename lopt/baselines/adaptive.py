"""Adam-family optimizers from the literature that optax does not ship.

Each is a `scale_by_X` direction (unit learning rate, sign convention of a gradient) plus an `X`
optimizer that applies the learning rate, in optax's protocol. Counts t start at 1 on the first
update. Where a paper leaves a choice open, the function's docstring names the choice made.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.baselines._common import TINY, as_matrix, bias_correction, ema, from_matrix, increment, map_unzip, zeros_like

ScalarOrSchedule = float | jax.Array | optax.Schedule


class ScaleByAdamPState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def _cosine_rows(a: jax.Array, b: jax.Array, eps: float) -> jax.Array:
    """|cos| between corresponding rows of two matrices (rows are the paper's channels)."""
    dot = jnp.sum(a * b, axis=1)
    norms = jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1)
    return jnp.abs(dot) / jnp.maximum(norms, eps)


def _adamp_projection(param: jax.Array, grad: jax.Array, perturb: jax.Array, delta: float, eps: float):
    """Remove the radial component of `perturb` when the weight is scale-invariant.

    Heo et al. 2021 (Algorithm 1): a weight is treated as scale-invariant when the largest
    |cos(w, g)| over a view is below δ/√(view width); the channel view (one row per output
    channel) is tried first, then the layer view (the whole tensor as one row). Returns the
    projected perturbation and whether a projection happened."""
    shape = param.shape
    channel = ([as_matrix(x) for x in (param, grad, perturb)], lambda m: from_matrix(m, shape))
    layer = ([x.reshape(1, -1) for x in (param, grad, perturb)], lambda m: m.reshape(shape))
    projected, done = perturb, jnp.asarray(False)
    for (w, g, p), restore in (channel, layer):
        scale_invariant = jnp.max(_cosine_rows(w, g, eps)) < delta / jnp.sqrt(w.shape[1])
        unit = w / (jnp.linalg.norm(w, axis=1, keepdims=True) + eps)
        candidate = restore(p - unit * jnp.sum(unit * p, axis=1, keepdims=True))
        projected = jnp.where(scale_invariant & ~done, candidate, projected)
        done = done | scale_invariant
    return projected, done


def adamp(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """AdamP: Adam that removes the radial part of the update of scale-invariant weights.

        m_t = β1 m + (1−β1) g,   v_t = β2 v + (1−β2) g²
        p_t = m_t / (√(v_t/(1−β2^t)) + ε)          (Nesterov: (β1 m_t + (1−β1) g) / (...))
        if max|cos(w, g)| < δ/√dim over the channel view (else the layer view):
            p_t ← p_t − ŵ (ŵ·p_t) per row,   weight decay scaled by wd_ratio
        θ ← θ (1 − η λ r) − η p_t / (1−β1^t)

    Tensors of rank ≤ 1 are never projected (as the paper: biases and gains are not followed
    by normalisation). Weight decay is decoupled and multiplied by η, as the authors' code.
    Defaults: δ 0.1, wd_ratio 0.1, Adam's β and ε.

    References:
      Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
      Weights", ICLR 2021.
    """

    def init(params):
        return ScaleByAdamPState(jnp.zeros([], jnp.int32), zeros_like(params), zeros_like(params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("adamp needs params (its projection reads the weights)")
        count = increment(state.count)
        mu = ema(state.mu, updates, b1)
        nu = ema(state.nu, jax.tree.map(jnp.square, updates), b2)
        bc1, bc2 = bias_correction(b1, count), bias_correction(b2, count)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

        def leaf(g, m, v, w):
            denom = jnp.sqrt(v) / jnp.sqrt(bc2) + eps
            perturb = ((b1 * m + (1 - b1) * g) if nesterov else m) / denom
            ratio = jnp.asarray(1.0, jnp.float32)
            if w.ndim > 1:
                perturb, projected = _adamp_projection(w, g, perturb, delta, eps)
                ratio = jnp.where(projected, wd_ratio, 1.0)
            return -lr * perturb / bc1 - lr * weight_decay * ratio * w

        return jax.tree.map(leaf, updates, mu, nu, params), ScaleByAdamPState(count, mu, nu)

    return optax.GradientTransformation(init, update)


class ScaleByDiffGradState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any
    previous_grad: Any


def scale_by_diffgrad(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """diffGrad direction: Adam's step damped by the friction ξ = sigmoid(|g_{t−1} − g_t|).

        m_t, v_t as Adam;  ξ_t = 1 / (1 + exp(−|g_{t−1} − g_t|))   (g_0 = 0)
        d_t = ξ_t · m_t √(1−β2^t) / ((1−β1^t)(√v_t + ε))

    ε is added to √v_t before the bias correction, as the authors' code (Dubey et al. 2019,
    eq. 7-9 write it after; the difference is a rescaling of ε).

    References:
      Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks",
      IEEE TNNLS 2019.
    """

    def init(params):
        z = zeros_like(params)
        return ScaleByDiffGradState(jnp.zeros([], jnp.int32), z, z, z)

    def update(updates, state, params=None):
        del params
        count = increment(state.count)
        mu = ema(state.mu, updates, b1)
        nu = ema(state.nu, jax.tree.map(jnp.square, updates), b2)
        step = jnp.sqrt(bias_correction(b2, count)) / bias_correction(b1, count)
        direction = jax.tree.map(
            lambda g, prev, m, v: jax.nn.sigmoid(jnp.abs(prev - g)) * m * step / (jnp.sqrt(v) + eps),
            updates,
            state.previous_grad,
            mu,
            nu,
        )
        return direction, ScaleByDiffGradState(count, mu, nu, updates)

    return optax.GradientTransformation(init, update)


def diffgrad(
    learning_rate: ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """diffGrad (see `scale_by_diffgrad`); defaults from the paper (Adam's)."""
    return optax.chain(scale_by_diffgrad(b1, b2, eps), optax.scale_by_learning_rate(learning_rate))


class ScaleByExAdamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def scale_by_exadam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """EXAdam direction: cross-moment debiasing plus a gradient acceleration term (Algorithm 1).

        d1 = 1 + β2^t · v_t/(v_t + ε),     d2 = 1 + β1^t · m_t²/(m_t² + ε)
        m̃ = m_t d1 / (1−β1^t),  ṽ = v_t d2 / (1−β2^t),  g̃ = g_t d1 / (1−β1^t)
        d_t = (m̃ + g̃) / (√ṽ + ε)

    The paper's later revision adds a growing step size α·ln(√2·√(t+1)); this is Algorithm 1
    without it, so the learning rate is a plain constant (or an optax schedule) as for every
    other baseline here.

    References:
      Adly, "EXAdam: The Power of Adaptive Cross-Moments", arXiv:2412.20302, 2024.
    """

    def init(params):
        return ScaleByExAdamState(jnp.zeros([], jnp.int32), zeros_like(params), zeros_like(params))

    def update(updates, state, params=None):
        del params
        count = increment(state.count)
        mu = ema(state.mu, updates, b1)
        nu = ema(state.nu, jax.tree.map(jnp.square, updates), b2)
        t = count.astype(jnp.float32)
        bc1, bc2 = bias_correction(b1, count), bias_correction(b2, count)

        def leaf(g, m, v):
            d1 = 1.0 + b2**t * v / (v + eps)
            d2 = 1.0 + b1**t * m * m / (m * m + eps)
            return (m * d1 / bc1 + g * d1 / bc1) / (jnp.sqrt(v * d2 / bc2) + eps)

        return jax.tree.map(leaf, updates, mu, nu), ScaleByExAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def exadam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """EXAdam (see `scale_by_exadam`) with optional decoupled weight decay η·λ·θ."""
    return optax.chain(
        scale_by_exadam(b1, b2, eps),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def scale_by_grams(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """Grams direction: Adam's magnitude with the current gradient's sign.

        u_t = m̂_t / (√v̂_t + ε),      d_t = sign(g_t) ⊙ |u_t|

    References:
      Cao et al., "Grams: Gradient Descent with Adaptive Momentum Scaling", arXiv:2412.17107, 2024.
    """
    adam = optax.scale_by_adam(b1, b2, eps)

    def update(updates, state, params=None):
        direction, state = adam.update(updates, state, params)
        return jax.tree.map(lambda g, u: jnp.sign(g) * jnp.abs(u), updates, direction), state

    return optax.GradientTransformation(adam.init, update)


def grams(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Grams (see `scale_by_grams`) with decoupled weight decay η·λ·θ (the paper's Algorithm 1)."""
    return optax.chain(
        scale_by_grams(b1, b2, eps),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


class OptimisticAMSGradState(NamedTuple):
    count: jax.Array
    momentum: Any
    nu: Any
    nu_max: Any
    half_iterate: Any


def optimistic_amsgrad(
    learning_rate: ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Optimistic-AMSGrad: AMSGrad on a half-step sequence plus a step along a predicted gradient.

        θ_t = β1 θ_{t−1} + (1−β1) g_t;   v_t = β2 v + (1−β2) g_t²;   v̂_t = max(v̂_{t−1}, v_t)
        w_{t+½} = w_{t−½} − η θ_t / (√v̂_t + ε)
        w_{t+1} = w_{t+½} − η h_{t+1} / (√v̂_t + ε),   h_{t+1} = β1 θ_t + (1−β1) m_{t+1}

    with w_{½} = w_1 and m_{t+1} the prediction of the next gradient. The paper predicts with an
    extrapolation over the last r gradients (r·d extra memory); this uses the last gradient,
    m_{t+1} = g_t, the simplest optimistic predictor the paper's analysis covers, and writes
    h_{t+1} with θ_t (the momentum the next step would extend). The state keeps w_{t+½}.

    References:
      Wang, Li, Karimi & Li, "An Optimistic Acceleration of AMSGrad for Nonconvex Optimization",
      ACML 2021 (arXiv:1903.01435).
    """

    def init(params):
        z = zeros_like(params)
        return OptimisticAMSGradState(jnp.zeros([], jnp.int32), z, z, z, params)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("optimistic_amsgrad needs params (it keeps the half-step iterate)")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        momentum = ema(state.momentum, updates, b1)
        nu = ema(state.nu, jax.tree.map(jnp.square, updates), b2)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
        half = jax.tree.map(lambda w, th, v: w - lr * th / (jnp.sqrt(v) + eps), state.half_iterate, momentum, nu_max)
        target = jax.tree.map(
            lambda w, th, g, v: w - lr * (b1 * th + (1 - b1) * g) / (jnp.sqrt(v) + eps), half, momentum, updates, nu_max
        )
        step = jax.tree.map(lambda new, old: new - old, target, params)
        return step, OptimisticAMSGradState(increment(state.count), momentum, nu, nu_max, half)

    return optax.GradientTransformation(init, update)


def adamw_decoupled(
    learning_rate: float | jax.Array = 1e-3,
    schedule: optax.Schedule | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    decay_mode: str = "schedule",
) -> optax.GradientTransformation:
    """AdamW with the weight decay's coupling chosen explicitly (Loshchilov & Hutter 2019).

    With base rate α, schedule multiplier η_t (`schedule(t)`, 1 when None) and Adam direction u:

        decay_mode="schedule":  θ ← θ − η_t (α u + λ θ)     Algorithm 2 of the paper: decay
                                                               follows the schedule, not α
        decay_mode="constant":  θ ← θ − η_t α u − λ θ        decay independent of both
        decay_mode="lr":        θ ← θ − η_t α (u + λ θ)      optax.adamw / PyTorch AdamW: decay
                                                               scaled by the learning rate

    "lr" couples λ to α, so tuning α moves the effective decay; the paper's form keeps them
    separate (its normalised λ is then set per run length). Default λ 1e-4.

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    if decay_mode not in ("schedule", "constant", "lr"):
        raise ValueError(f"decay_mode must be 'schedule', 'constant' or 'lr', got {decay_mode!r}")
    adam = optax.scale_by_adam(b1, b2, eps)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("adamw_decoupled needs params for its weight decay")
        multiplier = schedule(state.count) if schedule is not None else 1.0  # adam's step count
        direction, state = adam.update(updates, state, params)
        decay = {
            "schedule": multiplier * weight_decay,
            "constant": weight_decay,
            "lr": multiplier * learning_rate * weight_decay,
        }[decay_mode]
        step = jax.tree.map(lambda u, w: -multiplier * learning_rate * u - decay * w, direction, params)
        return step, state

    return optax.GradientTransformation(adam.init, update)


class ScaleByStableSpamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any
    threshold: Any
    norm_mean: Any
    norm_sq_mean: Any


def scale_by_stable_spam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    gamma1: float = 0.7,
    gamma2: float = 0.9,
    gamma3: float = 0.999,
    reset_interval: int = 1000,
) -> optax.GradientTransformation:
    """Stable-SPAM direction: adaptive spike clipping (AdaClip), adaptive gradient-norm
    scaling (AdaGN) and periodic momentum reset in front of Adam, per tensor.

        g_max = max|g|,  T_t = γ3 T + (1−γ3) g_max,  T̂ = T_t/(1−γ3^t)
        g̃ = g / g_max · T̂ where |g| > T̂, else g                                 (AdaClip)
        n = ‖g̃‖,  μ = γ1 μ + (1−γ1) n,  ν = γ2 ν + (1−γ2) n²
        ĝ = g̃ / n · μ̂ / (√ν̂ + ε)                                                  (AdaGN)
        m, v: Adam moments of ĝ, zeroed every `reset_interval` steps; d = m̂/(√v̂ + ε)

    After a reset the moments' bias corrections count from the reset (otherwise the first
    steps after it would be divided by ~1 and shrink to ~0); the norm and threshold trackers
    are never reset. Defaults γ1 0.7, γ2 0.9, γ3 0.999, reset every 1,000 steps (the paper).
    Timing convention: the moments are zeroed at the start of steps 1, N+1, 2N+1, ... (before
    that step's gradient enters them); the peer implementation (pytorch-optimizer) resets after
    step N's update, i.e. one step earlier — the same schedule shifted by one step.

    References:
      Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam", 2025
      (arXiv:2502.17055); SPAM: Huang et al., ICLR 2025.
    """

    def init(params):
        z = zeros_like(params)
        scalars = jax.tree.map(lambda _: jnp.zeros([], jnp.float32), params)
        return ScaleByStableSpamState(jnp.zeros([], jnp.int32), z, z, scalars, scalars, scalars)

    def update(updates, state, params=None):
        del params
        count = increment(state.count)
        t = count
        since_reset = (count - 1) % reset_interval + 1
        reset = since_reset == 1

        def clip(g, threshold):
            g_max = jnp.max(jnp.abs(g))
            threshold = gamma3 * threshold + (1 - gamma3) * g_max
            limit = threshold / bias_correction(gamma3, t)
            clipped = jnp.where(jnp.abs(g) > limit, g / jnp.maximum(g_max, TINY) * limit, g)
            return clipped, threshold

        g_tilde, threshold = map_unzip(clip, updates, state.threshold)

        def normalise(g, mean, sq_mean):
            n = jnp.sqrt(jnp.sum(g * g))
            mean = gamma1 * mean + (1 - gamma1) * n
            sq_mean = gamma2 * sq_mean + (1 - gamma2) * n * n
            scale = (mean / bias_correction(gamma1, t)) / (jnp.sqrt(sq_mean / bias_correction(gamma2, t)) + eps)
            return g / jnp.maximum(n, TINY) * scale, mean, sq_mean

        g_hat, norm_mean, norm_sq_mean = map_unzip(normalise, g_tilde, state.norm_mean, state.norm_sq_mean)
        keep = jnp.where(reset, 0.0, 1.0)
        mu = ema(jax.tree.map(lambda m: keep * m, state.mu), g_hat, b1)
        nu = ema(jax.tree.map(lambda v: keep * v, state.nu), jax.tree.map(jnp.square, g_hat), b2)
        bc1, bc2 = bias_correction(b1, since_reset), bias_correction(b2, since_reset)
        direction = jax.tree.map(lambda m, v: (m / bc1) / (jnp.sqrt(v / bc2) + eps), mu, nu)
        return direction, ScaleByStableSpamState(count, mu, nu, threshold, norm_mean, norm_sq_mean)

    return optax.GradientTransformation(init, update)


def stable_spam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    gamma1: float = 0.7,
    gamma2: float = 0.9,
    gamma3: float = 0.999,
    reset_interval: int = 1000,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Stable-SPAM (see `scale_by_stable_spam`) with optional decoupled weight decay."""
    return optax.chain(
        scale_by_stable_spam(b1, b2, eps, gamma1, gamma2, gamma3, reset_interval),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )
