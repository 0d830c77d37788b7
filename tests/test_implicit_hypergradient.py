"""Implicit-function-theorem hypergradients (lopt.hypergrad.implicit) against the closed-form
ridge solution's exact hypergradient, and, on the same problem trained by gradient descent,
beside the exact unrolled metagradient (lopt.hypergrad.exact) and central finite differences."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.hypergrad import exact, implicit


def float64():
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64

    return enable_x64()


def ridge_problem(seed: int = 0, n: int = 40, d: int = 8):
    """Least squares with per-parameter weight decay exp(λ_i): L_T, L_V, and w*(λ) in closed form."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(0.3, 3.0, d)  # unequal feature scales: the decays should differ
    x, xv = rng.normal(size=(n, d)) * scales, rng.normal(size=(n, d)) * scales
    w_true = rng.normal(size=d)
    y, yv = x @ w_true + 0.5 * rng.normal(size=n), xv @ w_true + 0.5 * rng.normal(size=n)
    x, xv, y, yv = map(jnp.asarray, (x, xv, y, yv))

    def train_loss(w, lam):
        return 0.5 * jnp.mean((x @ w["w"] - y) ** 2) + 0.5 * jnp.sum(jnp.exp(lam) * w["w"] ** 2)

    def val_loss(w, lam):
        return 0.5 * jnp.mean((xv @ w["w"] - yv) ** 2)

    def solved(lam):
        return {"w": jnp.linalg.solve(x.T @ x / n + jnp.diag(jnp.exp(lam)), x.T @ y / n)}

    return train_loss, val_loss, solved, float(jnp.linalg.eigvalsh(x.T @ x / n).max())


def cosine(a, b) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_ift_equals_the_closed_form_hypergradient():
    with float64():
        train_loss, val_loss, solved, largest = ridge_problem()
        lam = jnp.log(jnp.full((8,), 0.05))
        reference = jax.grad(lambda lam: val_loss(solved(lam), lam))(lam)
        cg = implicit.hypergradient(train_loss, val_loss, solved(lam), lam, solver="cg", rtol=1e-12, iterations=50)
        np.testing.assert_allclose(cg.grad, reference, rtol=1e-6, atol=1e-12)
        assert cg.residual < 1e-8
        series = implicit.hypergradient(
            train_loss, val_loss, solved(lam), lam, solver="neumann", alpha=1.0 / (largest + 0.5), iterations=3000
        )
        assert cosine(series.grad, reference) >= 0.999


def test_ift_and_the_unrolled_metagradient_agree_with_finite_differences():
    """Gradient descent to convergence: the exact unrolled metagradient matches central finite
    differences of the unrolled run (cos ≥ 0.99), and IFT at its final weights does too (≥ 0.9)."""
    with float64():
        train_loss, val_loss, _, largest = ridge_problem(seed=1)
        steps, rate = 600, 1.0 / (largest + 1.0)

        def step(lam, state, t):
            return jax.tree.map(lambda w, g: w - rate * g, state, jax.grad(train_loss)(state, lam))

        unroll = exact.Unroll(lambda lam: {"w": jnp.zeros(8)}, step, lambda lam, w: val_loss(w, lam))
        lam = jnp.log(jnp.full((8,), 0.05)) + 0.2 * jnp.asarray(np.random.default_rng(2).normal(size=8))
        _, unrolled = exact.metagradient(unroll, lam, steps)
        f = jax.jit(lambda lam: exact.objective(unroll, lam, steps, segment=0))
        eps = 1e-6
        fd = np.array([(f(lam.at[i].add(eps)) - f(lam.at[i].add(-eps))) / (2 * eps) for i in range(8)])
        assert cosine(unrolled, fd) >= 0.99
        trained = exact.run(unroll, lam, steps)
        ift = implicit.hypergradient(train_loss, val_loss, trained, lam, solver="cg", rtol=1e-10)
        assert cosine(ift.grad, fd) >= 0.9


def test_an_unconverged_solve_gives_one_clear_line():
    train_loss, val_loss, solved, largest = ridge_problem()
    lam = jnp.log(jnp.full((8,), 1e-3))
    w = solved(lam)
    with pytest.raises(implicit.SolverError, match="neumann solve .* did not converge.*smaller alpha"):
        implicit.hypergradient(train_loss, val_loss, w, lam, solver="neumann", alpha=3.0 / largest, iterations=50)
    with pytest.raises(implicit.SolverError, match="cg solve .* did not converge"):
        implicit.hypergradient(train_loss, val_loss, w, lam, solver="cg", iterations=1)
    truncated = implicit.hypergradient(  # tolerance=None: the paper's truncated series, unchecked
        train_loss, val_loss, w, lam, solver="neumann", alpha=0.5 / largest, iterations=3, tolerance=None
    )
    assert truncated.residual > 1e-2 and np.isfinite(truncated.grad).all()
    with pytest.raises(ValueError, match="solver must be one of neumann, cg"):
        implicit.hypergradient(train_loss, val_loss, w, lam, solver="lbfgs")


def test_per_parameter_weight_decay_by_ift_beats_the_best_global_decay():
    """Lorraine et al.'s use: one decay per weight, descended by IFT hypergradients (weights
    re-solved each step) against a grid of global decays, by validation loss."""
    with float64():
        train_loss, val_loss, solved, _ = ridge_problem(seed=3)
        grid = [float(np.log(v)) for v in np.geomspace(1e-4, 10.0, 21)]
        best_global = min(float(val_loss(solved(jnp.full((8,), g)), None)) for g in grid)
        start = grid[int(np.argmin([float(val_loss(solved(jnp.full((8,), g)), None)) for g in grid]))]
        lam, outer = jnp.full((8,), start), optax.adam(0.1)
        state = outer.init(lam)
        for _ in range(60):
            hyper = implicit.hypergradient(train_loss, val_loss, solved(lam), lam, solver="cg", rtol=1e-12)
            updates, state = outer.update(hyper.grad, state, lam)
            lam = optax.apply_updates(lam, updates)
        assert float(val_loss(solved(lam), lam)) < best_global


def test_augmentation_network_hypergradient_matches_finite_differences():
    """The weights of a data-augmentation network as hyperparameters (Lorraine et al. 2020, §5.3):
    L2-regularised logistic regression on augmented inputs is strongly convex in w, so w*(φ) is
    solved to machine precision by Newton's method and central differences of L_V(w*(φ)) are a
    reference for the IFT hypergradient in every coordinate of φ."""
    from lopt.hypergrad import augment

    with float64():
        rng = np.random.default_rng(4)
        d, n = 4, 30
        x, xv = jnp.asarray(rng.normal(size=(n, d))), jnp.asarray(rng.normal(size=(60, d)))
        w_true = rng.normal(size=d)
        y = jnp.asarray((x @ w_true + 0.8 * rng.normal(size=n)) > 0, jnp.float64)
        yv = jnp.asarray((xv @ w_true) > 0, jnp.float64)

        def loss(w, inputs, labels):
            logits = inputs @ w["w"] + w["b"]
            return jnp.mean(jnp.logaddexp(0.0, logits) - labels * logits)

        phi = augment.init(jax.random.key(0), d, hidden=3, noise_dim=2)
        phi = jax.tree.map(lambda a: a + 0.3 * jnp.asarray(rng.normal(size=a.shape)), phi)  # off the identity
        draws = augment.noise(jax.random.key(1), n, 3, phi, d)
        train_loss = augment.training_loss(loss, x, y, draws, lambda w: 0.05 * jnp.sum(w["w"] ** 2))

        def val_loss(w, phi):
            return loss(w, xv, yv)

        @jax.jit
        def solved(phi):
            flat0, unravel = jax.flatten_util.ravel_pytree({"w": jnp.zeros(d), "b": jnp.zeros(())})
            f = lambda v: train_loss(unravel(v), phi)  # noqa: E731
            v = jax.lax.fori_loop(0, 30, lambda _, v: v - jnp.linalg.solve(jax.hessian(f)(v), jax.grad(f)(v)), flat0)
            return unravel(v)

        ift = implicit.hypergradient(train_loss, val_loss, solved(phi), phi, solver="cg", rtol=1e-12)
        assert ift.residual < 1e-8
        flat, unravel = jax.flatten_util.ravel_pytree(phi)
        f = jax.jit(lambda v: val_loss(solved(unravel(v)), None))
        eps = 1e-6
        fd = np.array([(f(flat.at[i].add(eps)) - f(flat.at[i].add(-eps))) / (2 * eps) for i in range(flat.size)])
        got = jax.flatten_util.ravel_pytree(ift.grad)[0]
        assert cosine(got, fd) >= 0.999
        np.testing.assert_allclose(got, fd, rtol=1e-4, atol=1e-8)
