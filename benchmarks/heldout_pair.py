"""Two saved learned optimizers, untuned, side by side on held-out tasks: each one's final train
loss (mean of the last 10% of steps) and final test loss (the last evaluation), means over seeds,
and which one wins each. A cheap check of a meta-trained theta against its start before the full
`lopt eval` comparison with LR sweeps and baselines (which needs a GPU at the suite's sizes).

    python benchmarks/heldout_pair.py checkpoints/generalist-metatrained-h100/start \\
        checkpoints/generalist-metatrained-h100 --tasks regression-mlp-relu128x2,pytext-transformer-64x3 --steps 2000

Task entries may carry a step multiplier (`name*5`, as in eval.suites).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from lopt.checkpoint import load_meta
from lopt.eval.suites import parse_entry
from lopt.tasks import build, task_spec, train


def final_losses(saved: tuple, task, num_steps: int, keys: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per seed, for `saved` = (meta_optimizer, theta): (mean train loss over the last 10% of
    steps, test loss at the last evaluation)."""
    meta, theta = saved
    opt = meta.transform(theta, num_steps=num_steps)
    every = max(1, num_steps // 10)
    runs = jax.jit(jax.vmap(lambda k: train(task, opt, k, num_steps=num_steps, eval_every=every)))(keys)
    train_loss = np.asarray(runs.train_loss, np.float64)
    return train_loss[:, -max(1, num_steps // 10) :].mean(axis=1), np.asarray(runs.eval_loss, np.float64)[:, -1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="a saved optimizer (the reference, e.g. a start)")
    parser.add_argument("b", help="another (e.g. the meta-trained theta)")
    parser.add_argument("--tasks", required=True, help="comma-separated task names or suite entries")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=777)
    args = parser.parse_args()

    keys = jax.random.split(jax.random.key(args.seed), args.seeds)
    saved = [load_meta(path) for path in (args.a, args.b)]
    print(f"A = {args.a}\nB = {args.b}\n{args.seeds} seeds, untuned, final train loss / test loss (means)")
    print("| task | train A | train B | test A | test B | B wins (train, test) |")
    print("|---|---:|---:|---:|---:|---|")
    wins = np.zeros(2, int)
    entries = [t for t in args.tasks.split(",") if t]
    for entry in entries:
        name, multiplier = parse_entry(entry)
        task, num_steps = build(task_spec(name)), args.steps * multiplier
        begin = time.perf_counter()
        (train_a, test_a), (train_b, test_b) = (final_losses(x, task, num_steps, keys) for x in saved)
        won = np.array([train_b.mean() < train_a.mean(), test_b.mean() < test_a.mean()])
        wins += won
        print(
            f"| {entry} | {train_a.mean():.4g} | {train_b.mean():.4g} | {test_a.mean():.4g} | {test_b.mean():.4g} | "
            f"{'yes' if won[0] else 'no'}, {'yes' if won[1] else 'no'} |  ({time.perf_counter() - begin:.0f} s)",
            flush=True,
        )
    print(f"B beats A on {wins[0]} of {len(entries)} tasks by train loss, {wins[1]} of {len(entries)} by test loss")


if __name__ == "__main__":
    main()
