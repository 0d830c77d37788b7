"""Meta-training recipes (issue 38): the final-loss objective, training part of theta, adding a
head to a trained optimizer, the generalist's learned schedule and nominal term, and the fused
outer step — each against an independent reference."""

from __future__ import annotations

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from lopt.config import ConfigError
from lopt.meta_train.estimators import make_estimator
from lopt.meta_train.loop import merge_saved_theta
from lopt.meta_train.truncation import TruncationSchedule
from test_meta_train import TASK, WINDOW, LearnedLR

generalist_module = importlib.import_module("lopt.learned.generalist")  # the package re-exports a function of that name
HORIZON = 20


def exact_tail_gradient(theta, tail_steps):
    """∇ (1/T) Σ_{t ≥ T − tail_steps} L_t by backprop through the whole episode."""

    def objective(theta):
        lr, x, total = jnp.exp(theta["log_lr"]), TASK.init(None)["x"], 0.0
        for t in range(HORIZON):
            if t >= HORIZON - tail_steps:
                total = total + TASK.loss({"x": x}, None)
            x = x - lr * TASK.curvature * x
        return total / HORIZON

    return float(jax.grad(objective)(theta)["log_lr"])


@pytest.mark.parametrize("kind", ["pes", "nres"])
def test_tail_objective_estimates_the_gradient_of_the_final_losses(kind):
    """With objective_tail = 0.25 only the last 5 of 20 steps count; PES and NRES, averaged over
    episodes, match the exact gradient of that objective (not of the whole curve's)."""
    schedule = TruncationSchedule(WINDOW, HORIZON, HORIZON, "constant")
    estimator = make_estimator(kind, LearnedLR(), TASK, schedule, num_workers=512, sigma=0.05, objective_tail=0.25)
    theta = LearnedLR().init_meta(None)
    state = estimator.init(jax.random.key(0), theta)
    windows, estimates = HORIZON // WINDOW, []
    for i in range(windows * 5):
        grad, state, _ = estimator.step(jax.random.key(i + 1), theta, state)
        if i >= windows:
            estimates.append(float(grad["log_lr"]))
    exact_tail = exact_tail_gradient(theta, 5)
    exact_all = exact_tail_gradient(theta, HORIZON)
    assert np.mean(estimates) == pytest.approx(exact_tail, rel=0.15), (np.mean(estimates), exact_tail)
    assert abs(exact_tail - exact_all) > 0.5 * abs(exact_tail)  # the two objectives differ here


def test_trainable_perturbs_and_moves_only_the_matching_part():
    meta = generalist_module.GeneralistOptimizer(schedule_knots=4)
    task = lopt_task()
    schedule = TruncationSchedule(5, 10, 10, "constant")
    estimator = make_estimator("pes", meta, task, schedule, num_workers=4, sigma=0.01, trainable="schedule")
    theta = meta.init_meta(jax.random.key(0))
    state = estimator.init(jax.random.key(1), theta)
    for i in range(3):
        grad, state, _ = estimator.step(jax.random.key(2 + i), theta, state)
    for path, g in jax.tree_util.tree_leaves_with_path(grad):
        if "schedule" in jax.tree_util.keystr(path):
            assert float(jnp.abs(g).sum()) > 0
        else:
            assert float(jnp.abs(g).sum()) == 0.0, jax.tree_util.keystr(path)


def lopt_task():
    from lopt.tasks import build, task_spec

    return build(task_spec("digits-mlp-relu32"))


def test_learned_schedule_interpolates_its_knots_and_starts_at_one():
    knots = jnp.array([0.0, 1.0, -1.0], jnp.float32)
    num_steps = 101
    for step in (0, 49, 50, 74, 100):
        progress = (step + 1) / num_steps  # after step t's update, (t + 1) / T of the run is done
        # hand-computed: linear interpolation between knots at progress 0, 0.5, 1
        expected = np.interp(progress, [0.0, 0.5, 1.0], [0.0, 1.0, -1.0])
        got = float(generalist_module.learned_schedule(knots, jnp.int32(step), num_steps))
        assert got == pytest.approx(np.exp(expected), rel=1e-5)
    assert float(generalist_module.learned_schedule(jnp.zeros(8), jnp.int32(7), 50)) == 1.0
    far = float(generalist_module.learned_schedule(jnp.full(4, 40.0), jnp.int32(3), 10))
    assert far == pytest.approx(np.exp(generalist_module.MAX_SCHEDULE_LOG_MULTIPLIER))


def test_nominal_term_starts_near_the_hand_designed_direction():
    """nominal=True: d = x_adam + f(features) with a small output layer; at init the update is
    close to ortho-Adam's on the same gradients (cosine > 0.95), yet not equal to it."""
    meta = generalist_module.GeneralistOptimizer(init="random", nominal=True)
    theta = meta.init_meta(jax.random.key(3))
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}
    learned = meta.transform(theta, num_steps=10)
    clean = lopt.baselines.get("ortho_adam_cosine", lr=float(jnp.exp(theta["log_learning_rate"])), num_steps=10)
    s1, s2 = learned.init(params), clean.init(params)
    for _ in range(3):
        grads = {"w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}
        u1, s1 = learned.update(grads, s1, params)
        u2, s2 = clean.update(grads, s2, params)
    a, b = np.asarray(u1["w"]).ravel(), np.asarray(u2["w"]).ravel()
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert 0.95 < cosine < 0.99999, cosine
    with pytest.raises(ValueError, match="nominal"):
        generalist_module.GeneralistOptimizer(init="adam", nominal=True)


def test_options_add_a_head_to_a_saved_theta():
    base = generalist_module.GeneralistOptimizer()
    saved = jax.tree.map(lambda x: x + 0.5, base.init_meta(jax.random.key(0)))
    extended = generalist_module.GeneralistOptimizer(schedule_knots=6)
    merged = merge_saved_theta(extended.init_meta(jax.random.key(1)), saved, "saved")
    chex.assert_trees_all_equal(merged["layers"], saved["layers"])
    np.testing.assert_array_equal(merged["schedule"], np.zeros(6))
    wider = generalist_module.GeneralistOptimizer(hidden_sizes=(16, 8))
    with pytest.raises(ConfigError, match="change the shape"):
        merge_saved_theta(wider.init_meta(jax.random.key(1)), saved, "saved")


def test_fused_outer_step_equals_one_program_per_group(tmp_path):
    """run.fuse_groups compiles every group's population and the outer update as one program;
    the keys and the arithmetic are those of the per-group programs."""
    import dataclasses

    from lopt.meta_train.config import EstimatorSection, MetaTrainConfig, OptimizerSection, RunSection, TasksSection
    from lopt.meta_train.loop import MetaTrainer

    def trainer(fused):
        return MetaTrainer(
            MetaTrainConfig(
                optimizer=OptimizerSection(preset="small_mlp", options={"hidden_sizes": [4]}),
                tasks=TasksSection(names=("quadratic-10-cond100", "rosenbrock-2"), num_groups=2),
                estimator=EstimatorSection(num_workers=4, truncation_length=5, min_horizon=10, max_horizon=20),
                run=RunSection(output_dir=str(tmp_path / "run"), eval_every=0, fuse_groups=fused),
            )
        )

    per_group, fused = trainer(False), trainer(True)
    s1, s2 = per_group.initial_state(), fused.initial_state()
    chex.assert_trees_all_close(s1, s2)
    for step in range(3):
        s1, m1 = per_group.step(s1, step)
        s2, m2 = fused.step(s2, step)
    chex.assert_trees_all_close(s1.theta, s2.theta, rtol=1e-5, atol=1e-7)
    assert float(m1["meta_loss"]) == pytest.approx(float(m2["meta_loss"]), rel=1e-5)
    assert dataclasses.replace(fused.config.run, fuse_groups=False) == per_group.config.run


def test_relative_floor_drops_the_steps_below_it_from_the_meta_gradient():
    """relative_floor = 0.3 on a window whose loss falls below 0.3 × its first-window mean: the
    truncated-backprop gradient equals the gradient of mean_t log max(L_t, 0.3 L̄) computed by hand
    (L̄ held fixed), and differs from the unfloored one (the floored steps no longer count)."""
    schedule = TruncationSchedule(WINDOW, HORIZON, HORIZON, "constant")
    theta = {"log_lr": jnp.float32(np.log(0.45))}

    def window_losses(theta):
        lr, x, losses = jnp.exp(theta["log_lr"]), TASK.init(None)["x"], []
        for _ in range(WINDOW):
            losses.append(TASK.loss({"x": x}, None))
            x = x - lr * TASK.curvature * x
        return jnp.stack(losses)

    losses = window_losses(theta)
    floor = 0.3 * float(jnp.mean(losses))
    assert np.any(losses < floor) and np.any(losses > floor)  # the floor binds on part of the window
    by_hand = jax.grad(lambda t: jnp.mean(jnp.log(jnp.maximum(window_losses(t), floor))))(theta)["log_lr"]
    unfloored = jax.grad(lambda t: jnp.mean(jnp.log(window_losses(t))))(theta)["log_lr"]

    def estimate(relative_floor):
        estimator = make_estimator(
            "truncated_backprop",
            LearnedLR(),
            TASK,
            schedule,
            num_workers=1,
            meta_objective="log_loss",
            relative_floor=relative_floor,
        )
        grad, _, _ = estimator.step(jax.random.key(0), theta, estimator.init(jax.random.key(1), theta))
        return float(grad["log_lr"])

    assert estimate(0.3) == pytest.approx(float(by_hand), rel=1e-4)
    assert estimate(0.0) == pytest.approx(float(unfloored), rel=1e-4)
    assert abs(float(by_hand) - float(unfloored)) > 0.1 * abs(float(unfloored))


def test_relative_floor_outside_its_range_is_a_one_line_error():
    with pytest.raises(ConfigError, match="estimator.relative_floor"):
        config_class = lopt.meta_train.config.MetaTrainConfig
        lopt.config.load_config(config_class, "configs/meta_train/quickstart.toml", ["estimator.relative_floor=1.5"])
