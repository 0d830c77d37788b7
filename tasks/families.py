"""Task families: distributions over architectures, data and batch sizes, and named fixed tasks.

Families sample a frozen `TaskSpec` from a key (`sample`) and build it (`build`). They are what
meta-training draws its inner problems from; the named tasks are fixed points used by evaluation
suites (held out from the families' defaults where it matters).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax

from lopt.tasks.base import TaskSpec
from lopt.tasks.tasks import ConvSpec, MLPSpec, QuadraticSpec, RegressionSpec, RosenbrockSpec, TransformerSpec, build


def _choice(key: jax.Array, options: Sequence[Any]) -> Any:
    return options[int(jax.random.randint(key, (), 0, len(options)))]


MAX_OPTION = 1 << 16  # widths, depths, batch sizes, dims: larger is a typo, not a task


class _BuildsTasks:
    """Every family builds its specs the same way: `tasks.build`; and checks its options when
    made (a config's `family_options` fail at parse time, naming the field, not when a task of
    that size is first built minutes later)."""

    def __post_init__(self) -> None:
        from lopt.tasks.models import ACTIVATIONS

        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, tuple):
                continue
            if not value:
                raise ValueError(f"{field.name}: empty; give at least one option")
            for option in value:
                if field.name == "activations" and option not in ACTIVATIONS:
                    raise ValueError(
                        f"{field.name}: unknown activation {option!r}; valid: {', '.join(sorted(ACTIVATIONS))}"
                    )
                if isinstance(option, bool) or (isinstance(option, int) and not 1 <= option <= MAX_OPTION):
                    raise ValueError(f"{field.name}: {option!r} is not a whole number in 1..{MAX_OPTION}")
                if isinstance(option, float) and not (option >= 0 and option < float("inf")):
                    raise ValueError(f"{field.name}: {option!r} is not a finite non-negative number")

    def build(self, spec: TaskSpec) -> Any:
        return build(spec)


@dataclasses.dataclass(frozen=True)
class MLPFamily(_BuildsTasks):
    """MLP classifiers: dataset, depth, width, activation and batch size sampled uniformly."""

    name: str = "mlp"
    datasets: tuple[str, ...] = ("digits", "mnist1d")
    depths: tuple[int, ...] = (1, 2)
    widths: tuple[int, ...] = (16, 32, 64)
    activations: tuple[str, ...] = ("relu", "tanh", "gelu", "silu")
    batch_sizes: tuple[int, ...] = (32, 64, 128)

    def sample(self, key: jax.Array) -> MLPSpec:
        k = jax.random.split(key, 5)
        depth = _choice(k[1], self.depths)
        return MLPSpec(
            dataset=_choice(k[0], self.datasets),
            hidden_sizes=(_choice(k[2], self.widths),) * depth,
            activation=_choice(k[3], self.activations),
            batch_size=_choice(k[4], self.batch_sizes),
        )


@dataclasses.dataclass(frozen=True)
class ConvFamily(_BuildsTasks):
    """Strided conv nets: dataset, channel widths, depth, activation and batch size sampled."""

    name: str = "conv"
    datasets: tuple[str, ...] = ("digits", "mnist1d")
    depths: tuple[int, ...] = (1, 2)
    widths: tuple[int, ...] = (8, 16, 32)
    activations: tuple[str, ...] = ("relu", "gelu", "silu")
    batch_sizes: tuple[int, ...] = (32, 64)

    def sample(self, key: jax.Array) -> ConvSpec:
        k = jax.random.split(key, 5)
        depth = _choice(k[1], self.depths)
        width = _choice(k[2], self.widths)
        return ConvSpec(
            dataset=_choice(k[0], self.datasets),
            channels=tuple(width * 2**i for i in range(depth)),
            activation=_choice(k[3], self.activations),
            batch_size=_choice(k[4], self.batch_sizes),
        )


@dataclasses.dataclass(frozen=True)
class TransformerFamily(_BuildsTasks):
    """Char-level transformer LMs: width, depth, heads, context and batch size sampled."""

    name: str = "transformer"
    datasets: tuple[str, ...] = ("pytext",)
    model_dims: tuple[int, ...] = (16, 32, 64)
    depths: tuple[int, ...] = (1, 2)
    heads: tuple[int, ...] = (1, 2, 4)
    sequence_lengths: tuple[int, ...] = (16, 32)
    batch_sizes: tuple[int, ...] = (8, 16, 32)

    def sample(self, key: jax.Array) -> TransformerSpec:
        k = jax.random.split(key, 6)
        return TransformerSpec(
            dataset=_choice(k[0], self.datasets),
            model_dim=_choice(k[1], self.model_dims),
            num_layers=_choice(k[2], self.depths),
            num_heads=_choice(k[3], self.heads),
            sequence_length=_choice(k[4], self.sequence_lengths),
            batch_size=_choice(k[5], self.batch_sizes),
        )


@dataclasses.dataclass(frozen=True)
class QuadraticFamily(_BuildsTasks):
    """Noisy quadratics: dimension, condition number (log-uniform) and noise sampled."""

    name: str = "quadratic"
    dims: tuple[int, ...] = (4, 10, 32)
    max_log10_condition: float = 3.0
    noise_scales: tuple[float, ...] = (0.0, 0.1, 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.max_log10_condition <= 12.0:
            raise ValueError(f"max_log10_condition: {self.max_log10_condition!r} is not in 0..12")

    def sample(self, key: jax.Array) -> QuadraticSpec:
        k = jax.random.split(key, 4)
        log_condition = float(jax.random.uniform(k[1], (), minval=0.0, maxval=self.max_log10_condition))
        return QuadraticSpec(
            dim=_choice(k[0], self.dims),
            condition_number=round(10.0**log_condition, 3),
            noise_scale=_choice(k[2], self.noise_scales),
            seed=int(jax.random.randint(k[3], (), 0, 2**30)),
        )


FAMILIES = {family.name: family for family in (MLPFamily(), ConvFamily(), TransformerFamily(), QuadraticFamily())}

NAMED_TASKS: dict[str, TaskSpec] = {
    "digits-mlp-relu32": MLPSpec("digits", (32,), "relu", 128),
    "digits-mlp-tanh64x2": MLPSpec("digits", (64, 64), "tanh", 64),
    "mnist1d-mlp-gelu64x2": MLPSpec("mnist1d", (64, 64), "gelu", 128),
    "digits-conv-16-32": ConvSpec("digits", (16, 32), "relu", 64),
    "mnist1d-conv-16-32": ConvSpec("mnist1d", (16, 32), "relu", 64),
    "pytext-transformer-32x1": TransformerSpec("pytext", 32, 1, 2, 32, 16),
    "pytext-transformer-64x2": TransformerSpec("pytext", 64, 2, 4, 32, 16),
    # teacher-student regression for meta-training mixes (its own teacher, seed 2)
    "regression-mlp-gelu64x2": RegressionSpec(12, 3, (48,), (64, 64), "gelu", 0.05, 128, 2),
    "quadratic-10-cond100": QuadraticSpec(10, 100.0, 0.1, 0),
    "rosenbrock-2": RosenbrockSpec(2, 0.01),
    "digits-mlp-relu256x3": MLPSpec("digits", (256, 256, 256), "relu", 128),
    "mnist1d-mlp-relu128x4": MLPSpec("mnist1d", (128,) * 4, "relu", 128),
    "mnist1d-mlp-silu32": MLPSpec("mnist1d", (32,), "silu", 64),
    "pytext-transformer-32x2": TransformerSpec("pytext", 32, 2, 2, 32, 16),
    # Outside every family's default range (the `generalisation` suite; see eval.suites):
    "mnist1d-mlp-silu512": MLPSpec("mnist1d", (512,), "silu", 128),
    "digits-mlp-gelu32x6": MLPSpec("digits", (32,) * 6, "gelu", 128),
    "mnist1d-mlp-tanh256x2": MLPSpec("mnist1d", (256, 256), "tanh", 64),
    "mnist1d-mlp-gelu128x3": MLPSpec("mnist1d", (128,) * 3, "gelu", 128),
    "digits-mlp-relu128x2-mse": MLPSpec("digits", (128, 128), "relu", 128, loss="squared_error"),
    "digits-conv-32-64-128": ConvSpec("digits", (32, 64, 128), "relu", 64),
    "mnist1d-conv-64-128": ConvSpec("mnist1d", (64, 128), "gelu", 64),
    "pytext-transformer-64x3": TransformerSpec("pytext", 64, 3, 4, 32, 16),
    "pytext-transformer-128x2": TransformerSpec("pytext", 128, 2, 4, 32, 16),
    "regression-mlp-relu128x2": RegressionSpec(16, 4, (64,), (128, 128), "relu", 0.1, 128, 0),
    # Held out and never memorised (the `generalisation-unmemorised` suite): longer contexts and
    # more text per step for the LMs, a wider conv net, and a regression on fresh data whose noise
    # puts a floor under its loss.
    "pytext-transformer-128x4-s128": TransformerSpec("pytext", 128, 4, 4, 128, 32),
    "pytext-transformer-96x3-s64": TransformerSpec("pytext", 96, 3, 4, 64, 32),
    "mnist1d-large-conv-128-256": ConvSpec("mnist1d-large", (128, 256), "relu", 64),
    "regression-mlp-silu256x3": RegressionSpec(32, 8, (128,), (256, 256, 256), "silu", 0.1, 128, 3),
    # Validation tasks for meta-training choices (checkpoint selection): held out from the
    # families and disjoint from every evaluation suite.
    "digits-mlp-silu96x2": MLPSpec("digits", (96, 96), "silu", 128),
    "mnist1d-conv-48": ConvSpec("mnist1d", (48,), "relu", 64),
    "pytext-transformer-48x2": TransformerSpec("pytext", 48, 2, 2, 32, 16),
    "regression-mlp-tanh64x3": RegressionSpec(8, 2, (32,), (64, 64, 64), "tanh", 0.05, 128, 1),
    # A validation task no optimizer memorises and wider than every meta-training family's
    # networks: fresh noisy data each batch (its own teacher, seed 4) puts a floor under the loss.
    # For meta-training choices only (docs/meta_training_that_learns.md, section 11).
    "regression-mlp-gelu192x2": RegressionSpec(24, 6, (96,), (192, 192), "gelu", 0.1, 128, 4),
    # ... and a transformer LM wider and deeper than the family's, on 64-token contexts.
    "pytext-transformer-80x2-s64": TransformerSpec("pytext", 80, 2, 4, 64, 32),
}


def get_family(name: str) -> Any:
    """A task family by name; unknown names list the valid ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; valid families: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def task_spec(name: str) -> TaskSpec:
    """A named task's spec; unknown names list the valid ones."""
    if name not in NAMED_TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(NAMED_TASKS))}")
    return NAMED_TASKS[name]


def get_task(name: str) -> Any:
    """Build a named task."""
    return build(task_spec(name))
