"""Score program files again on a search config's proxies, with more seeds and keys the search
never used: is a search's improvement over its seed larger than the proxies' seed noise?

A search ranks children by a median over `fitness.seeds` runs (2 in the shipped configs), and
on Muon-class programs two proxy runs of 1,000 steps amplify rounding differences: the same
seed program scored −3.956, −3.818 and −3.832 under three interpreter batchings on the CPU
(docs/program_search.md). This scores each file with `--seeds` runs from the key `--key-seed`,
one compile per program (the `jit` interpreter) and no hurdle. It prints one JSON line per
program: the fitness (mean over tasks of log(best-rate median loss)), the per-task scores, and
the fitness of each half of the seeds, whose gap is a direct look at the noise.

    python benchmarks/rescore_programs.py configs/search/cpu-muon.toml seed.txt best.txt --seeds 6 --key-seed 7
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from lopt.config import load_config
from lopt.meta_train.search.config import SearchConfig
from lopt.meta_train.search.fitness import evaluator
from lopt.meta_train.search.scoring import score, task_scores
from lopt.programs.analysis import check
from lopt.programs.lang import parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the search config whose fitness section scores the programs")
    parser.add_argument("programs", nargs="+", type=Path, help="program text files")
    parser.add_argument("--seeds", type=int, default=6, help="runs per rate (even: the halves are compared)")
    parser.add_argument("--key-seed", type=int, default=7, help="fitness.seed for these runs (the search's is 0)")
    args = parser.parse_args()
    if args.seeds < 2 or args.seeds % 2:
        raise SystemExit(f"--seeds must be an even number of at least 2, got {args.seeds}")
    config = load_config(
        SearchConfig,
        args.config,
        [
            "fitness.interpreter='jit'",
            "fitness.hurdle=0.0",
            f"fitness.seeds={args.seeds}",
            f"fitness.seed={args.key_seed}",
        ],
    )
    evaluate = evaluator(config.fitness)
    half = args.seeds // 2
    for path in args.programs:
        graph = check(parse(path.read_text()), config.search.max_statements)
        begin = time.perf_counter()
        losses = evaluate.losses([graph])[0]  # [tasks, lrs, seeds]
        record = {
            "program": str(path),
            "fitness": float(score(losses)),
            "per_task": task_scores(losses).tolist(),
            "halves": [float(score(losses[..., :half])), float(score(losses[..., half:]))],
            "seconds": round(time.perf_counter() - begin, 1),
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
