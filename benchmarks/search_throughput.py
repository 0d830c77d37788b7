"""Program-search throughput: programs evaluated per second by the batched interpreter (a
population encoded as arrays, one compiled call) and by one jit per program (`to_optax`).

Workload: children of the paper's AdamW seed (random valid mutations, 1-4 per child, as a
search produces them), each trained on the embedded proxy `digits-mlp-relu32` (2,410
parameters) for `--steps` steps over `--seeds` seeds × 3 LR multipliers, scored as the search
scores them. Times include compilation (the batched interpreter compiles once per encoding
length; the per-program path compiles every program), measured after one warm-up batch.

    python benchmarks/search_throughput.py --programs 64 --batch 64 --steps 150
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from lopt.programs import seed
from meta_train.search import mutation
from meta_train.search.fitness import BatchedEvaluator, FitnessSpec, JitEvaluator


def children(count: int, rng_seed: int) -> list:
    rng = np.random.default_rng(rng_seed)
    graphs = []
    for _ in range(count):
        program = seed("adamw_paper")
        for _ in range(int(rng.integers(1, 5))):
            program, _, graph, _ = mutation.mutate(program, rng, "all", 24)
        graphs.append(graph)
    return graphs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="programs per batched call")
    parser.add_argument("--jit-programs", type=int, default=8, help="programs timed through one jit each")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    spec = FitnessSpec(tasks=("digits-mlp-relu32",), steps=args.steps, seeds=args.seeds, batch=args.batch, length=32)
    device = jax.devices()[0].device_kind
    batched = BatchedEvaluator(spec)
    batched.losses(children(args.batch, 999))  # warm-up: compile the common encoding lengths
    batched.losses(children(args.batch, 998))
    graphs = children(args.programs, 0)
    start = time.perf_counter()
    batched.losses(graphs)
    batched_rate = len(graphs) / (time.perf_counter() - start)
    jitted = JitEvaluator(spec)
    jitted.losses(children(1, 997))  # warm-up of the tracing machinery
    subset = graphs[: args.jit_programs]
    start = time.perf_counter()
    jitted.losses(subset)
    jit_rate = len(subset) / (time.perf_counter() - start)
    runs = args.seeds * len(spec.lr_multipliers)
    result = {
        "device": device, "steps": args.steps, "runs_per_program": runs,
        "batched_programs_per_s": batched_rate, "jit_programs_per_s": jit_rate,
        "batched_inner_steps_per_s": batched_rate * runs * args.steps,
        "jit_inner_steps_per_s": jit_rate * runs * args.steps,
        "batched_over_jit": batched_rate / jit_rate,
    }
    print(f"search throughput on {device}: {args.steps} steps × {runs} runs per program")
    print(f"  batched interpreter ({args.programs} programs, batch {args.batch}): {batched_rate:8.2f} programs/s "
          f"({result['batched_inner_steps_per_s']:,.0f} inner steps/s)")
    print(f"  one jit per program ({len(subset)} programs):       {jit_rate:8.2f} programs/s "
          f"({result['jit_inner_steps_per_s']:,.0f} inner steps/s)")
    print(f"  batched / jit: {result['batched_over_jit']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
