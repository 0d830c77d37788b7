"""Learning-rate schedules by metagradient descent (Engstrom et al. 2025) against tuned schedules.

For each task: Adam's direction for T steps, one log learning rate per step as the
hyperparameters h. Baselines, each tuned over the same half-decade grid of peak rates by the
validation objective (mean test-split loss of 4 batches after the run): a constant rate, and
5% linear warm-up + cosine decay. MGD starts from the tuned constant rate and takes
`--outer-steps` Adam steps on h along the exact metagradient (`--start cosine`: from the tuned
cosine instead) (`lopt.hypergrad.exact.descend`);
the h with the best validation objective along the descent is kept. Every schedule is then also
scored on 16 fresh test batches of the same run (`test` columns), which no choice saw.

    python benchmarks/mgd_schedule.py --tasks mnist1d-mlp-tanh256x2,mnist1d-mlp-gelu128x3,regression-mlp-relu128x2

Writes a markdown table and docs/figures/mgd_schedules.png (the learned schedules beside the
tuned cosine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.hypergrad import exact
from lopt.tasks import get_task

GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
FLOOR = 1e-4  # the cosine's last steps, as a fraction of the peak (log of 0 is not a rate)


def cosine_log_rates(peak: float, steps: int, warmup: float = 0.05) -> jnp.ndarray:
    t = jnp.arange(steps, dtype=jnp.float32)
    warm = max(1, int(warmup * steps))
    ramp = (t + 1) / warm
    progress = jnp.clip((t - warm) / max(steps - warm, 1), 0.0, 1.0)
    shape = jnp.where(t < warm, ramp, 0.5 * (1 + jnp.cos(jnp.pi * progress)))
    return jnp.log(peak * jnp.maximum(shape, FLOOR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="mnist1d-mlp-tanh256x2,mnist1d-mlp-gelu128x3,regression-mlp-relu128x2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--outer-steps", type=int, default=60)
    parser.add_argument("--outer-lr", type=float, default=0.05)
    parser.add_argument("--start", choices=("constant", "cosine"), default="constant", help="MGD's starting schedule")
    parser.add_argument(
        "--orders",
        type=int,
        default=1,
        help="MGD's smoothing: descend on the mean objective of this many runs (other inits and data orders; "
        "exact.averaged); the best outer step is still picked by the single run's validation objective",
    )
    parser.add_argument("--figure", default="docs/figures/mgd_schedules.png")
    args = parser.parse_args()
    steps, key = args.steps, jax.random.key(0)
    rows, curves = [], {}
    for name in args.tasks.split(","):
        start = time.perf_counter()
        task = get_task(name)
        unroll = exact.schedule_unroll(task, optax.scale_by_adam(), steps, key)
        fresh = exact.schedule_unroll(
            task, optax.scale_by_adam(), steps, key, validation_batches=16, validation_key=jax.random.key(99)
        )
        val = jax.jit(lambda h, u=unroll: exact.objective(u, h, steps))
        test = jax.jit(lambda h, u=fresh: exact.objective(u, h, steps))

        def tuned(make, val=val):
            scores = [(float(val(make(lr))), lr) for lr in GRID]
            finite = [s for s in scores if np.isfinite(s[0])]
            return min(finite)

        constant_score, constant_lr = tuned(lambda lr: jnp.full((steps,), np.log(lr), jnp.float32))
        cosine_score, cosine_lr = tuned(lambda lr: cosine_log_rates(lr, steps))
        constant_h = jnp.full((steps,), np.log(constant_lr), jnp.float32)
        h0 = constant_h if args.start == "constant" else cosine_log_rates(cosine_lr, steps)
        smooth = exact.averaged(
            [unroll]
            + [
                exact.schedule_unroll(task, optax.scale_by_adam(), steps, jax.random.fold_in(key, i))
                for i in range(1, args.orders)
            ]
        )
        descent = exact.descend(smooth, h0, steps, outer_steps=args.outer_steps, learning_rate=args.outer_lr)
        # a non-finite metagradient at the start (a chaotic run) leaves the start: step 0
        picked = [float(val(h)) for h in descent.path] if args.orders > 1 else descent.objectives
        best = int(np.argmin(picked)) if picked else 0
        learned = descent.path[best] if picked else descent.h
        row = {
            "task": name,
            "constant": (constant_score, float(test(constant_h)), constant_lr),
            "cosine": (cosine_score, float(test(cosine_log_rates(cosine_lr, steps))), cosine_lr),
            "mgd": (float(val(learned)), float(test(learned)), best),
            "descent": [round(v, 4) for v in picked[:: max(1, len(picked) // 8)]],
            "stopped_at": descent.stopped_at,
            "seconds": time.perf_counter() - start,
        }
        rows.append(row)
        curves[name] = (
            np.exp(np.asarray(learned)),
            np.exp(np.asarray(cosine_log_rates(cosine_lr, steps))),
            constant_lr,
        )
        print(name, {k: v for k, v in row.items() if k != "task"}, flush=True)
        del row["descent"]

    print(f"\nT = {steps} steps of Adam's direction; validation / fresh-test loss after the run; lower is better")
    columns = ["task", "tuned constant", "tuned warm-up + cosine", "MGD schedule (outer step)"]
    print("| " + " | ".join([*columns, "MGD vs constant", "MGD vs cosine"]) + " |")
    print("|---|---|---|---|---:|---:|")
    for r in rows:
        (cv, ct, clr), (kv, kt, klr), (mv, mt, step) = r["constant"], r["cosine"], r["mgd"]
        print(
            f"| {r['task']} | {cv:.4f} / {ct:.4f} (lr {clr:g}) | {kv:.4f} / {kt:.4f} (peak {klr:g}) | "
            f"{mv:.4f} / {mt:.4f} ({step}) | {100 * (mv / cv - 1):+.1f}% / {100 * (mt / ct - 1):+.1f}% | "
            f"{100 * (mv / kv - 1):+.1f}% / {100 * (mt / kt - 1):+.1f}% |"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for ax, (name, (learned, cosine, constant)) in zip(axes[0], curves.items()):
        ax.semilogy(learned, label="MGD (learned)")
        ax.semilogy(cosine, label="tuned warm-up + cosine")
        ax.axhline(constant, color="gray", ls="--", label="tuned constant")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("learning rate")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=120)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
