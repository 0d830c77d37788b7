"""W2-mixed: meta-training throughput on a mixed task distribution, and the PES signal at theta.

throughput: inner steps per second of whole outer steps of `lopt meta-train` on a job config's
task groups (default: the generalist's, `configs/meta_train/generalist-gpu.toml`: MLPs, a conv
net and a transformer LM, truncation 50), each group's step a program of its own
(`run.fuse_groups=false`) against all groups and the outer update in one program, at one or
more population sizes; beside it, single-task W2 (the 2,410-parameter MLP, small_mlp, PES,
truncation 10) measured in the same process. An inner step is one training step of one task,
whatever its size.

signal: is the meta-gradient at theta signal or noise? With theta held fixed, two replicas
(independent populations: their own inner runs, data and perturbations) each average S outer
steps' estimates; per meta-parameter tensor, the cosine between the replicas' averages (near 1:
the direction is resolved at this budget; near 0: noise). Successive estimates of one
population are not independent (PES carries each episode's perturbations), hence two.

    python benchmarks/meta_train_mixed.py throughput --workers 128,512
    python benchmarks/meta_train_mixed.py signal --set optimizer.options.nominal=true ...
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lopt.config import load_config
from lopt.meta_train.config import MetaTrainConfig
from lopt.meta_train.loop import MetaTrainer, _root
from lopt.meta_train.sharding import shard_population

DEFAULT_CONFIG = "configs/meta_train/generalist-gpu.toml"


def trainer_for(config_path: str, overrides: list[str]) -> MetaTrainer:
    return MetaTrainer(load_config(MetaTrainConfig, config_path, overrides))


def outer_throughput(trainer: MetaTrainer, reps: int, steps: int) -> tuple[float, float]:
    """(median inner steps/s over `reps` timings of `steps` outer steps, seconds to the first
    step's end: compile included)."""
    start = time.perf_counter()
    state = trainer.initial_state()
    state, summary = trainer.step(state, 0)
    jax.block_until_ready((state, summary))
    first = time.perf_counter() - start
    per_step = trainer.inner_steps_per_outer_step(0)
    step, times = 1, []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(steps):
            state, summary = trainer.step(state, step)
            step += 1
        jax.block_until_ready((state, summary))
        times.append((time.perf_counter() - start) / steps)
    return per_step / statistics.median(times), first


def throughput(args: argparse.Namespace) -> None:
    from meta_train_throughput import pes_throughput, w2_task  # noqa: PLC0415 (a sibling script)

    device = jax.devices()[0]
    print(
        f"W2-mixed on {device.platform}: {device.device_kind} (jax {jax.__version__}, {len(jax.devices())} device(s)); "
        f"config {args.config}"
    )
    print("| workers / group | groups | fused | inner steps / outer step | inner steps / s | first step (s) |")
    print("|---:|---:|---|---:|---:|---:|")
    for workers in map(int, args.workers.split(",")):
        for fused in (False, True) if args.both else (True,):
            trainer = trainer_for(
                args.config,
                [*args.set, f"estimator.num_workers={workers}", f"run.fuse_groups={'true' if fused else 'false'}"],
            )
            rate, first = outer_throughput(trainer, args.reps, args.steps)
            print(
                f"| {workers} | {trainer.config.tasks.num_groups} | {'one program' if fused else 'per group'} | "
                f"{trainer.inner_steps_per_outer_step(0):,} | {rate:,.0f} | {first:.1f} |",
                flush=True,
            )
    if args.single:
        rate = pes_throughput(w2_task(False), args.single, 5, 10)
        print(
            f"\nsingle-task W2 (small_mlp, 2,410 parameters, truncation 10), population {args.single}, same process: "
            f"{rate:,.0f} inner steps/s"
        )


def signal(args: argparse.Namespace) -> None:
    trainer = trainer_for(args.config, args.set)
    theta = trainer.initial_state().theta
    specs = [trainer.groups.spec(g, 0) for g in range(trainer.config.tasks.num_groups)]

    def mean_estimate(replica: int) -> list[np.ndarray]:
        """The mean over `args.steps` outer steps of the groups' mean PES estimate, from
        populations of their own (independent inner runs and perturbations per replica)."""
        root = jax.random.fold_in(_root(trainer.config), 7000 + replica)
        states = [
            shard_population(trainer.estimator(spec).init(jax.random.fold_in(root, g), theta), trainer.mesh)
            for g, spec in enumerate(specs)
        ]
        total = None
        for s in range(args.steps):
            key = jax.random.fold_in(jax.random.fold_in(root, 99), s)
            for g, spec in enumerate(specs):
                grad, states[g], _ = trainer.estimator(spec).step(jax.random.fold_in(key, g), theta, states[g])
                total = grad if total is None else jax.tree.map(jnp.add, total, grad)
        return [np.asarray(x).reshape(-1) / (args.steps * len(specs)) for x in jax.tree.leaves(jax.device_get(total))]

    first, second = mean_estimate(0), mean_estimate(1)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(theta)]
    cosine = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    print(
        f"PES signal at theta_0: two independent populations, {args.steps} outer steps each, theta fixed "
        f"({' '.join(args.set) or 'config as is'})"
    )
    print("| tensor | size | cos(replica 1, replica 2) | rms of mean |")
    print("|---|---:|---:|---:|")
    for path, a, b in zip(paths, first, second):
        print(f"| {path} | {a.size} | {cosine(a, b):.3f} | {np.sqrt(np.mean(((a + b) / 2) ** 2)):.3g} |")
    whole = cosine(np.concatenate(first), np.concatenate(second))
    print(f"all of theta: cos = {whole:.3f} (1: the meta-gradient's direction is resolved; 0: noise)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("throughput", "signal"))
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workers", default="128")
    parser.add_argument("--both", action="store_true", help="time per-group programs as well as the fused one")
    parser.add_argument("--single", type=int, default=0, help="also single-task W2 at this population")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    (throughput if args.mode == "throughput" else signal)(args)


if __name__ == "__main__":
    main()
