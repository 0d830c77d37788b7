"""The outer meta-training loop: task groups, estimator steps, outer optimizer, checkpoints, logs.

Every outer step, each task group (one task, one population of workers) contributes an
estimated meta-gradient; their mean goes through the outer optimizer (elementwise clip, Adam).
A non-finite mean gradient, or an update that would make theta non-finite (e.g. a NaN outer
learning rate), is skipped and counted, never applied; diverged workers are counted
cumulatively. Everything random is derived
from (seed, outer step, group), so the task a group trains at a given step, and the keys of
that step, are recomputed on resume rather than stored: a killed job restarts from its last
checkpoint (theta, outer optimizer state, every worker's inner state, step) and continues
exactly as if it had not stopped.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt
from lopt.config import ConfigError, from_dict
from lopt.meta_train.config import MetaTrainConfig
from lopt.meta_train.estimators import Estimator, make_estimator
from lopt.meta_train.sharding import (
    population_mesh,
    population_placement,
    replicate,
    replicated_placement,
    shard_population,
)
from lopt.meta_train.truncation import TruncationSchedule
from lopt.meta_train.validation import Validation, held_out_loss
from lopt.tasks import build, get_family, task_spec


class MetaTrainState(NamedTuple):
    """Everything a checkpoint holds: the outer step, theta, the outer optimizer's state, each
    task group's estimator state (its population of inner runs), and the cumulative counts of
    skipped outer updates and diverged worker windows."""

    step: jax.Array
    theta: Any
    outer_state: Any
    groups: list
    skipped: jax.Array
    diverged: jax.Array


def outer_optimizer(config: MetaTrainConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip(config.outer.clip), optax.adam(config.outer.learning_rate))


def _root(config: MetaTrainConfig) -> jax.Array:
    return jax.random.key(config.outer.seed)


def merge_saved_theta(fresh: Any, saved: Any, where: str) -> Any:
    """`fresh` (init_meta of the optimizer with the config's options) with every leaf the saved
    theta also has, at the same path, replaced by the saved value. A saved leaf whose shape the
    options changed is an error: its trained values would not carry over."""
    saved_leaves = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(saved)}

    def pick(path, leaf):
        name = jax.tree_util.keystr(path)
        if name not in saved_leaves:
            return leaf
        if saved_leaves[name].shape != leaf.shape:
            raise ConfigError(
                f"optimizer.options: they change the shape of {name} from "
                f"{tuple(saved_leaves[name].shape)} to {tuple(leaf.shape)}, so {where}'s trained "
                "values cannot start it"
            )
        return saved_leaves[name]

    return jax.tree_util.tree_map_with_path(pick, fresh)


class GroupTasks:
    """Which task each group trains at each outer step (deterministic in seed, group, epoch)."""

    def __init__(self, config: MetaTrainConfig):
        self.config = config
        section = config.tasks
        if section.names:
            try:
                self.fixed = [task_spec(n) for n in section.names]
            except ValueError as error:
                raise ConfigError(f"tasks.names: {error}") from None
            self.family = None
        else:
            self.fixed = None
            try:
                base = get_family(section.family)
            except ValueError as error:
                raise ConfigError(f"tasks.family: {error}") from None
            fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
            self.family = from_dict(type(base), {**fields, **section.family_options}, where="tasks.family_options")
        self._tasks: dict[Any, Any] = {}

    def epoch(self, step: int) -> int:
        return step // self.config.tasks.lifetime

    def spec(self, group: int, step: int) -> Any:
        if self.fixed is not None:
            return self.fixed[(group + self.epoch(step) * self.config.tasks.num_groups) % len(self.fixed)]
        key = jax.random.fold_in(jax.random.fold_in(_root(self.config), 1000 + group), self.epoch(step))
        return self.family.sample(key)

    def task(self, spec: Any) -> Any:
        if spec not in self._tasks:
            self._tasks[spec] = build(spec)
        return self._tasks[spec]


class MetaTrainer:
    """Owns the estimators (one per group and task, compiled once each) and the training state."""

    def __init__(self, config: MetaTrainConfig):
        self.config = config
        self.meta_optimizer = config.build_meta_optimizer()
        est = config.estimator
        self.schedule = TruncationSchedule(est.truncation_length, est.min_horizon, est.max_horizon, est.schedule)
        self.groups = GroupTasks(config)
        self.outer = outer_optimizer(config)
        self._estimators: dict[Any, Estimator] = {}
        self._finish = jax.jit(self._finish_step)
        self._fused_steps: dict[tuple[Any, ...], Any] = {}
        self.mesh = population_mesh(config.estimator.num_workers) if config.run.shard_population else None
        self._validation: Validation | None = None

    def estimator(self, spec: Any) -> Estimator:
        if spec not in self._estimators:
            est = self.config.estimator
            self._estimators[spec] = make_estimator(
                est.kind,
                self.meta_optimizer,
                self.groups.task(spec),
                self.schedule,
                num_workers=est.num_workers,
                sigma=est.sigma,
                divergence_factor=est.divergence_factor,
                meta_loss_split=est.meta_loss_split,
                augmentation=self.config.tasks.augment,
                meta_objective=est.meta_objective,
                mesh=self.mesh,
                objective_tail=est.objective_tail,
                trainable=est.trainable,
                relative_floor=est.relative_floor,
            )
        return self._estimators[spec]

    def group_init_key(self, group: int, step: int) -> jax.Array:
        return jax.random.fold_in(jax.random.fold_in(_root(self.config), 2000 + group), self.groups.epoch(step))

    def group_state(self, group: int, step: int, theta: Any) -> Any:
        """A fresh population for `group` at outer step `step`, spread over the devices."""
        state = self.estimator(self.groups.spec(group, step)).init(self.group_init_key(group, step), theta)
        return shard_population(state, self.mesh)

    def initial_theta(self) -> Any:
        """theta at outer step 0: `optimizer.init_from`'s saved theta, or a fresh init_meta."""
        fresh = self.meta_optimizer.init_meta(jax.random.fold_in(_root(self.config), 0))
        if not self.config.optimizer.init_from:
            return fresh
        saved = lopt.load_meta(self.config.optimizer.init_from)[1]
        if not self.config.optimizer.options:
            return saved
        return merge_saved_theta(fresh, saved, self.config.optimizer.init_from)

    def initial_state(self) -> MetaTrainState:
        theta = replicate(self.initial_theta(), self.mesh)
        zero = replicate(jnp.zeros((), jnp.int32), self.mesh)
        return MetaTrainState(
            step=zero,
            theta=theta,
            outer_state=replicate(self.outer.init(theta), self.mesh),
            groups=[self.group_state(g, 0, theta) for g in range(self.config.tasks.num_groups)],
            skipped=zero,
            diverged=zero,
        )

    def abstract_state(self, trained_at: int) -> MetaTrainState:
        """Shapes, dtypes and shardings of a checkpoint whose groups trained the tasks of outer
        step `trained_at` (traced with `jax.eval_shape`: nothing is computed or allocated)."""
        # tasks are built (and cached) outside the trace, so no traced array is kept
        estimators = [self.estimator(self.groups.spec(g, trained_at)) for g in range(self.config.tasks.num_groups)]
        keys = [self.group_init_key(g, trained_at) for g in range(self.config.tasks.num_groups)]

        def build_state(theta):
            zero = jnp.zeros((), jnp.int32)
            groups = [estimator.init(key, theta) for estimator, key in zip(estimators, keys)]
            return MetaTrainState(zero, theta, self.outer.init(theta), groups, zero, zero)

        # theta's shapes are init_meta's (a saved init_from theta is checked against them on load),
        # so no checkpoint is read per step tried
        shapes = jax.eval_shape(build_state, jax.eval_shape(self.meta_optimizer.init_meta, jax.random.key(0)))
        placement = replicated_placement(shapes, self.mesh)._replace(
            groups=population_placement(shapes.groups, self.mesh)
        )
        return jax.tree.map(lambda s, p: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=p), shapes, placement)

    def check_memory(self, headroom: float = 0.8) -> None:
        """Refuse, in one line, a population whose state alone would not fit the devices (e.g.
        estimator.num_workers=1e9), before anything is allocated: the state's size comes from
        abstract shapes, the memory from the device (or the host's RAM for CPU devices)."""
        shapes = self.abstract_state(0)
        needed = sum(np.prod(x.shape, dtype=np.float64) * x.dtype.itemsize for x in jax.tree.leaves(shapes))
        devices = self.mesh.devices.size if self.mesh is not None else 1
        device = jax.devices()[0]
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and stats.get("bytes_limit"):
            available = float(stats["bytes_limit"]) * devices
        else:
            available = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        if needed > headroom * available:
            workers, groups = self.config.estimator.num_workers, self.config.tasks.num_groups
            raise ConfigError(
                f"estimator.num_workers: {workers:,} workers x {groups} groups need about {needed / 2**30:,.1f} GiB "
                f"for their inner runs' state alone; these devices have {available / 2**30:,.1f} GiB: use fewer workers"
            )

    def _apply_gradient(self, theta, outer_state, grads):
        all_finite = lambda tree: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
        updates, new_outer = self.outer.update(grads, outer_state, theta)
        new_theta = optax.apply_updates(theta, updates)
        finite = all_finite(grads) & all_finite(new_theta)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        norm = optax.tree.norm(grads)
        return keep(new_theta, theta), keep(new_outer, outer_state), finite, norm

    def step(self, state: MetaTrainState, step: int) -> tuple[MetaTrainState, dict[str, Any]]:
        """One outer step over every group. `step` is state.step as a Python int (kept by the
        caller, so no step waits on the device); the metrics stay on the device until logged.

        With `run.fuse_groups` (the default) every group's population step and the step's tail
        are one compiled program, so a mixed task distribution costs one dispatch a step and XLA
        schedules the groups' work together; otherwise each group is its own program, then the
        tail (same keys, same results up to the order XLA adds floats)."""
        key = jax.random.fold_in(jax.random.fold_in(_root(self.config), 3), step)
        specs = tuple(self.groups.spec(g, step) for g in range(self.config.tasks.num_groups))
        groups = list(state.groups)
        if step > 0 and self.groups.epoch(step) != self.groups.epoch(step - 1):
            groups = [self.group_state(g, step, state.theta) for g in range(len(groups))]
        if self.config.run.fuse_groups:
            tasks = [self.groups.task(spec) for spec in specs]
            count, theta, outer_state, skipped, diverged, group_states, summary = self._fused(specs)(
                tasks, key, state.step, state.theta, state.outer_state, state.skipped, state.diverged, groups
            )
        else:
            grads, group_states, metrics = [], [], []
            for g, (spec, group_state) in enumerate(zip(specs, groups)):
                grad, group_state, m = self.estimator(spec).step(jax.random.fold_in(key, g), state.theta, group_state)
                grads.append(grad)
                group_states.append(group_state)
                metrics.append(m)
            count, theta, outer_state, skipped, diverged, summary = self._finish(
                state.step, state.theta, state.outer_state, state.skipped, state.diverged, grads, metrics
            )
        new_state = MetaTrainState(
            step=count,
            theta=theta,
            outer_state=outer_state,
            groups=list(group_states),
            skipped=skipped,
            diverged=diverged,
        )
        return new_state, summary

    def _fused(self, specs: tuple[Any, ...]) -> Any:
        """The whole outer step for the groups training `specs`, compiled once per tuple of specs."""
        if specs not in self._fused_steps:
            estimators = [self.estimator(spec) for spec in specs]

            def outer_step(tasks, key, count, theta, outer_state, skipped, diverged, groups):
                grads, group_states, metrics = [], [], []
                for g, (estimator, task, group_state) in enumerate(zip(estimators, tasks, groups)):
                    grad, group_state, m = estimator._population_step(
                        task, jax.random.fold_in(key, g), theta, group_state
                    )
                    grads.append(grad)
                    group_states.append(group_state)
                    metrics.append(m)
                count, theta, outer_state, skipped, diverged, summary = self._finish_step(
                    count, theta, outer_state, skipped, diverged, grads, metrics
                )
                return count, theta, outer_state, skipped, diverged, group_states, summary

            self._fused_steps[specs] = jax.jit(outer_step)
        return self._fused_steps[specs]

    def _finish_step(self, count, theta, outer_state, skipped, diverged, grads, metrics):
        """What follows the groups' estimator steps, as one program (`_finish`): the mean
        gradient, the outer update, the counters and the step's summary. As eager operations
        these were ~25 small programs a step, and a host that runs far ahead of the devices
        can deadlock XLA's CPU client (see `meta_train`)."""
        mean_grad = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
        theta, outer_state, finite, norm = self._apply_gradient(theta, outer_state, mean_grad)
        diverged = diverged + sum(m["diverged"] for m in metrics)
        skipped = skipped + (~finite).astype(jnp.int32)
        losses = jnp.stack([m["meta_loss"] for m in metrics])
        counted = jnp.isfinite(losses)
        summary = {
            # mean over the groups whose window counted any worker; NaN when none did
            "meta_loss": jnp.where(
                jnp.any(counted), jnp.sum(jnp.where(counted, losses, 0.0)) / jnp.maximum(jnp.sum(counted), 1), jnp.nan
            ),
            "diverged": sum(m["diverged"] for m in metrics),
            "diverged_total": diverged,
            "resets": sum(m["resets"] for m in metrics),
            "grad_norm": norm,
            "skipped_total": skipped,
        }
        return count + 1, theta, outer_state, skipped, diverged, summary

    def inner_steps_per_outer_step(self, step: int) -> int:
        return sum(
            self.estimator(self.groups.spec(g, step)).inner_steps_per_step for g in range(self.config.tasks.num_groups)
        )

    def evaluate(self, theta: Any) -> float:
        """Final train loss of the held-out eval task trained with theta."""
        return held_out_loss(self.config, self.meta_optimizer.transform(theta, num_steps=self.config.run.eval_steps))

    def validate(self, theta: Any) -> dict[str, float]:
        """Per validation task, log(final loss with theta ÷ final loss of Adam 1e-3), and their
        mean as 'validation_score' (lower is better); empty without validation tasks."""
        if not self.config.run.validation_tasks:
            return {}
        if self._validation is None:
            self._validation = Validation(self.config, self.meta_optimizer)
        return self._validation.score(theta)
