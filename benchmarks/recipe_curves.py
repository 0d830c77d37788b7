"""Validation curves of several meta-training runs on one figure: the validation score (± its
seed spread) against outer step, and each validation task's own curve, from the runs'
`metrics.jsonl` logs (a run folder's log, or a copy of it).

    python benchmarks/recipe_curves.py docs/figures/recipes_gpu_2026-12-07/*.jsonl \\
        --out docs/figures/recipes_gpu_2026-12-07/validation.png

With --chain, the logs are the consecutive stages of one run (a theta continued from the last
stage's saved one with a fresh outer optimizer) and --offsets gives the outer step at which each
stage started: one curve, with the meta-training loss beside the validation score.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows_of(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def validation_rows(log: Path) -> list[dict]:
    return [r for r in rows_of(log) if "validation_score" in r]


def chained(logs: list[Path], offsets: list[int]) -> tuple[list[dict], list[dict]]:
    """(validation rows, meta-loss rows) of the stages, on one outer-step axis. A stage's step-0
    row scores the theta the previous stage ended with; it is dropped only where the previous
    stage's log already scored that step."""
    if len(offsets) != len(logs):
        raise SystemExit(f"--offsets has {len(offsets)} values for {len(logs)} logs")
    validation, losses = [], []
    for log, offset in zip(logs, offsets):
        for row in rows_of(log):
            shifted = row | {"step": row["step"] + offset}
            if "validation_score" in row and all(r["step"] != shifted["step"] for r in validation):
                validation.append(shifted)
            if "meta_loss" in row:
                losses.append(shifted)
    return validation, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path, help="metrics.jsonl files (label: the file's stem)")
    parser.add_argument("--out", type=Path, required=True, help="the figure to write (.png)")
    parser.add_argument("--chain", action="store_true", help="the logs are consecutive stages of one run")
    parser.add_argument("--offsets", default="", help="with --chain: each stage's first outer step, e.g. 0,192")
    parser.add_argument("--label", default="run", help="with --chain: the run's legend label")
    args = parser.parse_args()

    runs, losses = {}, []
    if args.chain:
        offsets = [int(v) for v in args.offsets.split(",")] if args.offsets else [0] * len(args.logs)
        runs[args.label], losses = chained(args.logs, offsets)
    else:
        for log in args.logs:
            label = log.parent.name if log.name == "metrics.jsonl" else log.stem
            rows = validation_rows(log)
            if not rows:
                raise SystemExit(f"{log}: no validation rows (was run.eval_every 0?)")
            runs[label] = rows
    tasks = sorted({k for rows in runs.values() for r in rows for k in r if k.startswith("validation/")})
    columns = 1 + len(tasks) + bool(losses)
    figure, axes = plt.subplots(1, columns, figsize=(3.4 * columns, 3.2), squeeze=False)
    if losses:
        axis = axes[0, -1]
        axis.plot([r["step"] for r in losses], [r["meta_loss"] for r in losses], marker=".", color="gray")
        axis.set_title("meta-training loss (PES, training mix)", fontsize=9)
    for label, rows in runs.items():
        steps = [r["step"] for r in rows]
        score = [r["validation_score"] for r in rows]
        spread = [r.get("validation_seed_spread", 0.0) for r in rows]
        line = axes[0, 0].plot(steps, score, marker="o", label=label)[0]
        axes[0, 0].fill_between(
            steps,
            [s - d for s, d in zip(score, spread)],
            [s + d for s, d in zip(score, spread)],
            color=line.get_color(),
            alpha=0.2,
        )
        for axis, task in zip(axes[0, 1:], tasks):
            values = [r.get(task, math.nan) for r in rows]
            axis.plot(steps, values, marker="o", color=line.get_color())
    axes[0, 0].set_title("validation score (± seed spread)")
    axes[0, 0].legend(fontsize=7)
    for axis, task in zip(axes[0, 1 : 1 + len(tasks)], tasks):
        axis.set_title(task.removeprefix("validation/"), fontsize=9)
    for axis in axes[0]:
        axis.set_xlabel("outer step")
        axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel("log(final loss / Adam 1e-3's), lower is better")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote figure: {args.out}")


if __name__ == "__main__":
    main()
