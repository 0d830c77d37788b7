"""W2 (docs/benchmarks.md): meta-training throughput with PES, plus plain inner-training throughput.

Task: 8×8×1 images flattened → Dense(32) → ReLU → Dense(10), softmax cross-entropy, 2,410
parameters, batch 128, on synthetic N(0, 1) images with uniform labels (and on the embedded
digits with --real). Learned optimizer: the per-parameter MLP, hidden 32×2. PES, σ = 0.01,
antithetic, truncation 10, horizon 100 with random initial offsets. One outer step of a
population of P tasks = P × 2 arms × 10 inner steps. Reports inner steps per second (median of
interleaved repetitions after a warm-up) per population size.

Also: inner-training throughput of the same task with optax.adam (one `lax.scan` per run, a
population of runs under `vmap`), for the foundation's closing note.

    python benchmarks/meta_train_throughput.py --populations 8,64
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.learned import native, small_mlp
from lopt.meta_train.estimators import make_estimator
from lopt.meta_train.sharding import population_mesh, replicate, shard_population
from lopt.meta_train.truncation import TruncationSchedule
from lopt.tasks import ClassificationTask, MLPSpec, build, train
from lopt.tasks.datasets import ClassificationData


def w2_task(real: bool) -> ClassificationTask:
    spec = MLPSpec("digits", (32,), "relu", 128)
    if real:
        return build(spec)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=4096).astype(np.int32)
    data = ClassificationData(
        jnp.asarray(x), jnp.asarray(y), jnp.asarray(x[:512]), jnp.asarray(y[:512]), name="synthetic", num_classes=10
    )
    return ClassificationTask(data, spec)


def pes_throughput(task, population: int, reps: int, steps: int, meta_optimizer=None) -> float:
    """Inner steps per second of PES on `task`, the population spread over every local device
    (as `lopt meta-train` does with run.shard_population)."""
    meta_optimizer = meta_optimizer or small_mlp()
    mesh = population_mesh(population)
    estimator = make_estimator(
        "pes",
        meta_optimizer,
        task,
        TruncationSchedule(10, 100, 100, "constant"),
        num_workers=population,
        sigma=0.01,
        mesh=mesh,
    )
    theta = meta_optimizer.init_meta(jax.random.key(0))
    state = shard_population(estimator.init(jax.random.key(1), theta), mesh)
    theta = replicate(theta, mesh)
    grad, state, _ = estimator.step(jax.random.key(2), theta, state)  # compile + warm-up
    jax.block_until_ready(grad)
    times = []
    for r in range(reps):
        start = time.perf_counter()
        for i in range(steps):
            grad, state, _ = estimator.step(jax.random.key(100 * r + i), theta, state)
        jax.block_until_ready((grad, state))
        times.append((time.perf_counter() - start) / steps)
    return estimator.inner_steps_per_step / statistics.median(times)


def inner_throughput(task, population: int, num_steps: int = 1000) -> float:
    run = jax.jit(jax.vmap(lambda k: train(task, optax.adam(1e-3), k, num_steps=num_steps).train_loss))
    keys = jax.random.split(jax.random.key(0), population)
    jax.block_until_ready(run(keys))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(run(keys))
        times.append(time.perf_counter() - start)
    return population * num_steps / statistics.median(times)


def step_split(task, runs: int = 8, steps: int = 10, reps: int = 100) -> dict[str, float]:
    """Microseconds per step of `runs` vmapped runs (one device, a `steps`-step scan) with the
    task and, in turn, SGD, Adam, a learned optimizer with a 1-unit network (its features alone)
    and the 32×2 one: where an inner step of W2 goes, apart from PES. Every run shares θ here;
    inside PES each antithetic arm has its own."""
    keys = jax.random.split(jax.random.key(1), runs)

    def timed(tx) -> float:
        run = jax.jit(jax.vmap(lambda k: train(task, tx, k, num_steps=steps).train_loss))
        jax.block_until_ready(run(keys))
        start = time.perf_counter()
        for _ in range(reps):
            out = run(keys)
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / reps / steps * 1e6

    # the 1-unit network in the same kernel as the full one, so the difference is the network's
    kernel = "native" if jax.default_backend() == "cpu" and native.available() else "auto"
    tiny, full = small_mlp(hidden_sizes=(1,), kernel=kernel), small_mlp()
    return {
        "task + sgd": timed(optax.sgd(0.01)),
        "task + adam": timed(optax.adam(1e-3)),
        "task + learned, 1-unit network (features)": timed(
            tiny.transform(tiny.init_meta(jax.random.key(0)), num_steps=100)
        ),
        "task + learned, 32×2 network": timed(full.transform(full.init_meta(jax.random.key(0)), num_steps=100)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--populations", default="8")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--real", action="store_true", help="embedded digits instead of synthetic data")
    parser.add_argument("--inner-populations", default="1,8")
    parser.add_argument("--split", action="store_true", help="also: where an inner step goes (task, features, network)")
    args = parser.parse_args()
    first = jax.devices()[0]
    device = f"{first.platform}: {first.device_kind} (jax {jax.__version__}, {len(jax.devices())} device(s))"
    task = w2_task(args.real)
    data = "embedded digits" if args.real else "synthetic N(0,1)"
    if jax.default_backend() == "cpu":
        device += f"; native kernel: {'on' if native.available() else 'off'}, AMX {native.amx()}"
    print(
        f"W2 PES meta-training throughput on {device}, {data}; "
        "reference (learned_optimization, 2-core CPU): 7,600 inner steps/s"
    )
    print("| population | inner steps / s | × reference |")
    print("|---:|---:|---:|")
    for population in map(int, args.populations.split(",")):
        rate = pes_throughput(task, population, args.reps, args.steps)
        print(f"| {population} | {rate:,.0f} | {rate / 7600:.2f} |", flush=True)
    print(f"\ninner training with optax.adam (lax.scan, vmapped runs), {data}:")
    print("| runs | inner steps / s |")
    print("|---:|---:|")
    for population in map(int, args.inner_populations.split(",")):
        print(f"| {population} | {inner_throughput(task, population):,.0f} |", flush=True)
    if args.split:
        print("\nwhere a step goes, 8 vmapped runs on one device (µs per step of all 8):")
        for name, micros in step_split(task).items():
            print(f"  {name:45s} {micros:8.1f}")


if __name__ == "__main__":
    main()
