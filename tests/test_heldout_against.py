"""benchmarks/heldout_against.py: a new report's rows counted against an earlier report's baselines."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "heldout_against.py"
PROTOCOL = {"num_steps": 2000, "eval_every": 200, "seeds": 3, "seed": 0}


def _main():
    spec = importlib.util.spec_from_file_location("heldout_against", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _report(path: Path, cells: list[tuple[str, str, float | None, float | None]], **config) -> Path:
    path.write_text(
        json.dumps(
            {
                "config": {**PROTOCOL, **config},
                "cells": [
                    {"task": t, "optimizer": o, "final_train_mean": train, "final_eval_mean": test}
                    for t, o, train, test in cells
                ],
            }
        )
    )
    return path


def test_counts_by_train_and_test_loss_over_several_reports(tmp_path, capsys):
    reference = _report(
        tmp_path / "ref.json",
        [("a", "muon", 0.2, 0.3), ("b", "muon", 0.1, 0.1), ("c", "muon", 0.5, 0.5), ("a", "adam", 0.4, 0.4)],
    )
    # one report per task, as when each task ran alone; c's run diverged (None: not finite)
    new = [
        _report(tmp_path / "a.json", [("a", "prog", 0.1, 0.4), ("a", "adam", 0.4, 0.4)]),
        _report(tmp_path / "b.json", [("b", "prog", 0.05, 0.05)]),
        _report(tmp_path / "c.json", [("c", "prog", None, None)]),
    ]
    assert _main()([*map(str, new), "--reference", str(reference), "--against", "muon"]) == 0
    out = capsys.readouterr().out
    # train: a (0.1 < 0.2) and b win, c diverged loses; test: only b wins
    assert "| muon | 2 of 3 | 1 of 3 |" in out
    # adam ran in both reports with the same numbers
    assert "1 cells are in both reports; largest relative difference of their train loss: 0" in out


def test_reports_of_another_protocol_are_refused(tmp_path, capsys):
    reference = _report(tmp_path / "ref.json", [("a", "muon", 0.2, 0.3)])
    new = _report(tmp_path / "new.json", [("a", "prog", 0.1, 0.1)], num_steps=1000)
    assert _main()([str(new), "--reference", str(reference), "--against", "muon"]) == 2
    assert "differ in num_steps (1000 vs 2000)" in capsys.readouterr().err
