"""Memory of exact metagradients against the run length T (issue: O(√T) saved states or better).

A 1M-parameter model (one 1024×1024 tanh layer on a fixed random regression, Adam's direction,
one log learning rate per step as the hyperparameters) is unrolled for T steps and the
metagradient df/dh compiled two ways: plain reverse mode (one `lax.scan`, every step's residuals
kept) and `lopt.hypergrad.exact`'s √T segments. XLA's peak temporary memory of each compiled
program (`memory_analysis().temp_size_in_bytes`; nothing is allocated, so T = 10,000 of plain
reverse mode is reported even where it could not run) is printed for each T, with the ratio and
one timed metagradient at the smallest T.

    python benchmarks/metagradient_memory.py --steps 100,1000,10000
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from lopt.hypergrad import exact


class WideRegression:
    """1M parameters: y ≈ Σ tanh(x W), x [batch, 1024], W [1024, 1024]."""

    def __init__(self, width: int = 1024, batch: int = 32) -> None:
        self.width, self.batch_size = width, batch
        self.teacher = jax.random.normal(jax.random.key(1), (width,)) / jnp.sqrt(width)

    def init(self, key):
        return {"w": jax.random.normal(key, (self.width, self.width)) / jnp.sqrt(self.width)}

    def loss(self, params, batch):
        x, y = batch
        return 0.5 * jnp.mean((jnp.tanh(x @ params["w"]).mean(-1) - y) ** 2)

    def batch(self, key, split="train"):
        x = jax.random.normal(jax.random.fold_in(key, split == "test"), (self.batch_size, self.width))
        return x, jnp.tanh(x @ self.teacher)


def compiled(unroll, steps: int, segment: int | None):
    h = jnp.full((steps,), -4.0)
    grad = jax.jit(jax.grad(lambda h: exact.objective(unroll, h, steps, segment=segment)))
    return grad.lower(h).compile(), h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="100,1000,10000", help="comma-separated run lengths T")
    args = parser.parse_args()
    task = WideRegression()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, 1,048,576 parameters, Adam's direction")
    print("| T | segment k | plain reverse mode | √T segments | plain ÷ segments |")
    print("|---:|---:|---:|---:|---:|")
    timed = None
    for steps in [int(s) for s in args.steps.split(",")]:
        unroll = exact.schedule_unroll(task, optax.scale_by_adam(), steps, jax.random.key(0))
        plain, h = compiled(unroll, steps, 0)
        remat, _ = compiled(unroll, steps, None)
        a, b = plain.memory_analysis().temp_size_in_bytes, remat.memory_analysis().temp_size_in_bytes
        mib = f"{a / 2**20:,.0f} MiB | {b / 2**20:,.0f} MiB"
        print(f"| {steps:,} | {exact.segment_length(steps)} | {mib} | {a / b:.1f}× |")
        if timed is None:
            timed = []
            for name, program in (("plain", plain), ("segments", remat)):
                jax.block_until_ready(program(h))
                start = time.perf_counter()
                jax.block_until_ready(program(h))
                timed.append(f"{name} {time.perf_counter() - start:.2f} s")
            print(f"one metagradient at T = {steps}: {', '.join(timed)}")


if __name__ == "__main__":
    main()
