"""`lopt eval`: sweep every optimizer over a suite, then write the table, JSON and figures."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tqdm.auto import tqdm

import lopt.baselines
from lopt import jobdir
from lopt.eval import cost, report
from lopt.eval.config import EvalConfig
from lopt.eval.runner import Candidate, Sweep, baseline_candidate, fixed_lr_candidate, learned_candidates, sweep
from lopt.checkpoint import CheckpointError
from lopt.eval.suites import entry_spec, parse_entry, suite_tasks
from lopt.config import ConfigError


@dataclasses.dataclass(frozen=True)
class EvalOutcome:
    """What an evaluation produced: sweeps, summary cells, the table and the files written."""

    sweeps: list[Sweep]
    cells: list[report.Cell]
    table: str
    files: dict[str, Path]
    seconds: float


def resolve_candidates(config: EvalConfig, num_steps: int | None = None) -> list[Candidate]:
    """The baselines named in the config (`["all"]` for every registry entry; `name@lr` for one
    at a fixed, untuned learning rate) and the learned optimizers, each told the run length
    `num_steps` (default `config.num_steps`; a `name*k` entry runs k times longer, and a schedule
    told the suite's length would end at its first fifth)."""
    num_steps = config.num_steps if num_steps is None else num_steps
    names = lopt.baselines.names() if tuple(config.optimizers) == ("all",) else config.optimizers
    candidates = []
    for name in names:
        try:
            base_name, _, fixed = name.partition("@")
            entry = lopt.baselines.spec(base_name)
            if fixed:
                try:
                    learning_rate = float(fixed)
                except ValueError:
                    raise ValueError(f"{name!r}: the text after '@' must be a learning rate") from None
                if not (0.0 < learning_rate < float("inf")):
                    raise ValueError(f"{name!r}: the learning rate after '@' must be a finite positive number")
                candidates.append(fixed_lr_candidate(entry, learning_rate, num_steps))
            else:
                candidates.append(baseline_candidate(entry, num_steps))
        except ValueError as error:
            raise ConfigError(f"optimizers: {error}") from None
    if "adam" not in names:
        candidates.insert(0, baseline_candidate(lopt.baselines.spec("adam"), num_steps))  # the reference
    for path in config.learned:
        try:
            candidates.extend(learned_candidates(path, num_steps))
        except CheckpointError as error:
            raise ConfigError(f"learned: {error}") from None
    return candidates


def resolve_tasks(config: EvalConfig) -> tuple[str, ...]:
    """The config's task names, validated."""
    try:
        names = config.tasks or suite_tasks(config.suite)
        for name in names:
            entry_spec(name)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return tuple(names)


def run_eval(config: EvalConfig, *, extra: list[Candidate] | None = None, progress: bool = True) -> EvalOutcome:
    """Run the evaluation described by `config` (plus `extra` candidates) and write its outputs."""
    start = time.perf_counter()
    task_names = resolve_tasks(config)
    # candidates per run length: methods that schedule over the run and learned optimizers that
    # read training progress are told the length of the run they are in
    multiplier = {t: parse_entry(t)[1] for t in task_names}
    run_length = {t: config.num_steps * k for t, k in multiplier.items()}
    lengths = sorted(set(run_length.values()))
    by_length = {n: resolve_candidates(config, n) + list(extra or []) for n in lengths}
    output = jobdir.claim(config.output_dir, "eval", key="output_dir")
    cache_dir = output / "cache" if config.cache else None

    sweeps = []
    jobs = [(t, c) for t in task_names for c in by_length[run_length[t]]]
    bar = tqdm(jobs, desc="lopt eval", unit="sweep", disable=not progress, dynamic_ncols=True)
    for task_name, candidate in bar:
        bar.set_postfix_str(f"{task_name} / {candidate.name}")
        sweeps.append(
            sweep(
                task_name,
                candidate,
                num_steps=run_length[task_name],
                eval_every=config.eval_every * multiplier[task_name],
                num_seeds=config.seeds,
                seed=config.seed,
                cache_dir=cache_dir,
            )
        )
    bar.close()

    costs = {}
    if config.measure_cost:
        bar = tqdm(jobs, desc="update cost", unit="optimizer", disable=not progress, dynamic_ncols=True)
        for task_name, candidate in bar:
            bar.set_postfix_str(f"{task_name} / {candidate.name}")
            costs[(task_name, candidate.name)] = cost.measure(task_name, candidate.make(candidate.lr_grid[0]))
        bar.close()

    cells = report.summarise(sweeps, costs)
    title = f"{config.suite if not config.tasks else 'custom tasks'}: {config.num_steps} steps, {config.seeds} seeds"
    table = report.markdown_table(cells, title=title)
    tests = report.test_loss_table(cells)
    if tests:
        table += "\n\n#### Test loss\n\n" + tests
    for candidate in by_length[lengths[0]]:  # the same names at every run length
        if candidate.learned:
            table += "\n\n#### Head to head\n\n" + report.head_to_head(cells, candidate.name)
    costs_text = report.cost_table(cells)
    if costs_text:
        table += "\n\n#### Optimizer cost\n\n" + costs_text
    files = {
        "table": output / "results.md",
        "json": output / "results.json",
        "curves": output / "loss_curves.png",
        "lr_sensitivity": output / "lr_sensitivity.png",
    }
    files["table"].write_text(table + "\n")
    report.write_json(files["json"], cells, dataclasses.asdict(config))
    report.plot_curves(files["curves"], sweeps, cells)
    report.plot_lr_sensitivity(files["lr_sensitivity"], sweeps, cells)
    return EvalOutcome(sweeps, cells, table, files, time.perf_counter() - start)
