"""The `lopt meta-train` job config (TOML, see configs/meta_train/)."""

from __future__ import annotations

import dataclasses
from typing import Any

from lopt.config import ConfigError, from_dict
from lopt.hypergrad import LRController
from lopt.learned import factored_mlp, small_mlp, to_config, velo_small
from lopt.learned.base import KINDS
from lopt.learned.velo import VeLOOptimizer

PRESETS = {"small_mlp": small_mlp, "factored_mlp": factored_mlp, "velo_small": velo_small, "velo": VeLOOptimizer,
           "lr_controller": LRController}


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
    """preset: small_mlp, factored_mlp, velo_small, velo or lr_controller; options: constructor overrides."""

    preset: str = "small_mlp"
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TasksSection:
    """family: a task family name; family_options: overrides of its fields (e.g. widths);
    names: fixed named tasks instead of a family; num_groups: tasks trained at once (each its
    own population); lifetime: outer steps before a group's task is resampled."""

    family: str = "mlp"
    family_options: dict = dataclasses.field(default_factory=dict)
    names: tuple[str, ...] = ()
    num_groups: int = 2
    lifetime: int = 100


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
    only process 0 logs and shows progress."""
    output_dir: str = "runs/meta-train"
    checkpoint_every: int = 50
    log_every: int = 10
    eval_every: int = 100
    eval_task: str = "digits-mlp-relu32"
    eval_steps: int = 500
    shard_population: bool = True
    distributed: bool = False


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    optimizer: OptimizerSection = OptimizerSection()
    tasks: TasksSection = TasksSection()
    estimator: EstimatorSection = EstimatorSection()
    outer: OuterSection = OuterSection()
    run: RunSection = RunSection()

    def __post_init__(self) -> None:
        if self.optimizer.preset not in PRESETS:
            raise ConfigError(f"optimizer.preset: unknown preset {self.optimizer.preset!r}; valid: {', '.join(PRESETS)}")
        for name in ("steps", "checkpoint_every", "log_every"):
            section = self.outer if name == "steps" else self.run
            if getattr(section, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.tasks.num_groups <= 0 or self.tasks.lifetime <= 0:
            raise ConfigError("tasks.num_groups and tasks.lifetime must be positive")

    def build_meta_optimizer(self) -> Any:
        """The preset with `options` applied, validated like any config table."""
        base = PRESETS[self.optimizer.preset]()
        merged = {**to_config(base), **self.optimizer.options}
        return from_dict(KINDS[base.kind], merged, where="optimizer.options")
