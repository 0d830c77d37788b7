"""Self-Tuning Networks (MacKay et al. 2019) against grid search over weight decay, dropout and label
smoothing: validation loss and compute.

Two small-data classification problems where all three hyperparameters matter (a ReLU MLP,
minibatch Adam 1e-3): scikit-learn digits with 300 training examples and MNIST-1D with 1,000.
Each has a validation set (the same size as training, drawn from the remaining training split)
that picks the grid point and drives STN's hyper steps, and a test set nothing sees (the official
test split).

- grid: every combination of weight decay {0, 1e-5, 1e-4, 1e-3}, dropout {0, 0.2, 0.4, 0.6} and
  label smoothing {0, 0.1, 0.2} (48 runs), each trained `--steps` steps; the best by validation loss.
- STN: one run of the same length (`--steps` weight steps, one hyper step every
  `--train-per-hyper`), started from weight decay 1e-4, dropout 0.1, label smoothing 0.05 (the
  middle of nothing: none is a grid point). Scored by its own weights at its final
  hyperparameters, and by a plain MLP retrained at them (one more run).
- `--checkpoint-every N`: every run, grid point or STN, is scored on the validation set every N
  weight steps and reports its best checkpoint instead of its last weights (for an STN, the
  weights and λ of that checkpoint). That is how the authors' code reports an STN: it reloads its
  best-validation checkpoint before the final evaluation (asteroidhouse/self-tuning-networks,
  cnn/hypertrain.py), and grid points get the same early stopping.

Compute: STN's wall time against one grid run's, both jitted and timed after compilation in this
process, and the ratio of matmul FLOPs per weight step (the hyper weights double each layer's
forward matmuls).

    python benchmarks/stn_hpo.py                        # writes docs/figures/stn_hpo.{md,json,png}
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from _report import pyplot, save_figure, write
from lopt.hypergrad import stn
from lopt.tasks.datasets import digits, mnist1d

GRID = {"weight_decay": (0.0, 1e-5, 1e-4, 1e-3), "dropout": (0.0, 0.2, 0.4, 0.6), "label_smoothing": (0.0, 0.1, 0.2)}


def problems(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, tuple]:
    """Each problem's (train, validation, test): `sizes[name]` training examples (default digits
    300, MNIST-1D 1,000) and as many validation examples, drawn without overlap from the training
    split; the official test split."""
    sizes = {"digits": 300, "mnist1d": 1000} | (sizes or {})
    rng = np.random.default_rng(seed)
    out = {}
    for name, data in (("digits", digits()), ("mnist1d", mnist1d())):
        n = sizes[name]
        if 2 * n > len(data.train_x):
            raise SystemExit(f"--examples {name}={n}: needs {2 * n} of its {len(data.train_x)} training examples")
        x = np.asarray(data.train_x).reshape(len(data.train_x), -1)
        y = np.asarray(data.train_y)
        order = rng.permutation(len(x))
        tr, va = order[:n], order[n : 2 * n]
        test = (np.asarray(data.test_x).reshape(len(data.test_x), -1), np.asarray(data.test_y))
        out[f"{name} ({n} examples)"] = tuple(
            (jnp.asarray(a), jnp.asarray(b)) for a, b in ((x[tr], y[tr]), (x[va], y[va]), test)
        )
    return out


def timed(fn, *args):
    jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def sizes_of(text: str) -> dict[str, int]:
    """'digits=300,mnist1d=1000' as {name: training examples}; a malformed item raises ValueError,
    which argparse reports in one line."""
    items = [item.partition("=") for item in text.split(",")]
    if not all(sep and name.strip() in ("digits", "mnist1d") for name, sep, _ in items):
        raise ValueError(text)
    return {name.strip(): int(value) for name, _, value in items}


def start_values(text: str) -> tuple[tuple[str, float], ...]:
    """'name=value,...' as `STNConfig.start`; a malformed item raises ValueError, which argparse
    reports in one line."""
    items = [item.partition("=") for item in text.split(",")]
    if not all(sep for _, sep, _ in items):
        raise ValueError(text)
    return tuple((name.strip(), float(value)) for name, _, value in items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--train-per-hyper", type=int, default=2)
    parser.add_argument("--hyper-lr", type=float, default=1e-3)
    parser.add_argument("--hyper-schedule", choices=stn.HYPER_SCHEDULES, default="constant")
    parser.add_argument("--fixed-fraction", type=float, default=0.0, help="last part of the run at the final λ")
    parser.add_argument(
        "--grid-from", type=Path, help="reuse the grid's numbers from this earlier JSON (same steps and seeds)"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="score the validation set every so many weight steps and keep the best checkpoint, for STN and "
        "every grid point alike (the authors' code reports its best-validation checkpoint); 0: the last weights",
    )
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument(
        "--start",
        type=start_values,
        help="starting values, e.g. 'weight_decay=1e-4,dropout=0.3,label_smoothing=0.1' (default: STNConfig's)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--problems", default="digits,mnist1d", help="which problems (comma-separated names)")
    parser.add_argument(
        "--examples",
        type=sizes_of,
        default={},
        help="training (and validation) examples per problem, e.g. 'digits=500,mnist1d=2000' (default 300 and 1000)",
    )
    parser.add_argument("--stem", default="stn_hpo", help="output file name stem")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "figures")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = stn.STNConfig(
        **({"start": args.start} if args.start else {}),
        steps=args.steps,
        train_per_hyper=args.train_per_hyper,
        hyper_learning_rate=args.hyper_lr,
        sigma=args.sigma,
        hyper_schedule=args.hyper_schedule,
        fixed_fraction=args.fixed_fraction,
        checkpoint_every=args.checkpoint_every,
    )
    earlier = {r["problem"]: r for r in json.loads(args.grid_from.read_text())} if args.grid_from else {}
    for rec in earlier.values():
        if rec.get("checkpoint_every", 0) != args.checkpoint_every:
            parser.error(
                f"--grid-from {args.grid_from}: its grid ran with checkpoint_every={rec.get('checkpoint_every', 0)}, "
                f"not {args.checkpoint_every}"
            )
    points = list(itertools.product(*GRID.values()))
    lines = [
        f"STN against a {len(points)}-point grid ({args.steps} Adam steps, batch 64, ReLU MLP {config.hidden}; "
        f"{args.seeds} seeds; hyper step {args.hyper_lr:g}, {args.hyper_schedule}, last {args.fixed_fraction:g} of "
        "the run at the final λ; "
        + (
            f"every run's best-validation checkpoint of those every {args.checkpoint_every} steps; "
            if args.checkpoint_every
            else ""
        )
        + "cross-entropy, lower is better)",
        "",
        "| problem | best grid point (wd, dropout, ls) | grid val / test | STN final (wd, dropout, ls) | "
        "STN val / test | STN vs grid (val) | retrained at STN's values val / test | STN time ÷ one run |",
        "|---|---|---|---|---|---:|---|---:|",
    ]
    records = []
    chosen = args.problems.split(",")
    for name, (train, val, test) in problems(sizes=args.examples).items():
        if name.split(" ")[0] not in chosen:
            continue
        classes = 10
        grid_val = np.zeros((args.seeds, len(points)))
        grid_test = np.zeros_like(grid_val)
        stn_rows, retrained, ratios, trajectories = [], [], [], []
        early = {"validation": val, "checkpoint_every": args.checkpoint_every}  # train_fixed ignores val at 0
        for seed in range(args.seeds):
            key = jax.random.key(seed)
            hp = {n: jnp.array([p[i] for p in points], jnp.float32) for i, n in enumerate(GRID)}
            many = jax.jit(
                jax.vmap(
                    lambda h, k=key: stn.train_fixed(
                        h,
                        train,
                        classes,
                        k,
                        hidden=config.hidden,
                        steps=args.steps,
                        batch_size=config.batch_size,
                        **early,
                    )
                )
            )
            if name in earlier:  # the seed mean of every grid point, from the earlier run
                grid_val[seed] = [g["val"] for g in earlier[name]["grid"]]
                grid_test[seed] = [g["test"] for g in earlier[name]["grid"]]
            else:
                layers = many(hp)
                grid_val[seed] = jax.vmap(lambda lay: stn.validation_loss(lay, *val))(layers)
                grid_test[seed] = jax.vmap(lambda lay: stn.validation_loss(lay, *test))(layers)
            one = jax.jit(
                lambda h, k=key: stn.train_fixed(
                    h, train, classes, k, hidden=config.hidden, steps=args.steps, batch_size=config.batch_size, **early
                )
            )
            _, t_one = timed(one, {n: jnp.float32(points[0][i]) for i, n in enumerate(GRID)})
            result = stn.run(config, train, val, classes, key)
            # a second identical call times the run without its compilation
            start = time.perf_counter()
            result = stn.run(config, train, val, classes, key)
            t_stn = time.perf_counter() - start
            ratios.append(t_stn / t_one)
            stn_rows.append(
                (
                    stn.evaluate(result, *val, config.names),
                    stn.evaluate(result, *test, config.names),
                    result.hyperparameters,
                )
            )
            trajectories.append(result.trajectory)
            again = one({n: jnp.float32(v) for n, v in result.hyperparameters.items()})
            retrained.append((float(stn.validation_loss(again, *val)), float(stn.validation_loss(again, *test))))
            print(name, seed, stn_rows[-1], retrained[-1], f"time ratio {ratios[-1]:.2f}", flush=True)
        mean_val = grid_val.mean(0)
        best = int(np.argmin(mean_val))
        s_val = np.array([r[0] for r in stn_rows])
        s_test = np.array([r[1] for r in stn_rows])
        final = {n: float(np.mean([r[2][n] for r in stn_rows])) for n in config.names}
        re_val, re_test = np.array(retrained).T
        lines.append(
            f"| {name} | {', '.join(f'{v:g}' for v in points[best])} | {mean_val[best]:.4f} / "
            f"{grid_test.mean(0)[best]:.4f} | {final['weight_decay']:.1e}, {final['dropout']:.2f}, "
            f"{final['label_smoothing']:.2f} | {s_val.mean():.4f} ± {s_val.std():.4f} / {s_test.mean():.4f} | "
            f"{100 * (s_val.mean() / mean_val[best] - 1):+.1f}% | {re_val.mean():.4f} / {re_test.mean():.4f} | "
            f"{np.mean(ratios):.2f} |"
        )
        records.append(
            {
                "problem": name,
                "checkpoint_every": args.checkpoint_every,
                "grid": [
                    dict(zip(GRID, p)) | {"val": float(v), "test": float(t)}
                    for p, v, t in zip(points, mean_val, grid_test.mean(0))
                ],
                "stn": [{"val": float(v), "test": float(t), **h} for v, t, (_, _, h) in zip(s_val, s_test, stn_rows)],
                "retrained": [{"val": float(v), "test": float(t)} for v, t in retrained],
                "time_ratio": ratios,
                "trajectory": {n: np.mean([tr[n] for tr in trajectories], 0).tolist() for n in config.names},
            }
        )
    flops = 2.0 + 2.0 / args.train_per_hyper
    lines += [
        "",
        f"Matmul FLOPs of the whole STN run: about {flops:.1f}× one grid run (every layer multiplies by W and by "
        f"U, twice a plain step's matmuls, and each hyper step is one more such forward and backward on a "
        f"validation batch, every {args.train_per_hyper} weight steps). Times: wall time of the jitted run after "
        "compilation, in the same process as the grid run it is divided by.",
    ]

    def figure(path: Path) -> None:
        plt = pyplot()
        fig, axes = plt.subplots(len(records), 3, figsize=(11, 3.2 * len(records)), squeeze=False)
        for row, rec in zip(axes, records):
            for ax, n in zip(row, config.names):
                curve = np.asarray(rec["trajectory"][n])
                ax.plot(np.arange(1, len(curve) + 1) * args.train_per_hyper, curve, label="STN")
                best_point = min(rec["grid"], key=lambda g: g["val"])
                ax.axhline(best_point[n], color="k", ls="--", lw=1, label="best grid point")
                ax.set_title(f"{rec['problem']}: {n}", fontsize=9)
                ax.set_xlabel("weight step")
                if n == "weight_decay":
                    ax.set_yscale("symlog", linthresh=1e-6)
            row[0].legend(fontsize=8)
        save_figure(fig, path)

    write(args.out, args.stem, lines, records, figure)


if __name__ == "__main__":
    main()
