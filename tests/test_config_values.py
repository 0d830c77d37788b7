"""Config values are checked when the config is read (issue 40, class 1), with generated cases:
any non-finite number, any out-of-range count, any bad family option, any deep nesting, is one
ConfigError naming the key — never an error from deep inside a compiled step."""

from __future__ import annotations

import dataclasses
import math
import string
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lopt.config import MAX_INT, MAX_NESTING, ConfigError, apply_overrides, load_config
from lopt.meta_train.config import MetaTrainConfig

CONFIG = "configs/meta_train/quickstart.toml"
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def numeric_keys(cls, prefix=""):
    """Dotted keys of every float and int field of a config dataclass tree."""
    keys = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            keys += numeric_keys(kind, f"{prefix}{field.name}.")
        elif kind in (float, int):
            keys.append((f"{prefix}{field.name}", kind))
    return keys


KEYS = [k for k in numeric_keys(MetaTrainConfig) if not k[0].startswith("tasks.augment")]


@SETTINGS
@given(
    key=st.sampled_from([k for k, kind in KEYS if kind is float]), value=st.sampled_from(["nan", "inf", "-inf", "+inf"])
)
def test_non_finite_numbers_are_refused_by_key(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        load_config(MetaTrainConfig, CONFIG, [f"{key}={value}"])


@SETTINGS
@given(
    key=st.sampled_from([k for k, kind in KEYS if kind is int]),
    value=st.integers(MAX_INT + 1, 10**30) | st.integers(-(10**30), -MAX_INT - 1),
)
def test_counts_beyond_int32_are_refused_by_key(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        load_config(MetaTrainConfig, CONFIG, [f"{key}={value}"])


@SETTINGS
@given(
    field=st.sampled_from(["widths", "depths", "batch_sizes"]),
    bad=st.one_of(st.integers(max_value=0), st.integers(min_value=1 << 17, max_value=MAX_INT), st.just([])),
)
def test_bad_family_options_fail_when_read(field, bad):
    value = "[]" if bad == [] else f"[{bad}]"
    with pytest.raises(ConfigError, match=field):
        load_config(MetaTrainConfig, CONFIG, [f"tasks.family_options={{{field}={value}}}"])


@SETTINGS
@given(
    name=st.text(string.ascii_lowercase, min_size=1, max_size=10).filter(
        lambda n: n not in ("relu", "tanh", "gelu", "silu", "elu", "sigmoid", "softplus", "swish")
    )
)
def test_unknown_activations_fail_when_read(name):
    with pytest.raises(ConfigError, match="activation"):
        load_config(MetaTrainConfig, CONFIG, [f'tasks.family_options={{activations=["{name}"]}}'])


@SETTINGS
@given(depth=st.integers(MAX_NESTING + 1, 100_000), opener=st.sampled_from(["[", "{a="]))
def test_deep_nesting_is_one_line_in_files_and_overrides(tmp_path_factory, depth, opener):
    closer = "]" if opener == "[" else "}"
    text = opener * depth + "1" + closer * depth
    with pytest.raises(ConfigError, match="nested"):
        apply_overrides({}, [f"x={text}"])
    path = tmp_path_factory.mktemp("deep") / "deep.toml"
    path.write_text(f"x = {text}\n")
    with pytest.raises(ConfigError, match="nested"):
        load_config(MetaTrainConfig, path)


def test_the_numeric_keys_cover_the_estimator_and_outer_loop():
    names = {k for k, _ in KEYS}
    assert {"estimator.sigma", "estimator.num_workers", "estimator.max_horizon", "outer.learning_rate"} <= names
    assert not math.isnan(len(names))
