"""Schedule refinement (Defazio et al. 2023) against linear decay, Adam, tuned per task.

Per task: (1) Adam with linear decay η(1 − t/T), swept over the LR grid, 3 seeds; (2) the tuned
linear-decay run is repeated recording its gradient norms (seed 0), which give the refined
schedule w_t ∝ Ĝ_t⁻² Σ_{p>t} Ĝ_p⁻² (peak 1, `lopt.hypergrad.refine`); (3) Adam with the refined
schedule swept over the same LR grid and seeds. Final train loss = mean of the last 10% of steps,
mean over seeds (`lopt eval` conventions). Prints a table and writes a figure of both schedules
and both loss curves per task.

    python benchmarks/schedule_refinement.py --steps 1000 --out results/refinement
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import jax
import numpy as np
import optax

from _report import pyplot, save_figure, write
from lopt.eval.metrics import final_loss
from lopt.eval.runner import Candidate, run_keys, sweep
from lopt.eval.suites import entry_spec
from lopt import baselines
from lopt.hypergrad.refine import ADAM_POWER, linear_decay, refined_schedule, refined_weights
from lopt.tasks import build
from lopt.tasks.train import gradient_norms

MATCH = 1.05  # "matches": within 5% of linear decay's final loss, about the spread over seeds
DEFAULT_TASKS = ("digits-mlp-tanh64x2", "mnist1d-mlp-gelu64x2", "digits-conv-16-32", "pytext-transformer-32x1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tau", type=float, default=0.1, help="median-filter width as a fraction of the run")
    parser.add_argument("--norm", choices=("l1", "l2"), default="l1", help="which gradient norm G_t the rule reads")
    parser.add_argument(
        "--trace",
        choices=("gradient", "direction"),
        default="direction",
        help="the norms of the gradient, or of Adam's direction m̂/(√v̂+ε) (before the LR)",
    )
    parser.add_argument(
        "--power",
        type=float,
        default=ADAM_POWER,
        help="k in w_t ∝ G_t^-k Σ_{p>t} G_p^-k (default: lopt.hypergrad.refine.ADAM_POWER)",
    )
    parser.add_argument("--out", default="results/refinement")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = baselines.spec("adam").lr_grid
    steps = args.steps
    rows, curves = [], {}
    for task_name in args.tasks.split(","):
        linear = sweep(
            task_name,
            Candidate("adam-linear-decay", lambda lr: optax.adam(linear_decay(lr, steps)), grid, "refinement:linear"),
            num_steps=steps,
            eval_every=0,
            num_seeds=args.seeds,
            cache_dir=out / "cache",
        )
        linear_finals = final_loss(linear.train_loss).mean(axis=1)
        best = int(np.nanargmin(linear_finals))
        task = build(entry_spec(task_name))
        key = run_keys(task_name, 0, args.seeds)[0]
        if args.trace == "direction":
            first = lambda k: gradient_norms(
                task,
                optax.scale_by_learning_rate(linear_decay(grid[best], steps)),
                k,
                num_steps=steps,
                before=optax.scale_by_adam(),
            )
        else:
            first = lambda k: gradient_norms(task, optax.adam(linear_decay(grid[best], steps)), k, num_steps=steps)
        trace = jax.jit(first)(key)
        norms = np.asarray(trace.l1 if args.norm == "l1" else trace.l2)
        weights = refined_weights(norms, args.tau, args.power)
        refined = sweep(
            task_name,
            Candidate(
                "adam-refined",
                lambda lr: optax.adam(refined_schedule(lr, weights)),
                grid,
                "refinement:" + hashlib.sha256(weights.tobytes()).hexdigest(),
            ),
            num_steps=steps,
            eval_every=0,
            num_seeds=args.seeds,
            cache_dir=out / "cache",
        )
        refined_finals = final_loss(refined.train_loss).mean(axis=1)
        best_refined = int(np.nanargmin(refined_finals))
        ratio = refined_finals[best_refined] / linear_finals[best]
        rows.append(
            {
                "task": task_name,
                "linear_lr": grid[best],
                "linear_final": float(linear_finals[best]),
                "refined_lr": grid[best_refined],
                "refined_final": float(refined_finals[best_refined]),
                "ratio": float(ratio),
                "edge": best_refined in (0, len(grid) - 1) or best in (0, len(grid) - 1),
            }
        )
        curves[task_name] = {
            "weights": weights,
            "norms": norms,
            "linear": linear.train_loss[best].mean(axis=0),
            "refined": refined.train_loss[best_refined].mean(axis=0),
        }
        print(
            f"{task_name:24s} linear decay {linear_finals[best]:.4g} (lr {grid[best]:g})  refined "
            f"{refined_finals[best_refined]:.4g} (lr {grid[best_refined]:g})  ratio {ratio:.3f}",
            flush=True,
        )
    lines = [
        f"Adam, {steps} steps, {args.seeds} seeds, LR tuned per schedule over {list(grid)}; τ = {args.tau}, "
        f"G_t = {args.norm} norm of the {args.trace}, k = {args.power:g}",
        "",
        "| task | linear decay (lr) | refined (lr) | refined ÷ linear |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['linear_final']:.4g} ({r['linear_lr']:g}) | {r['refined_final']:.4g} "
            f"({r['refined_lr']:g}) | {r['ratio']:.3f}{' †' if r['edge'] else ''} |"
        )
    wins = sum(r["ratio"] <= MATCH for r in rows)
    lines += [
        "",
        f"refined matches (ratio ≤ {MATCH}) or beats linear decay on {wins} of {len(rows)} tasks; "
        "† a tuned LR at the grid's edge",
    ]
    write(out, "refinement", lines, rows, lambda path: plot(curves, path, steps))


def plot(curves: dict, path: Path, steps: int) -> None:
    fig, axes = pyplot().subplots(2, len(curves), figsize=(4.2 * len(curves), 6.4), squeeze=False)
    t = np.arange(steps)
    for i, (task, c) in enumerate(curves.items()):
        top, bottom = axes[0][i], axes[1][i]
        top.plot(t, 1 - t / steps, label="linear decay")
        top.plot(t, c["weights"], label="refined")
        twin = top.twinx()
        twin.plot(t, c["norms"], color="grey", lw=0.5, alpha=0.6)
        twin.set_ylabel("G_t (first run)", color="grey")
        top.set(title=task, xlabel="step", ylabel="schedule (peak 1)")
        top.legend(fontsize=8)
        bottom.plot(t, c["linear"], label="linear decay (tuned)")
        bottom.plot(t, c["refined"], label="refined (tuned)")
        bottom.set(yscale="log", xlabel="step", ylabel="train loss (mean over seeds)")
        bottom.grid(alpha=0.3, which="both")
        bottom.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
