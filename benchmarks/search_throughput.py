"""Program-search throughput: programs evaluated per second by the batched interpreter (a
population encoded as arrays, one compiled call) and by one jit per program (`to_optax`).

Workload: children of the paper's AdamW seed (random valid mutations, 1-4 per child, as a
search produces them), each trained on the embedded proxy `digits-mlp-relu32` (2,410
parameters) for `--steps` steps over `--seeds` seeds × 3 LR multipliers, scored as the search
scores them. Times include compilation (the batched interpreter compiles once per encoding
length; the per-program path compiles every program), measured after one warm-up batch.

    python benchmarks/search_throughput.py --programs 64 --batch 64 --steps 150

With --config (e.g. configs/search/gpu.toml): its proxies instead, the floor (the same vmapped
training loop with AdamW written directly: what the proxies cost without interpretation), and a
real search of that config for --search-seconds with where its time goes (docs/benchmarks.md, W3).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lopt.programs import seed
from lopt.programs.batched import run_unrolled
from lopt.meta_train.search import mutation
from lopt.config import load_config
from lopt.meta_train.search.config import SearchConfig
from lopt.meta_train.search.fitness import BatchedEvaluator, JitEvaluator
from lopt.meta_train.search.config import FitnessSpec
from lopt.meta_train.search.job import Search


def children(count: int, rng_seed: int) -> list:
    rng = np.random.default_rng(rng_seed)
    graphs = []
    for _ in range(count):
        program = seed("adamw_paper")
        for _ in range(int(rng.integers(1, 5))):
            program, _, graph, _ = mutation.mutate(program, rng, "all", 24)
        graphs.append(graph)
    return graphs


def adamw_step(program, w, g, m, v, lr, t, sizes):
    """The floor: AdamW (the seed's constants) written directly in the same vmapped training loop
    as the interpreter (what the proxy tasks cost without interpretation). The learning rate is
    multiplied by 1 or 2 by the sign of the program's first function number (never negative, which
    XLA cannot know): a step that ignores the program is computed once per batch and broadcast by
    `vmap`, which made an earlier floor 20-100x too fast."""
    del sizes
    lr = lr * jnp.where(program.op[0] >= 0, 1.0, 2.0)
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    update = lr * 1e-3 * ((m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8) + 0.01 * w)
    return update, m, v


def rate(evaluate, graphs) -> float:
    start = time.perf_counter()
    evaluate(graphs)
    return len(graphs) / (time.perf_counter() - start)


def interpreter_rates(spec: FitnessSpec, programs: int, unrolled: bool, kernel: bool = False) -> dict[str, float]:
    """programs/s of the batched interpreter (and with `unrolled` of the unrolled one) and of the
    floor on `spec`'s proxies, after warm-ups that compile the encoding lengths children use
    (compile seconds reported apart); with `kernel` also the Pallas kernel evaluator (programs
    with tree-level statements through its tree passes)."""
    out = {}
    evaluators = (
        [("interpreter", lambda: BatchedEvaluator(spec))]
        + [("unrolled", lambda: BatchedEvaluator(spec, run_unrolled))] * unrolled
        + [("kernel", lambda: BatchedEvaluator(spec, kernel=True))] * kernel
        + [("floor", lambda: BatchedEvaluator(spec, adamw_step))]
    )
    for name, make in evaluators:
        evaluator = make()
        start = time.perf_counter()
        for warm in (999, 998):
            evaluator.losses(children(spec.batch, warm))
        out[f"{name}_warmup_s"] = time.perf_counter() - start
        out[name] = rate(evaluator.losses, children(programs, 0))
        print(
            f"  ({name}: warm-up with compiles {out[f'{name}_warmup_s']:.1f} s, then {out[name]:.2f} programs/s)",
            flush=True,
        )
    return out


def search_rate(config_path: str, seconds: float) -> dict[str, float]:
    """A real `lopt search` (everything included) for about `seconds`: its rates and where its
    time goes (mutation, functional-hash probes, training)."""
    with tempfile.TemporaryDirectory() as folder:
        output = str(Path(folder) / "search")
        config = load_config(
            SearchConfig,
            config_path,
            [f"search.max_seconds={seconds}", f"run.output_dir={output!r}", "validation.task=''"],
        )
        search = Search(config, progress=False)
        search.run()
    return search.statistics()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="a search config: measure its proxies and run it as a real search")
    parser.add_argument("--search-seconds", type=float, default=120.0, help="0: no real search")
    parser.add_argument("--programs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="programs per batched call")
    parser.add_argument("--jit-programs", type=int, default=8, help="programs timed through one jit each")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--unrolled", action="store_true", help="also measure the unrolled interpreter")
    parser.add_argument("--kernel", action="store_true", help="also measure the Pallas kernel interpreter")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    device = jax.devices()[0].device_kind
    if args.config:
        spec = load_config(SearchConfig, args.config, []).fitness
    else:
        spec = FitnessSpec(
            tasks=("digits-mlp-relu32",), steps=args.steps, seeds=args.seeds, batch=args.batch, length=32
        )
    runs = spec.seeds * len(spec.lr_multipliers) * len(spec.tasks)
    per_program = spec.inner_steps_per_program
    rates = interpreter_rates(spec, args.programs, args.unrolled, args.kernel)
    result = {
        "device": device,
        "tasks": list(spec.tasks),
        "steps": spec.steps,
        "runs_per_program": runs,
        "batched_programs_per_s": rates["interpreter"],
        "floor_programs_per_s": rates["floor"],
        "batched_inner_steps_per_s": rates["interpreter"] * per_program,
        "floor_inner_steps_per_s": rates["floor"] * per_program,
        "warmup_s": {k[: -len("_warmup_s")]: v for k, v in rates.items() if k.endswith("_warmup_s")},
    }
    for name in ("unrolled", "kernel"):
        if getattr(args, name):
            result |= {f"{name}_programs_per_s": rates[name], f"{name}_inner_steps_per_s": rates[name] * per_program}
    print(
        f"search throughput on {device}: {', '.join(spec.tasks)}; {runs} runs per program, "
        f"{per_program:,} inner steps in all (steps per task: {spec.steps})"
    )
    print(
        f"  batched interpreter ({args.programs} programs, batch {spec.batch}): {rates['interpreter']:8.2f} programs/s "
        f"({result['batched_inner_steps_per_s']:,.0f} inner steps/s)"
    )
    for name in ("unrolled", "kernel"):
        if getattr(args, name):
            print(
                f"  {name} interpreter:{' ' * (28 - len(name))}{rates[name]:8.2f} programs/s "
                f"({result[f'{name}_inner_steps_per_s']:,.0f} inner steps/s)"
            )
    print(
        f"  floor (AdamW written directly, same loop):   {rates['floor']:8.2f} programs/s "
        f"({result['floor_inner_steps_per_s']:,.0f} inner steps/s)"
    )
    if args.config and args.search_seconds > 0:
        stats = search_rate(args.config, args.search_seconds)
        result["search"] = stats
        print(
            f"  a real search ({args.search_seconds:.0f} s): {stats['programs_per_second']:.2f} programs/s, "
            f"{stats['trained_per_second']:.2f} trained/s, {stats['hurdle_stops']} stopped at the hurdle "
            f"({stats['inner_steps_per_second']:,.0f} inner steps/s); "
            f"time: mutation {stats['share_mutate']:.0%}, probes {stats['share_probe']:.0%}, "
            f"training {stats['share_train']:.0%}; cache hits {stats['cache_hit_rate']:.0%}"
        )
    elif not args.config:
        jitted = JitEvaluator(spec)
        jitted.losses(children(1, 997))  # warm-up of the tracing machinery
        jit_rate = rate(jitted.losses, children(args.programs, 0)[: args.jit_programs])
        result |= {
            "jit_programs_per_s": jit_rate,
            "jit_inner_steps_per_s": jit_rate * per_program,
            "batched_over_jit": rates["interpreter"] / jit_rate,
        }
        print(
            f"  one jit per program ({args.jit_programs} programs):       {jit_rate:8.2f} programs/s "
            f"({result['jit_inner_steps_per_s']:,.0f} inner steps/s)"
        )
        print(f"  batched / jit: {result['batched_over_jit']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
