"""Meta-training: estimators against the exact full-episode gradient, divergence masking,
sharding, exact resume, and the command line."""

import dataclasses
import json
import re
import shutil
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.config import ConfigError
from lopt.meta_train.config import (
    MetaTrainConfig,
    OuterSection,
    RunSection,
    TasksSection,
    EstimatorSection,
    OptimizerSection,
)
from lopt.meta_train.estimators import make_estimator
from lopt.meta_train.loop import MetaTrainer
from lopt.meta_train.run import meta_train
from lopt.meta_train.sharding import population_mesh, replicate, shard_population
from lopt.meta_train.truncation import TruncationSchedule


@dataclasses.dataclass(frozen=True)
class LearnedLR:
    """A one-parameter meta-optimizer: SGD with learning rate exp(theta)."""

    kind: ClassVar[str] = "test_learned_lr"

    def init_meta(self, key):
        return {"log_lr": jnp.float32(np.log(0.1))}

    def transform(self, theta, *, num_steps):
        del num_steps
        return optax.scale(-jnp.exp(theta["log_lr"]))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FixedQuadratic:
    """0.5 Σ h x² from a fixed start (no randomness): the exact meta-gradient is one backprop."""

    curvature: jax.Array

    def init(self, key):
        return {"x": jnp.ones_like(self.curvature)}

    def loss(self, params, batch):
        return 0.5 * jnp.sum(self.curvature * params["x"] ** 2)

    def batch(self, key, split="train"):
        return jnp.zeros(())


HORIZON, WINDOW = 20, 5
TASK = FixedQuadratic(jnp.array([1.0, 4.0], jnp.float32))


def exact_episode_gradient(theta, horizon=HORIZON):
    def episode_loss(theta):
        lr, x, total = jnp.exp(theta["log_lr"]), TASK.init(None)["x"], 0.0
        for _ in range(horizon):
            total = total + TASK.loss({"x": x}, None)
            x = x - lr * TASK.curvature * x
        return total / horizon

    return jax.grad(episode_loss)(theta)["log_lr"]


def average_gradient(kind, num_workers=512, sigma=0.05, horizon=HORIZON):
    """Mean estimate over full episodes, after every worker finished its partial first one."""
    schedule = TruncationSchedule(WINDOW, horizon, horizon, "constant")
    estimator = make_estimator(kind, LearnedLR(), TASK, schedule, num_workers=num_workers, sigma=sigma)
    theta = LearnedLR().init_meta(None)
    state = estimator.init(jax.random.key(0), theta)
    windows = horizon // WINDOW
    estimates = []
    for i in range(windows * 5):
        grad, state, metrics = estimator.step(jax.random.key(i + 1), theta, state)
        if i >= windows:
            estimates.append(float(grad["log_lr"]))
    return np.mean(estimates), theta


@pytest.mark.parametrize("kind", ["pes", "nres"])
def test_unbiased_estimators_match_the_exact_full_episode_gradient(kind):
    """Averaged over an episode's windows, PES/NRES estimate ∇ mean_w L̄_w = ∇ (1/T) Σ_t L_t."""
    estimate, theta = average_gradient(kind)
    exact = float(exact_episode_gradient(theta))
    assert estimate == pytest.approx(exact, rel=0.1), (kind, estimate, exact)


def test_pes_agrees_with_the_exact_metagradient_of_lopt_hypergrad():
    """The same episode as an `lopt.hypergrad.exact.Unroll` (the running mean of the step losses
    carried in the state): its exact metagradient equals the hand-unrolled one, and PES's
    average over 512 workers agrees with it (in expectation; 10% at this seed count)."""
    from lopt.hypergrad import exact

    def step(theta, state, t):
        x, total = state
        total = total + TASK.loss({"x": x}, None)
        return x - jnp.exp(theta["log_lr"]) * TASK.curvature * x, total

    unroll = exact.Unroll(lambda theta: (TASK.init(None)["x"], jnp.zeros(())), step, lambda th, s: s[1] / HORIZON)
    theta = LearnedLR().init_meta(None)
    _, grad = exact.metagradient(unroll, theta, HORIZON)
    assert float(grad["log_lr"]) == pytest.approx(float(exact_episode_gradient(theta)), rel=1e-5)
    estimate, _ = average_gradient("pes")
    assert estimate == pytest.approx(float(grad["log_lr"]), rel=0.1)


def test_antithetic_es_matches_the_analytic_gradient_when_a_window_is_the_episode():
    """With W = T every window is a whole episode from a fresh start: ES targets the gradient
    of the Gaussian-smoothed episode loss, which for small σ is the exact gradient."""
    estimate, theta = average_gradient("antithetic_es", num_workers=4096, sigma=0.02, horizon=WINDOW)
    exact = float(exact_episode_gradient(theta, horizon=WINDOW))
    assert estimate == pytest.approx(exact, rel=0.05), (estimate, exact)


@pytest.mark.parametrize("kind", ["truncated_backprop", "antithetic_es"])
def test_truncated_estimators_are_biased_on_long_episodes(kind):
    estimate, theta = average_gradient(kind)
    exact = float(exact_episode_gradient(theta))
    assert abs(estimate - exact) > 0.3 * abs(exact), (kind, estimate, exact)
    assert np.sign(estimate) == np.sign(exact)


def test_a_fraction_of_diverging_workers_is_masked_and_theta_stays_finite(tmp_path):
    """Rosenbrock from uniform(-2, 2) starts explodes for some workers at a large step: those are
    masked and counted while the rest still produce a finite gradient."""
    config = tiny_config(tmp_path / "fault", steps=4)
    config = dataclasses.replace(
        config,
        optimizer=OptimizerSection("small_mlp", {"hidden_sizes": [4, 4], "step_mult": 0.3}),
        tasks=TasksSection(names=("rosenbrock-2",), num_groups=1, lifetime=4),
        estimator=EstimatorSection(
            kind="pes", num_workers=16, truncation_length=5, min_horizon=10, max_horizon=20, divergence_factor=1.5
        ),
    )
    trainer = MetaTrainer(config)
    state = trainer.initial_state()
    diverged = []
    for step in range(4):
        state, summary = trainer.step(state, step)
        diverged.append(int(summary["diverged"]))
        chex.assert_tree_all_finite(state.theta)
    assert 0 < sum(diverged) < 16 * 4, diverged


def test_diverging_workers_are_masked_counted_and_reset():
    class Exploding(LearnedLR):
        def init_meta(self, key):
            return {"log_lr": jnp.float32(np.log(3.0))}  # lr·h > 2: the quadratic diverges

    schedule = TruncationSchedule(WINDOW, HORIZON, HORIZON, "constant")
    for kind in ("pes", "truncated_backprop"):
        estimator = make_estimator(kind, Exploding(), TASK, schedule, num_workers=4, divergence_factor=10.0)
        theta = Exploding().init_meta(None)
        state = estimator.init(jax.random.key(0), theta)
        total_bad = 0
        for i in range(6):
            grad, state, metrics = estimator.step(jax.random.key(i), theta, state)
            chex.assert_tree_all_finite(grad)
            total_bad += int(metrics["diverged"])
        assert total_bad > 0
        assert np.all(np.asarray(state.positive.step) <= HORIZON)


def test_non_finite_outer_gradient_is_skipped():
    trainer = MetaTrainer(tiny_config("/unused"))
    theta = {"w": jnp.ones(3)}
    outer_state = trainer.outer.init(theta)
    new_theta, _, finite, _ = jax.jit(trainer._apply_gradient)(
        theta, outer_state, {"w": jnp.array([1.0, jnp.nan, 0.0])}
    )
    assert not bool(finite)
    chex.assert_trees_all_equal(new_theta, theta)


def test_sharded_population_step_equals_single_device():
    assert len(jax.devices()) == 8, "conftest provides eight CPU devices"
    schedule = TruncationSchedule(WINDOW, HORIZON, HORIZON, "constant")
    estimator = make_estimator("pes", LearnedLR(), TASK, schedule, num_workers=8, sigma=0.05)
    theta = LearnedLR().init_meta(None)
    plain = estimator.init(jax.random.key(0), theta)
    mesh = population_mesh(8)
    sharded = shard_population(plain, mesh)
    assert len(sharded.positive.step.sharding.device_set) == 8
    g1, s1, _ = estimator.step(jax.random.key(1), theta, plain)
    g2, s2, _ = estimator.step(jax.random.key(1), theta, sharded)
    chex.assert_trees_all_close(g1, g2, rtol=1e-5)
    chex.assert_trees_all_close(s1, s2, rtol=1e-5)


def test_population_mesh_step_adds_devices_in_one_all_reduce():
    # under the mesh each device sums its workers and one all-reduce adds the devices' totals
    schedule = TruncationSchedule(WINDOW, HORIZON, HORIZON, "constant")
    mesh = population_mesh(8)
    plain = make_estimator("pes", LearnedLR(), TASK, schedule, num_workers=8, sigma=0.05)
    split = make_estimator("pes", LearnedLR(), TASK, schedule, num_workers=8, sigma=0.05, mesh=mesh)
    theta = LearnedLR().init_meta(None)
    state = plain.init(jax.random.key(0), theta)
    args = (jax.random.key(1), replicate(theta, mesh), shard_population(state, mesh))
    g1, s1, m1 = plain.step(jax.random.key(1), theta, state)
    g2, s2, m2 = split.step(*args)
    chex.assert_trees_all_close(g1, g2, rtol=1e-5)
    chex.assert_trees_all_close(s1, s2, rtol=1e-5)
    chex.assert_trees_all_close(m1, m2, rtol=1e-5)
    hlo = split._compiled_step.lower(TASK, *args).compile().as_text()
    collectives = [
        line
        for line in hlo.splitlines()
        if re.search(r"= .*\b(all-reduce|all-reduce-start|all-gather|reduce-scatter)\(", line)
    ]
    assert len(collectives) == 1, collectives


def tiny_config(output_dir, steps=6):
    return MetaTrainConfig(
        optimizer=OptimizerSection("small_mlp", {"hidden_sizes": [4, 4]}),
        tasks=TasksSection(names=("quadratic-10-cond100", "rosenbrock-2"), num_groups=2, lifetime=4),
        estimator=EstimatorSection(kind="pes", num_workers=4, truncation_length=5, min_horizon=10, max_horizon=20),
        outer=OuterSection(steps=steps, learning_rate=1e-3),
        run=RunSection(
            output_dir=str(output_dir),
            checkpoint_every=3,
            log_every=1,
            eval_every=0,
            eval_task="quadratic-10-cond100",
            eval_steps=20,
        ),
    )


def test_killed_job_resumes_exactly(tmp_path):
    straight = meta_train(tiny_config(tmp_path / "a"), progress=False)
    first = meta_train(tiny_config(tmp_path / "b"), progress=False, stop_after=3)
    assert first["steps"] == 3 and "optimizer" not in first
    second = meta_train(tiny_config(tmp_path / "b"), progress=False)
    assert second["resumed"] and second["steps"] == 6
    import lopt

    _, theta_a = lopt.load_meta(straight["optimizer"])
    _, theta_b = lopt.load_meta(second["optimizer"])
    chex.assert_trees_all_equal(theta_a, theta_b)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_resume_from_the_outer_part_alone(tmp_path):
    """A run moved without `checkpoints/` (its populations) resumes from `outer/`: theta, the
    outer optimizer's state and the step kept, fresh workers. Stopped at a task change (step 3,
    lifetime 3), where the straight run starts fresh workers too, it must match it exactly."""
    import shutil

    import lopt

    def config(out):
        base = tiny_config(out)
        return dataclasses.replace(base, tasks=dataclasses.replace(base.tasks, lifetime=3))

    straight = meta_train(config(tmp_path / "a"), progress=False)
    meta_train(config(tmp_path / "b"), progress=False, stop_after=3)
    assert (tmp_path / "b" / "outer").is_dir()
    shutil.rmtree(tmp_path / "b" / "checkpoints")
    moved = meta_train(config(tmp_path / "b"), progress=False)
    assert moved["resumed"] and moved["steps"] == 6
    chex.assert_trees_all_equal(lopt.load_meta(straight["optimizer"])[1], lopt.load_meta(moved["optimizer"])[1])


def test_resume_refuses_a_different_config(tmp_path):
    meta_train(tiny_config(tmp_path / "c"), progress=False, stop_after=3)
    changed = dataclasses.replace(tiny_config(tmp_path / "c"), outer=OuterSection(steps=6, learning_rate=5e-3))
    with pytest.raises(ConfigError, match="different config"):
        meta_train(changed, progress=False)
    # the time limit is the call's, not the run's: a continuation may take another
    base = tiny_config(tmp_path / "c")
    longer = dataclasses.replace(base, run=dataclasses.replace(base.run, time_limit_s=3600.0))
    assert meta_train(longer, progress=False)["resumed"]


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[estimator]\nkind = "pes"\nsigmaa = 0.1\n')
    from lopt.config import load_config

    with pytest.raises(ConfigError, match="estimator: unknown key 'sigmaa'"):
        load_config(MetaTrainConfig, path)
    path.write_text('[optimizer]\npreset = "small_mlp"\noptions = { hiden_sizes = [4] }\n')
    with pytest.raises(ConfigError, match="optimizer.options: unknown key 'hiden_sizes'"):
        load_config(MetaTrainConfig, path).build_meta_optimizer()
    path.write_text('[tasks]\nfamily = "resnet"\n')
    with pytest.raises(ConfigError, match="valid families"):
        MetaTrainer(load_config(MetaTrainConfig, path))
    with pytest.raises(ValueError, match="valid estimators"):
        make_estimator("reinforce", LearnedLR(), TASK, TruncationSchedule(5, 10, 20))


def test_sigkilled_job_resumes_to_the_same_theta(tmp_path):
    """A real `lopt meta-train` process is SIGKILLed after its first checkpoint; the same command
    then finishes the job, and theta equals an uninterrupted run's. Its one task group alternates
    between tasks of different shapes every 2 steps, the checkpoint interval, so every checkpoint
    it can resume from was taken at a task change (issue 17 (1))."""
    import signal
    import subprocess
    import sys
    import time

    import lopt

    steps = 40
    text = f"""
[optimizer]
preset = "small_mlp"
options = {{ hidden_sizes = [4, 4] }}
[tasks]
names = ["quadratic-10-cond100", "rosenbrock-2"]
num_groups = 1
lifetime = 2
[estimator]
kind = "pes"
num_workers = 4
truncation_length = 5
min_horizon = 10
max_horizon = 20
[outer]
steps = {steps}
learning_rate = 1e-3
[run]
output_dir = "{tmp_path / 'killed'}"
checkpoint_every = 2
log_every = 1
eval_every = 0
"""
    path = tmp_path / "job.toml"
    path.write_text(text)
    command = [
        sys.executable,
        "-c",
        "import sys; from lopt.cli import main; sys.exit(main())",
        "meta-train",
        str(path),
        "--quiet",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the job finished before it could be killed"
    assert not (tmp_path / "killed" / "optimizer").exists()
    resumed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    from lopt.config import load_config

    reference = meta_train(
        dataclasses.replace(
            load_config(MetaTrainConfig, path),
            run=dataclasses.replace(load_config(MetaTrainConfig, path).run, output_dir=str(tmp_path / "straight")),
        ),
        progress=False,
    )
    chex.assert_trees_all_equal(
        lopt.load_meta(tmp_path / "killed" / "optimizer")[1], lopt.load_meta(reference["optimizer"])[1]
    )


def test_resume_from_a_checkpoint_taken_at_a_task_change(tmp_path):
    """Issue 17 (1): one group alternates between tasks of different shapes every 2 outer steps,
    and every checkpoint falls on a task change; resuming must restore the previous task's
    worker states and reach the uninterrupted run's theta."""

    def config(directory):
        base = tiny_config(directory, steps=6)
        return dataclasses.replace(
            base,
            tasks=TasksSection(names=("quadratic-10-cond100", "rosenbrock-2"), num_groups=1, lifetime=2),
            run=dataclasses.replace(base.run, checkpoint_every=2),
        )

    straight = meta_train(config(tmp_path / "a"), progress=False)
    first = meta_train(config(tmp_path / "b"), progress=False, stop_after=4)
    assert first["steps"] == 4
    second = meta_train(config(tmp_path / "b"), progress=False)
    assert second["resumed"] and second["steps"] == 6
    import lopt

    chex.assert_trees_all_equal(lopt.load_meta(straight["optimizer"])[1], lopt.load_meta(second["optimizer"])[1])


@pytest.mark.parametrize(
    "preset",
    [
        # the two kinds whose state has zero-size arrays run by default; the others are slow tests
        "factored_mlp",
        "velo_small",
        "unf",
        pytest.param("small_mlp", marks=pytest.mark.slow),
        pytest.param("lr_controller", marks=pytest.mark.slow),
        pytest.param("generalist", marks=pytest.mark.slow),
    ],
)
def test_every_preset_meta_trains_through_a_save_and_restore(tmp_path, preset):
    """Issue 17 (2): every learned kind's meta-training state checkpoints (vector parameters give
    factored accumulators with no column factor) and resumes."""
    base = tiny_config(tmp_path / preset, steps=2)
    config = dataclasses.replace(
        base,
        optimizer=OptimizerSection(preset),
        tasks=TasksSection(names=("digits-mlp-relu32",), num_groups=1),
        estimator=dataclasses.replace(base.estimator, num_workers=2),
        run=dataclasses.replace(base.run, checkpoint_every=1),
    )
    first = meta_train(config, progress=False, stop_after=1)
    assert first["steps"] == 1
    second = meta_train(config, progress=False)
    assert second["resumed"] and second["steps"] == 2 and "optimizer" in second


def test_nan_outer_learning_rate_never_reaches_theta_and_is_counted():
    """Issue 17 (6): an outer optimizer whose updates are NaN (here a NaN learning rate, which a
    config now refuses up front) leaves theta unchanged and finite, and each step is counted."""
    trainer = MetaTrainer(tiny_config("/unused", steps=3))
    trainer.outer = optax.chain(optax.clip(3.0), optax.adam(float("nan")))
    trainer._finish = jax.jit(trainer._finish_step)  # traced again with the new outer optimizer
    state = trainer.initial_state()
    state = state._replace(outer_state=trainer.outer.init(state.theta))
    theta = state.theta
    for step in range(3):
        state, summary = trainer.step(state, step)
    chex.assert_trees_all_equal(state.theta, theta)
    assert int(summary["skipped_total"]) == 3
    with pytest.raises(ConfigError, match="outer.learning_rate"):
        dataclasses.replace(tiny_config("/unused"), outer=OuterSection(learning_rate=float("nan")))


def test_meta_loss_is_nan_when_every_worker_diverged_and_divergence_is_cumulative():
    class Exploding(LearnedLR):
        def init_meta(self, key):
            return {"log_lr": jnp.float32(np.log(1e6))}  # losses overflow to inf in the first window

    schedule = TruncationSchedule(WINDOW, HORIZON, HORIZON, "constant")
    estimator = make_estimator("pes", Exploding(), TASK, schedule, num_workers=4, divergence_factor=10.0)
    theta = Exploding().init_meta(None)
    state = estimator.init(jax.random.key(0), theta)
    _, _, metrics = estimator.step(jax.random.key(1), theta, state)
    assert int(metrics["diverged"]) == 4 and np.isnan(float(metrics["meta_loss"]))

    trainer = MetaTrainer(tiny_config("/unused"))
    state = trainer.initial_state()
    totals = []
    for step in range(3):
        state, summary = trainer.step(state, step)
        totals.append((int(summary["diverged"]), int(summary["diverged_total"])))
    assert totals[-1][1] == sum(d for d, _ in totals)


def test_a_moved_run_folder_resumes_by_a_relative_path(tmp_path, monkeypatch):
    """Issue 17 (3): a run folder records its config without its own location, so a moved
    folder (here given relative to the working directory) resumes; another config is refused."""
    import shutil

    meta_train(tiny_config(tmp_path / "first", steps=6), progress=False, stop_after=3)
    shutil.move(tmp_path / "first", tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    resumed = meta_train(tiny_config("moved", steps=6), progress=False)
    assert resumed["resumed"] and resumed["steps"] == 6
    assert json.loads((tmp_path / "moved" / "config.json").read_text())["run"].get("output_dir") is None


BAD_OVERRIDES = [
    ("estimator.kind=\"reinforce\"", "estimator.kind"),
    ("estimator.schedule=\"cosine\"", "estimator.schedule"),
    ("estimator.sigma=0", "estimator.sigma"),
    ("estimator.num_workers=0", "estimator.num_workers"),
    ("tasks.family_options={datasets=[\"nope\"]}", "datasets"),
    ("run.eval_task=\"nope-task\"", "run.eval_task"),
    ("run.validation_tasks=[\"nope-task\"]", "run.validation_tasks"),
    ("run.eval_steps=0", "run.eval_steps"),
    ("outer.seed=99999999999999999999", "outer.seed"),
    ("run.eval_every=-1", "run.eval_every"),
    ("outer.learning_rate=nan", "outer.learning_rate"),
]


@pytest.mark.parametrize("override,key", BAD_OVERRIDES)
def test_bad_meta_train_configs_are_one_line_errors(tmp_path, capsys, override, key):
    """Issue 17 (7): each bad value is a one-line error naming its key, exit 2, before any work."""
    from lopt.cli import main

    code = main(
        [
            "meta-train",
            "configs/meta_train/quickstart.toml",
            "--quiet",
            "--set",
            override,
            "--set",
            f"run.output_dir={json.dumps(str(tmp_path / 'run'))}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and key in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_unreadable_config_and_unusable_output_folder_are_one_line_errors(tmp_path, capsys):
    from lopt.cli import main

    binary = tmp_path / "job.toml"
    binary.write_bytes(b"[outer]\nsteps = 3\n\xff\xfe")
    assert main(["meta-train", str(binary), "--quiet"]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(
        [
            "meta-train",
            "configs/meta_train/quickstart.toml",
            "--quiet",
            "--set",
            f"run.output_dir={json.dumps(str(blocker / 'run'))}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "run.output_dir" in err and "\n" not in err


def test_a_finished_run_without_checkpoints_is_not_overwritten(tmp_path):
    """Issue 17 (4): a fresh start into a folder whose run finished (optimizer/) but whose
    checkpoints are gone is refused instead of replacing optimizer/ and metrics.jsonl."""
    import shutil

    config = tiny_config(tmp_path / "done", steps=3)
    meta_train(config, progress=False)
    shutil.rmtree(tmp_path / "done" / "checkpoints")
    shutil.rmtree(tmp_path / "done" / "outer")  # the outer part alone would resume it (test above)
    log = (tmp_path / "done" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="finished run"):
        meta_train(config, progress=False)
    assert (tmp_path / "done" / "metrics.jsonl").read_text() == log


def test_resume_drops_log_rows_written_after_the_last_checkpoint(tmp_path):
    """Issue 17 (4): rows a killed run logged after its last checkpoint (and a half-written
    line) do not repeat when it resumes."""
    config = tiny_config(tmp_path / "r", steps=6)
    meta_train(config, progress=False, stop_after=3)  # checkpoint at step 3
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "meta_loss": 1.0}) + "\n" + '{"step": 5, "meta_')
    meta_train(config, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def _damage_every_chunk(step_directory):
    for chunk in step_directory.rglob("d/*"):
        if chunk.is_file():
            chunk.write_bytes(chunk.read_bytes()[:7])


def test_damaged_checkpoints_fall_back_then_fail_as_one_checkpoint_error(tmp_path, recwarn):
    """Issue 17 (7): a damaged newest step falls back to the older one (a warning); when every
    kept step is damaged the error is one CheckpointError line, not orbax's multi-line specs, and
    the read coroutines orbax dropped are collected without reports."""
    import sys

    from lopt.checkpoint import CheckpointError

    meta_train(tiny_config(tmp_path / "d", steps=12), progress=False, stop_after=6)
    steps = sorted((tmp_path / "d" / "checkpoints").iterdir(), key=lambda p: int(p.name))
    assert len(steps) == 2
    _damage_every_chunk(steps[-1])
    reports = []
    previous, sys.unraisablehook = sys.unraisablehook, reports.append
    try:
        resumed = meta_train(tiny_config(tmp_path / "d", steps=12), progress=False, stop_after=7)
        assert resumed["resumed"] and any("trying an older one" in str(w.message) for w in recwarn)
        for step in (tmp_path / "d" / "checkpoints").iterdir():
            _damage_every_chunk(step)
        with pytest.raises(CheckpointError, match="no checkpoint could be restored") as caught:
            meta_train(tiny_config(tmp_path / "d", steps=12), progress=False)
    finally:
        sys.unraisablehook = previous
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 1000, str(caught.value)
    assert reports == []


def test_window_batches_are_the_steps_own_batches_drawn_at_once_or_in_the_step(monkeypatch):
    from lopt.meta_train import truncation
    from lopt.tasks import MLPSpec, build

    task = build(MLPSpec("digits", (8,), "relu", 16))
    keys = jax.vmap(lambda t: jax.random.fold_in(jax.random.key(3), t))(jnp.arange(4))
    expected = [task.batch(keys[i], "train") for i in range(4)]
    at_once = truncation.window_batches(task, keys, "train")
    monkeypatch.setattr(truncation, "WINDOW_BATCH_BYTES", 0)  # too big to draw at once: per step
    per_step = truncation.window_batches(task, keys, "train")
    for i, want in enumerate(expected):
        chex.assert_trees_all_equal(at_once(i), want)
        chex.assert_trees_all_equal(jax.jit(per_step)(i), want)


def test_a_best_folder_lopt_may_not_replace_is_refused_before_any_compute(tmp_path):
    """A run archive unpacked over an older copy leaves the older save's array files in best/:
    the resumed run used to train, score a better theta and then stop, unable to replace best/.
    It must refuse at the start, in one line, and leave best/ as it was; once best/ is as lopt
    wrote it again, the run resumes."""
    finished = meta_train(tiny_config(tmp_path / "done"), progress=False)
    meta_train(tiny_config(tmp_path / "r"), progress=False, stop_after=3)
    best = tmp_path / "r" / "best"
    shutil.copytree(finished["optimizer"], best)  # a checkpoint exactly as lopt wrote it
    stale = best / "theta" / "d" / "0123456789abcdef"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"an older save's array file")
    before = sorted(str(p) for p in best.rglob("*"))
    with pytest.raises(ConfigError, match=r"best is not a checkpoint exactly as lopt wrote it"):
        meta_train(tiny_config(tmp_path / "r"), progress=False)
    assert sorted(str(p) for p in best.rglob("*")) == before
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 3
    stale.unlink()
    assert meta_train(tiny_config(tmp_path / "r"), progress=False)["steps"] == 6
