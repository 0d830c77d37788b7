"""Where a step of the batched interpreter (`run_encoded`) spends its time, by taking parts away:

    full        the interpreter as it runs in a search
    shared      every program reads the same argument registers (a dynamic slice of the
                register file instead of a per-program gather)
    add-only    every slot computes only `add` (no function groups, no select among them)
    bare        both: the scan, the register file and its writes alone
    floor       AdamW written directly

Shapes as in a GPU search's training call (programs × runs × parameters, vmapped).

    python benchmarks/interpreter_anatomy.py --programs 128 --runs 10 --params 9026 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from interpreter_step import population, time_step  # noqa: E402
from search_throughput import adamw_step  # noqa: E402

from lopt.programs import batched  # noqa: E402
from lopt.programs.batched import MAX_ARGS, NUM_INPUTS, ROUND, _gather_args, _slot_output, scan_rounds  # noqa: E402


def variant(shared_refs: bool, add_only: bool):
    """run_encoded (`scan_rounds`) with the gather and/or the function groups taken away."""

    def read(registers, program, s):
        if not shared_refs:
            return _gather_args(registers, program, s)
        # the same registers for every program: a dynamic slice, not batched under vmap
        return jnp.stack(
            [
                jax.lax.dynamic_index_in_dim(registers, (7 * (MAX_ARGS * s + a)) % (NUM_INPUTS + s), keepdims=False)
                for a in range(MAX_ARGS)
            ]
        )

    def compute(group, args, program, s, sizes):
        return args[0] + args[1] if add_only else _slot_output(group, args, program, s, sizes)

    return lambda *arguments: scan_rounds(*arguments, read=read, compute=compute)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=16)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--params", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    programs = population(args.programs, args.rounds)
    print(
        f"anatomy of one step on {jax.devices()[0].device_kind}: {args.programs} programs × {args.runs} runs × "
        f"{args.params:,} parameters, {args.rounds} rounds of {len(ROUND)} slots"
    )
    steps = {
        "full": batched.run_encoded,
        "shared": variant(True, False),
        "add-only": variant(False, True),
        "bare": variant(True, True),
        "floor": adamw_step,
    }
    for name, step in steps.items():
        compile_s, ms = time_step(step, programs, args.runs, args.params, args.repeats)
        print(f"  {name:9s} step {ms:8.3f} ms  (compile {compile_s:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
