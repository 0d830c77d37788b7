"""Per-parameter weight decay by implicit differentiation (Lorraine, Vicol & Duvenaud 2020)
against the best single global weight decay from a grid, by validation loss.

Three small-data problems where weight decay matters (a tanh-128 MLP, full-batch Adam at 1e-2):
scikit-learn digits and MNIST-1D with 200 training examples, and a teacher-student regression
with 100. Each has a validation set (300 / 300 / 500 examples) that picks the global decay and
drives the IFT hypergradients, and a test set that nothing sees (the official test splits; 2,000
fresh regression examples).

- global: one decay for every weight, 13 log-spaced values and 0, trained `--steps` steps; the
  best by validation loss.
- IFT: one decay per weight (as many hyperparameters as weights), started at the best global
  value, trained the same steps; every `--every` steps one Adam step on the log-decays along the
  IFT hypergradient at the current weights (`lopt.hypergrad.implicit`, a truncated Neumann series
  of `--terms` terms as in the paper's Algorithm 3, no residual check during training).

    python benchmarks/ift_weight_decay.py
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.hypergrad import implicit
from lopt.tasks.datasets import digits, mnist1d


def mlp_init(key, inputs: int, outputs: int, hidden: int = 128):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (inputs, hidden)) / np.sqrt(inputs),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, outputs)) / np.sqrt(hidden),
        "b2": jnp.zeros(outputs),
    }


def forward(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def data_loss(kind: str):
    def loss(params, x, y):
        out = forward(params, x)
        if kind == "classification":
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))
        return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, -1))

    return loss


def problems(seed: int = 0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, data in (("digits", digits()), ("mnist1d", mnist1d())):
        x = np.asarray(data.train_x).reshape(len(data.train_x), -1)
        y = np.asarray(data.train_y)
        order = rng.permutation(len(x))
        tr, va = order[:200], order[200:500]
        test_x = np.asarray(data.test_x).reshape(len(data.test_x), -1)
        out[f"{name} (200 examples)"] = (
            "classification",
            (x[tr], y[tr]),
            (x[va], y[va]),
            (test_x, np.asarray(data.test_y)),
            10,
        )
    teacher = rng.normal(size=(16, 32)) / 4, rng.normal(size=(32, 4)) / np.sqrt(32)

    def sample(n):
        x = rng.normal(size=(n, 16))
        return x, np.tanh(x @ teacher[0]) @ teacher[1] + 0.3 * rng.normal(size=(n, 4))

    out["teacher-student regression (100 examples)"] = ("regression", sample(100), sample(500), sample(2000), 4)
    return out


def train(loss, params, train_xy, decay, steps, hyper_step=None, every=0):
    """Full-batch Adam on loss + ½ Σ exp(λ) w² (λ: a scalar log-decay, or a tree like params);
    `hyper_step(params, λ) -> λ` every `every` steps."""
    opt = optax.adam(1e-2)
    state = opt.init(params)

    def objective(w, log_decay):
        penalty = jax.tree.map(lambda p, ld: jnp.sum(jnp.exp(ld) * p**2), w, log_decay)
        return loss(w, *train_xy) + 0.5 * sum(jax.tree.leaves(penalty))

    @jax.jit
    def step(params, state, log_decay):
        grads = jax.grad(objective)(params, log_decay)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for t in range(steps):
        params, state = step(params, state, decay)
        if hyper_step is not None and every and (t + 1) % every == 0:
            decay = hyper_step(params, decay, objective)
    return params, decay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--terms", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--hyper-lr", type=float, default=0.05)
    args = parser.parse_args()
    grid = [None, *np.geomspace(1e-6, 1e-1, 13)]
    rows = []
    for name, (kind, train_xy, val_xy, test_xy, outputs) in problems().items():
        start = time.perf_counter()
        train_xy, val_xy, test_xy = (tuple(jnp.asarray(a) for a in xy) for xy in (train_xy, val_xy, test_xy))
        loss = data_loss(kind)
        params0 = mlp_init(jax.random.key(0), train_xy[0].shape[1], outputs)
        results = []
        for value in grid:
            log_decay = jax.tree.map(lambda p, v=value: jnp.full_like(p, -50.0 if v is None else np.log(v)), params0)
            params, _ = train(loss, params0, train_xy, log_decay, args.steps)
            results.append((float(loss(params, *val_xy)), float(loss(params, *test_xy)), value))
        best_val, best_test, best_value = min(results, key=lambda r: r[0])
        start_decay = jax.tree.map(
            lambda p: jnp.full_like(p, -50.0 if best_value is None else np.log(best_value)), params0
        )
        hyper_opt = optax.adam(args.hyper_lr)
        hyper_state = [hyper_opt.init(start_decay)]

        def hyper_step(params, log_decay, objective, hyper_state=hyper_state, hyper_opt=hyper_opt, val_xy=val_xy):
            result = implicit.hypergradient(
                objective,
                lambda w, ld: loss(w, *val_xy),
                params,
                log_decay,
                solver="neumann",
                iterations=args.terms,
                alpha=args.alpha,
                tolerance=None,
            )
            updates, hyper_state[0] = hyper_opt.update(result.grad, hyper_state[0], log_decay)
            return optax.apply_updates(log_decay, updates)

        params, learned = train(loss, params0, train_xy, start_decay, args.steps, hyper_step, args.every)
        ift_val, ift_test = float(loss(params, *val_xy)), float(loss(params, *test_xy))
        spread = float(np.std(np.concatenate([np.ravel(v) for v in jax.tree.leaves(learned)])))
        rows.append((name, best_val, best_test, best_value, ift_val, ift_test, spread))
        print(name, rows[-1][1:], f"{time.perf_counter() - start:.0f} s", flush=True)
    print(f"\n{args.steps} full-batch Adam steps; validation / test loss; lower is better")
    print("| problem | best global decay (val / test) | IFT per-parameter decay (val / test) | IFT vs global (val) |")
    print("|---|---|---|---:|")
    for name, bv, bt, value, iv, it, spread in rows:
        label = "0" if value is None else f"{value:.1e}"
        print(
            f"| {name} | {bv:.4f} / {bt:.4f} ({label}) | {iv:.4f} / {it:.4f} (log-decay sd {spread:.2f}) | "
            f"{100 * (iv / bv - 1):+.1f}% |"
        )


if __name__ == "__main__":
    main()
