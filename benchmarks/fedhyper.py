"""FedHyper against FedAvg from poor initial learning rates (Zhang et al. 2024's claim: from a poor
initial LR, hypergradient schedulers converge faster and higher than FedAvg).

Simulation: K clients with non-IID shares of an embedded dataset (each client's label mix drawn
from Dirichlet(α), its examples drawn from those classes), an MLP, R rounds of S local SGD steps
on minibatches of B, all clients every round (one `vmap`). Methods: FedAvg (server LR 1), and
FedHyper with the global and local schedulers (`lopt.hypergrad.fedhyper`), each started from
every client LR of a grid. Reports the final global test loss and accuracy per initial LR, and
a figure of test accuracy over rounds from the poorest initial LRs.

    python benchmarks/fedhyper.py --rounds 100 --out results/fedhyper
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from _report import pyplot, save_figure, write
from lopt.hypergrad import fedhyper
from lopt.tasks import MLPSpec, build

GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
METHODS = {"fedavg": (0.0, 0.0), "fedhyper": (0.02, 0.1)}  # (local β per step, global β per round)


def client_indices(labels: np.ndarray, clients: int, per_client: int, alpha: float, seed: int) -> np.ndarray:
    """[clients, per_client] training-example indices: client k's label mix p_k ~ Dir(α)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    out = np.empty((clients, per_client), np.int64)
    for k in range(clients):
        mix = rng.dirichlet(np.full(len(classes), alpha))
        drawn = rng.choice(classes, size=per_client, p=mix)
        out[k] = [rng.choice(by_class[c]) for c in drawn]
    return out


def run(task_name: str, spec: MLPSpec, args: argparse.Namespace) -> dict:
    task = build(spec)
    data = task.data
    indices = jnp.asarray(
        client_indices(np.asarray(data.train_y), args.clients, args.per_client, args.alpha, args.seed)
    )
    test = {"x": data.test_x, "y": data.test_y}
    K, S, B = args.clients, args.local_steps, args.batch

    def accuracy(params):
        logits = task.model.apply({"params": params}, test["x"])
        return jnp.mean(jnp.argmax(logits, -1) == test["y"])

    def train(local_lr, local_beta, global_beta, key):
        init_key, data_key = jax.random.split(key)
        state = fedhyper.init(task.init(init_key))

        def one_round(state, round_key):
            picks = jax.random.randint(round_key, (K, S, B), 0, indices.shape[1])
            chosen = jnp.take_along_axis(indices[:, None, :], picks.reshape(K, 1, S * B), axis=2).reshape(K, S, B)
            batches = {"x": data.train_x[chosen], "y": data.train_y[chosen]}
            state, m = fedhyper.round_step(
                state, batches, task.loss, local_lr=local_lr, local_hyper_lr=local_beta, global_hyper_lr=global_beta
            )
            return state, (task.loss(state.params, test), accuracy(state.params), m["local_lr"], m["global_lr"])

        _, curves = jax.lax.scan(one_round, state, jax.random.split(data_key, args.rounds))
        return curves

    keys = jax.random.split(jax.random.key(args.seed), args.seeds)
    results = {}
    for name, (local_beta, global_beta) in METHODS.items():
        runs = jax.jit(
            jax.vmap(
                jax.vmap(lambda lr, k: train(lr, local_beta, global_beta, k), in_axes=(None, 0)), in_axes=(0, None)
            )
        )(jnp.asarray(GRID, jnp.float32), keys)
        loss, acc, local_lr, global_lr = (np.asarray(x) for x in runs)  # [grid, seeds, rounds]
        results[name] = {
            "test_loss": loss.mean(1),
            "test_accuracy": acc.mean(1),
            "local_lr": local_lr.mean(1),
            "global_lr": global_lr.mean(1),
        }
        finals = " ".join(f"{lr:g}:{a:.3f}" for lr, a in zip(GRID, acc.mean(1)[:, -1]))
        print(f"{task_name:10s} {name:9s} final test accuracy by initial client LR  {finals}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--per-client", type=int, default=300)
    parser.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration of the label mixes")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--poor", type=float, default=1e-3, help="the poor initial client LR of the figure and verdict")
    parser.add_argument("--out", default="results/fedhyper")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table, curves = [], {}
    poor = GRID.index(args.poor)
    for dataset in args.datasets.split(","):
        results = run(dataset, MLPSpec(dataset, (64,), "relu", args.batch), args)
        curves[dataset] = results
        best_fedavg = float(np.max(results["fedavg"]["test_accuracy"][:, -1]))
        row = {"dataset": dataset, "best_tuned_fedavg": best_fedavg}
        for name in METHODS:
            row[name] = {
                "poor_accuracy": float(results[name]["test_accuracy"][poor, -1]),
                "poor_loss": float(results[name]["test_loss"][poor, -1]),
                "accuracy_by_lr": results[name]["test_accuracy"][:, -1].tolist(),
            }
        table.append(row)
    lines = [
        f"{args.clients} clients (Dirichlet α = {args.alpha}), {args.rounds} rounds × {args.local_steps} local steps, "
        f"batch {args.batch}, {args.seeds} seeds; final global test accuracy (loss)",
        "",
        f"| dataset | FedAvg from {args.poor:g} | FedHyper from {args.poor:g} | FedAvg, best LR of the grid |",
        "|---|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['dataset']} | {r['fedavg']['poor_accuracy']:.3f} ({r['fedavg']['poor_loss']:.3f}) | "
            f"{r['fedhyper']['poor_accuracy']:.3f} ({r['fedhyper']['poor_loss']:.3f}) | {r['best_tuned_fedavg']:.3f} |"
        )
    wins = sum(r["fedhyper"]["poor_accuracy"] > r["fedavg"]["poor_accuracy"] for r in table)
    lines += ["", f"FedHyper beats FedAvg from initial LR {args.poor:g} on {wins} of {len(table)} datasets"]
    write(out, "fedhyper", lines, table, lambda path: plot(curves, path, poor))


def plot(curves: dict, path: Path, poor: int) -> None:
    fig, axes = pyplot().subplots(2, len(curves), figsize=(5.5 * len(curves), 7), squeeze=False)
    for i, (dataset, results) in enumerate(curves.items()):
        for j, style in zip((max(poor - 1, 0), poor), (":", "-")):
            for name, color in (("fedavg", "C0"), ("fedhyper", "C1")):
                axes[0][i].plot(results[name]["test_accuracy"][j], style, color=color, label=f"{name} from {GRID[j]:g}")
                axes[1][i].plot(results[name]["local_lr"][j], style, color=color, label=f"{name} from {GRID[j]:g}")
        best = int(np.argmax(results["fedavg"]["test_accuracy"][:, -1]))
        axes[0][i].plot(results["fedavg"]["test_accuracy"][best], color="grey", label=f"fedavg, best LR {GRID[best]:g}")
        axes[0][i].set(title=f"{dataset}: global test accuracy", xlabel="round")
        axes[1][i].set(title="client learning rate at the round's start", xlabel="round", yscale="log")
        for ax in axes[:, i]:
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
