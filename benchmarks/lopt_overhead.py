"""W1 (docs/benchmarks.md): optimizer update cost relative to optax.adam at 1M, 10M and 124M parameters.

Parameters are a dict of float32 matrices (1M: 4 × 512×512; 10M: 4 × 1024×2560; 124M: GPT-2-small
shapes), gradients are fixed random arrays and loss = 1.0. One step = one jitted `update` +
`apply_updates` (params and state donated). Optimizers run interleaved, after a warm-up; the
table reports each one's median time per step, its ratio to adam measured in the same process,
compile time and optimizer-state memory. A last row per size times adam on one flat vector of
the same size: the memory-bandwidth floor, which adam over a pytree of ~150 tensors can miss by
several times on a GPU (H100, 124M: 1.3-1.6 ms flat against 5.6-8 ms as a pytree).

    python benchmarks/lopt_overhead.py --sizes 1M,10M
    python benchmarks/lopt_overhead.py --sizes 1M --optimizers "" --checkpoint checkpoints/<name> --baselines lion
    python benchmarks/lopt_overhead.py --sizes 1M,10M --optimizers "" --baselines all   # the baseline zoo

Optimizers that read extra arguments get loss = 1, the objective ½‖θ‖² (`quadratic`) and
microbatch gradients that are scaled copies of the gradient (precomputed: the training loop's
cost, not the optimizer's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import lopt
from lopt.learned import VeLOOptimizer, factored_mlp, generalist, small_mlp


def parameter_shapes(size: str) -> dict[str, tuple[int, ...]]:
    if size == "1M":
        return {f"w{i}": (512, 512) for i in range(4)}
    if size == "10M":
        return {f"w{i}": (1024, 2560) for i in range(4)}
    if size == "124M":
        # the tables named as flax's nn.Embed names them, so rules that give embeddings to Adam see them
        shapes = {
            "wte_embedding": (50257, 768),
            "wpe_embedding": (1024, 768),
            "ln_f_scale": (768,),
            "ln_f_bias": (768,),
        }
        for b in range(12):
            shapes |= {
                f"h{b}_attn_qkv": (768, 2304),
                f"h{b}_attn_qkv_bias": (2304,),
                f"h{b}_attn_proj": (768, 768),
                f"h{b}_attn_proj_bias": (768,),
                f"h{b}_mlp_fc": (768, 3072),
                f"h{b}_mlp_fc_bias": (3072,),
                f"h{b}_mlp_proj": (3072, 768),
                f"h{b}_mlp_proj_bias": (768,),
                f"h{b}_ln1_scale": (768,),
                f"h{b}_ln1_bias": (768,),
                f"h{b}_ln2_scale": (768,),
                f"h{b}_ln2_bias": (768,),
            }
        return shapes
    raise ValueError(f"unknown size {size!r}; valid: 1M, 10M, 124M")


def optimizers(
    names: list[str],
    num_steps: int,
    widths: list[int],
    checkpoints: tuple[str, ...] = (),
    baselines: tuple[str, ...] = (),
) -> dict[str, optax.GradientTransformationExtraArgs]:
    """adam plus the learned optimizers at their literature sizes (random theta: cost, not quality),
    and small_mlp at each extra hidden width in `widths` (to see how cost scales with width)."""
    key = jax.random.key(0)
    metas = {
        **{f"small_mlp width {w}x2": small_mlp(hidden_sizes=(w, w)) for w in widths},
        "small_mlp (32x2)": small_mlp(),
        "small_mlp unfused": dataclasses.replace(small_mlp(), fused_min_size=1 << 62),
        "factored_mlp (4x2)": factored_mlp(),
        "velo (lstm 512, bank 256)": VeLOOptimizer(),
        "generalist (8x2, Newton-Schulz)": generalist(),
        "generalist (8x2, Newton-Schulz in bf16)": generalist(ns_dtype="bfloat16"),
        "generalist (8x2, Newton-Schulz in bf16, XLA statistics)": generalist(ns_dtype="bfloat16", kernel="xla"),
    }
    chosen = {"adam": optax.with_extra_args_support(optax.adam(1e-3))}
    for name, meta in metas.items():
        if "width" in name or any(name.startswith(n) and (("unfused" in name) == ("unfused" in n)) for n in names):
            chosen[name] = meta.transform(meta.init_meta(key), num_steps=num_steps)
    for name in lopt.baselines.names() if tuple(baselines) == ("all",) else baselines:
        entry = lopt.baselines.spec(name)
        run_length = {entry.run_length_argument: num_steps} if entry.run_length_argument else {}
        chosen[name] = entry.make(**run_length)
    for path in checkpoints:
        chosen[f"checkpoint {Path(path).name}"] = lopt.load(path, num_steps=num_steps)
    return chosen


def quadratic(params) -> jax.Array:
    """The objective handed to optimizers that ask for one (AdaHessian's HVP, XGrad): ½‖θ‖²,
    so their extra pass is as cheap as a pass can be; on a real model it costs a forward and
    backward pass more (the eval report's cost columns measure that on each task)."""
    return 0.5 * sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(params))


def tree_bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def benchmark(
    size: str,
    names: list[str],
    reps: int,
    steps: int,
    widths: list[int],
    checkpoints: tuple[str, ...] = (),
    baselines: tuple[str, ...] = (),
) -> list[dict]:
    shapes = parameter_shapes(size)
    keys = jax.random.split(jax.random.key(1), len(shapes))
    params = {k: 0.02 * jax.random.normal(key, s, jnp.float32) for key, (k, s) in zip(keys, shapes.items())}
    grads = {
        k: 0.01 * jax.random.normal(key, s, jnp.float32)
        for key, (k, s) in zip(jax.random.split(keys[0], len(shapes)), shapes.items())
    }
    count = sum(p.size for p in params.values())
    rows, runners = [], {}
    for name, opt in optimizers(names, 10_000, widths, checkpoints, baselines).items():

        def step(params, state, grads, opt=opt):
            updates, state = opt.update(
                grads,
                state,
                params,
                loss=jnp.float32(1.0),
                obj_fn=quadratic,
                microbatch_grads_fn=lambda p, m: jax.tree.map(
                    lambda g: jnp.stack([g * (1 + 0.1 * i) for i in range(m)]), grads
                ),
            )
            return optax.apply_updates(params, updates), state

        jitted = jax.jit(step, donate_argnums=(0, 1))
        own_params = jax.tree.map(jnp.copy, params)
        state = jax.jit(opt.init)(own_params)
        start = time.perf_counter()
        compiled = jitted.lower(own_params, state, grads).compile()
        compile_seconds = time.perf_counter() - start
        own_params, state = jax.block_until_ready(compiled(own_params, state, grads))  # warm-up
        runners[name] = [compiled, own_params, state, [], compile_seconds, tree_bytes(state)]
    for _ in range(reps):  # interleaved
        for runner in runners.values():
            compiled, own_params, state = runner[:3]
            start = time.perf_counter()
            for _ in range(steps):
                own_params, state = compiled(own_params, state, grads)
            jax.block_until_ready((own_params, state))
            runner[3].append((time.perf_counter() - start) / steps)
            runner[1], runner[2] = own_params, state
    flat_adam = flat_adam_time(count, reps, steps)
    adam_time = statistics.median(runners["adam"][3])
    for name, runner in runners.items():
        median = statistics.median(runner[3])
        rows.append(
            {
                "size": size,
                "parameters": count,
                "optimizer": name,
                "median_ms": 1e3 * median,
                "ratio_to_adam": median / adam_time,
                "compile_s": runner[4],
                "state_mb": runner[5] / 2**20,
            }
        )
    rows.append(
        {
            "size": size,
            "parameters": count,
            "optimizer": "adam on one flat vector (bandwidth reference)",
            "median_ms": 1e3 * flat_adam,
            "ratio_to_adam": flat_adam / adam_time,
            "compile_s": float("nan"),
            "state_mb": 2 * count * 4 / 2**20,
        }
    )
    return rows


def flat_adam_time(count: int, reps: int, steps: int) -> float:
    """adam on one flat float32 vector of `count` parameters: the memory-bandwidth floor that
    the per-tensor update of a pytree (the reference above) does not always reach."""
    opt = optax.adam(1e-3)
    params, grads = jnp.zeros((count,), jnp.float32), jnp.full((count,), 0.01, jnp.float32)

    def step(params, state):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(step, donate_argnums=(0, 1))
    params, state = jax.block_until_ready(jitted(params, jax.jit(opt.init)(params)))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(steps):
            params, state = jitted(params, state)
        jax.block_until_ready(params)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M")
    parser.add_argument("--optimizers", default="small_mlp,factored_mlp,velo,generalist")
    parser.add_argument("--widths", default="", help="extra small_mlp hidden widths, e.g. 4,8,16")
    parser.add_argument("--checkpoint", action="append", default=[], help="also time a saved optimizer (repeatable)")
    parser.add_argument(
        "--baselines",
        default="",
        help="also time these lopt.baselines entries, e.g. lion,adamw; 'all' for the whole registry",
    )
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()
    device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind} (jax {jax.__version__})"
    print(f"W1 optimizer update cost on {device}; median of {args.reps} interleaved reps × {args.steps} steps")
    print("| size | optimizer | ms/step | × adam | compile s | state MiB |")
    print("|---|---|---:|---:|---:|---:|")
    rows = []
    for size in args.sizes.split(","):
        widths = [int(w) for w in args.widths.split(",") if w]
        extra = tuple(b for b in args.baselines.split(",") if b)
        for row in benchmark(
            size,
            [n for n in args.optimizers.split(",") if n],
            args.reps,
            args.steps,
            widths,
            tuple(args.checkpoint),
            extra,
        ):
            rows.append(row)
            print(
                f"| {row['size']} ({row['parameters'] / 1e6:.1f}M) | {row['optimizer']} | {row['median_ms']:.3f} | "
                f"{row['ratio_to_adam']:.2f} | {row['compile_s']:.1f} | {row['state_mb']:.1f} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
