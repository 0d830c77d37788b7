"""The baseline registry."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import tasks
from lopt import baselines


@pytest.fixture(scope="module")
def small_task():
    return tasks.build(tasks.MLPSpec("digits", (8,), "tanh", 32))


@pytest.mark.parametrize("name", baselines.names())
def test_every_entry_trains_a_small_task_without_nan(name, small_task):
    """Default settings never give NaN; the best LR of the grid lowers the loss by 10%+.

    One compiled call: the default LR and the grid are vmapped together."""
    entry = baselines.spec(name)
    lrs = jnp.asarray((entry.learning_rate, *entry.lr_grid), jnp.float32)
    losses = np.asarray(
        jax.jit(
            jax.vmap(
                lambda lr: (
                    tasks.train(
                        small_task, entry.make(lr), jax.random.key(0), num_steps=150, eval_params_fn=entry.eval_params
                    ).train_loss
                )
            )
        )(lrs)
    )
    assert np.all(np.isfinite(losses[0])), name
    start, end = losses[:, :10].mean(1), losses[:, -10:].mean(1)
    assert np.nanmin(np.where(np.isfinite(end), end / start, np.inf)) < 0.9, name
    assert entry.source and len(entry.lr_grid) >= 5
    assert all(a < b for a, b in zip(entry.lr_grid, entry.lr_grid[1:]))


def test_adam_entry_is_optax_adam_with_paper_defaults():
    params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
    grads = {"w": jnp.array([0.1, 0.2, -0.3]), "b": jnp.array(-1.0)}
    ours, reference = baselines.get("adam", lr=1e-2), optax.adam(1e-2, b1=0.9, b2=0.999, eps=1e-8)
    s1, s2 = ours.init(params), reference.init(params)
    for _ in range(3):
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = reference.update(grads, s2, params)
        jax.tree.map(np.testing.assert_array_equal, u1, u2)


def test_sgd_first_step_by_hand():
    params, grads = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.5, -1.0])}
    updates, _ = baselines.get("momentum", lr=0.1).update(grads, baselines.get("momentum", lr=0.1).init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.05, 0.1])


def test_learning_rate_can_be_traced_for_vmapped_sweeps(small_task):
    lrs = jnp.array([1e-3, 1e-2])
    run = jax.vmap(
        lambda lr: tasks.train(small_task, baselines.get("lion", lr=lr), jax.random.key(0), num_steps=5).train_loss
    )
    losses = jax.jit(run)(lrs)
    assert losses.shape == (2, 5) and not np.allclose(losses[0, -1], losses[1, -1])


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamm'; valid optimizers: sgd, momentum"):
        baselines.get("adamm")
    with pytest.raises(TypeError, match=r"adam has no hyperparameter 'beta1'; valid: learning_rate \(or lr\), b1"):
        baselines.get("adam", beta1=0.8)
    with pytest.raises(TypeError, match="either lr or learning_rate"):
        baselines.get("adam", lr=1.0, learning_rate=1.0)


def test_overrides_change_the_optimizer():
    params, grads = {"w": jnp.ones(2)}, {"w": jnp.ones(2)}
    plain = baselines.get("adamw", lr=0.1)
    decayed = baselines.get("adamw", lr=0.1, weight_decay=0.5)
    u1, _ = plain.update(grads, plain.init(params), params)
    u2, _ = decayed.update(grads, decayed.init(params), params)
    np.testing.assert_allclose(u2["w"] - u1["w"], -0.1 * (0.5 - 1e-4) * np.ones(2), rtol=1e-4)


def test_log_grid():
    assert baselines.log_grid(1e-4, 1e-1) == (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    assert baselines.log_grid(0.1, 10.0, per_decade=1) == (0.1, 1.0, 10.0)


def test_lion_cosine_by_hand():
    """Lion (Chen et al. 2023, Algorithm 2) with η_t = η · warm-up + cosine, computed in numpy:
    c = β1 m + (1 − β1) g; w ← w − η_t (sign(c) + λ w); m ← β2 m + (1 − β2) g. With T = 40 the
    warm-up is 2 steps (5%): η_t/η = (t+1)/2 for t < 2, then ½(1 + cos(π (t+1−2)/38))."""
    rng = np.random.default_rng(0)
    lr, wd, b1, b2, total = 3e-3, 1e-2, 0.9, 0.99, 40
    w = rng.normal(size=(3, 4)).astype(np.float32)
    params = {"w": jnp.asarray(w)}
    opt = baselines.get("lion_cosine", lr=lr, num_steps=total, weight_decay=wd)
    state = opt.init(params)
    m = np.zeros_like(w, dtype=np.float64)
    ref = w.astype(np.float64)
    for t in range(total):
        g = rng.normal(size=w.shape)
        updates, state = opt.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
        factor = (t + 1) / 2 if t < 2 else 0.5 * (1 + np.cos(np.pi * (t + 1 - 2) / (total - 2)))
        ref = ref - lr * factor * (np.sign(b1 * m + (1 - b1) * g) + wd * ref)
        m = b2 * m + (1 - b2) * g
        np.testing.assert_allclose(np.asarray(params["w"]), ref, rtol=1e-5, atol=1e-6, err_msg=f"step {t}")
    assert abs(factor) < 1e-12  # the run ends at rate 0
