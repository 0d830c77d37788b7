"""Which tasks make a good program-search proxy? A proxy has to reward what separates AdamW from
SGD, or the search ships SGD at a tuned step size (it did, on digits and MNIST-1D MLPs).

For each task: the search's own fitness (log test loss after --steps steps, median of 2 seeds,
best over every half-decade of learning rate from 1e-5 to 1) of plain SGD, SGD with momentum,
AdamW and Lion written as programs. A task rewards adaptivity when AdamW's fitness is clearly
below SGD's. Measured on the 2-core CPU (2026-12-01), 300 steps:

    digits-mlp-relu32        sgd -2.760  sgd_momentum -2.237  adamw -2.414  lion -1.772
    mnist1d-mlp-gelu64x2     sgd -1.406  sgd_momentum -1.261  adamw -1.089  lion -0.663
    pytext-transformer-32x1  sgd  0.948  sgd_momentum  0.920  adamw  0.890  lion  0.911
    mnist1d-conv-16-32       sgd -1.289  sgd_momentum -2.077  adamw -2.133  lion -2.243
    regression-mlp-tanh64x3  sgd -1.933  sgd_momentum -2.518  adamw -2.591  lion -1.912
    digits-conv-16-32        sgd -2.608  sgd_momentum -2.844  adamw -2.876  lion -2.024

    python benchmarks/proxy_adaptivity.py --steps 300 --tasks mnist1d-conv-16-32,pytext-transformer-32x1
"""

from __future__ import annotations

import argparse
import time

from lopt.programs.analysis import check
from lopt.programs.lang import parse
from lopt.programs.seeds import seed
from lopt.meta_train.search.fitness import evaluator
from lopt.meta_train.search.config import FitnessSpec
from lopt.meta_train.search.pipeline import REFERENCE_LRS

SGD = "def train(w, g, m, v, lr):\n  update = g * lr\n  return update, m, v\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks",
        default="digits-mlp-relu32,mnist1d-mlp-gelu64x2,pytext-transformer-32x1,"
        "mnist1d-conv-16-32,regression-mlp-tanh64x3,digits-conv-16-32",
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    programs = {"sgd": parse(SGD), "sgd_momentum": seed("sgd_momentum"), "adamw": seed("adamw"), "lion": seed("lion")}
    print(
        f"search fitness (lower is better), {args.steps} steps, {args.seeds} seeds, LR tuned over {list(REFERENCE_LRS)}"
    )
    for task in args.tasks.split(","):
        start = time.perf_counter()
        spec = FitnessSpec(
            tasks=(task,), steps=args.steps, seeds=args.seeds, lr_multipliers=REFERENCE_LRS, interpreter="jit"
        )
        scores = evaluator(spec)([check(p) for p in programs.values()])
        gap = scores[0] - scores[2]
        print(
            f"{task:28s} "
            + "  ".join(f"{n} {s:.3f}" for n, s in zip(programs, scores))
            + f"  (sgd − adamw {gap:+.3f}: {'rewards adaptivity' if gap > 0.05 else 'rewards SGD'}; "
            f"{time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
