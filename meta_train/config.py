"""The `lopt meta-train` job config (TOML, see configs/meta_train/)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from lopt.checkpoint import CheckpointError, read_manifest
from lopt.config import ConfigError, check_output_dir, from_dict, short
from lopt.learned import KINDS, PRESETS, to_config

from lopt.meta_train.augment import Augmentation
from lopt.meta_train.estimators import ESTIMATORS, META_OBJECTIVES

SCHEDULES = ("constant", "log_uniform")


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
    """preset: a name in `lopt.learned.PRESETS` (small_mlp, factored_mlp, velo_small, velo,
    lr_controller, generalist); options:
    constructor overrides. init_from: a saved optimizer (path or shipped name) whose theta starts
    meta-training — fine-tuning it (`lopt meta-train --init`); its kind and constructor
    arguments replace preset, and `options` then override those arguments: meta-parameters the
    saved theta lacks (a head the options add) start at their `init_meta` values, every other
    one at its saved value."""

    preset: str = "small_mlp"
    options: dict = dataclasses.field(default_factory=dict)
    init_from: str = ""


@dataclasses.dataclass(frozen=True)
class TasksSection:
    """family: a task family name; family_options: overrides of its fields (e.g. widths);
    names: fixed named tasks instead of a family; num_groups: tasks trained at once (each its
    own population); lifetime: outer steps before a group's task is resampled; augment: per-run
    reparameterisation of weights and rescaling of losses (meta_train.augment)."""

    family: str = "mlp"
    family_options: dict = dataclasses.field(default_factory=dict)
    names: tuple[str, ...] = ()
    num_groups: int = 2
    lifetime: int = 100
    augment: Augmentation = Augmentation()


@dataclasses.dataclass(frozen=True)
class EstimatorSection:
    kind: str = "pes"
    num_workers: int = 8
    sigma: float = 0.01
    truncation_length: int = 10
    min_horizon: int = 100
    max_horizon: int = 1000
    schedule: str = "log_uniform"
    divergence_factor: float = 10.0
    meta_loss_split: str = "train"
    meta_objective: str = "loss"
    objective_tail: float = 1.0
    trainable: str = ""
    relative_floor: float = 0.0


@dataclasses.dataclass(frozen=True)
class OuterSection:
    """Outer optimizer: elementwise gradient clipping then Adam (learned_optimization's recipe:
    Adam 3e-4, clip 3.0)."""

    steps: int = 300
    learning_rate: float = 3e-4
    clip: float = 3.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class RunSection:
    """Where and how often to write. shard_population: spread workers over all devices.
    distributed: call `jax.distributed.initialize()` first (multi-host; on a TPU pod it needs no
    arguments, elsewhere the usual JAX_COORDINATOR_ADDRESS / process environment variables);
    only process 0 logs and shows progress. validation_tasks: named tasks held out from training
    and from the test suites; every eval scores theta on them (mean log of final loss ÷ Adam
    1e-3's) and the best-scoring theta is saved as `best/` beside `optimizer/`. time_limit_s: stop
    (with a checkpoint) after this many seconds in this call, to resume in the next (0: none).
    fuse_groups: every group's population step and the outer update as one compiled program
    (one dispatch a step; False runs the groups one program after another)."""

    output_dir: str = "runs/meta-train"
    checkpoint_every: int = 50
    log_every: int = 10
    eval_every: int = 100
    eval_task: str = "digits-mlp-relu32"
    eval_steps: int = 500
    validation_tasks: tuple[str, ...] = ()
    validation_seeds: int = 2
    time_limit_s: float = 0.0
    shard_population: bool = True
    distributed: bool = False
    fuse_groups: bool = True

    def __post_init__(self) -> None:
        check_output_dir("run.output_dir", self.output_dir)


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    optimizer: OptimizerSection = OptimizerSection()
    tasks: TasksSection = TasksSection()
    estimator: EstimatorSection = EstimatorSection()
    outer: OuterSection = OuterSection()
    run: RunSection = RunSection()

    def __post_init__(self) -> None:
        if self.optimizer.preset not in PRESETS:
            raise ConfigError(
                f"optimizer.preset: unknown preset {self.optimizer.preset!r}; valid: {', '.join(PRESETS)}"
            )
        for name in ("steps", "checkpoint_every", "log_every"):
            section = self.outer if name == "steps" else self.run
            if getattr(section, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.tasks.num_groups <= 0 or self.tasks.lifetime <= 0:
            raise ConfigError("tasks.num_groups and tasks.lifetime must be positive")
        self._check_ranges()
        self._check_names()
        if self.optimizer.init_from:
            try:
                read_manifest(self.optimizer.init_from)
            except CheckpointError as error:
                raise ConfigError(f"optimizer.init_from: {error}") from None
        if self.optimizer.options:
            self.build_meta_optimizer()  # options are checked now, before any folder is made
        if self.estimator.trainable:
            try:
                re.compile(self.estimator.trainable)
            except re.error as error:
                raise ConfigError(f"estimator.trainable: not a regular expression ({error})") from None
        if self.estimator.kind not in ESTIMATORS:
            raise ConfigError(
                f"estimator.kind: unknown estimator {self.estimator.kind!r}; valid: {', '.join(ESTIMATORS)}"
            )
        if self.estimator.meta_objective not in META_OBJECTIVES:
            raise ConfigError(
                f"estimator.meta_objective: unknown objective {self.estimator.meta_objective!r}; "
                f"valid: {', '.join(META_OBJECTIVES)}"
            )

    def _check_ranges(self) -> None:
        """Numbers that would otherwise fail deep inside a compiled step, or be silently meaningless."""
        est, run = self.estimator, self.run
        checks = [
            ("estimator.num_workers", est.num_workers, est.num_workers > 0, "a positive whole number"),
            ("estimator.sigma", est.sigma, est.sigma > 0, "a positive number"),
            (
                "estimator.truncation_length",
                est.truncation_length,
                0 < est.truncation_length <= est.min_horizon <= est.max_horizon,
                "0 < truncation_length <= min_horizon <= max_horizon",
            ),
            ("estimator.schedule", est.schedule, est.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            (
                "estimator.objective_tail",
                est.objective_tail,
                0 < est.objective_tail <= 1,
                "a fraction in (0, 1]: the last part of each episode whose losses count",
            ),
            (
                "estimator.relative_floor",
                est.relative_floor,
                0 <= est.relative_floor < 1,
                "a fraction in [0, 1): losses below it times the episode's first loss count as the floor",
            ),
            ("estimator.divergence_factor", est.divergence_factor, est.divergence_factor > 1, "a number above 1"),
            (
                "estimator.meta_loss_split",
                est.meta_loss_split,
                est.meta_loss_split in ("train", "test"),
                "train or test",
            ),
            ("outer.seed", self.outer.seed, 0 <= self.outer.seed < 2**32, "a whole number in [0, 2**32)"),
            (
                "outer.learning_rate",
                self.outer.learning_rate,
                0 <= self.outer.learning_rate < float("inf"),
                "a finite non-negative number",
            ),
            ("outer.clip", self.outer.clip, self.outer.clip > 0, "a positive number"),
            ("run.eval_every", run.eval_every, run.eval_every >= 0, "0 (no evaluation) or a positive number"),
            ("run.validation_seeds", run.validation_seeds, run.validation_seeds > 0, "a positive whole number"),
            ("run.eval_steps", run.eval_steps, run.eval_steps > 0, "a positive whole number"),
            ("run.time_limit_s", run.time_limit_s, run.time_limit_s >= 0, "0 (none) or a positive number"),
        ]
        for key, value, ok, valid in checks:
            if not ok:
                raise ConfigError(f"{key}: {short(value)} is not valid; expected {valid}")

    def _check_names(self) -> None:
        """Tasks, datasets and families are looked up now, not after minutes of work."""
        from lopt.tasks import get_family, task_spec
        from lopt.tasks.datasets import load

        for key, names in (
            ("run.eval_task", (self.run.eval_task,)),
            ("run.validation_tasks", self.run.validation_tasks),
            ("tasks.names", self.tasks.names),
        ):
            for name in names:
                try:
                    task_spec(name)
                except ValueError as error:
                    raise ConfigError(f"{key}: {error}") from None
        if not self.tasks.names:
            try:
                family = get_family(self.tasks.family)
            except ValueError as error:
                raise ConfigError(f"tasks.family: {error}") from None
            options = {f.name: getattr(family, f.name) for f in dataclasses.fields(family)}
            family = from_dict(type(family), {**options, **self.tasks.family_options}, where="tasks.family_options")
            for dataset in getattr(family, "datasets", ()):
                try:
                    load(dataset)
                except (ValueError, KeyError) as error:
                    raise ConfigError(f"tasks.family_options.datasets: {error}") from None

    def build_meta_optimizer(self) -> Any:
        """The preset with `options` applied, validated like any config table; with `init_from`,
        the saved optimizer's own meta-optimizer, its constructor arguments overridden by
        `options` (e.g. `schedule_knots` adds a learned schedule to a trained generalist)."""
        if self.optimizer.init_from:
            import lopt
            from lopt.checkpoint import CheckpointError

            try:
                saved = lopt.load_meta(self.optimizer.init_from)[0]
            except (CheckpointError, FileNotFoundError, ValueError) as error:
                raise ConfigError(f"optimizer.init_from: {error}") from None
            if not self.optimizer.options:
                return saved
            return from_dict(type(saved), {**to_config(saved), **self.optimizer.options}, where="optimizer.options")
        base = PRESETS[self.optimizer.preset]()
        merged = {**to_config(base), **self.optimizer.options}
        return from_dict(KINDS[base.kind], merged, where="optimizer.options")
