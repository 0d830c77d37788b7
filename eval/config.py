"""The `lopt eval` job config (TOML, see configs/eval/)."""

from __future__ import annotations

import dataclasses

from lopt.config import ConfigError, check_output_dir


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how.

    suite: a named suite (eval.suites); `tasks`, when non-empty, replaces it.
    optimizers: baseline names from `lopt.baselines`, or ["all"] for the whole registry.
    learned: checkpoint directories of trained optimizers (lopt.save); evaluated untuned, with
      num_steps set to the run length.
    num_steps, eval_every: inner steps per run and the test-loss evaluation interval.
    seeds: runs per (task, optimizer, learning rate); every optimizer sees the same seeds.
    seed: the root seed from which the runs' keys are derived.
    output_dir: where the table, JSON, figures and the run cache are written.
    cache: reuse cached runs whose settings match exactly.
    measure_cost: time each optimizer's update and size its state on every task (eval.cost),
      reported relative to adam; never cached (timings belong to this machine and process).
    """

    suite: str = "embedded-small"
    tasks: tuple[str, ...] = ()
    optimizers: tuple[str, ...] = ("adam", "sgd", "momentum", "adamw", "lion")
    learned: tuple[str, ...] = ()
    num_steps: int = 500
    eval_every: int = 50
    seeds: int = 3
    seed: int = 0
    output_dir: str = "results/eval"
    cache: bool = True
    measure_cost: bool = True

    def __post_init__(self) -> None:
        if self.num_steps <= 0:
            raise ConfigError(f"num_steps must be positive, got {self.num_steps}")
        if self.eval_every < 0 or (self.eval_every and self.num_steps % self.eval_every):
            raise ConfigError(f"eval_every={self.eval_every} must divide num_steps={self.num_steps}")
        check_output_dir("output_dir", self.output_dir)
        if self.seeds <= 0:
            raise ConfigError(f"seeds must be positive, got {self.seeds}")
        for key in ("tasks", "optimizers", "learned"):
            values = getattr(self, key)
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ConfigError(f"{key}: {', '.join(map(repr, repeated))} listed more than once")
