"""Bad input through the `lopt` command (issue 17 (7)): every case below exits 2 with one line
on stderr naming the problem, before any work — no traceback, no output folder."""

from __future__ import annotations

import json
import os

import pytest

from lopt.cli import main

META_TRAIN = [
    'estimator.kind="reinforce"',
    'estimator.schedule="cosine"',
    "estimator.sigma=0",
    "estimator.sigma=-1",
    "estimator.num_workers=0",
    "estimator.truncation_length=0",
    "estimator.min_horizon=5",
    "estimator.max_horizon=1",
    'estimator.meta_objective="sqrt"',
    'estimator.meta_loss_split="val"',
    "estimator.divergence_factor=0.5",
    'tasks.family="nope"',
    'tasks.family_options={datasets=["nope"]}',
    'tasks.family_options={widths="x"}',
    "tasks.family_options={colour=3}",
    'tasks.names=["nope-task"]',
    "tasks.num_groups=0",
    "tasks.lifetime=-2",
    'run.eval_task="nope-task"',
    'run.validation_tasks=["x"]',
    "run.eval_steps=0",
    "run.eval_every=-1",
    "run.log_every=0",
    "run.checkpoint_every=0",
    "outer.seed=99999999999999999999",
    "outer.seed=-1",
    "outer.learning_rate=nan",
    "outer.learning_rate=inf",
    "outer.clip=0",
    "outer.steps=0",
    'optimizer.preset="adamw"',
    "optimizer.options={hidden_sizes=[0]}",
    "optimizer.options={hiden=3}",
    'optimizer.init_from="/nonexistent"',
    "run.time_limit_s=-5",
    "unknown.key=1",
    "estimator=3",
    "tasks.augment={tensor_log10=9}",
    "tasks.augment={colour=1}",
    "run=[]",
]
EVAL = [
    'suite="nope"',
    'optimizers=["nope"]',
    'learned=["/nonexistent"]',
    "num_steps=0",
    "eval_every=7",
    "seeds=0",
    'tasks=["nope*x"]',
    'tasks=["nope"]',
    "colour=1",
    'optimizers=["adam", "adam"]',
    'tasks=["digits-mlp-relu32", "digits-mlp-relu32"]',
]
SEARCH = [
    "fitness.seeds=0",
    "fitness.steps=-1",
    "fitness.tasks=[]",
    'fitness.tasks=["nope"]',
    'funnel.tasks=["nope"]',
    "search.population=0",
    'search.strategy="annealing"',
    "fitness.lr_multipliers=[]",
    'fitness.interpreter="kernal"',
    "fitness.hurdle=-1",
]


def run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, code, err)
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("override", META_TRAIN)
def test_bad_meta_train_override(tmp_path, capsys, override):
    run(
        [
            "meta-train",
            "configs/meta_train/quickstart.toml",
            "--quiet",
            "--set",
            override,
            "--set",
            f"run.output_dir={json.dumps(str(tmp_path / 'run'))}",
        ],
        capsys,
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", EVAL)
def test_bad_eval_override(tmp_path, capsys, override):
    run(
        [
            "eval",
            "configs/eval/quickstart.toml",
            "--quiet",
            "--set",
            override,
            "--set",
            f"output_dir={json.dumps(str(tmp_path / 'out'))}",
        ],
        capsys,
    )


@pytest.mark.parametrize("override", SEARCH)
def test_bad_search_override(tmp_path, capsys, override):
    run(
        [
            "search",
            "configs/search/quickstart.toml",
            "--quiet",
            "--set",
            override,
            "--set",
            f"run.output_dir={json.dumps(str(tmp_path / 'search'))}",
        ],
        capsys,
    )
    assert not (tmp_path / "search").exists()


HPO = [
    'method="bayes"',
    'dataset="cifar"',
    "steps=0",
    "hidden=[]",
    "start_dropout=0.99",
    "start_weight_decay=0",
    "start_label_smoothing=1.5",
    "hyper_learning_rate=-1",
    'hyper_schedule="linear"',
    "fixed_fraction=1.0",
    "checkpoint_every=-1",
    "train_examples=1400",
    "augment=true",
    "colour=3",
]


@pytest.mark.parametrize("override", HPO)
def test_bad_hpo_override(tmp_path, capsys, override):
    run(
        [
            "hpo",
            "configs/hpo/stn-digits.toml",
            "--set",
            override,
            "--set",
            f"output_dir={json.dumps(str(tmp_path / 'h'))}",
        ],
        capsys,
    )
    assert not (tmp_path / "h").exists() or list((tmp_path / "h").iterdir()) == [(tmp_path / "h" / ".lopt-job")]


@pytest.mark.parametrize(
    "command,config,key",
    [
        ("meta-train", "configs/meta_train/quickstart.toml", "run.output_dir"),
        ("eval", "configs/eval/quickstart.toml", "output_dir"),
        ("search", "configs/search/quickstart.toml", "run.output_dir"),
        ("hpo", "configs/hpo/stn-digits.toml", "output_dir"),
    ],
)
def test_an_empty_output_folder_is_refused_not_the_working_directory(
    tmp_path, capsys, monkeypatch, command, config, key
):
    monkeypatch.chdir(tmp_path)
    assert key in run([command, os.path.join(os.path.dirname(__file__), "..", config), "--set", f'{key}=""'], capsys)
    assert list(tmp_path.iterdir()) == []


def test_bad_files_and_folders(tmp_path, capsys):
    binary = tmp_path / "bad.toml"
    binary.write_bytes(b"\xff\xfe[outer]")
    assert "UTF-8" in run(["meta-train", str(binary)], capsys)
    run(["meta-train", str(tmp_path / "missing.toml")], capsys)
    run(["meta-train", "configs/meta_train/quickstart.toml", "--set", "run.output_dir=5"], capsys)
    run(["search", "--resume", str(tmp_path)], capsys)
    run(["info", str(tmp_path / "missing")], capsys)
    run(["program", "check", str(tmp_path / "missing.txt")], capsys)


def test_cli_exposes_one_cpu_device_per_core_unless_xla_flags_set_a_count():
    from lopt.cli import HOST_DEVICE_FLAG, split_host_cpus

    environ = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"}
    split_host_cpus(environ)
    cores = len(os.sched_getaffinity(0))
    if cores > 1:
        assert environ["XLA_FLAGS"] == f"--xla_cpu_multi_thread_eigen=true {HOST_DEVICE_FLAG}={min(cores, 8)}"
    kept = {"XLA_FLAGS": f"{HOST_DEVICE_FLAG}=3"}
    split_host_cpus(kept)
    assert kept == {"XLA_FLAGS": f"{HOST_DEVICE_FLAG}=3"}


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip"])
def test_damaged_checkpoint_arrays_are_one_line(tmp_path, capsys, damage):
    """Issue 17 (7): orbax/TensorStore errors carry whole multi-line specs; the CLI prints one
    short line naming the checkpoint, whatever happened to the array files."""
    import shutil

    shutil.copytree("checkpoints/small-mlp-pes-h100", tmp_path / "ckpt")
    chunk = sorted((tmp_path / "ckpt" / "theta" / "ocdbt.process_0" / "d").iterdir())[0]
    data = chunk.read_bytes()
    if damage == "truncate":
        chunk.write_bytes(data[:10])
    elif damage == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :])
    err = run(["info", str(tmp_path / "ckpt")], capsys)
    assert str(tmp_path / "ckpt" / "theta") in err and len(err) < 400, err
    err = run(
        [
            "eval",
            "configs/eval/quickstart.toml",
            "--quiet",
            "--set",
            f"learned=[{json.dumps(str(tmp_path / 'ckpt'))}]",
            "--set",
            f"output_dir={json.dumps(str(tmp_path / 'out'))}",
        ],
        capsys,
    )  # warnings included
    assert "learned:" in err and "never awaited" not in err, err
