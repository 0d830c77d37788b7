"""Dataset selection by metagradient descent (Engstrom et al. 2025) on labels with 30% flipped.

scikit-learn digits (1,438 train / 359 test): 200 training images are kept clean as the
validation set, the other 1,238 form the pool, and 30% of the pool's labels are replaced by a
random other class. A classifier (a tanh-256 MLP, or `--model linear`) trains `--steps` steps of SGD on batches of 64
from the pool, example i weighted by σ(h_i) (`lopt.hypergrad.exact.weighted_data_unroll`); MGD
descends the clean validation loss in h from h = 0 (uniform weights). Compared, by test accuracy
after the same training run, over 3 seeds:

- uniform weights (h = 0);
- loss-based filtering: train uniformly, drop the 30% of the pool with the highest final
  training loss, train again on the rest (the usual small-loss trick);
- MGD's weights.

    python benchmarks/mgd_data_selection.py
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.hypergrad import exact
from lopt.tasks.datasets import digits


def logits_of(params, x):
    if "w1" in params:  # the MLP: one tanh hidden layer
        x = jnp.tanh(x @ params["w1"] + params["b1"])
    return x @ params["w"] + params["b"]


def softmax_loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits_of(params, x), y)


def accuracy(params, x, y) -> float:
    return float(jnp.mean(jnp.argmax(logits_of(params, x), -1) == y))


def initial_params(model: str, inputs: int, key: jax.Array) -> dict:
    if model == "linear":
        return {"w": jnp.zeros((inputs, 10)), "b": jnp.zeros(10)}
    hidden = 256
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (inputs, hidden)) / jnp.sqrt(inputs),
        "b1": jnp.zeros(hidden),
        "w": jax.random.normal(k2, (hidden, 10)) / jnp.sqrt(hidden),
        "b": jnp.zeros(10),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--outer-steps", type=int, default=40)
    parser.add_argument("--outer-lr", type=float, default=0.5)
    parser.add_argument("--flip", type=float, default=0.3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--model", choices=("linear", "mlp"), default="mlp", help="softmax-linear or tanh-256 MLP")
    parser.add_argument("--lr", type=float, default=0.1, help="the inner SGD rate")
    args = parser.parse_args()
    data = digits()
    x_all = np.asarray(data.train_x).reshape(len(data.train_x), -1)
    y_all = np.asarray(data.train_y)
    test_x, test_y = jnp.asarray(np.asarray(data.test_x).reshape(len(data.test_x), -1)), jnp.asarray(data.test_y)
    rows = []
    for seed in range(args.seeds):
        start = time.perf_counter()
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(x_all))
        val, pool = order[:200], order[200:]
        noisy = y_all[pool].copy()
        flipped = rng.random(len(pool)) < args.flip
        noisy[flipped] = (noisy[flipped] + rng.integers(1, 10, flipped.sum())) % 10
        pool_xy = (jnp.asarray(x_all[pool]), jnp.asarray(noisy))
        val_xy = (jnp.asarray(x_all[val]), jnp.asarray(y_all[val]))
        key = jax.random.key(seed)
        params0 = initial_params(args.model, x_all.shape[1], jax.random.fold_in(key, 1))

        def trained(h, pool_xy=pool_xy, val_xy=val_xy, params0=params0, key=key):
            unroll = exact.weighted_data_unroll(softmax_loss, params0, pool_xy, val_xy, args.steps, 64, args.lr, key)
            return unroll, exact.run(unroll, h, args.steps)[0]

        uniform_h = jnp.zeros(len(pool))
        unroll, uniform = trained(uniform_h)
        # loss-based filtering: keep the 70% of the pool with the lowest loss under the uniform model
        losses = np.asarray(softmax_loss(uniform, *pool_xy))
        keep = losses <= np.quantile(losses, 1.0 - args.flip)
        _, filtered = trained(jnp.where(jnp.asarray(keep), 10.0, -10.0))
        descent = exact.descend(
            unroll, uniform_h, args.steps, outer_steps=args.outer_steps, learning_rate=args.outer_lr
        )
        _, learned = trained(descent.best)
        weights = np.asarray(jax.nn.sigmoid(descent.best))
        lowest = np.argsort(weights)[: int(args.flip * len(pool))]
        rows.append(
            {
                "uniform": accuracy(uniform, test_x, test_y),
                "filtered": accuracy(filtered, test_x, test_y),
                "mgd": accuracy(learned, test_x, test_y),
                "flipped_in_lowest": float(flipped[lowest].mean()),
                "filter_flipped_dropped": float(flipped[~keep].mean()),
                "val_start_end": (descent.objectives[0], min(descent.objectives)),
            }
        )
        print(seed, rows[-1], f"{time.perf_counter() - start:.0f} s", flush=True)
    mean = {k: np.mean([r[k] for r in rows]) for k in ("uniform", "filtered", "mgd", "flipped_in_lowest")}
    spread = {k: np.std([r[k] for r in rows]) for k in ("uniform", "filtered", "mgd")}
    setup = f"{args.model}, {args.steps} SGD steps at {args.lr:g}, {args.seeds} seeds"
    print(f"\ndigits, {args.flip:.0%} of the pool's labels flipped, {setup}")
    print("| weighting | test accuracy (mean ± sd) |")
    print("|---|---:|")
    for name, label in (("uniform", "uniform"), ("filtered", "loss-based filtering (drop top 30%)"), ("mgd", "MGD")):
        print(f"| {label} | {100 * mean[name]:.1f}% ± {100 * spread[name]:.1f} |")
    print(f"flipped labels among MGD's lowest-weighted 30%: {100 * mean['flipped_in_lowest']:.0f}% (30% by chance)")


if __name__ == "__main__":
    main()
