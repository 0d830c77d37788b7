"""Head-to-head counts of the rows of one `lopt eval` report against the rows of another, run
under the same protocol: for a new learned optimizer evaluated alone (`--set "optimizers=[]"`)
against baselines whose sweeps an earlier report already holds, when that report's run cache is
gone. Several new reports (one per task, say) are read as one. Every report's `results.json` must
agree with the reference's on num_steps, eval_every, seeds and seed (the runs' keys derive from
them), else the script stops and says which differs.

    python benchmarks/heldout_against.py results/new/*/results.json \\
        --reference docs/figures/program_cosine_2026-12-07/joint-lr10-11tasks/results.json \\
        --against adamw_cosine,lion_cosine,muon_cosine,adam

It prints, per task, each row's final train / test loss (means over seeds, at the LR tuned on
train loss), then, for every row of the first report, on how many of the shared tasks it has
the lower mean final train loss and the lower mean final test loss than each `--against` row
(a diverged run loses, as in `lopt eval`'s head-to-head tables).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lopt.eval.report import beats

PROTOCOL = ("num_steps", "eval_every", "seeds", "seed")


def _cells(path: Path) -> tuple[dict, dict[tuple[str, str], dict]]:
    payload = json.loads(path.read_text())
    cells = {(c["task"], c["optimizer"]): c for c in payload["cells"]}
    return payload["config"], cells


def _value(cell: dict, key: str) -> float:
    value = cell.get(key)
    return float("nan") if value is None else float(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("new", type=Path, nargs="+", help="results.json files whose rows are counted")
    parser.add_argument("--reference", type=Path, required=True, help="results.json holding the rows to count against")
    parser.add_argument("--against", required=True, help="comma-separated optimizer rows of the reference")
    args = parser.parse_args(argv)
    ref_config, ref = _cells(args.reference)
    new: dict[tuple[str, str], dict] = {}
    for path in args.new:
        new_config, cells = _cells(path)
        differ = [k for k in PROTOCOL if new_config.get(k) != ref_config.get(k)]
        if differ:
            print(
                f"heldout_against: {path} and the reference differ in "
                + ", ".join(f"{k} ({new_config.get(k)} vs {ref_config.get(k)})" for k in differ),
                file=sys.stderr,
            )
            return 2
        new.update(cells)
    against = [a.strip() for a in args.against.split(",") if a.strip()]
    # the rows counted are the new report's own; rows the reference holds too (adam, which every
    # lopt eval adds) are only compared, below
    in_reference = {o for _, o in ref}
    rows = [o for o in dict.fromkeys(o for _, o in new) if o not in against and o not in in_reference]
    tasks = [
        t
        for t in dict.fromkeys(t for t, _ in new)
        if all((t, a) in ref for a in against) and all((t, r) in new for r in rows)
    ]
    missing = sorted({a for a in against if not any((t, a) in ref for t in tasks)})
    if not tasks or missing:
        print(f"heldout_against: no shared task holds every row of --against (missing: {missing})", file=sys.stderr)
        return 2
    # rows run in both (e.g. adam, the reference every lopt eval adds) say whether the two agree
    shared = [(k, new[k], ref[k]) for k in new if k in ref and k[0] in tasks]
    if shared:
        worst = max(
            abs(_value(a, "final_train_mean") - _value(b, "final_train_mean"))
            / max(abs(_value(b, "final_train_mean")), 1e-30)
            for _, a, b in shared
        )
        print(
            f"{len(shared)} cells are in both reports; largest relative difference of their train loss: {worst:.2g}\n"
        )
    header = ["task", *rows, *against]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for task in tasks:
        cells = [new[(task, r)] for r in rows] + [ref[(task, a)] for a in against]
        texts = [f"{_value(c, 'final_train_mean'):.3g} / {_value(c, 'final_eval_mean'):.3g}" for c in cells]
        print(f"| {task} | " + " | ".join(texts) + " |")
    print(f"\n(final train / test loss, means over {new_config['seeds']} seeds; {len(tasks)} tasks)\n")
    for row in rows:
        print(f"| {row} against | wins by train loss | wins by test loss |")
        print("|---|---:|---:|")
        for other in against:
            train, test = (
                sum(beats(_value(new[(t, row)], key), _value(ref[(t, other)], key)) for t in tasks)
                for key in ("final_train_mean", "final_eval_mean")
            )
            print(f"| {other} | {train} of {len(tasks)} | {test} of {len(tasks)} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
