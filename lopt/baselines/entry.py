"""A registry entry (`Baseline`): how a hand-designed optimizer is built, its defaults with their
source and the learning-rate grid a tuned comparison sweeps; and those grids."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import optax

EvalParamsFn = Callable[[Any, Any], Any]


def log_grid(low: float, high: float, per_decade: int = 2) -> tuple[float, ...]:
    """Log-spaced values from `low` to `high` inclusive, `per_decade` points per decade, rounded
    to one significant digit (1e-4, 3e-4, 1e-3, ...)."""
    count = int(round(np.log10(high / low) * per_decade)) + 1
    return tuple(float(f"{v:.1g}") for v in np.logspace(np.log10(low), np.log10(high), count))


ADAPTIVE_GRID = log_grid(1e-4, 3e-1)
SGD_GRID = log_grid(1e-3, 3.0)
LION_GRID = log_grid(1e-5, 3e-2)
LR_FREE_GRID = log_grid(0.03, 10.0)


class GrowthRule(NamedTuple):
    """An adaptive batch-size rule as data (Lau, Liu & Kolar 2024's AdAdaGrad): `test` ('norm' or
    'inner_product'), its `constant`, and the largest batch as a multiple of the task's. lopt
    itself never trains a model; `tasks.train.BatchGrowth(*rule)` is the loop that runs it."""

    test: str = "norm"
    constant: float = 0.5
    max_multiple: int = 8


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A registered optimizer.

    name: registry key.
    factory: builds the transformation; takes the learning rate as its first argument.
    learning_rate: the default learning rate (or LR multiplier for LR-free methods).
    defaults: the other hyperparameters, as passed to `factory`.
    lr_grid: the learning rates a tuned comparison sweeps.
    source: where the defaults come from.
    eval_params: maps (opt_state, params) to the point to evaluate, for methods whose gradient
      point differs from their output (schedule-free); None otherwise.
    run_length_argument: the factory's keyword for the run length (Ranger21's warm-down needs
      it); `lopt eval` passes its number of steps there. None when the method does not use it.
    batch_growth: an adaptive batch-size scheme the training loop runs with this optimizer, as
      plain data (`GrowthRule`: AdAdaGrad's test, its constant and the largest batch multiple;
      the training loop, `tasks.train.BatchGrowth`, implements it); None for a fixed batch.
    """

    name: str
    factory: Callable[..., optax.GradientTransformation]
    learning_rate: float
    defaults: Mapping[str, Any]
    lr_grid: tuple[float, ...]
    source: str
    eval_params: EvalParamsFn | None = None
    run_length_argument: str | None = None
    batch_growth: GrowthRule | None = None

    def accepted_arguments(self) -> tuple[str, ...]:
        params = list(inspect.signature(self.factory).parameters)
        return tuple(p for p in params if p not in ("learning_rate",))

    def make(self, learning_rate: Any = None, **overrides: Any) -> optax.GradientTransformationExtraArgs:
        """Build the optimizer at `learning_rate` (default: the entry's) with `overrides`."""
        accepted = self.accepted_arguments()
        unknown = sorted(set(overrides) - set(accepted))
        if unknown:
            raise TypeError(
                f"{self.name} has no hyperparameter {', '.join(map(repr, unknown))}; "
                f"valid: learning_rate (or lr), {', '.join(accepted)}"
            )
        lr = self.learning_rate if learning_rate is None else learning_rate
        kwargs = {**self.defaults, **overrides}
        return optax.with_extra_args_support(self.factory(lr, **kwargs))
