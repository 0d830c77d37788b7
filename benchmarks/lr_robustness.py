"""Learning-rate robustness of LR schedulers and LR-free baselines.

For each method, sweep its *initial* step size over 1e-6 .. 1 (half-decade grid, 13 points) on
several embedded tasks, and count the decades of that range whose final train loss is within
10% of the best per-task-tuned Adam (`lopt.eval` conventions: final loss = mean of the last
10% of steps, mean over seeds). A method that needs no tuning scores the full 6 decades.

What "initial step size" means per method:
- adam: its fixed learning rate (the reference: tuned Adam scores about one decade);
- sgd_hd, sgdn_hd, adam_hd, adam_hd_log, adam_hd_log_adam, adam_hd_tangent: the HD initial
  learning rate α_0 (Baydin et al. 2018; the last two: lopt.hypergrad.online's modes);
- schedule_free_adamw: its (constant) learning rate;
- prodigy: its initial distance estimate d_0 (`estim_lr0`, default 1e-6), learning rate 1;
- dog: its initial movement r_ε relative to 1 + ‖x_0‖ (`init_step=("heuristic", r)`);
- mechanic: its initial scale s_init (default 1e-6) around Adam at learning rate 1, as Cutkosky
  et al. intend (the learned scale is the learning rate);
- a learned LR controller (`--controller PATH`): its base learning rate (the untrained
  controller's LR), the network unchanged.

    python benchmarks/lr_robustness.py --steps 500 --seeds 2 --out results/lr_robustness
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
import optax.contrib

import lopt
from lopt.eval.metrics import final_loss
from lopt.eval.runner import Candidate, sweep
from lopt import baselines
from lopt.hypergrad import adam_hd, adam_hd_log, adam_hd_log_adam, adam_hd_tangent, sgd_hd, sgdn_hd

GRID = tuple(float(f"{v:.1g}") for v in np.logspace(-6, 0, 13))
TOLERANCE = 0.10
DEFAULT_TASKS = ("digits-mlp-tanh64x2", "mnist1d-mlp-gelu64x2", "digits-conv-16-32")
# The extended benchmark (GPU, `--tasks extended --steps 1000`): MLPs, conv nets and transformer
# LMs, none of them a validation task (eval.suites "validation", where hyper_lr was chosen).
EXTENDED_TASKS = (
    "digits-mlp-tanh64x2",
    "mnist1d-mlp-gelu64x2",
    "digits-conv-16-32",
    "mnist1d-conv-16-32",
    "pytext-transformer-32x2",
    "pytext-transformer-64x2",
)


def methods() -> dict[str, tuple[Callable[[Any], optax.GradientTransformation], str, str]]:
    """name -> (initial step size -> transformation, what the sweep varies, cache fingerprint)."""
    table = {
        "adam": (lambda lr: optax.adam(lr), "learning rate"),
        "sgd_hd": (lambda lr: sgd_hd(lr), "α_0 (β = 1e-3)"),
        "sgdn_hd": (lambda lr: sgdn_hd(lr), "α_0 (β = 1e-3, μ = 0.9)"),
        "adam_hd": (lambda lr: adam_hd(lr), "α_0 (β = 1e-7)"),
        "adam_hd_log": (lambda lr: adam_hd_log(lr), "α_0 (β = 0.02, log-space)"),
        "adam_hd_log_adam": (lambda lr: adam_hd_log_adam(lr), "α_0 (β = 0.1, μ = 0.99, Adam on log α)"),
        "adam_hd_tangent": (lambda lr: adam_hd_tangent(lr), "α_0 (β = 0.2, μ = 0.99, log-space)"),
        "schedule_free_adamw": (lambda lr: optax.contrib.schedule_free_adamw(lr), "learning rate"),
        "prodigy": (lambda d0: optax.contrib.prodigy(1.0, estim_lr0=d0), "d_0"),
        "dog": (lambda r: optax.contrib.dog(1.0, init_step=("heuristic", r)), "r_ε (relative)"),
        "mechanic": (lambda s: optax.contrib.mechanize(optax.adam(1.0), s_init=s), "s_init"),
    }
    return {name: (make, varied, f"lr-robustness:{name}") for name, (make, varied) in table.items()}


def controller_method(path: str) -> tuple[Callable[[Any], optax.GradientTransformation], str, str]:
    """A saved LR controller at base learning rate `lr`: the controller's updates are linear in
    its base LR, so scaling its output by lr / base equals rebuilding it at base lr."""
    meta_optimizer, theta = lopt.load_meta(path)
    num_steps = lopt.read_manifest(path).get("num_steps") or 1000
    base = meta_optimizer.base_learning_rate

    def make(lr):
        return optax.chain(meta_optimizer.transform(theta, num_steps=num_steps), optax.scale(lr / base))

    checksums = [entry["sha256"] for entry in lopt.read_manifest(path)["arrays"]]
    return make, "base learning rate", json.dumps({"controller": checksums})


def decades_within(finals: np.ndarray, target: float, factor: float = 1 + TOLERANCE) -> float:
    """Decades of the half-decade grid whose mean final loss is within `factor` of target."""
    ok = np.isfinite(finals) & (finals <= target * factor)
    return 0.5 * float(ok.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated task names, or `extended`")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--controller", action="append", default=[], help="a saved LR controller (repeatable)")
    parser.add_argument("--out", default="results/lr_robustness")
    parser.add_argument(
        "--merge", metavar="DIR", help="only merge DIR/*/lr_robustness.json (one run per task) into --out"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merge(sorted(Path(args.merge).glob("*/lr_robustness.json")), out)
        return
    table = methods()
    for path in args.controller:
        where = Path(path).absolute()
        label = f"{where.parent.name}/{where.name}" if where.name in ("optimizer", "best") else where.name
        table[f"controller:{label}"] = controller_method(path)
    adam_grid = baselines.spec("adam").lr_grid
    results: dict[str, Any] = {"grid": GRID, "tasks": {}, "device": jax.devices()[0].device_kind}
    start = time.perf_counter()
    for task in EXTENDED_TASKS if args.tasks == "extended" else args.tasks.split(","):
        tuned = sweep(
            task,
            Candidate("adam-tuned", lambda lr: optax.adam(lr), adam_grid, "adam"),
            num_steps=args.steps,
            eval_every=0,
            num_seeds=args.seeds,
            cache_dir=out / "cache",
        )
        target = float(np.nanmin(final_loss(tuned.train_loss).mean(axis=1)))
        entry = {"tuned_adam_final": target, "methods": {}}
        for name, (make, varied, fingerprint) in table.items():
            result = sweep(
                task,
                Candidate(name, make, GRID, fingerprint),
                num_steps=args.steps,
                eval_every=0,
                num_seeds=args.seeds,
                cache_dir=out / "cache",
            )
            finals = final_loss(result.train_loss).mean(axis=1)
            entry["methods"][name] = {
                "varied": varied,
                "finals": [None if not np.isfinite(v) else float(v) for v in finals],
                "decades": decades_within(finals, target),
                "decades_within_2x": decades_within(finals, target, 2.0),
            }
            print(f"{task:24s} {name:24s} decades within 10%: {entry['methods'][name]['decades']:.1f}", flush=True)
        results["tasks"][task] = entry
    results["seconds"] = time.perf_counter() - start
    (out / "lr_robustness.json").write_text(json.dumps(results, indent=2))
    write_table(results, out / "lr_robustness.md")
    plot(results, out / "lr_robustness.png")
    print((out / "lr_robustness.md").read_text())
    print(
        f"wrote {out / 'lr_robustness.json'}, {out / 'lr_robustness.md'}, {out / 'lr_robustness.png'} "
        f"({results['seconds']:.0f}s on {results['device']})"
    )


def merge(paths: list[Path], out: Path) -> None:
    """One table and figure from per-task runs (e.g. one process per task on a GPU)."""
    parts = [json.loads(p.read_text()) for p in paths]
    if not parts:
        raise SystemExit("nothing to merge: no */lr_robustness.json")
    results = {
        **parts[0],
        "tasks": {t: e for part in parts for t, e in part["tasks"].items()},
        "seconds": max(part["seconds"] for part in parts),
    }
    (out / "lr_robustness.json").write_text(json.dumps(results, indent=2))
    write_table(results, out / "lr_robustness.md")
    plot(results, out / "lr_robustness.png")
    print((out / "lr_robustness.md").read_text())


def write_table(results: dict[str, Any], path: Path) -> None:
    tasks = list(results["tasks"])
    names = list(next(iter(results["tasks"].values()))["methods"])
    lines = [
        f"Decades of initial step size (of 6, grid 1e-6..1) within 10% of tuned Adam's final loss; {results['device']}",
        "",
        "Cells: decades within 10% / within 2× (the bar: ≥ 4 decades within 2×).",
        "",
        "| method | swept | " + " | ".join(tasks) + " | mean (10%) | mean (2×) |",
        "|---" * (len(tasks) + 4) + "|",
    ]
    for name in names:
        methods = [results["tasks"][t]["methods"][name] for t in tasks]
        strict = [m["decades"] for m in methods]
        loose = [m["decades_within_2x"] for m in methods]
        cells = " | ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(strict, loose))
        lines.append(f"| {name} | {methods[0]['varied']} | {cells} | {np.mean(strict):.2f} | {np.mean(loose):.2f} |")
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.2), squeeze=False)
    grid = np.asarray(results["grid"])
    for ax, task in zip(axes[0], tasks):
        entry = results["tasks"][task]
        for name, method in entry["methods"].items():
            finals = np.array([np.nan if v is None else v for v in method["finals"]])
            ax.plot(
                grid,
                finals,
                marker="o",
                ms=3,
                label=f"{name} ({method['decades']:.1f})",
                linestyle="--" if name == "adam" else "-",
            )
        ax.axhline(entry["tuned_adam_final"] * (1 + TOLERANCE), color="k", lw=0.8, ls=":", label="tuned adam +10%")
        ax.set(xscale="log", yscale="log", title=task, xlabel="initial step size", ylabel="final train loss")
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="method (decades)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
