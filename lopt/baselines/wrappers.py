"""Wrappers that turn any optax optimizer into another: Lookahead, Switch EMA, annealed gradient
noise, XGrad weight prediction and gradient agreement filtering; and Ranger21, the composition
of published components.

Extra arguments (lopt's training loop passes them to every optimizer):
- `obj_fn(params)`: the minibatch loss; XGrad differentiates it at the predicted weights.
- `microbatch_grads_fn(params, m)`: the gradients of m microbatches of the current minibatch,
  stacked on a leading axis; gradient agreement filtering reads it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from lopt.baselines._common import TINY, as_matrix, bias_correction, from_matrix, increment, zeros_like


class LookaheadState(NamedTuple):
    count: jax.Array
    slow: Any
    inner_state: Any


class SwitchEmaState(NamedTuple):
    count: jax.Array
    average: Any
    inner_state: Any


def _weight_averaging(
    inner: optax.GradientTransformation, name: str, state_type: type, combine: Any
) -> optax.GradientTransformationExtraArgs:
    """The frame Lookahead and Switch EMA share: `inner` proposes fast weights θ + u; then
    `combine(count, kept, fast) -> (target, kept)` decides the weights to move to and the averaged
    weights to keep (initially θ_0); the update is target − θ. State: `state_type(count, kept,
    inner_state)`."""
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return state_type(jnp.zeros([], jnp.int32), params, inner.init(params))

    def update(updates, state, params=None, **extra):
        if params is None:
            raise ValueError(f"{name} needs params (it averages weights)")
        step, inner_state = inner.update(updates, state.inner_state, params, **extra)
        count = increment(state.count)
        fast = jax.tree.map(lambda w, u: w + u, params, step)
        target, kept = combine(count, state[1], fast)
        return jax.tree.map(lambda t, w: t - w, target, params), state_type(count, kept, inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


def lookahead(
    inner: optax.GradientTransformation, sync_period: int = 5, alpha: float = 0.5
) -> optax.GradientTransformationExtraArgs:
    """Lookahead: k fast steps of `inner`, then the slow weights move a fraction α toward the
    fast ones and the fast weights restart from them.

        fast: θ_{t+1} = θ_t + u_t          (u_t: the inner optimizer's update)
        every k-th step: φ ← φ + α (θ_{t+1} − φ);  θ_{t+1} ← φ

    Unlike `optax.lookahead`, the parameters stay an ordinary pytree (the slow weights live in
    the state), so it drops into any training loop. Defaults k 5, α 0.5 (the paper's).

    References:
      Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS 2019.
    """

    def combine(count, slow, fast):
        sync = count % sync_period == 0
        slow = jax.tree.map(lambda s, f: jnp.where(sync, s + alpha * (f - s), s), slow, fast)
        return jax.tree.map(lambda s, f: jnp.where(sync, s, f), slow, fast), slow

    return _weight_averaging(inner, "lookahead", LookaheadState, combine)


def switch_ema(
    inner: optax.GradientTransformation, decay: float = 0.99, switch_period: int = 100
) -> optax.GradientTransformationExtraArgs:
    """Switch EMA (Li et al. 2024): an exponential moving average of the weights that is switched
    into the model at the end of every epoch, after which training continues from it.

        θ_{t+1} = θ_t + u_t;   θ̄_{t+1} = d θ̄_t + (1 − d) θ_{t+1}    (θ̄_0 = θ_0)
        every `switch_period`-th step:  θ_{t+1} ← θ̄_{t+1}

    The paper switches once per epoch with EMA decay 0.999–0.9999 on epochs of hundreds of steps;
    lopt's tasks have no epochs, so the defaults (switch every 100 steps, d 0.99, an averaging
    window of 100 steps) keep the same ratio of window to switching period for short runs.

    References:
      Li, Wang, Tian, Wu, Liu, Zhang & Li, "Switch EMA: A Free Lunch for Better Flatness and
      Sharpness", arXiv:2402.09240, 2024.
    """

    def combine(count, average, fast):
        average = jax.tree.map(lambda a, w: decay * a + (1 - decay) * w, average, fast)
        switch = count % switch_period == 0
        return jax.tree.map(lambda a, f: jnp.where(switch, a, f), average, fast), average

    return _weight_averaging(inner, "switch_ema", SwitchEmaState, combine)


def gradient_noise(
    inner: optax.GradientTransformation, eta: float = 0.01, gamma: float = 0.55, seed: int = 0
) -> optax.GradientTransformationExtraArgs:
    """Annealed Gaussian gradient noise (Neelakantan et al. 2015) before `inner`:

        g_t ← g_t + N(0, σ_t²),   σ_t² = η / (1 + t)^γ     (t = 0 on the first step)

    η ∈ {0.01, 0.3, 1.0} in the paper (0.01 by default here), γ = 0.55. The noise comes from
    `optax.add_noise`, which draws it with that variance from `seed`.

    References:
      Neelakantan, Vilnis, Le, Sutskever, Kaiser, Kurach & Martens, "Adding Gradient Noise
      Improves Learning for Very Deep Networks", arXiv:1511.06807, 2015.
    """
    return optax.with_extra_args_support(optax.chain(optax.add_noise(eta, gamma, seed), inner))


class XGradState(NamedTuple):
    last_update: Any
    inner_state: Any


def xgrad(inner: optax.GradientTransformation, horizon: float = 1.0) -> optax.GradientTransformationExtraArgs:
    """XGrad weight prediction: take the gradient at the weights the optimizer is about to reach.

        θ̂_t = θ_t + s · u_{t−1}       (u_{t−1}: the last update, −η·direction)
        u_t = inner(∇f(θ̂_t));   θ_{t+1} = θ_t + u_t

    For SGD with momentum and for Adam, u_{t−1} is exactly the paper's prediction step
    −η·m̂/(√v̂ + ε) built from the current moments (they are the moments that made u_{t−1}), so
    one wrapper covers XGrad for every inner optimizer. Costs one extra gradient per step
    (through `obj_fn=`). s (`horizon`) defaults to 1, the paper's one-step prediction.

    References:
      Guan et al., "XGrad: Boosting Gradient-Based Optimizers With Weight Prediction",
      IEEE TPAMI 2024 (arXiv:2305.18240).
    """
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return XGradState(zeros_like(params), inner.init(params))

    def update(updates, state, params=None, *, obj_fn=None, **extra):
        if obj_fn is None or params is None:
            raise ValueError("xgrad needs params and the objective: update(..., params, obj_fn=f)")
        del updates  # replaced by the gradient at the predicted weights
        predicted = jax.tree.map(lambda w, u: w + horizon * u, params, state.last_update)
        grads = jax.grad(obj_fn)(predicted)
        step, inner_state = inner.update(grads, state.inner_state, params, obj_fn=obj_fn, **extra)
        return step, XGradState(step, inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


class AgreementState(NamedTuple):
    accepted: jax.Array
    inner_state: Any


def gradient_agreement_filter(
    inner: optax.GradientTransformation, num_microbatches: int = 4, threshold: float = 0.97
) -> optax.GradientTransformationExtraArgs:
    """Gradient agreement filtering: average only the microbatch gradients that agree.

        g ← g_1, n ← 1
        for i = 2..m:  if 1 − cos(g_i, g) ≤ τ:  g ← (n g + g_i)/(n + 1),  n ← n + 1
        u = inner(g)

    The cosine distance is over the whole flattened gradient. The first microbatch always
    counts, so a step is never skipped. τ 0.97 lies in the range the paper recommends
    (0.95-1.05); m 4. The gradients come from the extra argument `microbatch_grads_fn`, which
    lopt's training loop supplies by splitting the minibatch (tasks without an example axis,
    the synthetic quadratic and Rosenbrock, give every microbatch the whole batch, so the
    filter passes their gradient through). The state counts accepted microbatches last step.

    References:
      Chaubard, Eddy & Kochenderfer, "Beyond Gradient Averaging in Parallel Optimization:
      Improved Robustness through Gradient Agreement Filtering", arXiv:2412.18052, 2024.
    """
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return AgreementState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None, *, microbatch_grads_fn=None, **extra):
        if microbatch_grads_fn is None:
            raise ValueError(
                "gradient_agreement_filter needs microbatch gradients: update(..., "
                "microbatch_grads_fn=lambda params, m: stacked_grads) (lopt's training loop passes it)"
            )
        del updates
        stacked = microbatch_grads_fn(params, num_microbatches)
        _, unravel = ravel_pytree(jax.tree.map(lambda x: x[0], stacked))
        flat = jax.vmap(lambda tree: ravel_pytree(tree)[0])(stacked)

        def absorb(carry, i):
            total, n = carry
            cosine = jnp.dot(flat[i], total) / jnp.maximum(jnp.linalg.norm(flat[i]) * jnp.linalg.norm(total), TINY)
            agree = 1.0 - cosine <= threshold
            return (jnp.where(agree, (n * total + flat[i]) / (n + 1), total), n + agree), agree

        (mean, accepted), _ = jax.lax.scan(absorb, (flat[0], jnp.ones([], jnp.int32)), jnp.arange(1, num_microbatches))
        grads = unravel(mean)
        step, inner_state = inner.update(grads, state.inner_state, params, **extra)
        return step, AgreementState(accepted, inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


def adaptive_gradient_clipping(g: jax.Array, w: jax.Array, clipping: float, eps: float) -> jax.Array:
    """Unit-wise AGC (Brock et al. 2021): each output unit's gradient is rescaled so that
    ‖g_unit‖ ≤ clipping · max(‖w_unit‖, eps). Rank ≤ 1 tensors form a single unit."""
    if g.ndim < 2:
        limit = clipping * jnp.maximum(jnp.linalg.norm(w), eps)
        norm = jnp.linalg.norm(g)
        return g * jnp.minimum(1.0, limit / jnp.maximum(norm, TINY))
    G, W = as_matrix(g), as_matrix(w)
    limit = clipping * jnp.maximum(jnp.linalg.norm(W, axis=1, keepdims=True), eps)
    norm = jnp.linalg.norm(G, axis=1, keepdims=True)
    return from_matrix(G * jnp.minimum(1.0, limit / jnp.maximum(norm, TINY)), g.shape)


def centralise(g: jax.Array) -> jax.Array:
    """Gradient centralisation (Yong et al. 2020): subtract, per output unit, the mean over
    the unit's inputs. Rank ≤ 1 tensors are unchanged."""
    if g.ndim < 2:
        return g
    G = as_matrix(g)
    return from_matrix(G - jnp.mean(G, axis=1, keepdims=True), g.shape)


def _unit_norm(w: jax.Array) -> jax.Array:
    if w.ndim < 2:
        return jnp.linalg.norm(w) * jnp.ones_like(w)
    W = as_matrix(w)
    return from_matrix(jnp.broadcast_to(jnp.linalg.norm(W, axis=1, keepdims=True), W.shape), w.shape)


def ranger21_schedule(
    num_iterations: int | None,
    b2: float,
    warmup_fraction: float = 0.22,
    warmdown_start: float = 0.72,
    min_multiplier: float = 0.03,
) -> optax.Schedule:
    """Ranger21's learning-rate multiplier.

    Linear warm-up over 2/(1−β2) steps (Ma & Yarats 2021), or over 22% of the run when that
    would exceed 45% of it; then flat; from 72% of the run, a linear warm-down to
    `min_multiplier` (3e-5 / 1e-3, Ranger21's floor over its default rate) at the end.
    Without `num_iterations` there is no warm-down."""
    warmup = math.ceil(2.0 / (1.0 - b2))
    if num_iterations is not None and warmup > 0.45 * num_iterations:
        warmup = max(1, int(warmup_fraction * num_iterations))

    def schedule(count):
        t = count.astype(jnp.float32) + 1.0
        multiplier = jnp.minimum(1.0, t / warmup)
        if num_iterations is not None:
            start = warmdown_start * num_iterations
            progress = jnp.clip((t - start) / max(1.0, num_iterations - start), 0.0, 1.0)
            multiplier = jnp.where(t > start, 1.0 - (1.0 - min_multiplier) * progress, multiplier)
        return multiplier

    return schedule


class Ranger21State(NamedTuple):
    count: jax.Array
    positive: Any
    negative: Any
    nu: Any


def _scale_by_ranger21_core(
    learning_rate,
    num_iterations,
    b1,
    b2,
    pnm_momentum,
    softplus_beta,
    agc_clipping,
    agc_eps,
    weight_decay,
    normloss_factor,
) -> optax.GradientTransformation:
    schedule = ranger21_schedule(num_iterations, b2)
    noise_norm = math.sqrt((1 + pnm_momentum) ** 2 + pnm_momentum**2)

    def init(params):
        z = zeros_like(params)
        return Ranger21State(jnp.zeros([], jnp.int32), z, z, z)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("ranger21 needs params (AGC, weight decay and norm loss read the weights)")
        count = increment(state.count)
        lr = learning_rate * schedule(state.count)
        grads = jax.tree.map(
            lambda g, w: centralise(adaptive_gradient_clipping(g, w, agc_clipping, agc_eps)), updates, params
        )
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        bc2 = bias_correction(b2, count)
        total = sum(jnp.sum(v) for v in jax.tree.leaves(nu)) / bc2
        size = sum(v.size for v in jax.tree.leaves(nu))
        variance_scale = jnp.sqrt(total / size)
        odd = count % 2 == 1
        # PNM: the buffer updated this step alternates; it is updated every other step with β1².
        current = jax.tree.map(lambda p, n: jnp.where(odd, p, n), state.positive, state.negative)
        other = jax.tree.map(lambda p, n: jnp.where(odd, n, p), state.positive, state.negative)
        current = jax.tree.map(lambda m, g: b1**2 * m + (1 - b1**2) * g, current, grads)
        updates_of_current = (count + 1) // 2
        bc1 = bias_correction(b1**2, updates_of_current)

        def leaf(m, m_other, v, w):
            denominator = jax.nn.softplus(softplus_beta * jnp.sqrt(v / bc2)) / softplus_beta
            direction = ((1 + pnm_momentum) * m - pnm_momentum * m_other) / noise_norm / bc1
            norm_loss = 2.0 * normloss_factor * (1.0 - 1.0 / jnp.maximum(_unit_norm(w), TINY))
            decay = weight_decay / jnp.maximum(variance_scale, TINY) + norm_loss
            return -lr * (direction / denominator + decay * w)

        step = jax.tree.map(leaf, current, other, nu, params)
        positive = jax.tree.map(lambda c, p: jnp.where(odd, c, p), current, state.positive)
        negative = jax.tree.map(lambda c, n: jnp.where(odd, n, c), current, state.negative)
        return step, Ranger21State(count, positive, negative, nu)

    return optax.GradientTransformation(init, update)


def ranger21(
    learning_rate: float | jax.Array = 1e-3,
    num_iterations: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    pnm_momentum: float = 1.0,
    softplus_beta: float = 50.0,
    agc_clipping: float = 1e-2,
    agc_eps: float = 1e-3,
    weight_decay: float = 1e-4,
    normloss_factor: float = 1e-4,
    lookahead_period: int = 5,
    lookahead_alpha: float = 0.5,
) -> optax.GradientTransformationExtraArgs:
    """Ranger21: AdamW with the paper's eight published components, in its order.

        g ← centralise(AGC(g))                    Brock et al. 2021 (λ 1e-2); Yong et al. 2020
        v ← β2 v + (1−β2) g²;  v̂ = v/(1−β2^t)
        m± : two EMAs with rate β1², updated on alternate steps      PNM, Xie et al. 2021
        d = ((1+β0) m_cur − β0 m_other) / √((1+β0)² + β0²) / (1 − β1^{2⌈t/2⌉})
        θ ← θ − η_t ( d / softplus_50(√v̂)                           Tong et al. 2019
                      + λ θ / √mean(v̂)                               stable weight decay, Xie et al. 2020
                      + 2 c (1 − 1/‖θ_unit‖) θ )                     norm loss, Georgiou et al. 2021
        η_t: `ranger21_schedule` (linear warm-up 2/(1−β2), warm-down over the last 28%)
        Lookahead k 5, α 0.5 around all of it                        Zhang et al. 2019

    Defaults are Ranger21's (β0 1, softplus β 50, λ 1e-4, c 1e-4). The bias correction of each
    PNM buffer counts its own updates (⌈t/2⌉ of them at rate β1²), the correction that makes
    m± unbiased. `num_iterations`, the run length, sets the warm-down; lopt's evaluation passes
    the number of steps.

    References:
      Wright & Demeure, "Ranger21: a synergistic deep learning optimizer", arXiv:2106.13731, 2021.
    """
    core = _scale_by_ranger21_core(
        learning_rate,
        num_iterations,
        b1,
        b2,
        pnm_momentum,
        softplus_beta,
        agc_clipping,
        agc_eps,
        weight_decay,
        normloss_factor,
    )
    return lookahead(core, lookahead_period, lookahead_alpha)
