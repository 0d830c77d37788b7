"""Which part of a meta-trained theta moves which task? Splice parts of a trained theta into its
start and score each splice the way meta-training's validation does (log of the final train loss
÷ Adam 1e-3's, mean over seeds; lower is better).

A meta-training run that makes validation worse has moved several parts of theta at once (the
network, the step size, the schedule knots); this says which of them did the damage, and on
which tasks: the run's validation tasks, or its own training tasks under the validation protocol
(full runs without augmentation), which separates "the meta-gradient buys the wrong thing on the
training mix" from "what it bought does not transfer".

    python benchmarks/theta_ablation.py runs/recipes/nominal-out --start runs/recipes/nominal-out/best \\
        --tasks regression-mlp-tanh64x3,regression-mlp-gelu64x2 \\
        --part "step size + knots=schedule|log_learning_rate" --part "output layer=\\[2\\]"

The trained theta is the newest `outer/` checkpoint of the run folder (or `--step`); the start is
a saved optimizer (`best/` at step 0, or any lopt checkpoint of the same kind).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lopt.checkpoint import load_meta
from lopt.config import load_config
from lopt.meta_train.config import MetaTrainConfig
from lopt.meta_train.validation import Validation


def outer_theta(run: Path, step: int | None) -> tuple[int, dict]:
    """theta from the run's `outer/<step>` checkpoint (the newest without `step`), restored onto
    this machine's default device whatever machine wrote it."""
    steps = sorted(int(p.name) for p in (run / "outer").iterdir() if p.name.isdigit())
    if not steps:
        raise SystemExit(f"{run}/outer holds no checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise SystemExit(f"{run}/outer has no step {step}; it has {', '.join(map(str, steps))}")
    path = (run / "outer" / str(step) / "default").resolve()
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    metadata = getattr(metadata, "item_metadata", metadata)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
    return step, checkpointer.restore(path, abstract)["theta"]


def leaves_by_path(tree: dict) -> dict[str, jax.Array]:
    """theta's leaves by their path (`jax.tree_util.keystr`), the names `--part` patterns match."""
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def splice(start: dict, trained: dict[str, jax.Array], pattern: str) -> dict:
    """`start` with the leaves whose path matches `pattern` taken from `trained` (`leaves_by_path`)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(start)
    paths = [jax.tree_util.keystr(p) for p, _ in leaves]
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(trained[k] if re.search(pattern, k) else v) for k, (_, v) in zip(paths, leaves)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a meta-training run folder with outer/ checkpoints")
    parser.add_argument("--start", required=True, help="the saved start (e.g. the run's best/ at step 0)")
    parser.add_argument("--step", type=int, help="outer step of the trained theta (default: newest)")
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.add_argument("--part", action="append", default=[], help="'label=regex' over theta's paths")
    parser.add_argument("--steps", type=int, default=1000, help="inner steps of each scored run")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    parts = [("start", "(?!)"), ("trained", "")]
    for item in args.part:
        label, sep, pattern = item.partition("=")
        if not sep:
            raise SystemExit(f"--part {item!r}: expected 'label=regex'")
        parts.append((label, pattern))
    tasks = [t for t in args.tasks.split(",") if t]
    config = load_config(
        MetaTrainConfig,
        "configs/meta_train/quickstart.toml",  # only its run section's validation settings are used
        [f"run.validation_tasks={tasks!r}", f"run.validation_seeds={args.seeds}", f"run.eval_steps={args.steps}"],
    )
    meta, start = load_meta(args.start)
    step, trained = outer_theta(args.run, args.step)
    trained = leaves_by_path(trained)
    for key, value in leaves_by_path(start).items():
        moved = float(np.max(np.abs(np.asarray(trained[key]) - np.asarray(value)), initial=0.0))
        print(f"{key} {tuple(np.shape(value))}: max |trained - start| = {moved:.4g}")
    print(f"theta of {args.run} at outer step {step} against {args.start}; {args.seeds} seeds x {args.steps} steps")
    print("| theta | " + " | ".join(tasks) + " | mean | seed spread |")
    print("|---|" + "---:|" * (len(tasks) + 2))
    validation = Validation(config, meta)
    for label, pattern in parts:
        begin = time.perf_counter()
        scores = validation.score(splice(start, trained, pattern))
        cells = [f"{scores[f'validation/{t}']:.3f}" for t in tasks]
        print(
            f"| {label} | " + " | ".join(cells) + f" | {scores['validation_score']:.3f} | "
            f"{scores['validation_seed_spread']:.3f} |  ({time.perf_counter() - begin:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
