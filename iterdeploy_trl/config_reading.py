"""Reading a run config: a YAML/JSON file into plain data (errors name the file, line and column), and plain
data into a tree of frozen dataclasses (``_build``), refusing unknown keys and wrong types by dotted key and
naming the new place of a key that moved into a method's own section (``MOVED_KEYS``)."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from iterdeploy_trl.errors import ConfigError

_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")

# Keys that moved into a method's own section: an old config naming one is refused with the new key.
MOVED_KEYS = {
    "training.iw_truncate": "iw_sft.truncate",
    "training.iw_self_normalize": "iw_sft.self_normalize",
    "training.iw_per_token": "iw_sft.per_token",
    "training.reinforce_baseline": "reinforce.baseline",
    "training.reinforce_learning_rate": "reinforce.learning_rate",
}


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types by dotted name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    moved = [f"{prefix}{k}" for k in unknown if f"{prefix}{k}" in MOVED_KEYS]
    if moved:
        new = MOVED_KEYS[moved[0]]
        section, key = new.split(".")
        raise ConfigError(f"{moved[0]}: moved to {new} (the {section} section, the method's own settings): "
                          f"write `{section}: {{{key}: ...}}` instead")
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{key}: unknown key; known keys here: {', '.join(sorted(names))}")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: may not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0]
        return tuple(_coerce(inner, v, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(args[0], v, key) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 (PyYAML) reads `1e-5` (no dot) as a string; accept what Python reads as a number.
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .inf and .nan, or 1e999
            raise ConfigError(f"{key}: {value!r} must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def read_config_data(path: Path) -> Any:
    """The plain data of a YAML/JSON config file; a missing, binary, unparsable or empty file raises
    ``ConfigError`` naming the file (and where the parser stopped)."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a YAML or JSON file (experiments/*.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8); give a YAML or JSON config"
                          ) from None
    except yaml.YAMLError as exc:  # one line: where, and what the parser found there
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = " ".join(f"{getattr(exc, 'context', None) or ''} {getattr(exc, 'problem', None) or exc}".split())
        raise ConfigError(f"{where}: not valid YAML/JSON: {what}") from None
    if data is None:  # a run of the whole default on a file left empty by mistake would be hours lost
        raise ConfigError(f"{path}: the file is empty (or only comments); give at least one key, or leave "
                          "--config out to run the CPU default")
    return data
