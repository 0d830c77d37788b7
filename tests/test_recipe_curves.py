"""benchmarks/recipe_curves.py --chain: a run's stages on one outer-step axis."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "recipe_curves.py"


def _module():
    spec = importlib.util.spec_from_file_location("recipe_curves", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_stages_are_shifted_and_a_rescored_step_is_kept_once(tmp_path):
    chained = _module().chained
    first = _log(
        tmp_path / "a.jsonl",
        [{"step": 0, "validation_score": -1.0}, {"step": 20, "meta_loss": 0.5}, {"step": 40, "validation_score": -1.5}],
    )
    # stage 2 starts from stage 1's theta at step 40 (scored there) or at step 50 (not scored)
    second = [
        {"step": 0, "validation_score": -1.6},
        {"step": 20, "meta_loss": 0.25},
        {"step": 30, "validation_score": -2.0},
    ]
    second_log = _log(tmp_path / "b.jsonl", second)

    rows, losses = chained([first, second_log], [0, 40])
    assert [(r["step"], r["validation_score"]) for r in rows] == [(0, -1.0), (40, -1.5), (70, -2.0)]
    assert [(r["step"], r["meta_loss"]) for r in losses] == [(20, 0.5), (60, 0.25)]

    rows, _ = chained([first, second_log], [0, 50])
    assert [(r["step"], r["validation_score"]) for r in rows] == [(0, -1.0), (40, -1.5), (50, -1.6), (80, -2.0)]


def test_offsets_must_match_the_logs(tmp_path):
    log = _log(tmp_path / "a.jsonl", [{"step": 0, "validation_score": -1.0}])
    with pytest.raises(SystemExit, match="--offsets has 1 values for 2 logs"):
        _module().chained([log, log], [0])
