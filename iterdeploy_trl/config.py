"""Run configuration: a strict, typed tree of dataclasses read from YAML or JSON.

Unknown keys and impossible values fail *before any work*, with the dotted key in the message
(``sampling.temprature: unknown key; known keys: ...``).

The schema lives in ``config_schema`` (one dataclass per section, ``RunConfig``), reading a file in
``config_reading``, the run hash in ``config_hashing``; this module is the front door: it loads and checks a
config, says which settings a run's methods do not read, and re-exports every name of the three.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from iterdeploy_trl import methods as registry
from iterdeploy_trl.config_hashing import config_hash, hash_matches
from iterdeploy_trl.config_reading import MOVED_KEYS, _build, read_config_data
from iterdeploy_trl.config_schema import (
    BACKENDS,
    CURATIONS,
    DEFAULT_COMPARE_METHODS,
    GRID_LEARNING_RATE,
    INITS,
    MAX_SAMPLES_PER_TASK,
    MAX_TASKS,
    METHODS,
    NORMALIZATIONS,
    SFT_METHODS,
    BlindSpotConfig,
    DriftConfig,
    LoraConfig,
    ModelConfig,
    RunConfig,
    SamplingConfig,
    TasksConfig,
    TrainingConfig,
    TuningConfig,
    ValidatorConfig,
    split_arm,
)
from iterdeploy_trl.errors import MAX_LEARNING_RATE, ConfigError

__all__ = [
    "BACKENDS", "CURATIONS", "DEFAULT_COMPARE_METHODS", "GRID_LEARNING_RATE", "INITS", "MAX_LEARNING_RATE",
    "MAX_SAMPLES_PER_TASK", "MAX_TASKS", "METHODS", "MOVED_KEYS", "NORMALIZATIONS", "SFT_METHODS",
    "BlindSpotConfig", "ConfigError", "DriftConfig", "LoraConfig", "ModelConfig", "RunConfig", "SamplingConfig", "TasksConfig",
    "TrainingConfig", "TuningConfig", "ValidatorConfig", "check_settings_read", "config_from_dict", "config_hash",
    "hash_matches", "load_config", "split_arm", "unread_settings",
]


def unread_settings(cfg: RunConfig, methods: tuple[str, ...], *, compare: bool = False) -> list[str]:
    """The settings ``cfg`` gives that none of ``methods`` reads, by dotted key: a method's section for a run
    without that method; a setting of ``methods.SFT_KEYS`` (curation, accumulate, training.init, .epochs,
    .validation_fraction) set away from its default that none of them reads (``Method.reads``); ``tuning``
    outside ``iterdeploy compare`` (``compare``), and a tuning list of rates for no method compared."""
    chosen = [registry.get(split_arm(m)[0]) for m in methods]
    unread = []
    if cfg.tuning is not None:
        if not compare:
            unread.append("tuning")
        else:
            for key in ("sft_learning_rates", "reinforce_learning_rates"):
                if getattr(cfg.tuning, key) and not any(m.tuning_key == key for m in chosen):
                    unread.append(f"tuning.{key}")
    for method in registry.with_section():
        section = getattr(cfg, method.section)
        if section is not None and method not in chosen:
            default = method.settings()
            changed = [f.name for f in dataclasses.fields(section) if getattr(section, f.name) != getattr(default, f.name)]
            unread.append(f"{method.section}.{changed[0]}" if changed else method.section)
    defaults = RunConfig()
    for key in registry.SFT_KEYS:
        if not any(key in m.reads for m in chosen) and _dotted(cfg, key) != _dotted(defaults, key):
            unread.append(key)
    return unread


def _dotted(cfg: RunConfig, key: str) -> Any:
    """The value of the dotted ``key`` of ``cfg``."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _readers(key: str) -> str:
    """Who reads the setting ``key`` (``iterdeploy compare``, a method, the SFT methods), for a message."""
    if key == "tuning":
        return "iterdeploy compare"
    head = key.split(".")[0]
    owner = registry.reader_of(head)
    if owner is not None:
        return f"method {owner.name}"
    if key.startswith("tuning."):
        names = [m.name for m in registry.all_methods() if m.tuning_key == key.split(".")[1]]
    else:
        names = [m.name for m in registry.all_methods() if key in m.reads]
    if all(registry.get(n).curates for n in names) and len(names) > 1:
        return f"the SFT methods ({', '.join(names)})"
    return f"method {names[0]}" if len(names) == 1 else f"methods {', '.join(names)}"


def check_settings_read(cfg: RunConfig, methods: tuple[str, ...], *, compare: bool = False) -> None:
    """Raise ``ConfigError`` naming the first setting of ``cfg`` that none of ``methods`` reads (called
    before any work: a setting silently ignored is an experiment not run)."""
    unread = unread_settings(cfg, methods, compare=compare)
    if not unread:
        return
    key = unread[0]
    readers = _readers(key)
    one = not readers.startswith(("the ", "methods "))
    raise ConfigError(f"{key}: set, but only {readers} read{'s' if one else ''} it and "
                      f"this run's method{'s are' if len(methods) > 1 else ' is'} {', '.join(methods)}; remove "
                      f"it from the config (or run a method that reads it)")


def config_from_dict(data: dict[str, Any], *, check_paths: bool = True) -> RunConfig:
    """Build and check a :class:`RunConfig` from plain data (``check_paths``: see :meth:`RunConfig.check`)."""
    return _build(RunConfig, data, "").check(paths=check_paths)


def load_config(path: str | Path, *, check_paths: bool = True) -> RunConfig:
    """Read a YAML/JSON config file; errors name the file and the key. ``check_paths=False`` accepts a
    ``model.path`` that does not exist on this machine (a GPU config read elsewhere)."""
    path = Path(path)
    data = read_config_data(path)
    try:
        return config_from_dict(data, check_paths=check_paths)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
