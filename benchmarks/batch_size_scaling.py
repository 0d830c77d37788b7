"""How the tuned learning rate scales with batch size, for SGD and Adam.

"Learning Rates as a Function of Batch Size: A Random Matrix Theory Approach to Neural Network
Training" (Granziol et al., JMLR 2022) predicts that the best learning rate grows linearly with
the batch size B for SGD (η* ∝ B) and as its square root for adaptive methods such as Adam
(η* ∝ √B), while B is below the critical batch size. This benchmark measures the exponent.

Per task, optimizer and batch size: train for a fixed number of steps over a quarter-decade LR
grid and several seeds; the tuned LR minimises the mean final train loss (mean of the last 10% of
steps), refined between grid points by a parabola through the minimum and its neighbours in
log η. The exponent is the least-squares slope of log η* against log B; its 95% interval comes
from a bootstrap over seeds (resampled with replacement, the whole fit redone).

    python benchmarks/batch_size_scaling.py --steps 500 --out results/batch_size
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
import optax

from _report import pyplot, save_figure, write
from lopt.tasks import ConvSpec, MLPSpec, build, train

GRID = np.logspace(-5, 1, 25)  # quarter decades
BATCH_SIZES = (8, 16, 32, 64, 128, 256)
OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam}


def task_specs() -> dict[str, callable]:
    return {
        "digits-mlp-tanh64x2": lambda b: MLPSpec("digits", (64, 64), "tanh", b),
        "mnist1d-mlp-relu128x2": lambda b: MLPSpec("mnist1d", (128, 128), "relu", b),
        "digits-conv-16-32": lambda b: ConvSpec("digits", (16, 32), "relu", b),
    }


def final_losses(spec, make, steps: int, seeds: int) -> np.ndarray:
    """[len(GRID), seeds] mean train loss over the last 10% of steps (NaN where it diverged)."""
    task = build(spec)
    keys = jax.random.split(jax.random.key(0), seeds)
    tail = max(1, steps // 10)

    def one(lr, key):
        return train(task, make(lr), key, num_steps=steps).train_loss[-tail:].mean()

    run = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))
    out = np.asarray(run(np.asarray(GRID, np.float32), keys), np.float64)
    return np.where(np.isfinite(out), out, np.inf)


def tuned_log_lr(mean_losses: np.ndarray) -> float:
    """log10 of the tuned LR: the grid minimum refined by a parabola in log10 η (held at the
    grid point when the minimum is at an edge or the parabola opens downwards)."""
    logs = np.log10(GRID)
    i = int(np.argmin(mean_losses))
    if i in (0, len(GRID) - 1) or not np.all(np.isfinite(mean_losses[i - 1 : i + 2])):
        return float(logs[i])
    y = np.log(mean_losses[i - 1 : i + 2])
    curvature = y[0] - 2 * y[1] + y[2]
    if curvature <= 0:
        return float(logs[i])
    offset = 0.5 * (y[0] - y[2]) / curvature
    return float(logs[i] + np.clip(offset, -1, 1) * (logs[1] - logs[0]))


def exponent(losses: dict[int, np.ndarray], seed_index: np.ndarray | None = None) -> tuple[float, list[float]]:
    """Slope of log η* on log B (and the tuned log10 η per batch size) from [grid, seeds] losses."""
    sizes = sorted(losses)
    tuned = [
        tuned_log_lr(losses[b][:, seed_index].mean(axis=1) if seed_index is not None else losses[b].mean(axis=1))
        for b in sizes
    ]
    slope = np.polyfit(np.log10(sizes), tuned, 1)[0]
    return float(slope), tuned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(task_specs()))
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", default="results/batch_size")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rng = np.random.default_rng(0)
    results = {}
    for task_name in args.tasks.split(","):
        make_spec = task_specs()[task_name]
        for opt_name, make in OPTIMIZERS.items():
            losses = {b: final_losses(make_spec(b), make, args.steps, args.seeds) for b in sizes}
            slope, tuned = exponent(losses)
            boot = [exponent(losses, rng.integers(0, args.seeds, args.seeds))[0] for _ in range(args.bootstrap)]
            low, high = np.percentile(boot, [2.5, 97.5])
            results[f"{task_name}/{opt_name}"] = {
                "exponent": slope,
                "interval": [float(low), float(high)],
                "tuned_log10_lr": dict(zip(map(str, sizes), tuned)),
            }
            print(
                f"{task_name:24s} {opt_name:5s} exponent {slope:+.2f} [{low:+.2f}, {high:+.2f}]  tuned lr "
                + " ".join(f"B{b}:{10**t:.2g}" for b, t in zip(sizes, tuned)),
                flush=True,
            )
    lines = [
        f"Exponent k in η* ∝ B^k, {args.steps} steps, {args.seeds} seeds, batch sizes {sizes}; "
        "95% bootstrap interval over seeds. Prediction (Granziol et al. 2022): SGD 1, Adam 0.5.",
        "",
        "| task | SGD | Adam |",
        "|---|---:|---:|",
    ]
    for task_name in args.tasks.split(","):
        cells = [
            f"{results[f'{task_name}/{o}']['exponent']:.2f} [{results[f'{task_name}/{o}']['interval'][0]:.2f}, "
            f"{results[f'{task_name}/{o}']['interval'][1]:.2f}]"
            for o in OPTIMIZERS
        ]
        lines.append(f"| {task_name} | {cells[0]} | {cells[1]} |")
    write(out, "batch_size", lines, results, lambda path: plot(results, sizes, path))


def plot(results: dict, sizes: list[int], path: Path) -> None:
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 4))
    for ax, opt_name in zip(axes, OPTIMIZERS):
        for key, entry in results.items():
            if key.endswith("/" + opt_name):
                ax.plot(
                    sizes,
                    [10 ** entry["tuned_log10_lr"][str(b)] for b in sizes],
                    "o-",
                    label=f"{key.split('/')[0]} (k = {entry['exponent']:.2f})",
                )
        reference = 1.0 if opt_name == "sgd" else 0.5
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="batch size",
            ylabel="tuned learning rate",
            title=f"{opt_name}: prediction k = {reference}",
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
