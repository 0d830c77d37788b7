"""Meta-gradient estimators over a population of truncated inner runs, one interface:

    estimator = make_estimator("pes", meta_optimizer, task, schedule, num_workers=64)
    state = estimator.init(key, theta)
    grad, state, metrics = estimator.step(key, theta, state)

One small class per estimator, each with its own NamedTuple state (in the style of evosax's
strategies); the population step, resets, unrolls, divergence masking and the meta-objective are
shared in the base class. Each is written for one worker (`_worker_step`) and `vmap`ped over the
population (one compiled call per outer step). A worker whose window diverges (non-finite loss,
or mean loss above `divergence_factor` × its episode's first-window loss) is masked out of the
gradient, counted in the metrics and reset at the next window; its NaNs never reach theta.

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
A new estimator is one subclass here, registered with `@estimator_kind`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, ClassVar, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from lopt.meta_train.augment import Augmentation
from lopt.meta_train.sharding import AXIS
from lopt.meta_train.truncation import (
    NO_AUGMENTATION,
    TruncationSchedule,
    Worker,
    diverged,
    initial_worker,
    reset_if_done,
    unroll,
)

Theta = Any
NRES_TAG = 0x4E524553
META_OBJECTIVES = ("loss", "log_loss")
LOG_LOSS_FLOOR = 1e-8
ESTIMATORS: dict[str, type[Estimator]] = {}


def tree_normal(key: jax.Array, tree: Any, scale: float | jax.Array = 1.0) -> Any:
    """Independent N(0, scale²) draws shaped like `tree` (float32)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([scale * jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(keys, leaves)])


def _add(a: Any, b: Any, scale: float = 1.0) -> Any:
    return jax.tree.map(lambda x, y: x + scale * y, a, b)


class WindowResult(NamedTuple):
    """One worker's window: its gradient estimate, new state, meta-loss, and flags."""

    grad: Any
    state: Any
    loss: jax.Array
    bad: jax.Array
    reset: jax.Array


class Totals(NamedTuple):
    """Sums over a population's workers (see `Estimator._totals`)."""

    grad: Any
    loss: jax.Array
    count: jax.Array
    diverged: jax.Array
    resets: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Estimator:
    """A meta-gradient estimator for one task and one population (the shared base).

    sigma: the ES perturbation scale. task: the inner task (a pytree, passed to the compiled step as
    an argument). schedule: truncation length and horizons. augmentation: per-episode
    reparameterisation of the task (meta_train.augment). meta_objective: 'loss' (mean inner loss
    over a window) or 'log_loss' (mean log loss: comparable across tasks whose losses differ by
    orders of magnitude, and blind to loss rescaling). objective_tail: only the inner steps in the
    last `objective_tail` fraction of each episode count towards the meta-gradient (1: every step,
    the area under the loss curve; small: the final loss, which is what a user of the optimizer, and
    the validation score, measure). PES and NRES stay unbiased for the weighted episode objective: a
    late window's ± difference is credited to every perturbation of its episode. relative_floor:
    inner losses below `relative_floor` × the episode's first-window loss count as that floor (0:
    off). Under 'log_loss' a memorised task's loss keeps falling by orders of magnitude (a
    classifier's train loss from 1e-3 to 1e-7), so its log differences swamp the tasks that still
    have something to learn and the meta-gradient buys memorisation (measured: docs/
    meta_training_that_learns.md §6). Relative, so it is blind to loss rescaling. trainable: a
    regular expression over theta's paths (`jax.tree_util.keystr`, e.g.
    "schedule|log_learning_rate"); only matching leaves are perturbed and get a gradient, the rest
    stay at their values (empty: all of theta). Perturbing a part whose meta-gradient is not
    resolved at the budget only adds noise to the ± loss differences of the parts that are. mesh:
    the population's one-axis device mesh (`meta_train.sharding.population_mesh`), or None. With a
    mesh each device runs its share of the workers under `shard_map`; without one, jit's partitioner
    splits the vmapped population by the state's sharding, and it would run a custom call such as
    the native CPU kernel (`lopt.learned.native`) whole on every device instead (half the
    throughput; docs/benchmarks.md).
    """

    kind: ClassVar[str]
    arms: ClassVar[int] = 2
    meta_optimizer: Any
    task: Any
    schedule: TruncationSchedule
    num_workers: int = 8
    sigma: float = 0.01
    divergence_factor: float = 10.0
    meta_loss_split: str = "train"
    augmentation: Augmentation = NO_AUGMENTATION
    meta_objective: str = "loss"
    mesh: jax.sharding.Mesh | None = None
    objective_tail: float = 1.0
    trainable: str = ""
    relative_floor: float = 0.0

    def __post_init__(self) -> None:
        if self.trainable:
            re.compile(self.trainable)
        if not 0.0 <= self.relative_floor < 1.0:
            raise ValueError(f"relative_floor must lie in [0, 1), got {self.relative_floor}")
        if not 0.0 < self.objective_tail <= 1.0:
            raise ValueError(f"objective_tail must lie in (0, 1], got {self.objective_tail}")
        if self.meta_objective not in META_OBJECTIVES:
            raise ValueError(f"unknown meta_objective {self.meta_objective!r}; valid: {', '.join(META_OBJECTIVES)}")
        if self.meta_loss_split not in ("train", "test"):
            raise ValueError(f"meta_loss_split must be 'train' or 'test', got {self.meta_loss_split!r}")
        if self.num_workers <= 0 or self.sigma <= 0:
            raise ValueError("num_workers and sigma must be positive")

    @property
    def inner_steps_per_step(self) -> int:
        return self.num_workers * self.arms * self.schedule.truncation_length

    # -- what a subclass provides ------------------------------------------------------------
    def _initial_state(self, workers: Worker, theta: Theta) -> Any:
        """The population's state from its fresh workers (leaves with a population axis)."""
        raise NotImplementedError

    def _worker_step(self, task: Any, key: jax.Array, theta: Theta, state: Any) -> WindowResult:
        """One worker's window."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def init(self, key: jax.Array, theta: Theta) -> Any:
        keys = jax.random.split(key, self.num_workers)
        workers = jax.vmap(
            lambda k: initial_worker(self.task, self.meta_optimizer, theta, self.schedule, k, self.augmentation)
        )(keys)
        return self._initial_state(workers, theta)

    def step(self, key: jax.Array, theta: Theta, state: Any) -> tuple[Theta, Any, dict[str, jax.Array]]:
        return self._compiled_step(self.task, key, theta, state)

    @functools.cached_property
    def _compiled_step(self):
        return jax.jit(self._population_step)

    def _population_step(self, task, key, theta, state):
        keys = jax.random.split(key, self.num_workers)
        totals, new_state = self._workers(task, keys, theta, state)
        count = jnp.maximum(totals.count, 1.0)
        grad = jax.tree.map(lambda g: g / count, totals.grad)
        # NaN when no worker counted: a mean over nobody is not a loss of 0
        loss = jnp.where(totals.count > 0, totals.loss / count, jnp.nan)
        metrics = {
            "meta_loss": loss,
            "diverged": totals.diverged.astype(jnp.int32),
            "resets": totals.resets.astype(jnp.int32),
            "inner_steps": jnp.int32(self.inner_steps_per_step),
        }
        return grad, new_state, metrics

    @staticmethod
    def _totals(result: WindowResult) -> Totals:
        """Sums over the workers of `result`: gradients and meta-losses of those that did not
        diverge, how many did, how many diverged and reset (counts as float32, exact to 2^24)."""
        good = ~result.bad
        grad = jax.tree.map(
            lambda g: jnp.sum(jnp.where(good.reshape((-1,) + (1,) * (g.ndim - 1)), g, 0.0), axis=0), result.grad
        )
        return Totals(
            grad,
            jnp.sum(jnp.where(good, result.loss, 0.0)),
            jnp.sum(good.astype(jnp.float32)),
            jnp.sum(result.bad.astype(jnp.float32)),
            jnp.sum(result.reset.astype(jnp.float32)),
        )

    def _workers(self, task, keys, theta, state) -> tuple[Totals, Any]:
        """Every worker's window, vmapped and split over `mesh` when there is one: the workers'
        totals and their new states.

        Under the mesh every device sums its own workers and one all-reduce adds the devices'
        totals, flattened into one vector: one rendezvous of the devices a step. Left to jit's
        partitioner, each sum over the sharded axis was an all-reduce of its own (three a step,
        independent in the graph, which XLA may start in any order)."""

        def run(task, theta, keys, state):
            result = jax.vmap(lambda k, s: self._worker_step(task, k, theta, s))(keys, state)
            return self._totals(result), result.state

        if self.mesh is None:
            return run(task, theta, keys, state)

        def run_and_add(task, theta, keys, state):
            totals, new_state = run(task, theta, keys, state)
            flat, unflatten = jax.flatten_util.ravel_pytree(totals)
            return unflatten(jax.lax.psum(flat, AXIS)), new_state

        split, whole = PartitionSpec(AXIS), PartitionSpec()
        # check_vma off: a worker's state holds constants (e.g. a VeLO loss-state flag set to
        # True) that the varying-axis check would type apart from the carried values
        return jax.shard_map(
            run_and_add,
            mesh=self.mesh,
            in_specs=(whole, whole, split, split),
            out_specs=(whole, split),
            check_vma=False,
        )(task, theta, keys, state)

    def _reset(self, task, theta, worker: Worker, key: jax.Array) -> tuple[Worker, jax.Array]:
        return reset_if_done(
            task, self.meta_optimizer, theta, self.schedule, worker, key, jnp.bool_(False), self.augmentation
        )

    def _unroll(self, task, theta, worker):
        return unroll(
            task,
            self.meta_optimizer,
            theta,
            worker,
            self.schedule.truncation_length,
            self.meta_loss_split,
            self.augmentation,
        )

    def _objective(
        self, losses: jax.Array, weights: jax.Array | None = None, start_loss: jax.Array | None = None
    ) -> jax.Array:
        """The window's meta-loss from its per-step inner losses (each times its weight), the losses
        first floored at `relative_floor` × `start_loss` (the episode's first-window loss) when set."""
        if self.relative_floor > 0.0 and start_loss is not None:
            base = jax.lax.stop_gradient(start_loss)
            floor = jnp.where(jnp.isfinite(base) & (base > 0), self.relative_floor * base, -jnp.inf)
            losses = jnp.maximum(losses, floor)
        values = jnp.log(jnp.maximum(losses, LOG_LOSS_FLOOR)) if self.meta_objective == "log_loss" else losses
        return jnp.mean(values if weights is None else weights * values)

    def _tail_weights(self, worker: Worker) -> jax.Array | None:
        """Per step of the window starting at `worker`: 1 for steps in the episode's last
        `objective_tail` fraction, else 0 (None when every step counts)."""
        if self.objective_tail >= 1.0:
            return None
        steps = worker.step + jnp.arange(self.schedule.truncation_length)
        first = (1.0 - self.objective_tail) * worker.horizon.astype(jnp.float32)
        return (steps.astype(jnp.float32) >= first).astype(jnp.float32)

    def _antithetic(self, task, theta, epsilon, positive: Worker, negative: Worker):
        """Both arms of a window: (positive worker, negative worker, weighted L̄⁺ − L̄⁻, L̄⁺
        unweighted (the logged meta-loss), diverged)."""
        factor = self.divergence_factor
        weights = self._tail_weights(positive)
        pos_worker, pos_losses = self._unroll(task, _add(theta, epsilon), positive)
        neg_worker, neg_losses = self._unroll(task, _add(theta, epsilon, -1.0), negative)
        pos_objective = self._objective(pos_losses)
        # one floor for both arms (the positive arm's first-window loss), so it adds no ± difference
        start = pos_worker.start_loss
        difference = self._objective(pos_losses, weights, start) - self._objective(neg_losses, weights, start)
        bad = diverged(pos_losses, pos_worker.start_loss, factor) | diverged(neg_losses, neg_worker.start_loss, factor)
        return pos_worker, neg_worker, difference, pos_objective, bad

    def _mask(self, tree: Any) -> Any:
        """`tree` with the leaves of frozen meta-parameters (not matching `trainable`) zeroed."""
        if not self.trainable:
            return tree
        pattern = re.compile(self.trainable)
        return jax.tree_util.tree_map_with_path(
            lambda path, x: x if pattern.search(jax.tree_util.keystr(path)) else jnp.zeros_like(x), tree
        )

    def _perturbation(self, key: jax.Array, theta: Theta) -> Any:
        """ε ~ N(0, σ²I) over the trainable part of theta (zero elsewhere)."""
        return self._mask(tree_normal(key, theta, self.sigma))

    def _es_gradient(self, direction: Any, difference: jax.Array) -> Any:
        return jax.tree.map(lambda d: d * difference / (2.0 * self.sigma**2), direction)

    @staticmethod
    def _mark(worker: Worker, bad: jax.Array) -> Worker:
        """A diverged worker jumps to its horizon, so the next window resets it."""
        return worker._replace(step=jnp.where(bad, worker.horizon, worker.step))


def estimator_kind(cls: type[Estimator]) -> type[Estimator]:
    """Class decorator: make an estimator available by its `kind` (configs, `make_estimator`)."""
    ESTIMATORS[cls.kind] = cls
    return cls


class SingleWorkerState(NamedTuple):
    """truncated_backprop and antithetic_es carry one inner run per worker."""

    positive: Worker


class PESState(NamedTuple):
    """Both arms persist; `accumulator` is ξ, the sum of the episode's perturbations."""

    positive: Worker
    negative: Worker
    accumulator: Any


class NRESState(NamedTuple):
    """Both arms persist; the episode's one perturbation is regenerated from its key."""

    positive: Worker
    negative: Worker


@estimator_kind
@dataclasses.dataclass(frozen=True, eq=False)
class TruncatedBackprop(Estimator):
    kind: ClassVar[str] = "truncated_backprop"
    arms: ClassVar[int] = 1

    def _initial_state(self, workers, theta):
        return SingleWorkerState(workers)

    def _worker_step(self, task, key, theta, state):
        reset_key, _ = jax.random.split(key)
        positive, reset = self._reset(task, theta, state.positive, reset_key)

        weights = self._tail_weights(positive)

        def window_loss(theta):
            worker, losses = self._unroll(task, theta, positive)
            return self._objective(losses, weights, worker.start_loss), (worker, losses)

        (_, (worker, losses)), grad = jax.value_and_grad(window_loss, has_aux=True)(theta)
        grad = self._mask(grad)
        bad = diverged(losses, worker.start_loss, self.divergence_factor)
        worker = jax.lax.stop_gradient(worker)
        # the logged meta-loss is the window's unweighted objective, as the ES estimators log it
        loss = self._objective(jax.lax.stop_gradient(losses))
        return WindowResult(grad, SingleWorkerState(self._mark(worker, bad)), loss, bad, reset)


@estimator_kind
@dataclasses.dataclass(frozen=True, eq=False)
class AntitheticES(Estimator):
    kind: ClassVar[str] = "antithetic_es"

    def _initial_state(self, workers, theta):
        return SingleWorkerState(workers)

    def _worker_step(self, task, key, theta, state):
        reset_key, noise_key = jax.random.split(key)
        positive, reset = self._reset(task, theta, state.positive, reset_key)
        epsilon = self._perturbation(noise_key, theta)
        pos_worker, _, difference, loss, bad = self._antithetic(task, theta, epsilon, positive, positive)
        return WindowResult(
            self._es_gradient(epsilon, difference), SingleWorkerState(self._mark(pos_worker, bad)), loss, bad, reset
        )


@estimator_kind
@dataclasses.dataclass(frozen=True, eq=False)
class PES(Estimator):
    kind: ClassVar[str] = "pes"

    def _initial_state(self, workers, theta):
        accumulator = jax.vmap(lambda _: jax.tree.map(jnp.zeros_like, theta))(workers.step)
        return PESState(workers, workers, accumulator)

    def _worker_step(self, task, key, theta, state):
        reset_key, noise_key = jax.random.split(key)
        positive, reset = self._reset(task, theta, state.positive, reset_key)
        negative, _ = self._reset(task, theta, state.negative, reset_key)
        epsilon = self._perturbation(noise_key, theta)
        pos_worker, neg_worker, difference, loss, bad = self._antithetic(task, theta, epsilon, positive, negative)
        kept = jax.tree.map(lambda a: jnp.where(reset, jnp.zeros_like(a), a), state.accumulator)
        accumulator = _add(kept, epsilon)
        new_state = PESState(self._mark(pos_worker, bad), self._mark(neg_worker, bad), accumulator)
        return WindowResult(self._es_gradient(accumulator, difference), new_state, loss, bad, reset)


@estimator_kind
@dataclasses.dataclass(frozen=True, eq=False)
class NRES(Estimator):
    kind: ClassVar[str] = "nres"

    def _initial_state(self, workers, theta):
        return NRESState(workers, workers)

    def _worker_step(self, task, key, theta, state):
        reset_key, _ = jax.random.split(key)
        positive, reset = self._reset(task, theta, state.positive, reset_key)
        negative, _ = self._reset(task, theta, state.negative, reset_key)
        episode_noise = jax.random.fold_in(jax.random.wrap_key_data(positive.episode_key), NRES_TAG)
        epsilon = self._perturbation(episode_noise, theta)
        pos_worker, neg_worker, difference, loss, bad = self._antithetic(task, theta, epsilon, positive, negative)
        new_state = NRESState(self._mark(pos_worker, bad), self._mark(neg_worker, bad))
        return WindowResult(self._es_gradient(epsilon, difference), new_state, loss, bad, reset)


def make_estimator(
    kind: str, meta_optimizer: Any, task: Any, schedule: TruncationSchedule, *args: Any, **options: Any
) -> Estimator:
    """The estimator called `kind` (one of ESTIMATORS) with the base class's fields."""
    if kind not in ESTIMATORS:
        raise ValueError(f"unknown estimator {kind!r}; valid estimators: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[kind](meta_optimizer, task, schedule, *args, **options)
