"""Meta-gradient estimators over a population of truncated inner runs, one interface:

    state = estimator.init(key, theta)
    grad, state, metrics = estimator.step(key, theta, state)

All four are written for one worker and `vmap`ped over the population (one compiled call per
outer step). A worker whose window diverges (non-finite loss, or mean loss above
`divergence_factor` × its episode's first-window loss) is masked out of the gradient, counted in
the metrics and reset at the next window; its NaNs never reach theta.

- `truncated_backprop`: ∇θ of the window's mean loss through the W-step `lax.scan`, the window's
  start state held constant (biased: ignores ∂s_start/∂θ; short-horizon bias, Wu et al. 2018).
- `antithetic_es`: ĝ = ε (L̄(θ+ε) − L̄(θ−ε)) / (2σ²), ε ~ N(0, σ²I); both arms start from the same
  state and see the same minibatches; the positive arm is carried on.
- `pes` (Vicol, Metz & Sohl-Dickstein 2021): ± states persist across windows and the accumulator
  ξ ← ξ + ε sums every perturbation of the episode; ĝ = ξ (L̄⁺ − L̄⁻) / (2σ²). Unbiased for the
  Gaussian-smoothed episode loss. Resets fall on window boundaries, so ξ restarts from the new ε.
- `nres` (Li et al. 2023, "Noise-reuse in online evolution strategies"): one ε per episode,
  regenerated from the episode key; ĝ = ε (L̄⁺ − L̄⁻) / (2σ²) per window; ± states persist.

Perturbations are regenerated from keys, never stored (PES stores only the running sum ξ).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from meta_train.augment import Augmentation
from meta_train.truncation import (
    NO_AUGMENTATION, TruncationSchedule, Worker, diverged, initial_worker, reset_if_done, unroll,
)

Theta = Any
ESTIMATORS = ("truncated_backprop", "antithetic_es", "pes", "nres")
NRES_TAG = 0x4E524553
META_OBJECTIVES = ("loss", "log_loss")
LOG_LOSS_FLOOR = 1e-8


def tree_normal(key: jax.Array, tree: Any, scale: float | jax.Array = 1.0) -> Any:
    """Independent N(0, scale²) draws shaped like `tree` (float32)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([scale * jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(keys, leaves)])


def _add(a: Any, b: Any, scale: float = 1.0) -> Any:
    return jax.tree.map(lambda x, y: x + scale * y, a, b)


class EstimatorState(NamedTuple):
    """Per-worker state, every leaf with a leading population axis. `negative` and
    `accumulator` are None for estimators that do not keep them."""

    positive: Worker
    negative: Worker | None
    accumulator: Any | None


class WindowResult(NamedTuple):
    grad: Any
    state: EstimatorState
    loss: jax.Array
    bad: jax.Array
    reset: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Estimator:
    """A meta-gradient estimator for one task and one population.

    kind: one of ESTIMATORS. sigma: the ES perturbation scale. task: the inner task (a pytree,
    passed to the compiled step as an argument). schedule: truncation length and horizons.
    augmentation: per-episode reparameterisation of the task (meta_train.augment).
    meta_objective: 'loss' (mean inner loss over a window) or 'log_loss' (mean log loss: comparable
      across tasks whose losses differ by orders of magnitude, and blind to loss rescaling).
    """

    kind: str
    meta_optimizer: Any
    task: Any
    schedule: TruncationSchedule
    num_workers: int = 8
    sigma: float = 0.01
    divergence_factor: float = 10.0
    meta_loss_split: str = "train"
    augmentation: Augmentation = NO_AUGMENTATION
    meta_objective: str = "loss"

    def __post_init__(self) -> None:
        if self.meta_objective not in META_OBJECTIVES:
            raise ValueError(f"unknown meta_objective {self.meta_objective!r}; valid: {', '.join(META_OBJECTIVES)}")
        if self.kind not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.kind!r}; valid estimators: {', '.join(ESTIMATORS)}")
        if self.meta_loss_split not in ("train", "test"):
            raise ValueError(f"meta_loss_split must be 'train' or 'test', got {self.meta_loss_split!r}")
        if self.num_workers <= 0 or self.sigma <= 0:
            raise ValueError("num_workers and sigma must be positive")

    @property
    def arms(self) -> int:
        return 1 if self.kind == "truncated_backprop" else 2

    @property
    def inner_steps_per_step(self) -> int:
        return self.num_workers * self.arms * self.schedule.truncation_length

    def init(self, key: jax.Array, theta: Theta) -> EstimatorState:
        keys = jax.random.split(key, self.num_workers)
        workers = jax.vmap(lambda k: initial_worker(self.task, self.meta_optimizer, theta, self.schedule, k,
                                                    self.augmentation))(keys)
        if self.kind in ("pes", "nres"):
            accumulator = jax.vmap(lambda _: jax.tree.map(jnp.zeros_like, theta))(keys) if self.kind == "pes" else None
            return EstimatorState(workers, workers, accumulator)
        return EstimatorState(workers, None, None)

    def step(self, key: jax.Array, theta: Theta, state: EstimatorState) -> tuple[Theta, EstimatorState, dict[str, jax.Array]]:
        return self._compiled_step(self.task, key, theta, state)

    @functools.cached_property
    def _compiled_step(self):
        return jax.jit(self._population_step)

    def _population_step(self, task, key, theta, state):
        keys = jax.random.split(key, self.num_workers)
        result = jax.vmap(lambda k, s: self._worker_step(task, k, theta, s))(keys, state)
        good = ~result.bad
        count = jnp.maximum(jnp.sum(good), 1)
        grad = jax.tree.map(
            lambda g: jnp.sum(jnp.where(good.reshape((-1,) + (1,) * (g.ndim - 1)), g, 0.0), axis=0) / count,
            result.grad,
        )
        # NaN when no worker counted: a mean over nobody is not a loss of 0
        loss = jnp.where(jnp.any(good), jnp.sum(jnp.where(good, result.loss, 0.0)) / count, jnp.nan)
        metrics = {
            "meta_loss": loss,
            "diverged": jnp.sum(result.bad),
            "resets": jnp.sum(result.reset),
            "inner_steps": jnp.int32(self.inner_steps_per_step),
        }
        return grad, result.state, metrics

    def _unroll(self, task, theta, worker):
        return unroll(task, self.meta_optimizer, theta, worker, self.schedule.truncation_length, self.meta_loss_split,
                      self.augmentation)

    def _objective(self, losses: jax.Array) -> jax.Array:
        """The window's meta-loss from its per-step inner losses."""
        if self.meta_objective == "log_loss":
            return jnp.mean(jnp.log(jnp.maximum(losses, LOG_LOSS_FLOOR)))
        return jnp.mean(losses)

    def _worker_step(self, task, key, theta, state: EstimatorState) -> WindowResult:
        reset_key, noise_key = jax.random.split(key)
        schedule, meta = self.schedule, self.meta_optimizer
        augmentation = self.augmentation
        positive, reset = reset_if_done(task, meta, theta, schedule, state.positive, reset_key, jnp.bool_(False),
                                        augmentation)
        factor = self.divergence_factor

        if self.kind == "truncated_backprop":
            def window_loss(theta):
                worker, losses = self._unroll(task, theta, positive)
                return self._objective(losses), (worker, losses)

            (loss, (worker, losses)), grad = jax.value_and_grad(window_loss, has_aux=True)(theta)
            bad = diverged(losses, worker.start_loss, factor)
            worker = jax.lax.stop_gradient(worker)
            return WindowResult(grad, EstimatorState(self._mark(worker, bad), None, None), loss, bad, reset)

        if self.kind == "nres":
            episode_noise = jax.random.fold_in(jax.random.wrap_key_data(positive.episode_key), NRES_TAG)
            epsilon = tree_normal(episode_noise, theta, self.sigma)
        else:
            epsilon = tree_normal(noise_key, theta, self.sigma)
        negative = positive
        if self.kind in ("pes", "nres"):
            negative, _ = reset_if_done(task, meta, theta, schedule, state.negative, reset_key, jnp.bool_(False),
                                        augmentation)
        pos_worker, pos_losses = self._unroll(task, _add(theta, epsilon), positive)
        neg_worker, neg_losses = self._unroll(task, _add(theta, epsilon, -1.0), negative)
        difference = self._objective(pos_losses) - self._objective(neg_losses)
        bad = diverged(pos_losses, pos_worker.start_loss, factor) | diverged(neg_losses, neg_worker.start_loss, factor)
        direction, accumulator = epsilon, None
        if self.kind == "pes":
            kept = jax.tree.map(lambda a: jnp.where(reset, jnp.zeros_like(a), a), state.accumulator)
            accumulator = _add(kept, epsilon)
            direction = accumulator
        grad = jax.tree.map(lambda d: d * difference / (2.0 * self.sigma**2), direction)
        negative_out = self._mark(neg_worker, bad) if self.kind in ("pes", "nres") else None
        new_state = EstimatorState(self._mark(pos_worker, bad), negative_out, accumulator)
        return WindowResult(grad, new_state, self._objective(pos_losses), bad, reset)

    @staticmethod
    def _mark(worker: Worker, bad: jax.Array) -> Worker:
        """A diverged worker jumps to its horizon, so the next window resets it."""
        return worker._replace(step=jnp.where(bad, worker.horizon, worker.step))
