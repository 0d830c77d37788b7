"""Low-rank gradient projection: GaLore, Fira and FRUGAL.

All three view a kernel as its [fan_out, fan_in] matrix G (`as_matrix`), project it onto the
top-r singular subspace of the gradient, refreshed every T steps, and keep Adam's moments only
for the projected r-row (or r-column) matrix R. They differ in what happens to the rest:

    GaLore   drops it:                         D = α · up(N(R))
    Fira     adds it back, rescaled by the     D = α · up(N(R)) + limit(φ(R) ⊙ (G − up(R)))
             ratio Adam gave the projected part
    FRUGAL   updates it state-free by signSGD: D = up(N̂(R)) + s · sign(G − up(R))

with N(R) Adam's normalised direction for R. Tensors of rank ≤ 1 use Adam with the same β
and ε, as the three papers do.

Projection side (GaLore's "std"): for G ∈ R^{m×n} with m < n, P = U[:, :r] (the left singular
vectors) and R = Pᵀ G ∈ R^{r×n}, up(N) = P N; otherwise P = V[:, :r] and R = G P ∈ R^{m×r},
up(N) = N Pᵀ. The rank is r = max(1, round(ρ · min(m, n))) with ρ = 0.25: GaLore's and Fira's
rank 128 for 512-wide LLaMA-60M, FRUGAL's density 0.25. Each singular vector's sign is fixed
(its largest entry positive): the SVD's own sign is arbitrary, and FRUGAL's and GaLore's kept
moments would otherwise depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.baselines._common import (
    adam_leaf,
    as_matrix,
    bias_correction,
    from_matrix,
    increment,
    map_unzip,
    uncorrected_adam_leaf,
)


def projection_rank(shape: tuple[int, ...], density: float) -> int:
    """r = max(1, round(ρ · min(m, n))) for a kernel whose matrix view is m × n."""
    m, n = shape[-1], math.prod(shape[:-1])
    return max(1, min(m, n, round(density * min(m, n))))


def projects_left(m: int, n: int) -> bool:
    """GaLore's side choice: project rows (P ∈ R^{m×r}) when the matrix is wide (m < n)."""
    return m < n


def svd_projector(G: jax.Array, rank: int) -> jax.Array:
    """The top-`rank` singular vectors of G on its projected side, signs fixed (largest entry
    of each vector positive): [m, r] when `projects_left`, else [n, r]."""
    U, _, Vh = jnp.linalg.svd(G.astype(jnp.float32), full_matrices=False)
    P = U[:, :rank] if projects_left(*G.shape) else Vh[:rank].T
    pivot = jnp.take_along_axis(P, jnp.argmax(jnp.abs(P), axis=0)[None, :], axis=0)
    return P * jnp.where(pivot < 0, -1.0, 1.0)


def project_down(G: jax.Array, P: jax.Array) -> jax.Array:
    return P.T @ G if projects_left(*G.shape) else G @ P


def project_up(R: jax.Array, P: jax.Array, shape: tuple[int, int]) -> jax.Array:
    return P @ R if projects_left(*shape) else R @ P.T


class LowRankState(NamedTuple):
    count: jax.Array
    mu: Any  # Adam moments: of R ([r, n] or [m, r]) for kernels, of the tensor otherwise
    nu: Any
    projector: Any  # P: [m, r] or [n, r] for kernels; an empty array otherwise
    limiter: Any  # Fira's ‖S_{t−1}‖ per kernel (a scalar); unused (0) by GaLore and FRUGAL


# matrix_rule(G, R, P, mu, nu, limiter, count) -> (direction [m, n], mu, nu, limiter)
MatrixRule = Callable[..., tuple[jax.Array, jax.Array, jax.Array, jax.Array]]


def _scale_by_low_rank(
    matrix_rule: MatrixRule, b1: float, b2: float, eps: float, density: float, update_interval: int
) -> optax.GradientTransformation:
    """The shared frame: projector refresh every T steps from that step's gradient (at steps
    1, T+1, 2T+1, ...: GaLore's `iter % T == 0` before its counter moves), Adam on rank ≤ 1."""

    def init(params):
        def moment(x):
            if x.ndim < 2:
                return jnp.zeros_like(x)
            m, n = as_matrix(x).shape
            r = projection_rank(x.shape, density)
            return jnp.zeros((r, n) if projects_left(m, n) else (m, r), x.dtype)

        def projector(x):
            if x.ndim < 2:
                return jnp.zeros((0,), x.dtype)
            m, n = as_matrix(x).shape
            return jnp.zeros((m if projects_left(m, n) else n, projection_rank(x.shape, density)), jnp.float32)

        moments = jax.tree.map(moment, params)
        return LowRankState(
            jnp.zeros([], jnp.int32),
            moments,
            moments,
            jax.tree.map(projector, params),
            jax.tree.map(lambda _: jnp.zeros([], jnp.float32), params),
        )

    def update(updates, state, params=None):
        del params
        count = increment(state.count)
        refresh = (count - 1) % update_interval == 0

        def leaf(g, mu, nu, P, limiter):
            if g.ndim < 2:
                d, mu, nu = adam_leaf(g, mu, nu, b1, b2, eps, count)
                return d, mu, nu, P, limiter
            G = as_matrix(g).astype(jnp.float32)
            P = jax.lax.cond(refresh, lambda: svd_projector(G, P.shape[1]), lambda: P)
            d, mu, nu, limiter = matrix_rule(G, project_down(G, P), P, mu, nu, limiter, count, refresh)
            return from_matrix(d, g.shape).astype(g.dtype), mu, nu, P, limiter

        d, mu, nu, P, limiter = map_unzip(leaf, updates, state.mu, state.nu, state.projector, state.limiter)
        return d, LowRankState(count, mu, nu, P, limiter)

    return optax.GradientTransformation(init, update)


def scale_by_galore(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    density: float = 0.25,
    update_interval: int = 200,
    scale: float = 0.25,
) -> optax.GradientTransformation:
    """GaLore direction (Zhao et al. 2024, Algorithm 2):

        P_t = top-r singular vectors of G_t  every T steps (first at step 1)
        R_t = P_tᵀ G_t;   M, V: Adam moments of R_t   (kept across refreshes, as the paper)
        D_t = α · P_t (M_t / (√V_t + ε)) · √(1 − β2^t) / (1 − β1^t)

    Defaults: ρ 0.25 (rank 128 of 512), T 200, α 0.25 (the paper's LLaMA pre-training), ε added
    to the uncorrected √V and the bias correction in the step, as the reference AdamW step.

    References:
      Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
      ICML 2024 (arXiv:2403.03507).
    """

    def rule(G, R, P, mu, nu, limiter, count, refresh):
        del refresh
        N, mu, nu = uncorrected_adam_leaf(R, mu, nu, b1, b2, eps)
        correction = jnp.sqrt(bias_correction(b2, count)) / bias_correction(b1, count)
        return scale * project_up(N, P, G.shape) * correction, mu, nu, limiter

    return _scale_by_low_rank(rule, b1, b2, eps, density, update_interval)


def scale_by_fira(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    density: float = 0.25,
    update_interval: int = 200,
    scale: float = 0.25,
    norm_growth_limit: float = 1.01,
) -> optax.GradientTransformation:
    """Fira direction (Chen et al. 2024): GaLore plus the residual outside the subspace.

        N = M / (√V + ε)                                  (GaLore's, as `scale_by_galore`)
        φ_j = ‖N_{:,j}‖ / (‖R_{:,j}‖ + 1e−8)              norm-based scaling, one factor per
                                                          column of R along its long side
        S = (G − up(R)) ⊙ φ                               the residual, scaled as Adam scaled R
        if ‖S‖ > γ‖S_{t−1}‖:  S ← S · γ‖S_{t−1}‖ / ‖S‖    norm-growth limiter (from step 2)
        D = (α · up(N) + S) · √(1 − β2^t) / (1 − β1^t)

    The residual is the paper's (I − PPᵀ)G; the authors' code subtracts α·PPᵀG instead (its
    projector scales by α on the way back). Defaults: ρ 0.25, T 200, α 0.25 (the paper's
    LLaMA scripts: rank 128, gap 200, alpha 0.25), γ 1.01.

    References:
      Chen et al., "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank
      Constraint?", arXiv:2410.01623, 2024.
    """

    def rule(G, R, P, mu, nu, limiter, count, refresh):
        del refresh
        N, mu, nu = uncorrected_adam_leaf(R, mu, nu, b1, b2, eps)
        rank_axis = 0 if projects_left(*G.shape) else 1
        phi = jnp.linalg.norm(N, axis=rank_axis, keepdims=True) / (
            jnp.linalg.norm(R, axis=rank_axis, keepdims=True) + 1e-8
        )
        S = (G - project_up(R, P, G.shape)) * phi
        norm = jnp.linalg.norm(S)
        shrink = jnp.where(count > 1, jnp.maximum(norm / (limiter + 1e-8), norm_growth_limit) / norm_growth_limit, 1.0)
        S = S / shrink
        correction = jnp.sqrt(bias_correction(b2, count)) / bias_correction(b1, count)
        return (scale * project_up(N, P, G.shape) + S) * correction, mu, nu, norm / shrink

    return _scale_by_low_rank(rule, b1, b2, eps, density, update_interval)


def scale_by_frugal(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    density: float = 0.25,
    update_interval: int = 200,
    free_scale: float = 1.0,
) -> optax.GradientTransformation:
    """FRUGAL direction (Zmushko et al. 2024), SVD projection:

        P_t = top-r singular vectors of G_t every T steps; Adam's state reset there
        R_t = P_tᵀ G_t;   Adam on R_t with its step counted from the last refresh, τ = (t−1) mod T + 1
        D_t = P_t (M̂_τ / (√V̂_τ + ε))  +  s · sign(G_t − P_t R_t)

    State-full Adam on the subspace, state-free signSGD on the rest: a kernel keeps 2·r·max(m, n)
    moments and the projector. Defaults: density ρ 0.25, T 200, state-free LR scale s 1 (the
    paper's pre-training), the state reset at each refresh (`reset_statistics`).

    References:
      Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for
      Scalable Training", ICML 2025 (arXiv:2411.07837).
    """

    def rule(G, R, P, mu, nu, limiter, count, refresh):
        mu, nu = (jnp.where(refresh, jnp.zeros_like(x), x) for x in (mu, nu))
        local = (count - 1) % update_interval + 1
        N, mu, nu = adam_leaf(R, mu, nu, b1, b2, eps, local)
        free = jnp.sign(G - project_up(R, P, G.shape))
        return project_up(N, P, G.shape) + free_scale * free, mu, nu, limiter

    return _scale_by_low_rank(rule, b1, b2, eps, density, update_interval)


def _with_decay(
    direction: optax.GradientTransformation, learning_rate: optax.ScalarOrSchedule, weight_decay: float
) -> optax.GradientTransformation:
    """direction, decoupled weight decay η·λ·θ (AdamW-style), −η."""
    return optax.chain(direction, optax.add_decayed_weights(weight_decay), optax.scale_by_learning_rate(learning_rate))


def galore(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    density: float = 0.25,
    update_interval: int = 200,
    scale: float = 0.25,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """GaLore-AdamW (see `scale_by_galore`)."""
    return _with_decay(scale_by_galore(b1, b2, eps, density, update_interval, scale), learning_rate, weight_decay)


def fira(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    density: float = 0.25,
    update_interval: int = 200,
    scale: float = 0.25,
    norm_growth_limit: float = 1.01,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Fira-AdamW (see `scale_by_fira`)."""
    return _with_decay(
        scale_by_fira(b1, b2, eps, density, update_interval, scale, norm_growth_limit), learning_rate, weight_decay
    )


def frugal(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    density: float = 0.25,
    update_interval: int = 200,
    free_scale: float = 1.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """FRUGAL with AdamW state-full and signSGD state-free parts (see `scale_by_frugal`)."""
    return _with_decay(scale_by_frugal(b1, b2, eps, density, update_interval, free_scale), learning_rate, weight_decay)
