"""A found program as a saveable optimizer: `ProgramOptimizer` is a `MetaOptimizer` whose theta
is the value of the program's `lr` input (and, with `tune_constants`, its constants), so
`lopt.save` / `lopt.load` handle found programs like any learned optimizer: the text lives in
the manifest, parsed by our parser on load, and each number is stored once — a constant in the
text, or in theta when meta-training tunes it (then the text's literal is only its start)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from lopt.learned.base import LearnedKind, register
from lopt.learned.generalist import schedule_factor
from lopt.programs.analysis import check
from lopt.programs.interpret import constants_of, to_optax
from lopt.programs.lang import Program, parse


SCHEDULES = ("constant", "cosine")
WARMUP_FRACTION = 0.05  # as the zoo's *_cosine entries and the generalist's default


def lr_schedule(learning_rate: Any, schedule: str, num_steps: Any) -> Any:
    """The `lr` input over a run of `num_steps`: `learning_rate` itself ('constant'), or a function
    of the 0-based step count (optax's convention) for 'cosine': linear warm-up over 5% of the run,
    then cosine decay to 0 (Loshchilov & Hutter 2017; `lopt.learned.generalist.schedule_factor`)."""
    if schedule == "constant":
        return learning_rate
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: unknown {schedule!r}; valid: {', '.join(SCHEDULES)}")
    return lambda count: learning_rate * schedule_factor(jnp.asarray(count), num_steps, "cosine", WARMUP_FRACTION, 0.0)


@register
@dataclasses.dataclass(frozen=True)
class ProgramOptimizer(LearnedKind):
    """text: the program (lopt.programs.lang). learning_rate: the value fed to its `lr` input
    at theta₀. tune_constants: put the text's constants in theta, so meta-training can tune
    them (theta's values then override the text's). schedule: how `lr` moves over a run
    (`SCHEDULES`: 'constant', or 'cosine': linear warm-up over 5% of the run, then cosine decay
    to 0), the one the program was searched and tuned with, so a loaded program runs as it was
    scored."""

    kind: ClassVar[str] = "program"
    text: str
    learning_rate: float = 1.0
    tune_constants: bool = False
    schedule: str = "constant"

    lr_tuning_grid: ClassVar[tuple[float, ...]] = (0.1, 0.3, 1.0, 3.0, 10.0)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: unknown {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        check(self.program)

    @property
    def reads_progress(self) -> bool:  # type: ignore[override]
        """A scheduled program needs the run's length."""
        return self.schedule != "constant"

    @classmethod
    def upgrade_saved_config(cls, config: dict[str, Any], array_paths: Sequence[str]) -> dict[str, Any]:
        """A checkpoint written before `tune_constants` existed kept the constants in theta."""
        if "tune_constants" in config:
            return config
        return {**config, "tune_constants": "constants" in array_paths}

    @staticmethod
    def scale_learning_rate(theta: dict[str, Any], multiplier: Any) -> dict[str, Any]:
        """theta with the program's `lr` input multiplied by `multiplier` (may be traced)."""
        return {**theta, "learning_rate": theta["learning_rate"] * multiplier}

    @property
    def program(self) -> Program:
        return parse(self.text)

    def init_meta(self, key: jax.Array) -> dict[str, Any]:
        """theta: {'learning_rate': []}, plus 'constants': [C] with `tune_constants` (left out when
        the program has none)."""
        del key
        theta = {"learning_rate": jnp.asarray(self.learning_rate, jnp.float32)}
        constants = constants_of(check(self.program))
        if self.tune_constants and constants.size:
            theta["constants"] = jnp.asarray(constants)
        return theta

    def transform(self, theta: dict[str, Any], *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:
        """The program with theta's constants when it holds them, else the text's, its `lr` input
        on the program's schedule over `num_steps` (unused when constant)."""
        learning_rate = lr_schedule(theta["learning_rate"], self.schedule, num_steps)
        return to_optax(self.program, learning_rate, constants=theta.get("constants"))


def from_program(program: Program | str, learning_rate: float = 1.0, schedule: str = "constant") -> ProgramOptimizer:
    """Wrap a program (or its text) for `lopt.save`."""
    text = program if isinstance(program, str) else str(program)
    return ProgramOptimizer(text=text, learning_rate=learning_rate, schedule=schedule)


def save_program(
    path: str | Path,
    program: Program | str,
    learning_rate: float,
    meta: dict[str, Any],
    *,
    overwrite: bool = False,
    schedule: str = "constant",
) -> Path:
    """Save a program with the value of its `lr` input as a checkpoint (`lopt.save`; its constants
    in the text only): what `lopt program export` and a finished search
    (`lopt.meta_train.search.pipeline.ship_checkpoint`) write."""
    from lopt.checkpoint import save  # lopt.checkpoint loads kinds, this module among them

    meta_optimizer = from_program(program, learning_rate=learning_rate, schedule=schedule)
    return save(path, meta_optimizer, meta_optimizer.init_meta(jax.random.key(0)), meta=meta, overwrite=overwrite)
