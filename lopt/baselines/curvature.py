"""Second-order-inspired rules: AdaHessian (Adam with a Hutchinson estimate of the Hessian
diagonal in place of g²) and INNAprop (the inertial Newton dynamics of INNA with RMSprop's
scaling).

AdaHessian's Hessian-vector product needs the objective, which lopt's training loop passes to every
optimizer as the extra argument `obj_fn=` (the minibatch loss as a function of the parameters);
`update` raises a clear error when it is missing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.baselines._common import bias_correction, ema, increment, map_unzip, zeros_like


class AdaHessianState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def hutchinson_diagonal(obj_fn, params: Any, key: jax.Array) -> Any:
    """z ⊙ (H z) with Rademacher z: an unbiased estimate of diag(H) (Bekas et al. 2007),
    through one forward-over-reverse Hessian-vector product."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    z = jax.tree.unflatten(
        tree, [jax.random.rademacher(k, x.shape, jnp.float32).astype(x.dtype) for k, x in zip(keys, leaves)]
    )
    hz = jax.jvp(jax.grad(obj_fn), (params,), (z,))[1]
    return jax.tree.map(jnp.multiply, z, hz)


def spatial_average(diagonal: jax.Array) -> jax.Array:
    """AdaHessian's spatial averaging: a conv kernel [h, w, in, out] gets, at every spatial
    position, the mean of |z ⊙ Hz| over its h × w window; other tensors are unchanged."""
    if diagonal.ndim != 4:
        return diagonal
    return jnp.broadcast_to(jnp.mean(jnp.abs(diagonal), axis=(0, 1), keepdims=True), diagonal.shape)


def adahessian(
    learning_rate: float | jax.Array = 0.15,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    hessian_power: float = 1.0,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """AdaHessian (Yao et al. 2021, Algorithm 1).

        D_t = spatial_average(z ⊙ H z),  z ~ Rademacher            (one HVP per step)
        m_t = β1 m + (1−β1) g,   v_t = β2 v + (1−β2) D_t²
        θ ← θ − η ( m_t/(1−β1^t) / ((√(v_t/(1−β2^t)))^k + ε) + λ θ )

    Defaults from the paper: η 0.15, β (0.9, 0.999), ε 1e-4, Hessian power k 1. z is drawn
    from `seed` and the step count, so runs are reproducible without a key in `init`.

    References:
      Yao et al., "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning", AAAI 2021.
    """

    def init(params):
        return AdaHessianState(jnp.zeros([], jnp.int32), zeros_like(params), zeros_like(params))

    def update(updates, state, params=None, *, obj_fn=None, **extra):
        del extra
        if obj_fn is None or params is None:
            raise ValueError("adahessian needs params and the objective: update(..., params, obj_fn=f)")
        key = jax.random.fold_in(jax.random.key(seed), state.count)
        diagonal = jax.tree.map(spatial_average, hutchinson_diagonal(obj_fn, params, key))
        count = increment(state.count)
        mu = ema(state.mu, updates, b1)
        nu = ema(state.nu, jax.tree.map(jnp.square, diagonal), b2)
        bc1, bc2 = bias_correction(b1, count), bias_correction(b2, count)
        step = jax.tree.map(
            lambda m, v, w: (
                -learning_rate * ((m / bc1) / (jnp.sqrt(v / bc2) ** hessian_power + eps) + weight_decay * w)
            ),
            mu,
            nu,
            params,
        )
        return step, AdaHessianState(count, mu, nu)

    return optax.GradientTransformationExtraArgs(init, update)


class GaussNewtonBartlettState(NamedTuple):
    count: jax.Array


def gauss_newton_bartlett(batch_size: int, seed: int = 0) -> optax.GradientTransformationExtraArgs:
    """Sophia-G's diagonal Hessian estimate (Liu et al. 2023, Algorithm 2):

        ŷ_b ~ softmax(f(θ, x_b));   ĝ = ∇θ (1/B) Σ_b ℓ(f(θ, x_b), ŷ_b);   ĥ = B · ĝ ⊙ ĝ

    an unbiased estimate of the Gauss-Newton diagonal for softmax losses. It reads the extra
    argument `sampled_obj_fn(params, key)` (the loss against labels drawn from the model, which
    lopt's training loop builds from the task) and returns ĥ in place of the updates, the
    `hessian_diagonal_fn` protocol of `optax.contrib.sophia`. Tasks whose loss is not a
    likelihood over labels (the synthetic quadratic and Rosenbrock) have no such objective;
    there the estimate falls back to Sophia-H's Hutchinson product on `obj_fn`."""

    def init(params):
        del params
        return GaussNewtonBartlettState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, *, sampled_obj_fn=None, obj_fn=None, **extra):
        del updates, extra
        key = jax.random.fold_in(jax.random.key(seed), state.count)
        if sampled_obj_fn is not None:
            g = jax.grad(sampled_obj_fn)(params, key)
            estimate = jax.tree.map(lambda x: batch_size * x * x, g)
        elif obj_fn is not None:
            estimate = hutchinson_diagonal(obj_fn, params, key)
        else:
            raise ValueError("sophia_g needs sampled_obj_fn= (or obj_fn= for the Hutchinson fallback)")
        return estimate, GaussNewtonBartlettState(increment(state.count))

    return optax.GradientTransformationExtraArgs(init, update)


def sophia_g(
    learning_rate: float | jax.Array = 1e-3,
    b1: float = 0.965,
    b2: float = 0.99,
    gamma: float = 0.05,
    weight_decay: float = 1e-4,
    update_interval: int = 10,
    batch_size: int = 128,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Sophia-G: `optax.contrib.sophia` (clipped m̂ / max(γ ĥ, ε): optax bias-corrects the
    momentum, m̂ = m / (1 − β1^t); ĥ refreshed every k steps)
    on the Gauss-Newton-Bartlett estimate (`gauss_newton_bartlett`). Defaults from the paper:
    β (0.965, 0.99), γ 0.05, k 10, λ 1e-4. `batch_size` is the estimator's B (set it to your
    minibatch size; it scales ĥ, and so the effective γ).

    References:
      Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
      Pre-training", ICLR 2024.
    """
    return optax.contrib.sophia(
        learning_rate,
        b1=b1,
        b2=b2,
        gamma=gamma,
        weight_decay=weight_decay,
        update_interval=update_interval,
        hessian_diagonal_fn=gauss_newton_bartlett(batch_size, seed),
    )


class InnapropState(NamedTuple):
    count: jax.Array
    psi: Any  # INNA's auxiliary variable ψ, initialised at (1 − αβ) θ_0
    nu: Any  # RMSprop's second moment


def innaprop(
    learning_rate: float = 1e-3,
    alpha: float = 0.1,
    beta: float = 0.9,
    sigma: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> optax.GradientTransformation:
    """INNAprop (Bolte, Boustany, Pauwels & Purica 2024): the inertial Newton method INNA, whose
    geometric damping β uses second-order information through time derivatives only, with its
    gradient rescaled by RMSprop. With γ the learning rate (γ < β):

        θ_t ← (1 − λγ) θ_t                                      decoupled weight decay
        v_t = σ v_{t−1} + (1−σ) g_t²,   v̂_t = v_t / (1 − σ^t)
        ψ_t = (1 − γ/β) ψ_{t−1} + γ (1/β − α) θ_t
        θ_{t+1} = (1 + γ(1 − αβ)/(β − γ)) θ_t − γ/(β − γ) ψ_t − γβ g_t / (√v̂_t + ε)

    ψ_0 = (1 − αβ) θ_0, so `init` reads the parameters. Defaults: (α, β) = (0.1, 0.9), the
    paper's choice for short training; weight decay 0.01 and σ 0.999 (Adam's β2) as AdamW's.
    The learning rate is a constant (a number, or a traced scalar in an LR sweep; not a schedule):
    the recursion's coefficients divide by β − γ.

    References:
      Bolte, Boustany, Pauwels & Purica, "A second-order-like optimizer with adaptive gradient
      scaling for deep learning", arXiv:2410.05871, 2024.
    """
    if isinstance(learning_rate, (int, float)) and not learning_rate < beta:  # a swept LR is traced
        raise ValueError(f"innaprop needs learning_rate < beta (got {learning_rate} and {beta})")
    gamma = learning_rate

    def init(params):
        return InnapropState(
            jnp.zeros([], jnp.int32), jax.tree.map(lambda p: (1 - alpha * beta) * p, params), zeros_like(params)
        )

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("innaprop needs params: its update mixes θ and ψ")
        count = increment(state.count)

        def leaf(g, theta, psi, nu):
            decayed = (1 - weight_decay * gamma) * theta
            nu = sigma * nu + (1 - sigma) * g * g
            scaled = g / (jnp.sqrt(nu / bias_correction(sigma, count)) + eps)
            psi = (1 - gamma / beta) * psi + gamma * (1 / beta - alpha) * decayed
            new = (
                (1 + gamma * (1 - alpha * beta) / (beta - gamma)) * decayed
                - gamma / (beta - gamma) * psi
                - gamma * beta * scaled
            )
            return new - theta, psi, nu

        step, psi, nu = map_unzip(leaf, updates, params, state.psi, state.nu)
        return step, InnapropState(count, psi, nu)

    return optax.GradientTransformation(init, update)
