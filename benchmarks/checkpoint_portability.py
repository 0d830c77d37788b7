"""A saved theta runs on CPU and GPU both ways: write checkpoints on one backend, load them on another,
and check that the same training run gives the same losses.

    python benchmarks/checkpoint_portability.py write portable-cpu     # here (CPU)
    python benchmarks/checkpoint_portability.py check portable-cpu     # on the GPU: CPU-written
    python benchmarks/checkpoint_portability.py write $OUT/gpu         # on the GPU
    python benchmarks/checkpoint_portability.py check <fetched>/gpu    # back here: GPU-written

`write` saves one checkpoint per learned preset (theta from a fixed key, lightly perturbed so no
weight sits at an initial zero) and copies every shipped checkpoint it can load, then runs each for
30 steps on a fixed regression MLP and records the losses in `reference.json`, with the backend
that produced them. `check` loads every checkpoint in the folder on the backend it runs on, reruns
the same steps and prints the largest relative loss difference per optimizer; it exits 1 if any
exceeds `--rtol`. Matmuls run at full float32 precision on both sides (GPU matmuls otherwise use
TF32, whose rounding a 30-step run would amplify into a difference that says nothing about
portability).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt
from lopt.learned import PRESETS

STEPS = 30


def problem() -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
    """A fixed 16-32-4 tanh MLP and a batch of 64 regression targets (threefry bits are the same on
    every backend, so both sides train the same problem)."""
    k = jax.random.split(jax.random.key(7), 5)
    params = {
        "w1": jax.random.normal(k[0], (16, 32)) / 4.0,
        "b1": jnp.zeros(32),
        "w2": jax.random.normal(k[1], (32, 4)) / np.sqrt(32.0),
        "b2": jnp.zeros(4),
    }
    x = jax.random.normal(k[2], (64, 16))
    y = jnp.tanh(x @ jax.random.normal(k[3], (16, 4)))
    return params, x, y


def loss_fn(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def losses(opt: optax.GradientTransformationExtraArgs) -> list[float]:
    params, x, y = problem()
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = opt.update(grads, state, params, loss=loss)
        return optax.apply_updates(params, updates), state, loss

    out = []
    for _ in range(STEPS):
        params, state, loss = step(params, state)
        out.append(float(loss))
    return out


def write(folder: Path) -> None:
    if folder.exists():
        raise SystemExit(f"{folder} exists; pass a new folder (lopt writes it whole)")
    folder.mkdir(parents=True)
    for name in sorted(PRESETS):
        meta = PRESETS[name]()
        theta = meta.init_meta(jax.random.key(0))
        noise = jax.random.split(jax.random.key(1), len(jax.tree.leaves(theta)))
        leaves, tree = jax.tree.flatten(theta)
        leaves = [
            leaf + 0.01 * jax.random.normal(k, leaf.shape, leaf.dtype)
            if jnp.issubdtype(leaf.dtype, jnp.floating)
            else leaf
            for leaf, k in zip(leaves, noise)
        ]
        lopt.save(folder / name, meta, jax.tree.unflatten(tree, leaves), num_steps=STEPS)
    for name in lopt.shipped():
        shutil.copytree(lopt.checkpoint.resolve(name), folder / f"shipped-{name}")
    reference = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "losses": {p.name: losses(lopt.load(p, num_steps=STEPS)) for p in sorted(folder.iterdir()) if p.is_dir()},
    }
    (folder / "reference.json").write_text(json.dumps(reference, indent=1))
    print(f"wrote {len(reference['losses'])} checkpoints on {reference['backend']} ({reference['device']}) to {folder}")


def check(folder: Path, rtol: float) -> int:
    reference = json.loads((folder / "reference.json").read_text())
    here = f"{jax.default_backend()} ({jax.devices()[0].device_kind})"
    print(f"checkpoints written on {reference['backend']} ({reference['device']}), run on {here}")
    print(f"| checkpoint | final loss there | final loss here | max rel. diff over {STEPS} steps |")
    print("|---|---:|---:|---:|")
    worst = 0.0
    for name, there in reference["losses"].items():
        mine = losses(lopt.load(folder / name, num_steps=STEPS))
        diff = float(np.max(np.abs(np.array(mine) - np.array(there)) / np.abs(np.array(there))))
        worst = max(worst, diff)
        print(f"| {name} | {there[-1]:.6g} | {mine[-1]:.6g} | {diff:.2e} |")
    print(f"largest relative difference {worst:.2e} (tolerance {rtol:g})")
    return int(worst > rtol)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["write", "check"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--rtol", type=float, default=1e-3)
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")
    if args.action == "write":
        write(args.folder)
        return 0
    return check(args.folder, args.rtol)


if __name__ == "__main__":
    sys.exit(main())
