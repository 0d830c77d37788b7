"""Optimizers that treat each weight matrix as a matrix: Conda, SWAN and APOLLO.

Kernels are viewed as [fan_out, fan_in] matrices (`as_matrix`: a conv kernel's spatial and
input axes join the input dimension) so the papers' equations, written for W ∈ R^{out × in},
apply verbatim. Tensors of rank ≤ 1 (biases, gains, scalars) are updated by Adam with the same
β and ε, as the three papers do for their non-matrix parameters.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.baselines._common import (
    TINY,
    adam_leaf,
    as_matrix,
    bias_correction,
    from_matrix,
    increment,
    map_unzip,
    uncorrected_adam_leaf,
)


class ScaleByCondaState(NamedTuple):
    count: jax.Array
    mu: Any  # first moment, the parameter's shape
    nu: Any  # second moment in the subspace: [k, fan_in] for matrices, the shape otherwise
    basis: Any  # U: [fan_out, k] for matrices, an empty array otherwise


def scale_by_conda(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, update_interval: int = 200
) -> optax.GradientTransformation:
    """Conda direction (column-normalised Adam in the subspace of the momentum).

        M_t = β1 M_{t−1} + (1−β1) G_t
        U_t = left singular vectors of M_t  when t ≡ 1 (mod T), else U_{t−1}
        V_t = β2 V_{t−1} + (1−β2) (U_tᵀ G_t)²
        D_t = U_t · (U_tᵀ M_t / (1−β1^t)) / (√(V_t/(1−β2^t)) + ε)

    U is the thin SVD basis (k = min(out, in) columns: the full column space, Conda's default
    rank) refreshed every T steps, first at step 1. The second moment lives in the projected
    coordinates and is kept across basis refreshes, as the paper. T defaults to 200 (GaLore's
    subspace interval, which Conda adopts). Timing convention: the basis is recomputed at the
    start of steps 1, T+1, 2T+1, ... from that step's momentum, as GaLore refreshes its
    projector; the peer implementation (pytorch-optimizer) refreshes one step later.

    References:
      Wang et al., "Conda: Column-Normalized Adam for Training Large Language Models Faster",
      arXiv:2509.24218, 2025.
    """

    def init(params):
        def nu(x):
            if x.ndim < 2:
                return jnp.zeros_like(x)
            out, fan_in = as_matrix(x).shape
            return jnp.zeros((min(out, fan_in), fan_in), x.dtype)

        def basis(x):
            if x.ndim < 2:
                return jnp.zeros((0,), x.dtype)
            out, fan_in = as_matrix(x).shape
            return jnp.zeros((out, min(out, fan_in)), x.dtype)

        return ScaleByCondaState(
            jnp.zeros([], jnp.int32),
            jax.tree.map(jnp.zeros_like, params),
            jax.tree.map(nu, params),
            jax.tree.map(basis, params),
        )

    def update(updates, state, params=None):
        del params
        count = increment(state.count)
        refresh = (count - 1) % update_interval == 0

        def leaf(g, m, v, u):
            if g.ndim < 2:
                d, m, v = adam_leaf(g, m, v, b1, b2, eps, count)
                return d, m, v, u
            m = b1 * m + (1 - b1) * g
            M, G = as_matrix(m), as_matrix(g)
            u = jax.lax.cond(refresh, lambda: jnp.linalg.svd(M, full_matrices=False)[0].astype(u.dtype), lambda: u)
            v = b2 * v + (1 - b2) * jnp.square(u.T @ G)
            projected = (u.T @ M) / bias_correction(b1, count)
            d = u @ (projected / (jnp.sqrt(v / bias_correction(b2, count)) + eps))
            return from_matrix(d, g.shape), m, v, u

        d, mu, nu, basis = map_unzip(leaf, updates, state.mu, state.nu, state.basis)
        return d, ScaleByCondaState(count, mu, nu, basis)

    return optax.GradientTransformation(init, update)


def conda(
    learning_rate: float | jax.Array | optax.Schedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    update_interval: int = 200,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Conda (see `scale_by_conda`) with decoupled weight decay η·λ·θ."""
    return optax.chain(
        scale_by_conda(b1, b2, eps, update_interval),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


class StatelessMatrixState(NamedTuple):
    count: jax.Array
    mu: Any  # Adam moments of rank ≤ 1 tensors; empty arrays for matrices (no state kept)
    nu: Any


def inverse_sqrt_newton_schulz(a: jax.Array, steps: int) -> jax.Array:
    """A^(−1/2) of a symmetric positive (semi)definite matrix by the coupled Newton-Schulz
    iteration on A/‖A‖_F (Higham 2008, eq. 6.35), scaled back by ‖A‖_F^(−1/2):

        Y_0 = A/‖A‖, Z_0 = I;   T = (3I − Z_k Y_k)/2;   Y_{k+1} = Y_k T,  Z_{k+1} = T Z_k

    Matrix products only (no decomposition), so it runs at matmul speed on accelerators; the
    eigenvalues of A/‖A‖ lie in (0, 1], inside the iteration's region of convergence."""
    norm = jnp.maximum(jnp.linalg.norm(a), TINY)
    identity = jnp.eye(a.shape[0], dtype=a.dtype)

    def body(_, carry):
        y, z = carry
        t = 0.5 * (3.0 * identity - z @ y)
        return y @ t, t @ z

    _, z = jax.lax.fori_loop(0, steps, body, (a / norm, identity))
    return z / jnp.sqrt(norm)


def _swan_matrix(G: jax.Array, eps: float, whitening_steps: int) -> jax.Array:
    """GradNorm then GradWhitening of one [out, in] matrix, rescaled to GradNorm's norm."""
    centred = G - jnp.mean(G, axis=1, keepdims=True)
    normed = centred / (jnp.std(G, axis=1, keepdims=True) + eps)
    out, fan_in = normed.shape
    if out <= fan_in:
        whitened = inverse_sqrt_newton_schulz(normed @ normed.T + eps * jnp.eye(out), whitening_steps) @ normed
    else:  # f(GGᵀ)·G = G·f(GᵀG) for any polynomial f: whiten through the smaller Gram matrix
        whitened = normed @ inverse_sqrt_newton_schulz(normed.T @ normed + eps * jnp.eye(fan_in), whitening_steps)
    return whitened * jnp.linalg.norm(normed) / jnp.maximum(jnp.linalg.norm(whitened), TINY)


def scale_by_swan(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, whitening_steps: int = 10
) -> optax.GradientTransformation:
    """SWAN direction: stateless normalisation and whitening of each gradient matrix.

        G̃ = (G − mean_row(G)) / std_row(G)                 GradNorm (rows: output units)
        D = (G̃ G̃ᵀ + εI)^(−1/2) G̃                          GradWhitening
        D ← D · ‖G̃‖_F / ‖D‖_F                              the paper's norm restoration

    The inverse square root is the paper's Newton-Schulz iteration (`whitening_steps`, default 10;
    `inverse_sqrt_newton_schulz`): matmuls only; an exact SVD is thousands of times slower than adam
    on a GPU (docs/benchmarks.md). The Gram matrix is formed on the smaller side (G̃(G̃ᵀG̃)^(−1/2) when
    out > in, the same matrix), so a matrix costs O(min(out, in)²·max) a step. Rank ≤ 1 tensors use
    Adam. The paper also gives the first and last layers to Adam; here every matrix is whitened, so
    the comparison measures SWAN itself.

    References:
      Ma, Gong, Scetbon & Meeds, "SWAN: SGD with Normalization and Whitening Enables Stateless
      LLM Training", ICML 2025 (arXiv:2412.13148).
    """

    return _stateless_matrix_rule(lambda G: _swan_matrix(G, eps, whitening_steps), b1, b2, eps)


def _stateless_matrix_rule(matrix_direction, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """`matrix_direction(G)` on every tensor of rank ≥ 2 (as a matrix, no state), Adam on the rest
    (SWAN's and SinkGD's split)."""

    def init(params):
        state = jax.tree.map(lambda x: jnp.zeros_like(x) if x.ndim < 2 else jnp.zeros((0,), x.dtype), params)
        return StatelessMatrixState(jnp.zeros([], jnp.int32), state, state)

    def update(updates, state, params=None):
        del params
        count = increment(state.count)

        def leaf(g, m, v):
            if g.ndim < 2:
                return adam_leaf(g, m, v, b1, b2, eps, count)
            return from_matrix(matrix_direction(as_matrix(g)), g.shape), m, v

        d, mu, nu = map_unzip(leaf, updates, state.mu, state.nu)
        return d, StatelessMatrixState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def sinkhorn_normalise(G: jax.Array, iterations: int, eps: float = TINY) -> jax.Array:
    """SR-Sinkhorn (Scetbon et al. 2025): `iterations` alternations of X ← √n·Q(X)⁻¹X then
    X ← √m·X·R(X)⁻¹ for X ∈ R^{m×n}, Q / R the diagonals of row / column ℓ2 norms; in the limit
    every row has norm √n and every column norm √m (the matrix's RMS is 1)."""
    m, n = G.shape
    X = G.astype(jnp.float32)
    for _ in range(iterations):
        X = jnp.sqrt(n) * X / jnp.maximum(jnp.linalg.norm(X, axis=1, keepdims=True), eps)
        X = jnp.sqrt(m) * X / jnp.maximum(jnp.linalg.norm(X, axis=0, keepdims=True), eps)
    return X


def scale_by_sinkgd(
    iterations: int = 5, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """SinkGD direction (Gradient Multi-Normalization): each gradient matrix normalised by
    `sinkhorn_normalise`, stateless; rank ≤ 1 tensors use Adam, as SWAN here. SinkGD generalises
    SWAN's stateless recipe by replacing whitening with alternating row and column
    normalisations (linear cost). L = `iterations` = 5 is lopt's default (the alternation settles
    within a few passes; the paper leaves L a hyperparameter).

    References:
      Scetbon, Ma, Gong & Meeds, "Gradient Multi-Normalization for Stateless and Scalable LLM
      Training", arXiv:2502.06742, 2025.
    """
    return _stateless_matrix_rule(lambda G: sinkhorn_normalise(G, iterations), b1, b2, eps)


def sinkgd(
    learning_rate: float | jax.Array | optax.Schedule = 1e-3,
    iterations: int = 5,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """SinkGD (see `scale_by_sinkgd`)."""
    return optax.chain(scale_by_sinkgd(iterations, b1, b2, eps), optax.scale_by_learning_rate(learning_rate))


def swan(
    learning_rate: float | jax.Array | optax.Schedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    whitening_steps: int = 10,
) -> optax.GradientTransformation:
    """SWAN (see `scale_by_swan`)."""
    return optax.chain(scale_by_swan(b1, b2, eps, whitening_steps), optax.scale_by_learning_rate(learning_rate))


class ScaleByApolloState(NamedTuple):
    count: jax.Array
    mu: Any  # [r, in] for matrices (the projected moments), the shape otherwise
    nu: Any
    previous_norm: Any  # ‖G̃_{t−1}‖ per matrix, for the norm-growth limiter


def apollo_rank(shape: tuple[int, ...], rank: int | None) -> int:
    """The projection rank for a kernel: `rank`, or a quarter of fan_out (the paper's ratio of
    256 for 1,024-wide models), capped at fan_out."""
    out = shape[-1]
    return max(1, min(out, rank if rank is not None else out // 4))


def scale_by_apollo(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    rank: int | None = None,
    update_interval: int = 200,
    scale: float = 1.0,
    norm_growth_limit: float = 1.01,
    seed: int = 0,
) -> optax.GradientTransformation:
    """APOLLO direction: the raw gradient scaled per channel by factors estimated from Adam run
    in a random low-rank projection (Algorithm 1).

        R = P G,  P ∈ R^{r × out}, P_ij ~ N(0, 1/r), redrawn every T steps (first at step 1)
        m, v: Adam moments of R;   R̃ = m / (√v + ε)   (uncorrected, as the reference code)
        s_j = ‖R̃[:, j]‖ / ‖R[:, j]‖    (one factor per input channel j)
        G̃ = α · G · diag(s);  if ‖G̃‖ > γ‖G̃_{t−1}‖: G̃ ← G̃ · γ‖G̃_{t−1}‖/‖G̃‖   (norm-growth limiter)
        update = G̃ · √(1 − β2^t) / (1 − β1^t)   (Adam's bias correction, in the step size)

    The limiter compares norms without bias correction and the correction multiplies the step
    afterwards, as the reference implementation (GaLore's AdamW step) does: with the correction
    inside R̃ the limiter sees norms that shrink as 1/(1 − β1^t) decays, and the two conventions
    differed by 0.57 in the parameters at step 10 of the peer check (issue 21 (1)).

    P comes from `seed`, the tensor's position and ⌊(t−1)/T⌋, so it is never stored. The
    moments are kept across redraws, as the paper. Defaults: T 200, γ 1.01, α 1 (the paper's
    APOLLO); rank a quarter of fan_out (`apollo_rank`). Rank ≤ 1 tensors use Adam.

    References:
      Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", MLSys 2025
      (arXiv:2412.05270).
    """

    def init(params):
        def moment(x):
            if x.ndim < 2:
                return jnp.zeros_like(x)
            return jnp.zeros((apollo_rank(x.shape, rank), as_matrix(x).shape[1]), x.dtype)

        moments = jax.tree.map(moment, params)
        norms = jax.tree.map(lambda _: jnp.zeros([], jnp.float32), params)
        return ScaleByApolloState(jnp.zeros([], jnp.int32), moments, moments, norms)

    def update(updates, state, params=None):
        del params
        count = increment(state.count)
        window = (count - 1) // update_interval
        leaves, tree = jax.tree.flatten(updates)
        mus, nus, norms = (tree.flatten_up_to(x) for x in (state.mu, state.nu, state.previous_norm))
        out_d, out_m, out_v, out_n = [], [], [], []
        for index, (g, m, v, previous) in enumerate(zip(leaves, mus, nus, norms)):
            if g.ndim < 2:
                d, m, v = adam_leaf(g, m, v, b1, b2, eps, count)
                out_d.append(d), out_m.append(m), out_v.append(v), out_n.append(previous)
                continue
            G = as_matrix(g)
            r = m.shape[0]
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), index), window)
            P = jax.random.normal(key, (r, G.shape[0]), jnp.float32) / jnp.sqrt(r)
            R = P @ G
            R_tilde, m, v = uncorrected_adam_leaf(R, m, v, b1, b2, eps)
            s = jnp.linalg.norm(R_tilde, axis=0) / jnp.maximum(jnp.linalg.norm(R, axis=0), TINY)
            scaled = scale * G * s[None, :]
            norm = jnp.linalg.norm(scaled)
            limit = norm_growth_limit * previous
            factor = jnp.where((count > 1) & (norm > limit), limit / jnp.maximum(norm, TINY), 1.0)
            correction = jnp.sqrt(bias_correction(b2, count)) / bias_correction(b1, count)
            out_d.append(from_matrix(scaled * factor * correction, g.shape))
            out_m.append(m), out_v.append(v), out_n.append(norm * factor)
        unflatten = lambda xs: jax.tree.unflatten(tree, xs)  # noqa: E731
        return unflatten(out_d), ScaleByApolloState(count, unflatten(out_m), unflatten(out_v), unflatten(out_n))

    return optax.GradientTransformation(init, update)


def apollo(
    learning_rate: float | jax.Array | optax.Schedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    rank: int | None = None,
    update_interval: int = 200,
    scale: float = 1.0,
    norm_growth_limit: float = 1.01,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> optax.GradientTransformation:
    """APOLLO (see `scale_by_apollo`) with decoupled weight decay η·λ·θ (AdamW-style)."""
    return optax.chain(
        scale_by_apollo(b1, b2, eps, rank, update_interval, scale, norm_growth_limit, seed),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )
