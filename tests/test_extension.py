"""Issue 16's promise, checked: a new learned kind is one class (plus its registration) and every
consumer finds it — meta-train configs by preset, `lopt.save/load` by kind, `lopt eval` by its
learning-rate hook; a new estimator is one subclass that configs accept and the loop runs."""

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt.learned import base as learned_base
from lopt.meta_train import estimators
from lopt.meta_train.config import (
    EstimatorSection,
    MetaTrainConfig,
    OptimizerSection,
    OuterSection,
    RunSection,
    TasksSection,
)
from lopt.meta_train.run import meta_train
from lopt.meta_train.truncation import diverged


@dataclasses.dataclass(frozen=True)
class ScaledSign(learned_base.LearnedKind):
    """A toy kind: update = −exp(θ) · sign(g); reads no progress, has a learning-rate hook."""

    kind: ClassVar[str] = "scaled_sign_test"
    reads_progress: ClassVar[bool] = False
    lr_tuning_grid: ClassVar[tuple[float, ...]] = (0.5, 1.0, 2.0)
    initial_log_lr: float = -4.0

    def init_meta(self, key: jax.Array) -> dict[str, Any]:
        return {"log_lr": jnp.asarray(self.initial_log_lr, jnp.float32)}

    @staticmethod
    def scale_learning_rate(theta, multiplier):
        return {"log_lr": theta["log_lr"] + jnp.log(multiplier)}

    def transform(self, theta, *, num_steps):
        del num_steps
        return optax.chain(optax.scale_by_sign(), optax.scale(-jnp.exp(theta["log_lr"])))


@pytest.fixture
def registered(monkeypatch):
    """Register the toy kind, a preset of it and a toy estimator, undone after the test."""
    monkeypatch.setitem(learned_base.KINDS, ScaledSign.kind, ScaledSign)
    monkeypatch.setitem(learned_base.PRESETS, "scaled_sign_test", ScaledSign)

    @dataclasses.dataclass(frozen=True, eq=False)
    class ForwardDifferenceES(estimators.Estimator):
        """One class: forward-difference ES, ĝ = ε (L̄(θ+ε) − L̄(θ)) / σ², built from the base's
        reset / unroll / objective / divergence pieces."""

        kind: ClassVar[str] = "forward_es_test"

        def _initial_state(self, workers, theta):
            return estimators.SingleWorkerState(workers)

        def _worker_step(self, task, key, theta, state):
            reset_key, noise_key = jax.random.split(key)
            worker, reset = self._reset(task, theta, state.positive, reset_key)
            epsilon = estimators.tree_normal(noise_key, theta, self.sigma)
            moved, losses = self._unroll(task, jax.tree.map(jnp.add, theta, epsilon), worker)
            _, base_losses = self._unroll(task, theta, worker)
            difference = self._objective(losses) - self._objective(base_losses)
            bad = diverged(losses, moved.start_loss, self.divergence_factor)
            grad = jax.tree.map(lambda e: e * difference / self.sigma**2, epsilon)
            return estimators.WindowResult(
                grad, estimators.SingleWorkerState(self._mark(moved, bad)), self._objective(losses), bad, reset
            )

    monkeypatch.setitem(estimators.ESTIMATORS, ForwardDifferenceES.kind, ForwardDifferenceES)
    return ForwardDifferenceES


def test_a_new_kind_and_estimator_need_no_change_elsewhere(registered, tmp_path):
    config = MetaTrainConfig(
        optimizer=OptimizerSection("scaled_sign_test", {"initial_log_lr": -3.0}),
        tasks=TasksSection(names=("quadratic-10-cond100",), num_groups=1, lifetime=10),
        estimator=EstimatorSection(
            kind="forward_es_test", num_workers=2, truncation_length=5, min_horizon=10, max_horizon=10
        ),
        outer=OuterSection(steps=2, learning_rate=1e-2),
        run=RunSection(
            output_dir=str(tmp_path / "run"),
            checkpoint_every=1,
            log_every=1,
            eval_every=0,
            eval_task="quadratic-10-cond100",
            eval_steps=10,
        ),
    )
    summary = meta_train(config, progress=False)
    meta, theta = lopt.load_meta(summary["optimizer"])
    assert isinstance(meta, ScaledSign) and meta.initial_log_lr == -3.0
    assert np.isfinite(float(theta["log_lr"])) and float(theta["log_lr"]) != -3.0  # meta-training moved it
    opt = lopt.load(summary["optimizer"])  # no num_steps needed: reads_progress is False
    params = {"w": jnp.ones(3)}
    updates, _ = opt.update({"w": jnp.array([1.0, -2.0, 0.0])}, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], -np.exp(float(theta["log_lr"])) * np.array([1.0, -1.0, 0.0]), rtol=1e-6)

    from lopt.eval.runner import learned_candidates

    untuned, tuned = learned_candidates(summary["optimizer"], num_steps=10)
    assert tuned.lr_grid == ScaledSign.lr_tuning_grid and tuned.tuned and not untuned.tuned
