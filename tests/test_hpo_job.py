"""The `lopt hpo` job end to end, at a few steps: both methods write their table, JSON and
figure; the folder rules hold (a user's folder is refused, a rerun replaces only lopt's files)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lopt.cli import main


@pytest.mark.parametrize(
    "config,extra",
    [
        ("configs/hpo/stn-digits.toml", ["steps=40", "hidden=[16]"]),
        ("configs/hpo/stn-digits.toml", ["steps=40", "hidden=[16]", "hyper_schedule='warmup'", "fixed_fraction=0.1"]),
        ("configs/hpo/stn-digits.toml", ["steps=40", "hidden=[16]", "checkpoint_every=10"]),
        ("configs/hpo/ift-mnist1d.toml", ["steps=50", "hidden=[16]", "hyper_every=10", "neumann_terms=3"]),
    ],
)
def test_hpo_job_writes_its_results(tmp_path, capsys, config, extra):
    out = tmp_path / "hpo"
    argv = ["hpo", config, "--set", f"output_dir={json.dumps(str(out))}"]
    for override in extra:
        argv += ["--set", override]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| start |" in printed and "| tuned |" in printed
    results = json.loads((out / "results.json").read_text())
    assert all(np.isfinite(v) for part in ("start_loss", "final_loss") for v in results[part].values())
    assert (out / "hyperparameters.png").stat().st_size > 0
    assert main(argv) == 0  # a rerun into its own folder is allowed


def test_hpo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code = main(["hpo", "configs/hpo/stn-digits.toml", "--set", f"output_dir={json.dumps(str(tmp_path))}"])
    assert code == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
