"""The registry of the loop's methods (as verl registers its advantage estimators): a method is one module of
``iterdeploy_trl/methods/`` that calls :func:`register` with a :class:`Method`, and everything that differs
between methods is a field of it. The loop, the config schema and its hash, ``compare``, the figures and the
audit ask the registry (:func:`get`, :func:`all_methods`, :func:`names`); none of them branches on a
method's name.

This module imports nothing of the package: the config layer reads it, and a method's trainer is reached
through its ``train`` function, which imports the training stack when a generation trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CURATED = "curated"  # the deployment's curated traces (written to gen_<g>/train.jsonl); an empty set keeps the model
PROMPTS = "prompts"  # the pool's prompts as deployed: the trainer samples its own completions (online)

# The settings only the methods that train on curated traces read (dotted keys of the run config).
SFT_KEYS = ("curation", "accumulate", "training.init", "training.epochs", "training.validation_fraction")


@dataclass(frozen=True)
class TrainJob:
    """Where a generation trains: ``model_dir`` is the model deployed in this generation (None: the
    base), ``out_dir`` where the next generation's model goes (moved into place when complete)."""

    base: Path
    model_dir: Path | None
    out_dir: Path
    seed: int


@dataclass(frozen=True)
class Method:
    """One method of the loop.

    name, label, colour: the config's ``method:`` value, and how figures name and draw it; order: its place
      in listings (the config's list of methods, figures' legends).
    summary: what it trains on and with which trainer, in words (logs, docs).
    trains_on: ``CURATED`` or ``PROMPTS``. ``train(cfg, job, rows)``: fine-tune the next generation on
      ``rows`` (``training.curated_rows`` / ``training.prompt_rows``), save it to ``job.out_dir`` and return
      its training statistics (also in ``train_stats.json``).
    section, settings: the method's own config section (``RunConfig.<section>``, a frozen dataclass with a
      ``check()``; null: its defaults), read by this method only.
    reads: which of ``SFT_KEYS`` it reads (a value set away from its default that no method of a run reads is
      refused). required_curation: the only ``curation`` it runs with. continues: it always trains from the
      deployed model (``training.init`` not read).
    tuning_key: the list of ``tuning`` that holds its candidate learning rates; its learning rate is
      ``<section>.learning_rate`` where the section has one (null: ``training.learning_rate``).
    check(cfg): its checks before any work (sampling settings, backend); launch_check(cfg): whether this many
      processes can run it (a ``RunError`` if not). server_backend: it can run with ``sampling.backend:
      vllm-server`` (False where the trainer samples through TRL, which talks to ``trl vllm-serve`` only).
    hash_layout(section, data): how its section enters the run hash (default: left out while null, so that
      adding a method changes no existing run's hash). in_comparison: in ``compare_methods``' default.
    build_trainer(cfg, common): for a method that trains on curated traces with its own SFT trainer, (trainer
      config, trainer class, extra dataset columns) from the arguments every SFT trainer takes (default:
      ``ValidTraceSFTConfig``, ``ValidTraceSFTTrainer``); trained_stats(trainer): its own training statistics.
    """

    name: str
    label: str
    colour: str
    summary: str
    trains_on: str
    train: Callable[..., dict[str, Any]]
    section: str | None = None
    settings: type | None = None
    reads: tuple[str, ...] = SFT_KEYS
    required_curation: str | None = None
    continues: bool = False
    tuning_key: str = "sft_learning_rates"
    check: Callable[[Any], None] | None = None
    launch_check: Callable[[Any], None] | None = None
    server_backend: bool = True
    hash_layout: Callable[[dict[str, Any] | None, dict[str, Any]], None] | None = None
    in_comparison: bool = False
    build_trainer: Callable[[Any, dict[str, Any]], tuple[Any, type, tuple[str, ...]]] | None = None
    trained_stats: Callable[[Any], dict[str, Any]] | None = None
    order: int = 100  # where it comes in listings and figures (registration order among equals)

    @property
    def curates(self) -> bool:
        """It trains on the deployment's curated traces (written to ``gen_<g>/train.jsonl``)."""
        return self.trains_on == CURATED

    def settings_of(self, cfg: Any) -> Any:
        """Its section of ``cfg``, or the section's defaults when left out (None: no section)."""
        if self.section is None:
            return None
        return getattr(cfg, self.section, None) or self.settings()

    @property
    def own_learning_rate(self) -> bool:
        """Its section holds its own ``learning_rate`` (null: ``training.learning_rate``)."""
        return self.settings is not None and "learning_rate" in {f.name for f in dataclasses.fields(self.settings)}

    def learning_rate(self, cfg: Any) -> float:
        """The learning rate it trains at under ``cfg``."""
        own = self.settings_of(cfg).learning_rate if self.own_learning_rate else None
        return own or cfg.training.learning_rate


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a second method of the same name or section is a programming error)."""
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    if method.trains_on not in (CURATED, PROMPTS):
        raise ValueError(f"method {method.name!r}: trains_on {method.trains_on!r} must be {CURATED!r} or {PROMPTS!r}")
    if method.section is not None and any(m.section == method.section for m in _REGISTRY.values()):
        raise ValueError(f"method {method.name!r}: section {method.section!r} belongs to another method")
    _REGISTRY[method.name] = method
    for name in sorted(_REGISTRY, key=lambda n: _REGISTRY[n].order):  # stable: registration order among equals
        _REGISTRY[name] = _REGISTRY.pop(name)
    return method


def get(name: str) -> Method:
    """The registered method ``name`` (a ``KeyError`` naming the registered ones if there is none)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no method {name!r}; registered: {', '.join(_REGISTRY)}") from None


def all_methods() -> tuple[Method, ...]:
    """Every registered method, in registration order."""
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def with_section() -> tuple[Method, ...]:
    """The methods with a config section of their own."""
    return tuple(m for m in _REGISTRY.values() if m.section is not None)


def reader_of(section: str) -> Method | None:
    """The method whose config section is ``section``."""
    return next((m for m in _REGISTRY.values() if m.section == section), None)
