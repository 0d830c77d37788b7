"""Summaries of sweeps: per-(task, optimizer) numbers, a markdown table, JSON and figures."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lopt.eval import metrics
from lopt.eval.cost import Cost
from lopt.eval.runner import Sweep

REFERENCE = "adam"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One optimizer on one task at its tuned learning rate."""

    task: str
    optimizer: str
    tuned_lr: float
    lr_at_grid_edge: bool
    final_train_mean: float
    final_train_std: float
    final_eval_mean: float
    final_eval_std: float
    best_eval_mean: float
    divergence_rate_tuned: float
    divergence_rate_grid: float
    steps_to_reference: int | None
    speedup_vs_reference: float | None
    run_seconds: float
    compile_seconds: float
    step_ms: float | None = None
    step_time_vs_reference: float | None = None
    state_bytes: int | None = None
    state_memory_vs_reference: float | None = None


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def summarise(sweeps: Sequence[Sweep], costs: Mapping[tuple[str, str], Cost] | None = None) -> list[Cell]:
    """Tune each sweep's LR on the train loss and compute its cell; speedups need `adam`.

    costs: optional (task, optimizer) -> `eval.cost.Cost`; the cells then carry the optimizer's
    time per update and state memory, absolute and relative to adam's on the same task."""
    costs = costs or {}
    reference_final, reference_steps = {}, {}
    for s in sweeps:
        if s.optimizer == REFERENCE:
            curve = s.train_loss[metrics.tuned_index(s.train_loss)]
            reference_final[s.task] = float(np.nanmean(metrics.final_loss(curve)))
            reference_steps[s.task] = metrics.steps_to_target(curve.mean(axis=0), reference_final[s.task])
    cells = []
    for s in sweeps:
        index = metrics.tuned_index(s.train_loss)
        runs = s.train_loss[index]  # [seeds, steps]
        final = metrics.final_loss(runs)
        evals = s.eval_loss[index] if s.eval_loss.shape[-1] else np.full((runs.shape[0], 1), np.nan)
        steps = speedup = None
        target = reference_final.get(s.task)
        if target is not None and math.isfinite(target):
            steps = metrics.steps_to_target(runs.mean(axis=0), target)
            if steps is not None and reference_steps[s.task] is not None:
                speedup = reference_steps[s.task] / steps
        cells.append(
            Cell(
                task=s.task,
                optimizer=s.optimizer,
                tuned_lr=float(s.lrs[index]),
                lr_at_grid_edge=len(s.lrs) > 1 and index in (0, len(s.lrs) - 1),
                final_train_mean=float(np.mean(final)),
                final_train_std=float(np.std(final)),
                final_eval_mean=float(np.mean(evals[:, -1])),
                final_eval_std=float(np.std(evals[:, -1])),
                best_eval_mean=float(np.mean(np.nanmin(np.where(np.isfinite(evals), evals, np.nan), axis=-1)))
                if np.any(np.isfinite(evals))
                else float("nan"),
                divergence_rate_tuned=float(metrics.diverged(runs).mean()),
                divergence_rate_grid=float(metrics.diverged(s.train_loss).mean()),
                steps_to_reference=steps,
                speedup_vs_reference=speedup,
                run_seconds=s.run_seconds,
                compile_seconds=s.compile_seconds,
                **_cost_fields(costs.get((s.task, s.optimizer)), costs.get((s.task, REFERENCE))),
            )
        )
    return cells


def _cost_fields(cost: Cost | None, reference: Cost | None) -> dict:
    if cost is None:
        return {}
    fields = {"step_ms": 1e3 * cost.step_seconds, "state_bytes": cost.state_bytes}
    if reference is not None:
        fields["step_time_vs_reference"] = cost.step_seconds / reference.step_seconds
        fields["state_memory_vs_reference"] = (
            cost.state_bytes / reference.state_bytes if reference.state_bytes else None
        )
    return fields


def cost_table(cells: Sequence[Cell]) -> str:
    """Per optimizer: the median over tasks of its update time and state memory relative to
    adam's on the same task (empty when no costs were measured)."""
    rows = []
    for name in dict.fromkeys(c.optimizer for c in cells):
        mine = [c for c in cells if c.optimizer == name and c.step_time_vs_reference is not None]
        if not mine:
            continue
        memory = [c.state_memory_vs_reference for c in mine if c.state_memory_vs_reference is not None]
        rows.append(
            (
                float(np.median([c.step_time_vs_reference for c in mine])),
                f"| {name} | {np.median([c.step_ms for c in mine]):.3g} | "
                f"{np.median([c.step_time_vs_reference for c in mine]):.2f}× | "
                f"{max(c.state_bytes for c in mine) / 1024:.1f} | "
                + (f"{np.median(memory):.2f}× |" if memory else "— |"),
            )
        )
    if not rows:
        return ""
    lines = [
        "| optimizer | update ms (median over tasks) | update time ÷ adam | state KiB (largest task) | state ÷ adam |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [row for _, row in sorted(rows)]
    lines += [
        "",
        "Update time: `update` + `apply_updates` with a fixed gradient, compiled, model forward/backward "
        "excluded (extra passes an optimizer requests, e.g. AdaHessian's Hessian-vector product, are "
        "included); median of timed loops, adam measured in the same process.",
    ]
    return "\n".join(lines)


def scores(cells: Sequence[Cell]) -> dict[str, dict[str, float]]:
    """Aggregates per optimizer over tasks: geometric-mean final-loss ratio to tuned adam (lower
    is better); the interquartile mean of that ratio (robust to one outlier task) with a 95%
    bootstrap interval over tasks; the IQM speedup (tuned adam's steps to its own final loss ÷
    this optimizer's steps to reach it; 0 where it never does); and the fraction of tasks where
    it beats tuned adam's mean final train loss."""
    by_task = {c.task: c for c in cells if c.optimizer == REFERENCE}
    result = {}
    for name in dict.fromkeys(c.optimizer for c in cells):
        mine = [c for c in cells if c.optimizer == name and c.task in by_task]
        ratios = np.array([c.final_train_mean / by_task[c.task].final_train_mean for c in mine])
        wins = [c.final_train_mean < by_task[c.task].final_train_mean for c in mine]
        safe = np.where(np.isfinite(ratios), ratios, np.inf)
        speedups = np.array([c.speedup_vs_reference or 0.0 for c in mine])
        low, high = metrics.bootstrap_interval(safe) if mine else (float("nan"), float("nan"))
        result[name] = {
            "loss_ratio_vs_adam": metrics.geometric_mean(ratios) if mine else float("nan"),
            "loss_ratio_iqm": metrics.iqm(safe) if mine else float("nan"),
            "loss_ratio_iqm_low": low,
            "loss_ratio_iqm_high": high,
            "speedup_iqm": metrics.iqm(speedups) if mine else float("nan"),
            "fraction_beating_adam": float(np.mean(wins)) if mine else float("nan"),
        }
    return result


def _format(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "diverged"
    return f"{mean:.3g} ± {std:.2g}"


def _best_per_task(cells: Sequence[Cell], tasks: Sequence[str], metric: str) -> dict[str, float]:
    """Per task, the lowest finite `<metric>_mean` of any optimizer (NaN when none is finite)."""
    return {
        t: min(
            (
                getattr(c, f"{metric}_mean")
                for c in cells
                if c.task == t and math.isfinite(getattr(c, f"{metric}_mean"))
            ),
            default=float("nan"),
        )
        for t in tasks
    }


def _cell_text(
    cells: Sequence[Cell], name: str, task: str, metric: str, best: dict[str, float]
) -> tuple[str, Cell | None]:
    """`mean ± std` of `metric` for optimizer `name` on `task`, bold where it is the task's best."""
    cell = next((c for c in cells if c.task == task and c.optimizer == name), None)
    if cell is None:
        return "—", None
    mean = getattr(cell, f"{metric}_mean")
    text = _format(mean, getattr(cell, f"{metric}_std"))
    return (f"**{text}**" if mean == best[task] else text), cell


def markdown_table(cells: Sequence[Cell], *, title: str = "") -> str:
    """Rows: optimizers by score; columns: tasks (final train loss at the tuned LR, mean ± std
    over seeds; bold = best on the task; † = tuned LR at the edge of the grid)."""
    tasks = list(dict.fromkeys(c.task for c in cells))
    agg = scores(cells)
    order = sorted(agg, key=lambda n: (not math.isfinite(agg[n]["loss_ratio_vs_adam"]), agg[n]["loss_ratio_vs_adam"]))
    best = _best_per_task(cells, tasks, "final_train")
    lines = [f"### {title}", ""] if title else []
    header = ["optimizer", *tasks, "loss ÷ adam (geo-mean)", "loss ÷ adam (IQM, 95% CI)", "speedup (IQM)", "beats adam"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in order:
        row = [name]
        for task in tasks:
            text, cell = _cell_text(cells, name, task, "final_train", best)
            row.append(text + (" †" if cell is not None and cell.lr_at_grid_edge else ""))
        ratio, a = agg[name]["loss_ratio_vs_adam"], agg[name]
        interval = (
            f"{a['loss_ratio_iqm']:.3g} [{a['loss_ratio_iqm_low']:.3g}, {a['loss_ratio_iqm_high']:.3g}]"
            if math.isfinite(a["loss_ratio_iqm"])
            else "—"
        )
        row += [
            f"{ratio:.3f}" if math.isfinite(ratio) else "—",
            interval,
            f"{a['speedup_iqm']:.2f}×" if math.isfinite(a["speedup_iqm"]) else "—",
            f"{a['fraction_beating_adam']:.0%}" if name != REFERENCE else "—",
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Final train loss (mean over the last 10% of steps) at the LR tuned per task on train loss, "
        "mean ± std over seeds; `learned:` rows are untuned (their own step size); "
        "`(LR-tuned)` rows get their kind's multiplier sweep. "
        "† tuned LR at the edge of its grid. IQM: interquartile mean over tasks, bootstrap 95% interval. "
        "Speedup: steps tuned adam needs to reach its final loss ÷ steps this optimizer needs to reach "
        "it (0 if never).",
    ]
    return "\n".join(lines)


def test_loss_table(cells: Sequence[Cell]) -> str:
    """Rows: optimizers; columns: tasks (final test loss at the LR tuned on train loss, mean ±
    std over seeds), and the fraction of tasks where the row beats tuned adam's test loss. Train
    loss can reward memorising the training set; test loss cannot."""
    tasks = list(dict.fromkeys(c.task for c in cells))
    if not any(math.isfinite(c.final_eval_mean) for c in cells):
        return ""
    adam = {c.task: c.final_eval_mean for c in cells if c.optimizer == REFERENCE}
    best = _best_per_task(cells, tasks, "final_eval")
    lines = ["| optimizer | " + " | ".join(tasks) + " | beats adam (test) |", "|" + "---|" * (len(tasks) + 2)]
    for name in dict.fromkeys(c.optimizer for c in cells):
        row, wins, counted = [name], 0, 0
        for task in tasks:
            text, cell = _cell_text(cells, name, task, "final_eval", best)
            row.append(text)
            if cell is not None and task in adam and math.isfinite(adam[task]):
                counted += 1
                wins += bool(cell.final_eval_mean < adam[task])
        row.append(f"{wins / counted:.0%}" if counted and name != REFERENCE else "—")
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Final test loss (the last evaluation of the run) at the LR tuned per task on train loss, "
        "mean ± std over seeds.",
    ]
    return "\n".join(lines)


def beats(mine: float, theirs: float) -> bool:
    """Whether loss `mine` beats `theirs`: the lower of two finite losses; a diverged
    (non-finite) run loses to a finite one, and two diverged runs tie."""
    return (mine < theirs) if math.isfinite(mine) and math.isfinite(theirs) else math.isfinite(mine)


def head_to_head(cells: Sequence[Cell], name: str) -> str:
    """For optimizer `name`: against every other row, on how many tasks it has the lower mean
    final train loss, and the lower mean final test loss (a diverged run loses)."""
    mine = {c.task: c for c in cells if c.optimizer == name}
    lines = [f"| {name} against | wins by train loss | wins by test loss |", "|---|---:|---:|"]
    for other in dict.fromkeys(c.optimizer for c in cells):
        if other == name:
            continue
        theirs = {c.task: c for c in cells if c.optimizer == other and c.task in mine}
        train = sum(beats(mine[t].final_train_mean, c.final_train_mean) for t, c in theirs.items())
        test = sum(beats(mine[t].final_eval_mean, c.final_eval_mean) for t, c in theirs.items())
        lines.append(f"| {other} | {train} of {len(theirs)} | {test} of {len(theirs)} |")
    return "\n".join(lines)


def write_json(path: Path, cells: Sequence[Cell], config: dict) -> None:
    """All numbers, atomically (temp file + rename)."""
    payload = {
        "config": config,
        "cells": [
            {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(c).items()}
            for c in cells
        ],
        "scores": {k: {m: _finite_or_none(v) for m, v in s.items()} for k, s in scores(cells).items()},
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    os.replace(temporary, path)


def _plotted_optimizers(cells: Sequence[Cell], limit: int, sweeps: Sequence[Sweep]) -> list[str]:
    agg = scores(cells)
    ranked = sorted(agg, key=lambda n: agg[n]["loss_ratio_vs_adam"])
    chosen = ranked[:limit]
    untuned = {s.optimizer for s in sweeps if len(s.lrs) == 1}
    for name in ranked:  # untuned (learned) optimizers and the reference are always drawn
        if (name == REFERENCE or name in untuned) and name not in chosen:
            chosen.append(name)
    return chosen


def _panels(count: int):
    """A figure with one axis per task, three to a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    for axis in list(axes.flat)[count:]:
        axis.set_visible(False)
    return plt, figure, list(axes.flat)[:count]


def _finish(plt, figure, path: Path, title: str) -> None:
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_curves(path: Path, sweeps: Sequence[Sweep], cells: Sequence[Cell], *, limit: int = 8) -> None:
    """Train-loss curves at each optimizer's tuned LR, one panel per task, seeds shaded (min-max),
    log-scaled losses; at most `limit` optimizers by score (plus adam)."""
    tasks = list(dict.fromkeys(s.task for s in sweeps))
    chosen = _plotted_optimizers(cells, limit, sweeps)
    plt, figure, axes = _panels(len(tasks))
    colours = plt.get_cmap("tab10" if len(chosen) <= 10 else "tab20")
    for axis, task in zip(axes, tasks):
        for i, name in enumerate(chosen):
            s = next((s for s in sweeps if s.task == task and s.optimizer == name), None)
            if s is None:
                continue
            runs = s.train_loss[metrics.tuned_index(s.train_loss)]
            window = max(1, runs.shape[-1] // 50)
            smoothed = metrics.smooth(runs, window)
            steps = np.arange(1, runs.shape[-1] + 1)
            style = "-" if name == REFERENCE or i < 10 else "--"
            axis.plot(
                steps,
                smoothed.mean(0),
                style,
                color=colours(i % colours.N),
                lw=1.6 if name != REFERENCE else 2.4,
                label=f"{name} (untuned)"
                if len(s.lrs) == 1
                else f"{name} (lr {s.lrs[metrics.tuned_index(s.train_loss)]:.3g})",
            )
            axis.fill_between(steps, smoothed.min(0), smoothed.max(0), color=colours(i % colours.N), alpha=0.15)
        axis.set_yscale("log")
        axis.set_title(task, fontsize=10)
        axis.set_xlabel("step")
        axis.set_ylabel("train loss (smoothed)")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7, loc="best")
    _finish(plt, figure, path, "Train loss at the tuned learning rate (shaded: min-max over seeds)")


def plot_lr_sensitivity(path: Path, sweeps: Sequence[Sweep], cells: Sequence[Cell], *, limit: int = 8) -> None:
    """Final train loss against learning rate (log-log), one panel per task; diverged runs are
    drawn at the top of the panel as crosses."""
    tasks = list(dict.fromkeys(s.task for s in sweeps))
    chosen = [
        n for n in _plotted_optimizers(cells, limit, sweeps) if any(len(s.lrs) > 1 for s in sweeps if s.optimizer == n)
    ]
    plt, figure, axes = _panels(len(tasks))
    colours = plt.get_cmap("tab10" if len(chosen) <= 10 else "tab20")
    for axis, task in zip(axes, tasks):
        finite = [c.final_train_mean for c in cells if c.task == task and math.isfinite(c.final_train_mean)]
        ceiling = 10 * max(finite) if finite else 10.0
        for i, name in enumerate(chosen):
            s = next((s for s in sweeps if s.task == task and s.optimizer == name), None)
            if s is None:
                continue
            final = np.where(metrics.diverged(s.train_loss), np.nan, metrics.final_loss(s.train_loss)).mean(1)
            colour = colours(i % colours.N)
            axis.plot(s.lrs, np.minimum(final, ceiling), "o-", color=colour, ms=3, label=name)
            bad = ~np.isfinite(final)
            axis.plot(s.lrs[bad], np.full(bad.sum(), ceiling), "x", color=colour)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(task, fontsize=10)
        axis.set_xlabel("learning rate (or multiplier)")
        axis.set_ylabel("final train loss")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7)
    _finish(plt, figure, path, "Learning-rate sensitivity (×: diverged)")
