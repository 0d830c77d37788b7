"""Plot the step-size schedule of generalist checkpoints over training progress: the hand-written
warm-up + cosine factor times the learned multiplier exp(s(t/T)) of `schedule_knots`, times the
learned step size — so a start and its meta-trained version can be compared at a glance.

    python benchmarks/learned_schedule_plot.py generalist runs/quickstart/best --out docs/figures/schedule.png
"""

from __future__ import annotations

import argparse
import importlib

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import lopt  # noqa: E402

generalist = importlib.import_module("lopt.learned.generalist")  # the package re-exports a function of that name


def step_sizes(path: str, num_steps: int) -> np.ndarray:
    meta, theta = lopt.load_meta(path)
    steps = jnp.arange(num_steps)
    rate = jnp.exp(theta["log_learning_rate"]) * generalist.schedule_factor(
        steps, num_steps, meta.schedule, meta.warmup_fraction, meta.final_lr_fraction
    )
    if "schedule" in theta:
        rate = rate * generalist.learned_schedule(theta["schedule"], steps, num_steps)
    return np.asarray(rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--num-steps", type=int, default=1000)
    parser.add_argument("--out", default="schedule.png")
    args = parser.parse_args()
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for path in args.checkpoints:
        rates = step_sizes(path, args.num_steps)
        axis.plot(np.arange(args.num_steps) / args.num_steps, rates, label=path)
        print(
            f"{path}: peak {rates.max():.3g} at {rates.argmax() / args.num_steps:.0%} of the run; "
            f"mean {rates.mean():.3g}; last 10% mean {rates[-args.num_steps // 10 :].mean():.3g}"
        )
    axis.set_xlabel("training progress t / T")
    axis.set_ylabel("step size η(t)")
    axis.set_title("generalist step size over a run")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
