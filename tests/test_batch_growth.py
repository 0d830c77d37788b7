"""Adaptive batch sizes (AdAdaGrad's norm and inner-product tests, `tasks.BatchGrowth`) against a
numpy transcription of the tests on a task whose per-example gradients are known."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.tasks.train import BatchGrowth, growing_batch_step, train


class MeanTask:
    """loss(p, batch) = mean_i ½‖p − x_i‖², x_i ~ N(μ, diag(σ²)): example i's gradient is p − x_i."""

    mu = jnp.array([1.0, -2.0, 0.5])
    sigma = jnp.array([0.5, 2.0, 1.0])

    def init(self, key):
        return jnp.zeros(3)

    def batch(self, key, split="train"):
        return {"x": self.mu + self.sigma * jax.random.normal(key, (8, 3))}

    def loss(self, params, batch):
        return 0.5 * jnp.mean(jnp.sum((params - batch["x"]) ** 2, axis=-1))


def numpy_next_halves(test, constant, params, key, halves, max_multiple):
    """The test's wanted count from the half-batch gradients g_j = p − mean(x of half j)."""
    task = MeanTask()
    xs = [np.asarray(task.batch(k)["x"], np.float64) for k in jax.random.split(key, max_multiple)]
    g = np.stack([params - x[h * 4 : (h + 1) * 4].mean(0) for x in xs for h in (0, 1)])[:halves]
    mean = g.mean(0)
    if test == "norm":
        variance = np.sum((g - mean) ** 2) / (halves - 1)
        wanted = variance / (constant**2 * mean @ mean)
    else:
        variance = np.sum((g @ mean - mean @ mean) ** 2) / (halves - 1)
        wanted = variance / (constant**2 * (mean @ mean) ** 2)
    return int(np.clip(max(halves, np.ceil(wanted)), 2, 2 * max_multiple)), mean


@pytest.mark.parametrize("test", ["norm", "inner_product"])
@pytest.mark.parametrize("halves", [2, 5])
def test_one_step_follows_the_test_and_averages_the_active_half_batches(test, halves):
    growth = BatchGrowth(test, 0.3, 4)
    params = jnp.array([0.9, -1.0, 0.7])  # near μ: a small mean gradient, the batch must grow
    key = jax.random.key(7)
    new_params, _, _, next_halves = growing_batch_step(
        MeanTask(),
        optax.with_extra_args_support(optax.sgd(1.0)),
        growth,
        params,
        optax.sgd(1.0).init(params),
        jnp.asarray(halves),
        key,
    )
    expected_halves, mean = numpy_next_halves(test, 0.3, np.asarray(params, np.float64), key, halves, 4)
    assert int(next_halves) == expected_halves
    np.testing.assert_allclose(np.asarray(new_params), np.asarray(params) - mean, rtol=1e-5)


def test_batch_grows_monotonically_as_the_gradient_shrinks():
    result = jax.jit(
        lambda k: train(MeanTask(), optax.adagrad(0.3), k, num_steps=60, batch_growth=BatchGrowth("norm", 0.5, 8))
    )(jax.random.key(0))
    multiple = np.asarray(result.batch_multiple)
    assert multiple[0] == 1.0 and np.all(np.diff(multiple) >= 0) and multiple[-1] == 8.0, multiple
    assert train(MeanTask(), optax.sgd(0.1), jax.random.key(0), num_steps=3).batch_multiple is None
    with pytest.raises(ValueError, match="'sum'"):
        train(MeanTask(), optax.sgd(0.1), jax.random.key(0), num_steps=3, batch_growth=BatchGrowth("sum"))
