"""Run optimizers over tasks: one compiled, vmapped call per (task, optimizer) for its whole LR
grid × seeds, with an on-disk cache so a re-run trains only what changed."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt
from lopt.baselines import Baseline
from lopt.eval.suites import entry_spec
from lopt.tasks import BatchGrowth, build, train

CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An optimizer under evaluation.

    make: learning rate (a traced scalar) -> transformation. Learned optimizers ignore it and
      get a one-point grid (no tuning).
    fingerprint: everything that changes its behaviour, for the cache key.
    """

    name: str
    make: Callable[[Any], optax.GradientTransformation]
    lr_grid: tuple[float, ...]
    fingerprint: str
    eval_params: Callable[[Any, Any], Any] | None = None
    tuned: bool = True
    batch_growth: BatchGrowth | None = None
    learned: bool = False  # a saved learned optimizer (reports add its head-to-head table)


def baseline_candidate(baseline: Baseline, num_steps: int | None = None) -> Candidate:
    """Wrap a registry entry: its LR grid is swept and the best LR per task is reported.

    Methods that schedule over the run (`baseline.run_length_argument`, e.g. Ranger21's
    warm-down) are told `num_steps`, and it is part of their fingerprint."""
    told = baseline.run_length_argument is not None and num_steps is not None
    fingerprint = json.dumps(
        {
            "name": baseline.name,
            "defaults": {k: repr(v) for k, v in baseline.defaults.items()},
            **({"run_length": num_steps} if told else {}),
            **({"batch_growth": list(baseline.batch_growth)} if baseline.batch_growth else {}),
        },
        sort_keys=True,
    )
    make = baseline.make
    if told:
        make = functools.partial(baseline.make, **{baseline.run_length_argument: num_steps})
    return Candidate(
        name=baseline.name,
        make=make,
        lr_grid=baseline.lr_grid,
        fingerprint=fingerprint,
        eval_params=baseline.eval_params,
        batch_growth=BatchGrowth(*baseline.batch_growth) if baseline.batch_growth else None,
    )


def fixed_lr_candidate(baseline: Baseline, learning_rate: float, num_steps: int | None = None) -> Candidate:
    """A registry entry at one fixed learning rate (untuned), named `name@lr` — e.g. the Adam
    a learned LR controller starts from."""
    base = baseline_candidate(baseline, num_steps)
    return dataclasses.replace(
        base, name=f"{baseline.name}@{learning_rate:g}", lr_grid=(float(learning_rate),), tuned=False
    )


def learned_candidates(path: str, num_steps: int, name: str | None = None) -> list[Candidate]:
    """A saved learned optimizer, told the run length: untuned (its own step size, a one-point
    grid), and — when its kind has a learning-rate hook (`lr_tuning_grid` and
    `scale_learning_rate`, e.g. the generalist and found programs) — also swept over that grid
    of multipliers like the baselines, named `<name> (LR-tuned)`."""
    manifest = lopt.read_manifest(path)
    meta_optimizer, theta = lopt.load_meta(path)
    fingerprint = json.dumps(
        {
            "kind": manifest["kind"],
            "config": manifest.get("config"),
            "arrays": [a["sha256"] for a in manifest["arrays"]],
            "run_length": num_steps,
        },
        sort_keys=True,
        default=str,
    )
    where = Path(path).absolute()
    label = name or f"learned:{where.parent.name if where.name == 'optimizer' else where.name}"
    candidates = [
        Candidate(
            name=label,
            make=lambda lr: meta_optimizer.transform(theta, num_steps=num_steps),
            lr_grid=(1.0,),
            fingerprint=fingerprint,
            tuned=False,
            learned=True,
        )
    ]
    grid = tuple(meta_optimizer.lr_tuning_grid)
    if grid:
        candidates.append(
            Candidate(
                name=f"{label} (LR-tuned)",
                make=lambda lr: meta_optimizer.transform(
                    meta_optimizer.scale_learning_rate(theta, lr), num_steps=num_steps
                ),
                lr_grid=grid,
                fingerprint=fingerprint + "|lr-sweep",
                tuned=True,
                learned=True,
            )
        )
    return candidates


@dataclasses.dataclass(frozen=True)
class Sweep:
    """All runs of one optimizer on one task.

    train_loss: [num_lrs, num_seeds, num_steps]; eval_loss: [num_lrs, num_seeds, num_evals];
    compile_seconds and run_seconds: the one compiled call that produced them.
    """

    task: str
    optimizer: str
    lrs: np.ndarray
    train_loss: np.ndarray
    eval_loss: np.ndarray
    compile_seconds: float
    run_seconds: float
    cached: bool = False


def run_keys(task_name: str, seed: int, num_seeds: int) -> jax.Array:
    """The seeds' keys for a task: the same for every optimizer (common random numbers)."""
    root = jax.random.fold_in(jax.random.key(seed), zlib.crc32(task_name.encode()))
    return jax.random.split(root, num_seeds)


def cache_path(cache_dir: Path, task_name: str, candidate: Candidate, settings: dict) -> Path:
    key = json.dumps(
        {
            "format": CACHE_FORMAT,
            "lopt": lopt.__version__,
            "task": entry_spec(task_name).describe(),
            "optimizer": candidate.fingerprint,
            "lrs": candidate.lr_grid,
            **settings,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{task_name}__{candidate.name}__{digest}.npz"


def _read_cache(path: Path, task_name: str, candidate: Candidate) -> Sweep | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return Sweep(
                task=task_name,
                optimizer=candidate.name,
                lrs=data["lrs"],
                train_loss=data["train_loss"],
                eval_loss=data["eval_loss"],
                compile_seconds=float(data["compile_seconds"]),
                run_seconds=float(data["run_seconds"]),
                cached=True,
            )
    except (OSError, KeyError, ValueError):
        return None  # a damaged cache entry is recomputed and overwritten


def _write_cache(path: Path, sweep: Sweep) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npz")
    np.savez(
        temporary,
        lrs=sweep.lrs,
        train_loss=sweep.train_loss,
        eval_loss=sweep.eval_loss,
        compile_seconds=sweep.compile_seconds,
        run_seconds=sweep.run_seconds,
    )
    os.replace(temporary, path)


def sweep(
    task_name: str,
    candidate: Candidate,
    *,
    num_steps: int,
    eval_every: int,
    num_seeds: int,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> Sweep:
    """Train `candidate` on `task_name` at every LR of its grid and every seed, in one call."""
    settings = {"num_steps": num_steps, "eval_every": eval_every, "seeds": num_seeds, "seed": seed}
    path = cache_path(cache_dir, task_name, candidate, settings) if cache_dir else None
    if path is not None and path.exists():
        cached = _read_cache(path, task_name, candidate)
        if cached is not None:
            return cached

    task = build(entry_spec(task_name))
    keys = run_keys(task_name, seed, num_seeds)
    lrs = jnp.asarray(candidate.lr_grid, jnp.float32)

    def one_run(task, lr, key):
        result = train(
            task,
            candidate.make(lr),
            key,
            num_steps=num_steps,
            eval_every=eval_every,
            eval_params_fn=candidate.eval_params,
            batch_growth=candidate.batch_growth,
        )
        return result.train_loss, result.eval_loss

    over_seeds = jax.vmap(one_run, in_axes=(None, None, 0))
    over_grid = jax.jit(jax.vmap(over_seeds, in_axes=(None, 0, None)))
    start = time.perf_counter()
    compiled = over_grid.lower(task, lrs, keys).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    train_loss, eval_loss = jax.block_until_ready(compiled(task, lrs, keys))
    run_seconds = time.perf_counter() - start

    result = Sweep(
        task=task_name,
        optimizer=candidate.name,
        lrs=np.asarray(candidate.lr_grid),
        train_loss=np.asarray(train_loss),
        eval_loss=np.asarray(eval_loss),
        compile_seconds=compile_seconds,
        run_seconds=run_seconds,
    )
    if path is not None:
        _write_cache(path, result)
    return result
