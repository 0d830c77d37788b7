"""One optimizer step of a population of programs, by interpreter: the scan over rounds with a
register file (`run_encoded`), the unrolled step with registers as values (`run_unrolled`), the
Pallas kernel (`run_kernel`, on programs without tree-level statements; 'kernel-tree': with its tree
passes on the mixed population; a GPU), and AdamW written directly (the floor). No task: this
isolates what interpretation costs per step, at the shape of a GPU search's training call (programs
× runs × parameters), and the compile time of each number of rounds.

    python benchmarks/interpreter_step.py --programs 128 --runs 10 --params 8900 --rounds 2 3 4
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from search_throughput import adamw_step, children  # noqa: E402

from lopt.programs.batched import encode, rounds_needed, run_encoded, run_unrolled, stack_encoded  # noqa: E402
from lopt.programs.kernel import run_kernel, uses_tree  # noqa: E402


def population(count: int, rounds: int, tree: bool = True):
    """`count` children of the AdamW seed that fit in `rounds` rounds (without tree-level
    statements unless `tree`), encoded with exactly that many."""
    graphs, trial = [], 0
    while len(graphs) < count:
        batch = [g for g in children(64, 1000 + trial) if rounds_needed(g) <= rounds and (tree or not uses_tree(g))]
        graphs += batch[: count - len(graphs)]
        trial += 1
    return jax.tree.map(jnp.asarray, stack_encoded([encode(g, rounds) for g in graphs]))


def time_step(step, programs, runs: int, params: int, repeats: int) -> tuple[float, float]:
    """(compile seconds, milliseconds per step) of `step` vmapped over programs and runs."""
    count = programs.op.shape[0]
    sizes = (params // 4, params - params // 4)
    keys = jax.random.split(jax.random.key(0), 4)
    w, g, m, v = (jax.random.normal(k, (count, runs, params)) for k in keys)
    one = lambda p, w, g, m, v: step(p, w, g, m, v, jnp.float32(0.1), jnp.float32(3.0), sizes)  # noqa: E731
    fn = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0, 0, 0, 0))))
    start = time.perf_counter()
    compiled = fn.lower(programs, w, g, m, v).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(programs, w, g, m, v))
    start = time.perf_counter()
    for _ in range(repeats):
        out = compiled(programs, w, g, m, v)
    jax.block_until_ready(out)
    return compile_s, (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=32)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--params", type=int, default=2000)
    parser.add_argument("--rounds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--interpreters",
        nargs="+",
        default=["scan", "unrolled", "floor"],
        choices=["scan", "unrolled", "kernel", "kernel-tree", "floor"],
    )
    parser.add_argument("--kernel-blocks", type=int, nargs="+", default=[256], help="block sizes to time the kernel at")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    print(
        f"one step on {jax.devices()[0].device_kind}: "
        f"{args.programs} programs × {args.runs} runs × {args.params:,} parameters"
    )
    results = []
    for rounds in args.rounds:  # the kernel runs the population without tree-level statements
        mixed, elementwise = population(args.programs, rounds), population(args.programs, rounds, tree=False)
        for name, step in (
            ("scan", run_encoded),
            ("unrolled", run_unrolled),
            ("kernel", run_kernel),
            ("kernel-tree", functools.partial(run_kernel, tree=True)),
            ("floor", adamw_step),
        ):
            if name not in args.interpreters:
                continue
            programs = elementwise if name == "kernel" else mixed
            for block in args.kernel_blocks if name.startswith("kernel") else [None]:
                timed = functools.partial(step, block=block) if block else step
                compile_s, ms = time_step(timed, programs, args.runs, args.params, args.repeats)
                label = f"{name} {block}" if block else name
                results.append({"rounds": rounds, "interpreter": label, "compile_s": compile_s, "step_ms": ms})
                print(f"  {rounds} rounds  {label:12s} compile {compile_s:6.1f} s   step {ms:8.3f} ms", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
