"""Dataclass configs from plain dicts (YAML, JSON, ``key=value`` overrides): unknown keys and
wrong types refused with the key's dotted name and a "did you mean" hint; nested sections
(a dataclass field that holds a dataclass) merged key by key."""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def merge(cfg: Any, data: dict[str, Any]) -> Any:
    current = dataclasses.asdict(cfg)
    deep_update(current, data, type(cfg), "")
    return build(type(cfg), current, "config")


def deep_update(target: dict[str, Any], data: dict[str, Any], cls: type, where: str) -> None:
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key {where + key!r}{did_you_mean(key, names, where)}; known: {', '.join(names)}")
        sub = nested_dataclass(cls, names[key])
        if sub is not None and isinstance(value, dict):
            deep_update(target[key], value, sub, f"{where}{key}.")
        elif key == "options" and isinstance(value, dict):
            target[key] = {**target[key], **value}
        else:
            target[key] = value


def did_you_mean(name: str, known: Any, prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` for the closest known name (difflib), or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def nested_dataclass(cls: type, f: dataclasses.Field) -> type | None:
    """The dataclass a field of ``cls`` holds (a nested config section), or None."""
    hint = typing.get_type_hints(cls).get(f.name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


_SCALARS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_type(f: dataclasses.Field, value: Any, where: str) -> Any:
    """Reject a value of the wrong type with a message naming the key (YAML turns a typo
    like ``iterations: four`` into a string that would otherwise fail much later)."""
    annotation = str(f.type)
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None and optional:
        return value
    if base in _SCALARS:
        ok = isinstance(value, _SCALARS[base]) and not (base != "bool" and isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{where}.{f.name} must be {base}{' or null' if optional else ''}, got {value!r}")
        return float(value) if base == "float" else value
    if base.startswith("dict[") and not isinstance(value, dict):
        raise ConfigError(f"{where}.{f.name} must be a mapping, got {value!r}")
    if base == "tuple[str, ...]":
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}.{f.name} must be a list of strings, got {value!r}")
        return tuple(value)
    return value


def build(cls: type, data: dict[str, Any], where: str) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = nested_dataclass(cls, f)
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{f.name} must be a mapping, got {value!r}")
            value = build(sub, value, f"{where}.{f.name}")
        kwargs[f.name] = check_type(f, value, where)
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"unknown config key(s) in {where}: {', '.join(sorted(unknown))}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None


def read_mapping(p: Path) -> dict[str, Any]:
    """The mapping a YAML or JSON config file holds ({} when empty); ConfigError naming the file
    when it cannot be read, does not parse or holds something else."""
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{p}: cannot read config: {err.strerror or err}") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        where = " ".join(str(err).split())  # YAML's message spans lines: one line, as every error here
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must hold a mapping, got {type(data).__name__}")
    return data
