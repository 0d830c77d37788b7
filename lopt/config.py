"""TOML job configs parsed into frozen dataclasses; unknown keys and wrong types are errors.

    config = load_config(EvalConfig, "configs/eval/embedded-small.toml", ["num_steps=200"])

Overrides are `dotted.key=value` strings whose value is read as a TOML value (`3`, `1e-3`,
`"adam"`, `["adam", "sgd"]`); a bare word that is not valid TOML is taken as a string.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
MAX_INT = 2**31 - 1  # every count lopt takes (steps, workers, widths, seeds) fits an int32
MAX_NESTING = 64  # deeper TOML is not a config (tomllib recurses once per level)


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass; the message names the key."""


def short(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters (a config value may be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_error(error: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, cut to `limit` characters: orbax and TensorStore errors
    embed whole multi-line specs that would bury the one line a user needs."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_output_dir(key: str, value: str) -> None:
    """An output folder must be named: an empty path would write into the working directory."""
    if not str(value).strip():
        raise ConfigError(f"{key}: empty; name the folder to write into")


def _check_value(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _check_value(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{where}: {short(value)} fits none of {annotation}")
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected nothing, got {short(value)}")
        return None
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {short(value)}")
        return from_dict(annotation, value, where=where)
    if origin is tuple:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ConfigError(f"{where}: expected a list, got {short(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
    if origin in (dict, Mapping) or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {short(value)}")
        return dict(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {short(value)}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{where}: {short(value)} is not a finite number")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {short(value)}")
        if abs(value) > MAX_INT:
            raise ConfigError(f"{where}: {short(value)} is out of range (at most {MAX_INT:,} in size)")
        return value
    if annotation in (str, bool):
        if not isinstance(value, annotation):
            raise ConfigError(f"{where}: expected a {annotation.__name__}, got {short(value)}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {annotation}")


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "config") -> T:
    """Build dataclass `cls` from a mapping; unknown keys, missing keys and bad types raise."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(map(repr, unknown))}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _check_value(data[name], hints[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {name!r}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as error:  # a constructor's own range check: name where it came from
        raise ConfigError(f"{where}: {error}") from None


def _nesting(text: str) -> int:
    """The deepest nesting of [ and { in `text`, outside quoted strings (a cheap bound checked
    before tomllib, which recurses once per level)."""
    depth = deepest = 0
    quote = None
    for char in text:
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (['a', 'b'], value), the value read as TOML where it parses."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    if _nesting(raw) > MAX_NESTING:
        raise ConfigError(f"override {key!r}: its value is nested more than {MAX_NESTING} levels deep")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `key=value` override set (nested tables by dots)."""
    result = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is not None and not isinstance(child, Mapping):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"{text.split('=', 1)[0].strip()}: {where} is {short(child)}, not a table")
            node[part] = dict(child) if isinstance(child, Mapping) else {}
            node = node[part]
        node[path[-1]] = value
    return result


def load_config(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Read a TOML file into `cls`, applying `overrides`; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        if _nesting(text) > MAX_NESTING:
            raise ConfigError(f"{path}: nested more than {MAX_NESTING} levels deep; not a config")
        data = tomllib.loads(text)
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a folder") from None
    except PermissionError as error:
        raise ConfigError(f"config file {str(path)!r}: no permission to read it ({error.strerror})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply; not a config") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    return from_dict(cls, apply_overrides(data, overrides), where=str(path))
