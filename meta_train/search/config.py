"""The `lopt search` job config (TOML, see configs/search/), and reading it back from a search
folder (`lopt search --resume DIR`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lopt.config import ConfigError, apply_overrides, check_output_dir, describe_error, from_dict
from lopt.programs.lang import format_program, parse
from lopt.programs.library import SPACES
from lopt.programs.optimizer import SCHEDULES
from lopt.programs.seeds import SEEDS, seed
from lopt.meta_train.search.strategy import STRATEGIES
from lopt.tasks import task_spec


INTERPRETERS = ("auto", "batched", "kernel", "unrolled", "jit")


@dataclasses.dataclass(frozen=True)
class FitnessSpec:
    """tasks: named proxy tasks; steps: inner steps per run (one number, or one per task: long
    enough on one proxy for momentum and adaptive scaling to matter); seeds: runs per multiplier;
    lr_multipliers: values fed to the program's `lr` input; eval_batches: test batches
    averaged at the end; length: the most live statements a program may have (batched encoding);
    interpreter: 'batched' (a scan over rounds of slots with a register file), 'kernel' (Pallas
    kernels with the registers on chip, lopt.programs.kernel; programs with tree-level
    statements in batches of their own), 'unrolled' (the population call with the slots
    unrolled and registers as values), 'jit' (one compile per program) or 'auto' (= batched:
    with typed slots it beats one compile per program on the CPU too: the CPU quickstart search,
    2.0 against 0.33 programs/s); batch: programs per compiled call (all but jit);
    hurdle: quality rejection (EvoNorms' "quality rejection by a short run"; the funnel idea of
    Chen et al. 2023 inside the proxy): with a reference set (`set_reference`, the search's seed),
    a program whose score on the first task — log of its best-LR median loss — is worse than the
    reference's by more than `hurdle` is not trained on the other tasks and scores +inf. 0 turns
    it off. In a GPU search from AdamW 99% of trained children scored worse than the seed, 92% by
    more than 1 in mean log loss, and 36% diverged, so ordering the cheap task first and a hurdle
    skip most of the costly runs.
    lr_scales: one number per task multiplying `lr_multipliers` there (() = 1 for every task), so
    each task's grid can bracket the seed's tuned learning rate. With one decade grid for two
    proxies whose tuned AdamW rates differ 4× (conv 0.01-0.018, regression 0.003;
    benchmarks/proxy_lr.py), a child that only rescales the seed's LR constant 2.5-3× gained 0.2
    in fitness and topped two GPU searches.
    precompile: numbers of rounds whose population calls `BatchedEvaluator.precompile` compiles
    ahead, concurrently (every task, kind and padded batch size), for searches whose first calls
    would otherwise stall on one compile after another (a GPU search met 18 shapes in 60
    generations at 13-21 s each); () compiles each shape when first met.
    metric: what a run scores. 'test': the mean test-split loss of the final parameters over
    `eval_batches` batches (the proxies' choice: generalisation on the proxy's data). 'train':
    the mean minibatch train loss over the last 10% of steps — `eval.metrics.final_loss`, the
    final loss of `lopt eval`'s tables and so of the held-out stage of the funnel. On the small
    embedded datasets the two disagree: the shipped program-search-h200 beats tuned AdamW on 9
    of 13 held-out tasks by final train loss and on 4 of 13 by final test loss (its card), since a
    faster optimizer overfits small datasets sooner.
    schedule: how every run's `lr` input moves (`lopt.programs.optimizer.SCHEDULES`): 'constant',
    or 'cosine' (linear warm-up over 5% of the run, cosine decay to 0), as users train. It applies
    to programs, the seed, the references and the funnel's AdamW alike, and a finished search
    ships its program with it, so rankings are made under the schedule the program will run on."""

    tasks: tuple[str, ...] = ("digits-mlp-relu32",)
    steps: int | tuple[int, ...] = 200
    seeds: int = 2
    lr_multipliers: tuple[float, ...] = (0.3, 1.0, 3.0)
    eval_batches: int = 4
    length: int = 32
    interpreter: str = "auto"
    batch: int = 32
    seed: int = 0
    max_param_abs: float = 1e4
    hurdle: float = 0.0
    lr_scales: tuple[float, ...] = ()
    precompile: tuple[int, ...] = ()
    metric: str = "test"
    schedule: str = "constant"

    def __post_init__(self) -> None:
        steps = self.steps if isinstance(self.steps, tuple) else (self.steps,)
        for key, value in [("steps", v) for v in steps] + [
            (k, getattr(self, k)) for k in ("seeds", "eval_batches", "length", "batch")
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"fitness.{key}: {value!r} is not valid; expected a positive whole number")
        if isinstance(self.steps, tuple) and len(self.steps) != len(self.tasks):
            raise ConfigError(
                f"fitness.steps: {len(self.steps)} numbers for {len(self.tasks)} tasks; give one, or one per task"
            )
        if not self.lr_multipliers or not all(m > 0 for m in self.lr_multipliers):
            raise ConfigError(f"fitness.lr_multipliers: expected positive numbers, got {list(self.lr_multipliers)[:8]}")
        if not self.tasks:
            raise ConfigError("fitness.tasks: at least one proxy task is needed")
        if self.lr_scales and (
            len(self.lr_scales) != len(self.tasks)
            or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < float("inf") for x in self.lr_scales
            )
        ):
            raise ConfigError(
                f"fitness.lr_scales: expected one positive number per task ({len(self.tasks)}), "
                f"got {list(self.lr_scales)[:8]}"
            )
        check_task_names("fitness.tasks", self.tasks)
        if not self.max_param_abs > 0:
            raise ConfigError(f"fitness.max_param_abs: expected a positive number, got {self.max_param_abs!r}")
        if self.interpreter not in INTERPRETERS:
            raise ConfigError(f"fitness.interpreter: {self.interpreter!r} is not one of {', '.join(INTERPRETERS)}")
        if not (
            isinstance(self.hurdle, (int, float))
            and not isinstance(self.hurdle, bool)
            and 0 <= self.hurdle < float("inf")
        ):
            raise ConfigError(f"fitness.hurdle: expected a number ≥ 0 (0: off), got {self.hurdle!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"fitness.schedule: {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.metric not in METRICS:
            raise ConfigError(f"fitness.metric: {self.metric!r} is not one of {', '.join(METRICS)}")
        if not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= 16 for r in self.precompile):
            raise ConfigError(
                f"fitness.precompile: expected numbers of rounds from 1 to 16, got {list(self.precompile)[:8]}"
            )

    def task_steps(self, task_name: str) -> int:
        """Inner steps of each run on `task_name`."""
        return self.steps[self.tasks.index(task_name)] if isinstance(self.steps, tuple) else self.steps

    def for_tasks(self, tasks: tuple[str, ...], steps: int | tuple[int, ...], **changes) -> FitnessSpec:
        """This spec on other tasks (meta-validation, funnel stages), without the settings that
        were per task or per proxy shape (lr_scales, precompile)."""
        return dataclasses.replace(self, tasks=tasks, steps=steps, lr_scales=(), precompile=(), **changes)

    def task_lrs(self, task_name: str) -> tuple[float, ...]:
        """The values fed to a program's `lr` input on `task_name`: the multipliers times its scale."""
        scale = self.lr_scales[self.tasks.index(task_name)] if self.lr_scales else 1.0
        return tuple(float(m) * scale for m in self.lr_multipliers)

    @property
    def inner_steps_per_program(self) -> int:
        """Inner steps one program trains over every task, multiplier and seed."""
        return sum(self.task_steps(t) for t in self.tasks) * len(self.lr_multipliers) * self.seeds


METRICS = ("test", "train")


def tail_steps(count: int) -> int:
    """Steps averaged by the 'train' metric: the last 10% of `count` (at least one), rounded as
    `eval.metrics.final_loss` rounds them."""
    return max(1, int(round(count * 0.1)))


def check_task_names(key: str, names: tuple[str, ...]) -> None:
    """ConfigError naming `key` unless every name is a named task."""
    for name in names:
        try:
            task_spec(name)
        except ValueError as error:
            raise ConfigError(f"{key}: {error}") from None


@dataclasses.dataclass(frozen=True)
class EvolutionSection:
    """strategy: 'evolution' (the paper's), 'random' (random programs: a baseline) or
    'constants' (mutate only the seed's constants: the constant-tuning baseline).
    seed_program: a name from lopt.programs.SEEDS or a path to a program file.
    max_rounds: children whose schedule needs more rounds of interpreter slots than this are not
    made (re-mutated, like those over `max_statements`); 0: no limit. Each new number of rounds
    is a new compiled shape per task, kind and batch size: in a 100-generation GPU search
    (2026-12-02) 44 of 30,000 trained children needed 4 rounds, and their 10 compiles took 171 of
    the 415 search-seconds.
    reject_nan_at_zero: also reject, untrained, children whose update is not finite where a
    gradient is exactly zero from the start (`lopt.programs.functional.ZERO_PROBE`: dead units,
    unused embedding rows), such as `m / sqrt(v)`. Off by default, since the paper's AdamW seed
    (`adamw_paper`) is such a program; the funnel rejects them either way.
    max_seconds: stop at the first generation boundary after this much time in this process
    (0: no limit); `lopt search --resume` continues exactly where it stopped.
    overlap: mutate and probe generation g + 1 on the host while the device trains generation g,
    so the device is not idle while Python mutates (selection then sees the scores one
    generation late, as with the asynchronous workers of Real et al. 2019's regularized
    evolution; a run is still deterministic per seed and resumes exactly). Off by default: on a CPU the
    host and the "device" share the cores.
    workers: processes that mutate a generation's children in parallel (0: this process). Each
    child has its own generator, so the search is the same for any number of workers; a resume
    may change it (the time it saves: docs/benchmarks.md).
    space: the functions inserted statements draw from (`lopt.programs.library.SPACES`): 'lion',
    the Lion paper's library; 'matrix', that library and the matrix functions (orthogonalize,
    row/column statistics, width_scale), which hold Muon, NorMuon and AdaMuon. Programs with
    matrix functions run the scan interpreter, in batches of their own (beside the Pallas kernel
    too, which has no matrix slot)."""

    strategy: str = "evolution"
    seed_program: str = "adamw_paper"
    population: int = 100
    tournament: int = 2
    children: int = 32
    generations: int = 50
    max_statements: int = 24
    max_rounds: int = 0
    reject_nan_at_zero: bool = False
    restart_after: int = 0
    seed: int = 0
    max_seconds: float = 0.0
    overlap: bool = False
    workers: int = 0
    space: str = "lion"

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ConfigError(f"search.space: unknown {self.space!r}; valid: {', '.join(SPACES)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"search.strategy: unknown {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if self.population < self.tournament or self.tournament < 1 or self.children < 1 or self.generations < 0:
            raise ConfigError("search: need population >= tournament >= 1, children >= 1, generations >= 0")
        if self.children > self.population:
            raise ConfigError("search.children must not exceed search.population (age-based removal)")
        for name in ("max_seconds", "max_rounds", "restart_after", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"search.{name}: {getattr(self, name)!r} is negative; expected 0 (none) or more")
        if self.max_statements < 1:
            raise ConfigError(f"search.max_statements: {self.max_statements!r}; expected at least 1")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not 0 <= self.workers <= 256:
            raise ConfigError(
                f"search.workers: expected a whole number from 0 (this process) to 256, got {self.workers!r}"
            )
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) or not 0 <= self.max_rounds <= 16:
            raise ConfigError(
                f"search.max_rounds: expected a whole number from 0 (no limit) to 16, got {self.max_rounds!r}"
            )


@dataclasses.dataclass(frozen=True)
class FunnelSection:
    """Re-evaluate the `top` best distinct programs on bigger tasks (stage by stage), promoting
    only those that beat AdamW tuned over `adamw_lrs` on the same stage.

    lr_multipliers: the values fed to each candidate's `lr` input, as many as `adamw_lrs`. The
    default is `adamw_lrs` ÷ 1e-3, the LR constant of the AdamW seeds, so a candidate that keeps
    that constant is tuned over exactly AdamW's rates. (The funnel used to tune candidates over
    the proxy's 4 multipliers and AdamW over 6 rates reaching 10× higher: on a GPU search's
    funnel, AdamW itself with its constant ×1.27 lost to the AdamW reference by 0.066 in log
    loss on the first stage from the grids alone.)
    validated: also funnel the `validated` best distinct programs by meta-validation
    (validation.jsonl), which need not be among the `top` by proxy fitness: in two GPU searches
    the held-out suite ranked the meta-validation pick above the proxy's best.
    seeds: each stage chooses every program's rate on this many seeds and scores it on as many
    others (`meta_train.search.pipeline.stage_scores`); 3, as the program-search issue asks.
    metric: what the stages score (`FitnessSpec.metric`). 'train' (the default): the final train
    loss that `lopt eval` tunes and reports on the held-out suite, the funnel's last stage — so
    every stage asks the question the last one does. The funnel scored test loss until
    2026-12-03; on 1,000 steps of 1,797 digits that mostly measures overfitting.
    The grids reach 0.3 (× 300): by final train loss tuned AdamW chose 3e-2, then the top of a
    grid ending there, on both stages of configs/search/gpu.toml (CPU, 2026-12-03), so the
    reference was not tuned."""

    tasks: tuple[str, ...] = ()
    steps: tuple[int, ...] = ()
    top: int = 5
    validated: int = 0
    seeds: int = 3
    adamw_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
    lr_multipliers: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
    metric: str = "train"

    def __post_init__(self) -> None:
        if self.top < 1 or self.validated < 0 or self.seeds < 1:
            raise ConfigError(
                f"funnel: need top >= 1, validated >= 0 and seeds >= 1, got {self.top}, "
                f"{self.validated} and {self.seeds}"
            )
        if len(self.tasks) != len(self.steps):
            raise ConfigError("funnel.tasks and funnel.steps must have the same length")
        check_task_names("funnel.tasks", self.tasks)
        if self.metric not in METRICS:
            raise ConfigError(f"funnel.metric: {self.metric!r} is not one of {', '.join(METRICS)}")
        if (
            len(self.lr_multipliers) != len(self.adamw_lrs)
            or min((*self.lr_multipliers, *self.adamw_lrs), default=1.0) <= 0
        ):
            raise ConfigError(
                "funnel.lr_multipliers and funnel.adamw_lrs must be positive and as many "
                f"(got {len(self.lr_multipliers)} and {len(self.adamw_lrs)}): "
                "both sides of the comparison are tuned over the same number of rates"
            )


@dataclasses.dataclass(frozen=True)
class ValidationSection:
    """Meta-validation (Chen et al. 2023, Sec. 2.3): every `every` generations the `top` best
    distinct programs not yet validated are trained on `task` (meant to be 10–100× the proxy)
    for `steps` steps, tuned over the fitness LR multipliers, and logged to validation.jsonl;
    the search then reports, simplifies and funnels the best program *by validation*, so a
    program that only games the proxy is not the one it ships. `task = ""` turns it off."""

    task: str = ""
    steps: int = 1000
    every: int = 10
    top: int = 3

    def __post_init__(self) -> None:
        if self.task:
            check_task_names("validation.task", (self.task,))
            if self.steps < 1 or self.every < 1 or self.top < 1:
                raise ConfigError("validation: steps, every and top must be positive")


@dataclasses.dataclass(frozen=True)
class SearchRunSection:
    output_dir: str = "runs/search"

    def __post_init__(self) -> None:
        check_output_dir("run.output_dir", self.output_dir)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    search: EvolutionSection = EvolutionSection()
    fitness: FitnessSpec = FitnessSpec()
    funnel: FunnelSection = FunnelSection()
    validation: ValidationSection = ValidationSection()
    run: SearchRunSection = SearchRunSection()

    def __post_init__(self) -> None:
        # each section checks its own fields when it is made; here only what spans sections
        if self.fitness.length < self.search.max_statements:
            raise ConfigError("fitness.length must be at least search.max_statements")

    def validation_spec(self) -> FitnessSpec:
        """The fitness spec of the meta-validation task (batches of `top` programs)."""
        return self.fitness.for_tasks((self.validation.task,), self.validation.steps, batch=self.validation.top)

    def seed_program_text(self) -> str:
        name = self.search.seed_program
        if name in SEEDS:
            return format_program(seed(name))
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"search.seed_program: {name!r} is neither a seed ({', '.join(SEEDS)}) nor a file")
        return format_program(parse(path.read_text()))


def resume_record(record: dict[str, Any]) -> dict[str, Any]:
    """What of a config record a resume must match: all but `run.output_dir` (a search folder
    can be moved or copied) and `search.workers` (the search is the same for any number)."""
    return {
        **record,
        "run": {k: v for k, v in record.get("run", {}).items() if k != "output_dir"},
        # searches from before `space` and `schedule` existed ran with their defaults
        "fitness": {k: v for k, v in record.get("fitness", {}).items() if not (k == "schedule" and v == "constant")},
        "search": {
            k: v for k, v in record.get("search", {}).items() if k != "workers" and not (k == "space" and v == "lion")
        },
    }


def saved_config(directory: str | Path) -> dict[str, Any]:
    """The config.json a search in `directory` wrote when it started, as a dict; a one-line
    ConfigError where there is none or it is not a JSON object (resume and `lopt search
    funnel` both read it through here)."""
    saved = Path(directory) / "config.json"
    if not saved.is_file():
        raise ConfigError(f"{directory}: no search here (config.json missing)")
    try:
        data = json.loads(saved.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{saved}: not a search config ({describe_error(error)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{saved}: not a search config (a JSON object is needed)")
    return data


def config_from_dir(directory: str | Path, overrides: Sequence[str] = ()) -> SearchConfig:
    """The config of the search in `directory` with `overrides` (`key=value`, as `--set` gives
    them), pointed at `directory` itself (wherever the search was started: a moved or copied
    folder resumes in place)."""
    data = saved_config(directory)
    where = str(Path(directory) / "config.json") + (" with --set" if overrides else "")
    config = from_dict(SearchConfig, apply_overrides(data, overrides), where=where)
    return dataclasses.replace(config, run=dataclasses.replace(config.run, output_dir=str(directory)))
