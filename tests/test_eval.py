"""Evaluation: metrics by hand, a tiny suite end to end, cache reuse, the command line."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.eval import EvalConfig, metrics, run_eval
from lopt.eval.report import markdown_table, summarise
from lopt.eval.runner import Sweep
from lopt.cli import main


def test_final_loss_and_divergence_by_hand():
    curves = np.array(
        [
            [4.0] * 10 + [1.0] * 10,  # final 1.0, converged
            [1.0] * 10 + [2.0] * 10,  # ends above its start: diverged
            [1.0] * 19 + [np.nan],  # non-finite: diverged
        ]
    )
    np.testing.assert_allclose(metrics.final_loss(curves)[:2], [1.0, 2.0])
    assert np.isnan(metrics.final_loss(curves)[2])
    np.testing.assert_array_equal(metrics.diverged(curves), [False, True, True])


def test_tuned_index_ignores_diverged_learning_rates():
    good = np.linspace(2.0, 0.5, 20)
    better_but_one_seed_diverges = np.stack([np.linspace(2.0, 0.1, 20), np.full(20, np.inf)])
    grid = np.stack([np.stack([good, good]), better_but_one_seed_diverges])
    assert metrics.tuned_index(grid) == 0


def test_steps_to_target_and_smoothing():
    curve = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    np.testing.assert_allclose(metrics.smooth(curve, 2), [5.0, 4.5, 3.5, 2.5, 1.5])
    assert metrics.steps_to_target(curve, 2.5, window=2) == 4
    assert metrics.steps_to_target(curve, 0.5, window=1) is None
    assert metrics.geometric_mean(np.array([1.0, 4.0])) == pytest.approx(2.0)


def _sweep(optimizer, curve_scale):
    steps = np.arange(1, 101, dtype=float)
    curve = curve_scale / steps
    train = np.stack([np.stack([curve, curve * 1.1]), np.stack([curve * 2, curve * 2])])
    return Sweep("t", optimizer, np.array([1e-3, 1e-2]), train, np.zeros((2, 2, 0)), 0.0, 0.0)


def test_tuned_adam_has_speedup_one_against_itself():
    """Regression: 3 float32 seeds of tuned adam on mnist1d-mlp-gelu64x2 (500 steps). Smoothed
    with a float32 running sum (large early losses minus large shifted sums), the curve ended
    5e-6 above its own final loss, so adam 'never reached' it and its speedup read 0."""
    curves = np.load(Path(__file__).parent / "data" / "adam_mnist1d_tuned_curves.npy")
    assert curves.dtype == np.float32 and curves.shape == (3, 500)
    sweep = Sweep("t", "adam", np.array([1e-3]), curves[None], np.zeros((1, 3, 0)), 0.0, 0.0)
    (cell,) = summarise([sweep])
    assert cell.speedup_vs_reference == 1.0


def test_interquartile_mean_and_bootstrap_by_hand():
    # 8 values: the middle four (25th-75th percentile) are 3, 4, 5, 6.
    assert metrics.iqm(np.array([100.0, 1, 2, 3, 4, 5, 6, np.inf])) == pytest.approx(4.5)
    # 5 values: quartile cuts at 1.25 and 3.75 give weights .75, 1, .75 to 2, 3, 4.
    assert metrics.iqm(np.array([1.0, 2, 3, 4, 5])) == pytest.approx((0.75 * 2 + 3 + 0.75 * 4) / 2.5)
    assert np.isnan(metrics.iqm(np.array([1.0, np.inf, np.inf])))
    low, high = metrics.bootstrap_interval(np.array([1.0, 2, 3, 4, 5, 6, 7, 8]))
    assert low <= metrics.iqm(np.arange(1.0, 9)) <= high and low < high


def test_summary_speedup_and_table_by_hand():
    cells = {c.optimizer: c for c in summarise([_sweep("adam", 1.0), _sweep("fast", 0.5)])}
    # adam's tuned final loss: mean over steps 91..100 of 1/t, averaged with the 1.1x seed.
    expected = np.mean(1.0 / np.arange(91, 101)) * 1.05
    assert cells["adam"].final_train_mean == pytest.approx(expected)
    assert cells["adam"].tuned_lr == 1e-3 and cells["adam"].lr_at_grid_edge
    assert cells["fast"].speedup_vs_reference > 1.5
    table = markdown_table(list(cells.values()))
    assert "| fast |" in table and "100%" in table and "speedup (IQM)" in table
    assert summarise and "×" in table


@pytest.fixture
def tiny_config(tmp_path):
    return EvalConfig(
        tasks=("quadratic-10-cond100",),
        optimizers=("adam", "sgd"),
        num_steps=40,
        eval_every=20,
        seeds=2,
        output_dir=str(tmp_path / "out"),
    )


def test_tiny_suite_end_to_end_and_cache_reuse(tiny_config):
    first = run_eval(tiny_config, progress=False)
    for path in first.files.values():
        assert path.exists() and path.stat().st_size > 0
    payload = json.loads(first.files["json"].read_text())
    assert {c["optimizer"] for c in payload["cells"]} == {"adam", "sgd"}
    assert not any(s.cached for s in first.sweeps)
    second = run_eval(tiny_config, progress=False)
    assert all(s.cached for s in second.sweeps)
    for a, b in zip(first.sweeps, second.sweeps):
        np.testing.assert_array_equal(a.train_loss, b.train_loss)
    # one more optimizer trains only that one
    import dataclasses

    third = run_eval(dataclasses.replace(tiny_config, optimizers=("adam", "sgd", "lion")), progress=False)
    assert [s.cached for s in third.sweeps] == [True, True, False]


def test_damaged_cache_entry_is_recomputed(tiny_config):
    first = run_eval(tiny_config, progress=False)
    cache = sorted((first.files["json"].parent / "cache").glob("*.npz"))
    cache[0].write_bytes(b"not an npz")
    second = run_eval(tiny_config, progress=False)
    assert sorted(s.cached for s in second.sweeps) == [False, True]


def test_cli_reports_config_errors(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('optimizers = ["adam", "adamm"]\n')
    assert main(["eval", str(path), "--quiet"]) == 2
    assert "unknown optimizer 'adamm'" in capsys.readouterr().err
    path.write_text('suite = "everything"\n')
    assert main(["eval", str(path), "--quiet"]) == 2
    assert "valid suites: embedded-small" in capsys.readouterr().err


def test_cli_runs_a_tiny_eval(tmp_path, capsys):
    path = tmp_path / "job.toml"
    path.write_text('tasks = ["rosenbrock-2"]\noptimizers = ["adam"]\nnum_steps = 20\neval_every = 10\nseeds = 1\n')
    assert main(["eval", str(path), "--quiet", "--set", f"output_dir={tmp_path / 'o'}"]) == 0
    out = capsys.readouterr().out
    assert "| adam |" in out and "wrote curves" in out


def test_state_bytes_counts_adam_moments_by_hand():
    from lopt.eval.cost import state_bytes

    params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}
    # adam: mu and nu like params (16 floats each) + an int32 count; sgd without momentum: nothing.
    assert state_bytes(optax.adam(1e-3), params) == 2 * 16 * 4 + 4
    assert state_bytes(optax.sgd(0.1), params) == 0
    assert state_bytes(optax.sgd(0.1, momentum=0.9), params) == 16 * 4


def test_cost_columns_relative_to_adam(tiny_config):
    import dataclasses

    from lopt.eval.cost import Cost
    from lopt.eval.report import cost_table

    costs = {("t", "adam"): Cost(2e-3, 100), ("t", "fast"): Cost(1e-3, 50)}
    cells = {c.optimizer: c for c in summarise([_sweep("adam", 1.0), _sweep("fast", 0.5)], costs)}
    assert cells["fast"].step_time_vs_reference == pytest.approx(0.5)
    assert cells["fast"].state_memory_vs_reference == pytest.approx(0.5)
    assert cells["adam"].step_ms == pytest.approx(2.0)
    table = cost_table(list(cells.values()))
    assert "| fast | 1 | 0.50× | 0.0 | 0.50× |" in table
    outcome = run_eval(dataclasses.replace(tiny_config, optimizers=("adam", "sgd")), progress=False)
    measured = {c.optimizer: c for c in outcome.cells}
    assert measured["adam"].step_time_vs_reference == pytest.approx(1.0)
    assert measured["sgd"].state_memory_vs_reference == 0.0 and measured["sgd"].step_ms > 0
    assert "Optimizer cost" in outcome.table


def test_cost_measurement_gives_optimizers_the_training_steps_extra_args():
    """Issue 16 (6): eval's cost loop passes every extra argument the training step passes
    (it lacked `sampled_obj_fn`, so Sophia-G was timed on its fallback path)."""
    import jax

    from lopt.eval.cost import measure
    from lopt.tasks.train import extra_args

    seen = []

    def update(updates, state, params=None, **extra):
        seen.append(sorted(k for k, v in extra.items() if v is not None))
        return jax.tree.map(jnp.zeros_like, updates), state

    opt = optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)
    measure("digits-mlp-relu32", opt, steps=1, repeats=1)
    expected = sorted(extra_args(None, None, jnp.zeros(())))
    assert seen and seen[0] == expected and "sampled_obj_fn" in expected


def test_a_longer_entry_tells_scheduled_methods_its_own_run_length(tmp_path):
    """`name*3` runs 3x the suite's steps; a cosine schedule told the suite's length would reach 0
    at step 20 and leave the parameters frozen for the remaining 40 steps."""
    from lopt.eval.runner import baseline_candidate

    config = EvalConfig(
        tasks=("quadratic-10-cond100*3",),
        optimizers=("adamw_cosine",),
        num_steps=20,
        eval_every=10,
        seeds=1,
        measure_cost=False,
        output_dir=str(tmp_path / "out"),
    )
    outcome = run_eval(config, progress=False)
    (sweep,) = [s for s in outcome.sweeps if s.optimizer == "adamw_cosine"]
    curve = sweep.train_loss[int(np.argmin(sweep.train_loss[:, 0, -1])), 0]
    assert curve.shape == (60,)
    assert curve[-1] < curve[25] < curve[21]  # still training after step 20
    # the run length is part of the cache key of a method that schedules over it
    import lopt

    spec = lopt.baselines.spec("adamw_cosine")
    assert baseline_candidate(spec, 20).fingerprint != baseline_candidate(spec, 60).fingerprint
    adam = lopt.baselines.spec("adam")
    assert baseline_candidate(adam, 20).fingerprint == baseline_candidate(adam, 60).fingerprint
