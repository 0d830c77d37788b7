"""TOML configs into frozen dataclasses."""

import dataclasses
from pathlib import Path

import pytest

from lopt.eval import EvalConfig
from lopt.config import ConfigError, apply_overrides, from_dict, load_config, parse_override


def test_load_with_overrides(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('suite = "embedded-full"\nnum_steps = 100\neval_every = 10\n')
    config = load_config(EvalConfig, path, ["seeds=2", 'optimizers=["adam", "sgd"]', "output_dir=out/x"])
    assert config.suite == "embedded-full" and config.num_steps == 100 and config.seeds == 2
    assert config.optimizers == ("adam", "sgd") and config.output_dir == "out/x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seeds = 3


def test_unknown_key_is_named_with_the_file(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text("num_step = 100\n")
    with pytest.raises(ConfigError, match=r"job.toml: unknown key 'num_step'; valid keys: suite, tasks"):
        load_config(EvalConfig, path)
    with pytest.raises(ConfigError, match="unknown key 'sed'"):
        load_config(EvalConfig, tmp_path / "job.toml", ["sed=1"]) if path.write_text("") is not None else None


def test_type_errors_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"config.num_steps: expected an integer, got 'many'"):
        from_dict(EvalConfig, {"num_steps": "many"})
    with pytest.raises(ConfigError, match=r"config.optimizers\[1\]: expected a str"):
        from_dict(EvalConfig, {"optimizers": ["adam", 3]})
    with pytest.raises(ConfigError, match="must divide"):
        from_dict(EvalConfig, {"num_steps": 100, "eval_every": 7})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(EvalConfig, tmp_path / "missing.toml")
    (tmp_path / "broken.toml").write_text("suite = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(EvalConfig, tmp_path / "broken.toml")


def test_nested_dataclasses_and_overrides():
    @dataclasses.dataclass(frozen=True)
    class Inner:
        rate: float = 0.1

    @dataclasses.dataclass(frozen=True)
    class Outer:
        inner: Inner = Inner()
        name: str = "x"

    config = from_dict(Outer, apply_overrides({"inner": {"rate": 1}}, ["inner.rate=2e-3"]))
    assert config.inner == Inner(2e-3)
    with pytest.raises(ConfigError, match=r"config.inner: unknown key 'rte'"):
        from_dict(Outer, {"inner": {"rte": 1.0}})
    assert parse_override("a.b=hello world") == (["a", "b"], "hello world")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")


@pytest.mark.parametrize(
    "path",
    sorted(str(p) for p in Path(__file__).resolve().parents[1].glob("configs/*/*.toml")),
    ids=lambda p: "/".join(Path(p).parts[-2:]),
)
def test_every_shipped_config_parses(path):
    """Each config in configs/ loads into its job's dataclass (an edited default, say the GPU
    search's children against its population, fails here rather than on the device)."""
    from lopt.eval.hpo import HPOConfig
    from lopt.meta_train.config import MetaTrainConfig
    from lopt.meta_train.search.config import SearchConfig

    kinds = {"eval": EvalConfig, "meta_train": MetaTrainConfig, "search": SearchConfig, "hpo": HPOConfig}
    kind = kinds[Path(path).parent.name]
    config = load_config(kind, path)
    assert dataclasses.is_dataclass(config)
