"""What one population call of a program search costs, per proxy task: the scan interpreter, the
Pallas kernel (programs without tree-level statements) and the floor (AdamW written directly,
with its learning rate read from the program so that `vmap` keeps one run per program: a step
that ignores the program is computed once per batch and broadcast), each with the conv nets'
convolution as im2col slices and a matmul (`tasks.models.patch_conv`, the default) and as
`lax.conv_general_dilated` (a grouped convolution under `vmap`).

    python benchmarks/proxy_cost.py --config configs/search/gpu.toml --programs 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
from jax import lax

sys.path.insert(0, str(Path(__file__).parent))
from search_throughput import adamw_step, children  # noqa: E402

from lopt import tasks  # noqa: E402
from lopt.config import load_config  # noqa: E402
from lopt.programs.kernel import uses_tree  # noqa: E402
from lopt.meta_train.search.config import SearchConfig  # noqa: E402
from lopt.meta_train.search.fitness import BatchedEvaluator  # noqa: E402


def time_call(evaluator: BatchedEvaluator, graphs, task: int, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, with its compile; seconds per later call)."""
    start = time.perf_counter()
    evaluator._task_losses(graphs, task)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        evaluator._task_losses(graphs, task)
    return first, (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/search/gpu.toml")
    parser.add_argument("--programs", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--variants", nargs="+", default=["scan", "kernel", "floor"], choices=["scan", "kernel", "floor"]
    )
    parser.add_argument("--convs", nargs="+", default=["patches", "lax"], choices=["patches", "lax"])
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    spec = load_config(SearchConfig, args.config, []).fitness
    graphs = [g for g in children(4 * args.programs, 0) if not uses_tree(g)][: args.programs]
    runs = len(spec.lr_multipliers) * spec.seeds
    print(
        f"one population call on {jax.devices()[0].device_kind}: {len(graphs)} programs without tree-level statements "
        f"× {runs} runs (padded to the batch of {spec.batch})"
    )
    results = []
    for conv in args.convs:
        tasks.models.CONV = tasks.models.patch_conv if conv == "patches" else lax.conv_general_dilated
        for variant in args.variants:
            evaluator = (
                BatchedEvaluator(spec, kernel=True)
                if variant == "kernel"
                else BatchedEvaluator(spec, adamw_step)
                if variant == "floor"
                else BatchedEvaluator(spec)
            )
            for task, name in enumerate(spec.tasks):
                if conv == "lax" and "conv" not in name:
                    continue
                first, seconds = time_call(evaluator, graphs, task, args.repeats)
                steps = len(graphs) * runs * spec.task_steps(name)
                results.append(
                    {
                        "task": name,
                        "conv": conv,
                        "variant": variant,
                        "first_s": first,
                        "call_s": seconds,
                        "inner_steps_per_s": steps / seconds,
                    }
                )
                print(
                    f"  {name:26s} conv {conv:7s} {variant:6s}  first call {first:6.1f} s   call {seconds:7.3f} s   "
                    f"{steps / seconds:12,.0f} inner steps/s",
                    flush=True,
                )
    tasks.models.CONV = tasks.models.patch_conv
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
