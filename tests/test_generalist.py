"""The generalist learned optimizer, task augmentation, the log-loss objective and the
generalisation suite's plumbing, each against an independent numpy or optax reference."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt.eval.runner import learned_candidates
from lopt.eval.suites import SUITES, parse_entry
from lopt.learned import generalist
from lopt.learned.generalist import newton_schulz, newton_schulz_many, schedule_factor
from lopt.meta_train.augment import Augmentation
from lopt.meta_train.estimators import make_estimator
from lopt.meta_train.truncation import TruncationSchedule
from lopt.tasks import NAMED_TASKS, get_task, task_spec, train


def numpy_newton_schulz(x: np.ndarray, steps: int = 5) -> np.ndarray:
    """Muon's quintic iteration (Jordan et al. 2024) transcribed in float64 numpy."""
    a, b, c = 3.4445, -4.7750, 2.0315
    transpose = x.shape[0] > x.shape[1]
    x = x.T if transpose else x
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transpose else x


@pytest.mark.parametrize("shape", [(6, 4), (4, 9)])
def test_newton_schulz_matches_numpy_and_flattens_the_spectrum(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = np.asarray(newton_schulz(jnp.asarray(x)))
    np.testing.assert_allclose(out, numpy_newton_schulz(x.astype(np.float64)), rtol=2e-4, atol=2e-5)
    singular = np.linalg.svd(out, compute_uv=False)
    assert singular.min() > 0.6 and singular.max() < 1.25  # Muon's iteration lands in ~[0.7, 1.2]
    u, _, vt = np.linalg.svd(x, full_matrices=False)
    assert np.abs(np.sum(out * (u @ vt))) / np.linalg.norm(u @ vt) ** 2 > 0.7  # aligned with U Vᵀ


def test_schedule_factor_by_hand():
    total, warmup = 100, 0.1
    values = [float(schedule_factor(jnp.int32(t), total, "cosine", warmup, 0.0)) for t in (0, 4, 9, 54, 99)]
    expected = [1 / 10, 5 / 10, 1.0, 0.5 * (1 + np.cos(np.pi * 45 / 90)), 0.0]
    np.testing.assert_allclose(values, expected, atol=1e-6)
    assert float(schedule_factor(jnp.int32(50), total, "constant", 0.0, 0.0)) == 1.0
    # no warm-up still ramps over one step: progress after it is (t + 1 − 1) / (total − 1)
    np.testing.assert_allclose(
        float(schedule_factor(jnp.int32(49), total, "linear", 0.0, 0.2)), 0.2 + 0.8 * (1 - 49 / 99), atol=1e-6
    )


def _params():
    rng = np.random.default_rng(1)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
        },
        "embed": {"embedding": jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)},
    }


def test_adam_start_is_normalised_adam_direction_orthogonalised_on_matrices():
    """At init='adam' the first step on a matrix is −η·s(0)·unit_rms(NS(m/√v normalised)); the
    bias and the embedding (path matches adam_paths) take Adam with β (0.9, 0.95), as optax."""
    meta = generalist(learning_rate=1e-2, warmup_fraction=0.0, schedule="constant")
    theta = meta.init_meta(jax.random.key(3))
    opt = meta.transform(theta, num_steps=10)
    params = _params()
    grads = jax.tree.map(lambda p: jnp.sin(3.0 * p) + 0.1, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    chex.assert_trees_all_equal_shapes(updates, params)

    g = np.asarray(grads["dense"]["kernel"], np.float64)
    m, v = 0.1 * g, 0.05 * g**2  # one step of momentum 0.9 and rms 0.95 from zero
    feature = m / np.sqrt(v + 1e-12)
    feature = feature / np.sqrt(np.mean(feature**2) + 1e-18)  # per-tensor input normalisation
    direction = numpy_newton_schulz(feature)
    direction = direction / np.sqrt(np.mean(direction**2))
    np.testing.assert_allclose(np.asarray(updates["dense"]["kernel"]), -1e-2 * direction, rtol=1e-3, atol=1e-6)

    reference = optax.adam(1e-2, b1=0.9, b2=0.95, eps=1e-8)
    expected, _ = reference.update(grads, reference.init(params), params)
    for path in (("dense", "bias"), ("embed", "embedding")):
        np.testing.assert_allclose(
            np.asarray(updates[path[0]][path[1]]), np.asarray(expected[path[0]][path[1]]), rtol=1e-5, atol=1e-8
        )


def test_scale_learning_rate_scales_every_update_and_survives_save_load(tmp_path):
    meta = generalist()
    theta = meta.init_meta(jax.random.key(0))
    params = _params()
    grads = jax.tree.map(lambda p: jnp.cos(p), params)
    base, _ = meta.transform(theta, num_steps=50).update(
        grads, meta.transform(theta, num_steps=50).init(params), params
    )
    scaled_opt = meta.transform(meta.scale_learning_rate(theta, 3.0), num_steps=50)
    scaled, _ = scaled_opt.update(grads, scaled_opt.init(params), params)
    chex.assert_trees_all_close(scaled, jax.tree.map(lambda u: 3.0 * u, base), rtol=1e-5)

    lopt.save(tmp_path / "gen", meta, theta, num_steps=50)
    loaded = lopt.load(tmp_path / "gen")
    again, _ = loaded.update(grads, loaded.init(params), params)
    chex.assert_trees_all_close(again, base)


def test_generalist_trains_a_transformer_and_a_conv_net_without_nan():
    meta = generalist()
    opt = meta.transform(meta.init_meta(jax.random.key(0)), num_steps=30)
    for name in ("pytext-transformer-32x1", "digits-conv-16-32"):
        losses = np.asarray(train(get_task(name), opt, jax.random.key(1), num_steps=30).train_loss)
        assert np.all(np.isfinite(losses)) and losses[-5:].mean() < losses[0]


def test_bad_generalist_configs_name_the_problem():
    with pytest.raises(ValueError, match="init"):
        generalist(init="zeros")
    with pytest.raises(ValueError, match="schedule"):
        generalist(schedule="step")
    with pytest.raises(ValueError, match="adam_paths"):
        generalist(adam_paths="(")
    with pytest.raises(ValueError, match="ns_dtype"):
        generalist(ns_dtype="float16")


def test_batched_newton_schulz_is_each_matrix_on_its_own():
    """Same-shape matrices share one vmapped iteration; each keeps its own norm (scaled copies
    give the same orthogonal factor), and the order of the input list is kept."""
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=s).astype(np.float32) for s in [(6, 4), (4, 9), (6, 4), (6, 4), (5, 5)]]
    xs[2] = 100.0 * xs[0]
    out = newton_schulz_many([jnp.asarray(x) for x in xs])
    for x, o in zip(xs, out):
        assert o.shape == x.shape
        np.testing.assert_allclose(np.asarray(o), numpy_newton_schulz(x.astype(np.float64)), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(out[2]), rtol=1e-5, atol=1e-6)


def test_bfloat16_newton_schulz_stays_near_float32():
    """Muon's bf16 iteration: float32 out, within a few percent of the float64 reference, and
    the generalist's unit-RMS update with it stays within a few percent of float32's."""
    x = np.random.default_rng(4).normal(size=(64, 96)).astype(np.float32)
    out = newton_schulz(jnp.asarray(x), dtype=jnp.bfloat16)
    assert out.dtype == jnp.float32
    reference = numpy_newton_schulz(x.astype(np.float64))
    relative = np.linalg.norm(np.asarray(out) - reference) / np.linalg.norm(reference)
    assert 1e-3 < relative < 0.1  # bf16 really ran (not exact), and is close
    params = {"w": jnp.asarray(x), "b": jnp.zeros((96,))}
    grads = jax.tree.map(lambda p: 0.01 * jnp.cos(p + 1.0), params)
    updates = {}
    for dtype in ("float32", "bfloat16"):
        meta = generalist(ns_dtype=dtype)
        opt = meta.transform(meta.init_meta(jax.random.key(0)), num_steps=10)
        updates[dtype], _ = opt.update(grads, opt.init(params), params)
    w32, w16 = np.asarray(updates["float32"]["w"]), np.asarray(updates["bfloat16"]["w"])
    assert 1e-3 < np.linalg.norm(w16 - w32) / np.linalg.norm(w32) < 0.1
    np.testing.assert_array_equal(np.asarray(updates["float32"]["b"]), np.asarray(updates["bfloat16"]["b"]))


def test_reparameterised_task_scales_parameters_and_gradients_inversely():
    task = get_task("digits-mlp-relu32")
    augmentation = Augmentation(tensor_log10=1.0, global_log10=1.0, loss_log10=1.0)
    episode = jax.random.key_data(jax.random.key(7))
    wrapped = augmentation.wrap(task, episode)
    p = task.init(jax.random.key(0))
    q = wrapped.init(jax.random.key(0))
    batch = task.batch(jax.random.key(1))
    scales, k = wrapped.scales, float(wrapped.loss_scale)
    chex.assert_trees_all_close(q, jax.tree.map(lambda a, s: a * s, p, scales), rtol=1e-6)
    np.testing.assert_allclose(float(wrapped.loss(q, batch)), k * float(task.loss(p, batch)), rtol=1e-5)
    grad_p, grad_q = jax.grad(task.loss)(p, batch), jax.grad(wrapped.loss)(q, batch)
    chex.assert_trees_all_close(grad_q, jax.tree.map(lambda g, s: k * g / s, grad_p, scales), rtol=1e-4, atol=1e-9)
    factors = np.log10(np.asarray(jax.tree.leaves(scales)))
    assert np.all(np.abs(factors) <= 2.0) and np.ptp(factors) > 0.01  # per-tensor factors differ
    assert augmentation.wrap(task, episode).scales is not None  # same episode, same draw
    assert Augmentation().wrap(task, episode) is task


def test_log_loss_objective_is_blind_to_loss_rescaling():
    """Antithetic differences of the log-loss objective do not change when every loss is
    multiplied by k (the mean of log(k·L) is log k + mean log L), and a real window runs."""
    meta = generalist()
    theta = meta.init_meta(jax.random.key(0))
    schedule = TruncationSchedule(5, 10, 10, "constant")
    task = get_task("quadratic-10-cond100")
    estimator = make_estimator(
        "antithetic_es", meta, task, schedule, 2, 0.01, 1e9, "train", Augmentation(loss_log10=2.0), "log_loss"
    )
    positive, negative = jnp.asarray([0.3, 0.2, 0.1]), jnp.asarray([0.5, 0.25, 0.2])
    for k in (1e-2, 1.0, 37.0):
        np.testing.assert_allclose(
            float(estimator._objective(k * positive) - estimator._objective(k * negative)),
            float(np.mean(np.log([0.3, 0.2, 0.1])) - np.mean(np.log([0.5, 0.25, 0.2]))),
            rtol=1e-5,
        )
    state = estimator.init(jax.random.key(1), theta)
    grad, _, metrics = estimator.step(jax.random.key(2), theta, state)
    assert np.isfinite(float(metrics["meta_loss"])) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
    with pytest.raises(ValueError, match="meta_objective"):
        make_estimator("pes", meta, task, schedule, meta_objective="sqrt")


def test_generalisation_suite_is_held_out_and_well_formed():
    names = [parse_entry(e)[0] for e in SUITES["generalisation"]]
    assert len(SUITES["generalisation"]) >= 12 and all(n in NAMED_TASKS for n in names)
    assert {parse_entry(e)[1] for e in SUITES["generalisation"]} == {1, 5}
    assert not set(names) & set(SUITES["validation"])
    kinds = {task_spec(n).kind for n in names}
    assert {"mlp", "conv", "transformer", "regression"} <= kinds
    assert any(getattr(task_spec(n), "loss", "cross_entropy") == "squared_error" for n in names)
    assert parse_entry("a*3") == ("a", 3)
    with pytest.raises(ValueError, match="whole number"):
        parse_entry("a*x")


def test_square_loss_and_regression_tasks_by_hand():
    task = get_task("digits-mlp-relu128x2-mse")
    params = task.init(jax.random.key(0))
    batch = task.batch(jax.random.key(1))
    logits = np.asarray(task.model.apply({"params": params}, batch["x"]))
    onehot = np.eye(10)[np.asarray(batch["y"])]
    np.testing.assert_allclose(float(task.loss(params, batch)), np.mean(np.sum((logits - onehot) ** 2, -1)), rtol=1e-5)
    regression = get_task("regression-mlp-relu128x2")
    batch = regression.batch(jax.random.key(2))
    assert batch["x"].shape == (128, 16) and batch["y"].shape == (128, 4)
    assert not np.allclose(np.asarray(regression.batch(jax.random.key(2), "test")["x"]), np.asarray(batch["x"]))


def test_learned_candidates_are_untuned_and_lr_swept(tmp_path):
    meta = generalist()
    lopt.save(tmp_path / "gen", meta, meta.init_meta(jax.random.key(0)), num_steps=20)
    untuned, tuned = learned_candidates(str(tmp_path / "gen"), 20)
    assert untuned.lr_grid == (1.0,) and not untuned.tuned
    assert tuned.name.endswith("(LR-tuned)") and len(tuned.lr_grid) >= 7 and tuned.tuned


def test_adamw_cosine_follows_warmup_then_cosine():
    opt = lopt.baselines.get("adamw_cosine", lr=1e-2, num_steps=100, weight_decay=0.0)
    params = {"x": jnp.zeros(())}
    state = opt.init(params)
    steps = []
    for _ in range(100):
        update, state = opt.update({"x": jnp.ones(())}, state, params)
        steps.append(-float(update["x"]))
    # constant gradient: Adam's unit direction, so each step is the schedule's value
    shape = [min(t / 5, 1.0) if t < 5 else 0.5 * (1 + np.cos(np.pi * (t - 5) / 95)) for t in range(100)]
    np.testing.assert_allclose(steps, 1e-2 * np.asarray(shape), rtol=1e-3, atol=1e-7)


def test_pallas_feature_statistics_equal_xla():
    """kernel='interpret' runs the one-pass Pallas statistics kernel (as 'auto' does on GPUs for
    matrices of 65,536+ elements) through Pallas' interpreter: the same update as XLA's means."""
    params = {"w": jax.random.normal(jax.random.key(5), (256, 256)) * 0.1, "b": jnp.zeros((256,))}
    grads = jax.tree.map(lambda p: 0.01 * jnp.cos(3.0 * p + 1.0), params)
    updates = {}
    for kernel in ("xla", "interpret"):
        meta = generalist(kernel=kernel)
        opt = meta.transform(meta.init_meta(jax.random.key(0)), num_steps=10)
        state = opt.init(params)
        for _ in range(2):
            updates[kernel], state = jax.jit(opt.update)(grads, state, params)
    chex.assert_trees_all_close(updates["interpret"], updates["xla"], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="kernel"):
        generalist(kernel="native")
