"""The permutation-equivariant learned optimizer's update cost (lopt.learned.unf) against optax.adam
and the per-parameter MLP of the same width, on transformer language models whose parameter trees
carry flax's names (so `lopt.learned.symmetry.infer` finds the residual stream, heads and MLP
units and every equivariant term runs): about 1M, 10M and 124M parameters (the last GPT-2 small's
shapes: vocabulary 50,257, width 768, 12 blocks, context 1,024).

One step is a jitted `update` + `apply_updates` with params and state donated; the optimizers
run interleaved after a warm-up and the table reports each one's median time per step and its
ratio to adam measured in the same process (random theta: cost, not quality).

    python benchmarks/unf_cost.py --sizes 1M,10M
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from lopt.learned import small_mlp
from lopt.learned.unf import UNFOptimizer
from lopt.tasks.models import TransformerLM

SIZES = {  # vocabulary, width, blocks, heads, context
    "1M": (256, 128, 4, 4, 128),
    "10M": (4096, 320, 6, 5, 256),
    "124M": (50257, 768, 12, 12, 1024),
}


def parameters(size: str) -> dict:
    vocab, width, blocks, heads, context = SIZES[size]
    model = TransformerLM(vocab, width, blocks, heads, context)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return treedef.unflatten([0.02 * jax.random.normal(k, s.shape, jnp.float32) for k, s in zip(keys, leaves)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M")
    parser.add_argument("--width", type=int, default=16, help="hidden width of both learned optimizers (2 layers)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind} (jax {jax.__version__})"
    print(f"UNF update cost on {device}; median of {args.reps} interleaved reps × {args.steps} steps")
    print("| size | optimizer | ms/step | × adam | compile s |")
    print("|---|---|---:|---:|---:|")
    hidden = (args.width, args.width)
    metas = {
        f"small_mlp ({args.width}x2)": small_mlp(hidden_sizes=hidden, kernel="xla"),
        f"unf ({args.width}x2, equivariant)": UNFOptimizer(hidden_sizes=hidden, equivariant_init_scale=0.5),
    }
    for size in args.sizes.split(","):
        params = parameters(size)
        count = sum(x.size for x in jax.tree.leaves(params))
        grads = jax.tree.map(lambda p: 0.01 * jnp.sin(p * 50.0), params)
        opts = {"adam": optax.with_extra_args_support(optax.adam(1e-3))}
        opts |= {name: m.transform(m.init_meta(jax.random.key(0)), num_steps=10_000) for name, m in metas.items()}
        runners = {}
        for name, opt in opts.items():

            def step(params, state, opt=opt):
                updates, state = opt.update(grads, state, params)
                return optax.apply_updates(params, updates), state

            start = time.perf_counter()
            own = jax.tree.map(jnp.copy, params)
            compiled = jax.jit(step, donate_argnums=(0, 1)).lower(own, opt.init(own)).compile()
            own, state = jax.block_until_ready(compiled(own, opt.init(own)))
            runners[name] = [compiled, own, state, [], time.perf_counter() - start]
        for _ in range(args.reps):
            for runner in runners.values():
                compiled, own, state = runner[:3]
                start = time.perf_counter()
                for _ in range(args.steps):
                    own, state = compiled(own, state)
                jax.block_until_ready((own, state))
                runner[3].append((time.perf_counter() - start) / args.steps)
                runner[1], runner[2] = own, state
        adam = statistics.median(runners["adam"][3])
        for name, runner in runners.items():
            median = statistics.median(runner[3])
            cells = [f"{size} ({count / 1e6:.1f}M)", name, f"{1e3 * median:.3f}", f"{median / adam:.2f}"]
            print("| " + " | ".join(cells) + f" | {runner[4]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
