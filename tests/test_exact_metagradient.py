"""Exact metagradients (lopt.hypergrad.exact) against central finite differences of the same
deterministic run, rematerialised against plain reverse mode, and the memory that buys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.hypergrad import exact


def float64():
    """float64 for the finite-difference references (jax.enable_x64 from jax 0.8 on)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64

    return enable_x64()


class LinearRegression:
    """A small task in lopt's task protocol: least squares on fixed random data."""

    def __init__(self, dim: int = 6, n: int = 64, batch: int = 16, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, dim))
        self.y = self.x @ rng.normal(size=dim) + 0.1 * rng.normal(size=n)
        self.batch_size = batch

    def init(self, key):
        return {"w": 0.1 * jax.random.normal(key, (self.x.shape[1],), jnp.asarray(self.x).dtype)}

    def loss(self, params, batch):
        x, y = batch
        return 0.5 * jnp.mean((x @ params["w"] - y) ** 2)

    def batch(self, key, split="train"):
        half = self.x.shape[0] // 2
        lo, hi = (0, half) if split == "train" else (half, self.x.shape[0])
        index = jax.random.randint(key, (self.batch_size,), lo, hi)
        return jnp.asarray(self.x)[index], jnp.asarray(self.y)[index]


def central_differences(f, h: np.ndarray, eps: float) -> np.ndarray:
    grad = np.zeros_like(h)
    for i in range(h.size):
        step = np.zeros_like(h)
        step.flat[i] = eps
        grad.flat[i] = (float(f(h + step)) - float(f(h - step))) / (2 * eps)
    return grad


def cosine(a, b) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("direction", [optax.identity(), optax.scale_by_adam()], ids=["sgd", "adam"])
def test_schedule_metagradient_equals_finite_differences(direction):
    with float64():
        steps = 24
        unroll = exact.schedule_unroll(LinearRegression(), direction, steps, jax.random.key(0))
        h = np.log(0.05) + 0.3 * np.random.default_rng(1).normal(size=steps)
        _, grad = exact.metagradient(unroll, jnp.asarray(h), steps)
        f = jax.jit(lambda h: exact.objective(unroll, h, steps, segment=0))
        reference = central_differences(f, h, 1e-6)
        assert cosine(grad, reference) >= 0.999
        np.testing.assert_allclose(grad, reference, rtol=1e-4, atol=1e-9)


def test_data_weight_metagradient_equals_finite_differences():
    with float64():
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.normal(size=(30, 4)))
        y = jnp.asarray((rng.normal(size=30) > 0).astype(np.float64))

        def logistic(params, xb, yb):
            logits = xb @ params["w"] + params["b"]
            return optax.sigmoid_binary_cross_entropy(logits, yb)

        params0 = {"w": jnp.zeros(4), "b": jnp.zeros(())}
        unroll = exact.weighted_data_unroll(
            logistic, params0, (x[:20], y[:20]), (x[20:], y[20:]), 15, 8, 0.5, jax.random.key(3)
        )
        h = rng.normal(size=20)
        _, grad = exact.metagradient(unroll, jnp.asarray(h), 15, segment=4)
        reference = central_differences(jax.jit(lambda h: exact.objective(unroll, h, 15, segment=0)), h, 1e-6)
        assert cosine(grad, reference) >= 0.999


@pytest.mark.parametrize("steps,segment", [(23, None), (23, 5), (16, 4), (7, 10)])
def test_rematerialised_run_equals_plain_reverse_mode(steps, segment):
    unroll = exact.schedule_unroll(LinearRegression(), optax.scale_by_adam(), steps, jax.random.key(4))
    h = jnp.full((steps,), jnp.log(0.03))
    plain = exact.metagradient(unroll, h, steps, segment=0)
    remat = exact.metagradient(unroll, h, steps, segment=segment)
    np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
    np.testing.assert_allclose(remat[1], plain[1], rtol=2e-5, atol=1e-9)


def _peak_temporary_bytes(unroll, h, steps, segment) -> int:
    grad = jax.jit(jax.grad(lambda h: exact.objective(unroll, h, steps, segment=segment)))
    return grad.lower(h).compile().memory_analysis().temp_size_in_bytes


def test_rematerialisation_keeps_memory_sublinear_in_the_run_length():
    """Reverse mode's temporary memory: plain grows with T, the √T segments grow as √T."""

    class Wide(LinearRegression):
        def init(self, key):
            return {"w": jnp.zeros((self.x.shape[1], 512), jnp.float32)}

        def loss(self, params, batch):
            x, y = batch
            return 0.5 * jnp.mean((jnp.tanh(x.astype(jnp.float32) @ params["w"]).sum(-1) - y) ** 2)

    sizes = {}
    for steps in (100, 400):
        unroll = exact.schedule_unroll(Wide(), optax.scale_by_adam(), steps, jax.random.key(0))
        h = jnp.full((steps,), -3.0)
        sizes[steps] = (_peak_temporary_bytes(unroll, h, steps, 0), _peak_temporary_bytes(unroll, h, steps, None))
    (plain_100, remat_100), (plain_400, remat_400) = sizes[100], sizes[400]
    assert plain_400 > 3 * plain_100  # linear: ×4 steps, ×~4 memory
    assert remat_400 < 2.5 * remat_100  # √T: ×4 steps, ×~2 memory
    assert remat_400 * 4 < plain_400


def test_a_diverging_run_gives_one_clear_line():
    unroll = exact.schedule_unroll(LinearRegression(), optax.identity(), 40, jax.random.key(5))
    with pytest.raises(FloatingPointError, match="not finite"):
        exact.metagradient(unroll, jnp.full((40,), jnp.log(1e3)), 40)
    with pytest.raises(ValueError, match="segment must be"):
        exact.run(unroll, jnp.zeros(40), 40, segment=-2)


def test_metagradient_descent_lowers_the_objective_and_keeps_finite_values():
    steps = 30
    unroll = exact.schedule_unroll(LinearRegression(), optax.identity(), steps, jax.random.key(6))
    h0 = jnp.full((steps,), jnp.log(0.01))
    descent = exact.descend(unroll, h0, steps, outer_steps=15, learning_rate=0.1)
    assert descent.stopped_at is None and len(descent.path) == 15
    assert min(descent.objectives) < 0.7 * descent.objectives[0]
    np.testing.assert_allclose(float(exact.objective(unroll, descent.best, steps)), min(descent.objectives), rtol=1e-5)
    diverging = exact.descend(unroll, jnp.full((steps,), jnp.log(1e3)), steps, outer_steps=3, learning_rate=0.1)
    assert diverging.stopped_at == 0 and diverging.objectives == [] and np.isfinite(diverging.h).all()


def test_a_non_differentiable_run_gives_one_clear_line():
    """Accuracy as the objective (a step function of h), a data-dependent while_loop in the step,
    and integer hyperparameters: each is one NotDifferentiableError line, never a JAX trace."""
    task = LinearRegression()
    unroll = exact.schedule_unroll(task, optax.identity(), 10, jax.random.key(0))
    h = jnp.full((10,), jnp.log(0.05))
    accuracy = unroll._replace(objective=lambda h, s: jnp.mean(jnp.argmax(jnp.stack([s[0]["w"], -s[0]["w"]]), 0)))
    with pytest.raises(exact.NotDifferentiableError, match="exactly zero in every coordinate"):
        exact.metagradient(accuracy, h, 10)

    def looping(h, s, t):
        moved = unroll.step(h, s, t)
        params, opt_state = moved
        params = jax.lax.while_loop(
            lambda p: jnp.sum(p["w"] ** 2) > 1e6, lambda p: jax.tree.map(lambda a: a / 2, p), params
        )
        return params, opt_state

    with pytest.raises(exact.NotDifferentiableError, match="cannot be differentiated in reverse mode"):
        exact.metagradient(unroll._replace(step=looping), h, 10)
    with pytest.raises(exact.NotDifferentiableError, match="hyperparameter h has dtype int32"):
        exact.metagradient(unroll, jnp.zeros(10, jnp.int32), 10)


def test_averaged_runs_give_the_mean_objective_and_metagradient():
    """exact.averaged (MGD's smoothing over a run's randomness): its value and metagradient are
    the means of the separate runs' (differentiation is linear)."""
    task, steps = LinearRegression(), 12
    runs = [exact.schedule_unroll(task, optax.scale_by_adam(), steps, jax.random.key(i)) for i in range(3)]
    h = jnp.linspace(-4.0, -2.0, steps)
    separate = [exact.metagradient(u, h, steps) for u in runs]
    value, grad = exact.metagradient(exact.averaged(runs), h, steps)
    np.testing.assert_allclose(value, np.mean([v for v, _ in separate]), rtol=1e-5)
    np.testing.assert_allclose(grad, np.mean([g for _, g in separate], 0), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="at least one run"):
        exact.averaged([])
