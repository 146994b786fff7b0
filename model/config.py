"""Named configurations: TOML files read into typed (frozen) dataclasses.

A config file has one table per dataclass field that is itself a dataclass (`[model]`, `[train]`) and plain
keys for the rest. Every key must name a field and every value must have the field's type: a typo is an
error, never a silently ignored setting. `--set train.steps=100` style overrides apply on top, parsed as
TOML values (`lr=3e-4`, `name="x"`, `flag=true`).

Named configs live in `model/configs/<kind>/<name>.toml`; a path to any .toml file works too.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

CONFIGS = Path(__file__).with_name("configs")

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ValueError):
    """A config file or override that does not fit the config's dataclass."""


def named(kind: str) -> list[str]:
    """The names of the shipped configs of `kind` (e.g. 'frame_tokenizer')."""
    return sorted(p.stem for p in (CONFIGS / kind).glob("*.toml"))


def config_path(kind: str, name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise ConfigError(f"no config file {path}")
        return path
    shipped = CONFIGS / kind / f"{name_or_path}.toml"
    if not shipped.is_file():
        raise ConfigError(
            f"no {kind} config named {name_or_path!r}; known: {', '.join(named(kind))} (or a path to a .toml file)"
        )
    return shipped


def load(cls: type[T], kind: str, name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """The config `name_or_path` of `kind` as a `cls`, with `key.sub=value` overrides applied."""
    path = config_path(kind, name_or_path)
    with open(path, "rb") as f:
        values = tomllib.load(f)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"an override is key=value, not {override!r}")
        _set(values, key.strip().split("."), _parse_value(raw.strip()))
    return build(cls, values, where=str(path))


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: a string


def _set(values: dict, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        values = values.setdefault(key, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{key} is not a table")
    values[keys[-1]] = value


def build(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    """`values` (nested dicts) as a `cls`, checking every key and type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for {cls.__name__} "
            f"(known: {', '.join(fields)})"
        )
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {name} must be a table")
            # a field's annotation is a class, never an instance
            kwargs[name] = build(typing.cast("type[DataclassInstance]", kind), value, f"{where} [{name}]")
        else:
            kwargs[name] = _typed(value, kind, f"{where}: {name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _typed(value: Any, kind: Any, where: str) -> Any:
    """`value` checked against the annotation `kind` (int, float, bool, str, tuples, optional)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                try:
                    return _typed(value, option, where)
                except ConfigError:
                    pass
        raise ConfigError(f"{where} must be {kind}, not {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, not {value!r}")
        (item, *_) = typing.get_args(kind) or (Any,)
        return tuple(_typed(v, item, where) for v in value)
    if kind is Any:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {kind.__name__}, not {value!r}")
    return value


def as_dict(config: Any) -> dict[str, Any]:
    """A config as nested plain values (tuples as lists), for params and hashes."""
    return dataclasses.asdict(config)
