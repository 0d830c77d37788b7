"""Where a search config's seed program trains best on each proxy: its fitness runs over a fine
grid of values fed to the program's `lr` input (quarter decades), the median log test loss per
value, and the tuned value per task. A search's `fitness.lr_multipliers` × `fitness.lr_scales`
should bracket these values: a grid that misses a proxy's tuned rate rewards children that only
rescale the seed's LR constant (two GPU searches from AdamW topped with such a child).

    python benchmarks/proxy_lr.py --config configs/search/gpu.toml
    python benchmarks/proxy_lr.py --config configs/search/gpu-matrix.toml \
        --set "search.seed_program='muon'" --decades -3 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from lopt.config import load_config
from lopt.programs import check, parse
from lopt.meta_train.search.config import SearchConfig
from lopt.meta_train.search.fitness import BatchedEvaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/search/gpu.toml")
    parser.add_argument("--decades", type=float, nargs=2, default=[-1.0, 2.0], help="grid range, log10 of the lr input")
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument(
        "--set", action="append", default=[], help="KEY=VALUE config overrides, e.g. search.seed_program='muon'"
    )
    args = parser.parse_args()
    config = load_config(SearchConfig, args.config, args.set)
    grid = tuple(float(10 ** (k / 4)) for k in range(int(4 * args.decades[0]), int(4 * args.decades[1]) + 1))
    spec = dataclasses.replace(
        config.fitness, lr_multipliers=grid, lr_scales=(), hurdle=0.0, precompile=(), batch=1, interpreter="batched"
    )
    losses = BatchedEvaluator(spec).losses([check(parse(config.seed_program_text()))])[0]  # [tasks, lrs, seeds]
    with np.errstate(divide="ignore", invalid="ignore"):
        logged = np.log(np.median(np.where(np.isfinite(losses), losses, np.inf), axis=-1))
    print(
        f"seed {config.search.seed_program} on the proxies of {args.config} (median log test loss of "
        f"{spec.seeds} seeds per lr input):"
    )
    print("| lr input | " + " | ".join(spec.tasks) + " |")
    print("|---:|" + "---:|" * len(spec.tasks))
    for i, lr in enumerate(grid):
        print(f"| {lr:.3g} | " + " | ".join(f"{logged[t, i]:.3f}" for t in range(len(spec.tasks))) + " |")
    best = {task: grid[int(np.argmin(logged[t]))] for t, task in enumerate(spec.tasks)}
    print("tuned lr input per task: " + ", ".join(f"{task} {value:.3g}" for task, value in best.items()))
    print(f"fitness at the tuned values (the seed tuned per task): {np.mean(np.min(logged, axis=1)):.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"grid": grid, "tasks": list(spec.tasks), "log_loss": logged.tolist(), "tuned": best}, f, indent=2
            )


if __name__ == "__main__":
    main()
