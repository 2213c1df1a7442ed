"""The domain registry: one folder per planning domain, shipped as package data.

A built-in planning domain is a folder ``domains/<name>/`` holding

- ``domain.pddl``: the domain;
- ``generator.py``: ``generate(rng: random.Random, size: int, name: str) -> domains.common.Generated`` (a
  problem and a reference plan VAL accepts) and the constants ``SIZES = {"cpu": (lo, hi), "full": (lo,
  hi)}`` (the size ranges of the CPU configs and of full-scale pools), ``SIZE_LIMITS = (lo, hi)``,
  ``GENERATOR_VERSION`` (bumped when the same seed gives other tasks) and ``SIZE_PARAMETER`` (what size
  means, in words); optionally ``OBJECT_NAMES``, every object name a task can use (the small model's
  tokenizer gets a word for each; without it, the names of the objects of the generator's largest tasks);
- optionally ``prompt.py``: the small model's extras: ``COMPACT_OMIT`` (facts its compact prompt leaves
  out), ``COMPACT_KEYWORDS`` (extra words of that prompt), ``COMPACT_PROMPT_VERSION``, ``compact_map(init)``
  (a section drawn after the init line), ``state_note(state)`` (a ``;`` comment on a state) and
  ``VOCABULARY_EXTRAS``,

and one line in :data:`PLANNING_DOMAINS`. ``tests/test_domains.py`` names what a registered folder lacks.
A domain read from a folder of PDDL files (``iterdeploy tasks --from``) gets the same interface from
:meth:`Domain.from_pddl`, without a generator.

Example domains (few-shot prompts only): ``gripper``, ``logistics``, each with one small problem and a
plan VAL accepts.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

# One line per built-in planning domain (its folder name).
PLANNING_DOMAINS: tuple[str, ...] = (
    "blocksworld",
    "rovers",
    "sokoban",
    "childsnack",
    "ferry",
    "floortile",
    "miconic",
    "satellite",
    "spanner",
    "transport",
)
# The domains of the study's main results (the tiny chat test model is trained on their prompts).
STUDY_DOMAINS: tuple[str, ...] = ("blocksworld", "rovers", "sokoban")
EXAMPLE_DOMAINS: tuple[str, ...] = ("gripper", "logistics")

# What generator.py must define, and what each name is for (the registry test names the missing ones).
GENERATOR_NAMES: dict[str, str] = {
    "generate": "generate(rng, size, name) -> domains.common.Generated",
    "SIZES": 'SIZES = {"cpu": (lo, hi), "full": (lo, hi)}',
    "SIZE_LIMITS": "SIZE_LIMITS = (lo, hi)",
    "GENERATOR_VERSION": "GENERATOR_VERSION = 1 (bump when the same seed gives other tasks)",
    "SIZE_PARAMETER": 'SIZE_PARAMETER = "<what size means>"',
}


class DomainError(ValueError):
    """An unknown domain name or an incomplete domain folder; the message says what to add."""


@dataclass(frozen=True)
class Domain:
    """Everything the package knows about one planning domain.

    ``generate`` is ``None`` for a domain read from files (it has tasks, not a generator); so are the
    size fields. ``object_names`` is the fixed list of names its tasks use, or ``None`` when it is read
    from the tasks themselves.
    """

    name: str
    pddl: str
    path: Path | None = None
    generate: Callable[[random.Random, int, str], Any] | None = None
    sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    size_limits: tuple[int, int] | None = None
    size_parameter: str = "size"
    generator_version: int = 1
    object_names: tuple[str, ...] | None = None
    compact_omit: frozenset[str] = frozenset()
    compact_keywords: tuple[str, ...] = ()
    compact_prompt_version: int = 1
    compact_map: Callable[[Any], str] | None = None
    state_note: Callable[[Any], str] | None = None
    vocabulary_extras: tuple[str, ...] = ()

    @property
    def builtin(self) -> bool:
        """Whether it is a registered folder with a generator."""
        return self.generate is not None

    @classmethod
    def from_pddl(cls, name: str, pddl: str, path: Path | None = None) -> Domain:
        """A domain known only by its PDDL (an imported task set): no generator, no notes, the plain
        compact prompt, object names from its tasks."""
        return cls(name=name, pddl=pddl, path=path)


def _folder(name: str) -> Path:
    """The folder of domain ``name`` on the package's path (the first one that has it)."""
    for base in __path__:  # noqa: F821 (a package's __path__)
        if (Path(base) / name).is_dir():
            return Path(base) / name
    return Path(str(resources.files(__name__).joinpath(name)))


def _optional(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:  # the module exists but imports something missing: a real error
            raise
        return None


def missing_parts(name: str) -> list[str]:
    """What the folder of a registered domain still lacks, in words (empty when complete)."""
    folder = _folder(name)
    missing = []
    if not (folder / "domain.pddl").is_file():
        missing.append(f"{folder}/domain.pddl (the domain)")
    gen = _optional(f"{__name__}.{name}.generator")
    if gen is None:
        missing.append(f"{folder}/generator.py (the task generator)")
        return missing
    for attr, what in GENERATOR_NAMES.items():
        if not hasattr(gen, attr):
            missing.append(f"{folder}/generator.py: {what}")
    sizes = getattr(gen, "SIZES", {})
    if hasattr(gen, "SIZES") and not (isinstance(sizes, Mapping) and {"cpu", "full"} <= set(sizes)):
        missing.append(f"{folder}/generator.py: SIZES needs both a 'cpu' and a 'full' range")
    return missing


def is_registered(name: str | None) -> bool:
    """Whether ``name`` is a built-in planning domain (a line of :data:`PLANNING_DOMAINS`)."""
    return name in PLANNING_DOMAINS


@cache
def get(name: str) -> Domain:
    """The registered domain ``name`` (its modules are imported on first use)."""
    if name not in PLANNING_DOMAINS:
        raise DomainError(f"unknown domain {name!r}: choose one of {', '.join(PLANNING_DOMAINS)}")
    missing = missing_parts(name)
    if missing:
        raise DomainError(f"domain {name} is registered but incomplete; add: " + "; ".join(missing))
    gen = importlib.import_module(f"{__name__}.{name}.generator")
    extras = _optional(f"{__name__}.{name}.prompt")
    path = _folder(name) / "domain.pddl"

    def extra(attr: str, default: Any) -> Any:
        return getattr(extras, attr, default) if extras is not None else default

    names = getattr(gen, "OBJECT_NAMES", None)
    return Domain(
        name=name,
        pddl=path.read_text(),
        path=path,
        generate=gen.generate,
        sizes={k: tuple(v) for k, v in gen.SIZES.items()},
        size_limits=tuple(gen.SIZE_LIMITS),
        size_parameter=gen.SIZE_PARAMETER,
        generator_version=int(gen.GENERATOR_VERSION),
        object_names=tuple(names) if names is not None else None,
        compact_omit=frozenset(extra("COMPACT_OMIT", frozenset())),
        compact_keywords=tuple(extra("COMPACT_KEYWORDS", ())),
        compact_prompt_version=int(extra("COMPACT_PROMPT_VERSION", 1)),
        compact_map=extra("compact_map", None),
        state_note=extra("state_note", None),
        vocabulary_extras=tuple(extra("VOCABULARY_EXTRAS", ())),
    )


def note_domains() -> tuple[str, ...]:
    """The registered domains with state notes."""
    return tuple(d for d in PLANNING_DOMAINS if get(d).state_note is not None)


class _View(Mapping):
    """A read-only ``{domain: value}`` view over the registry (``GENERATOR_VERSION["sokoban"]``)."""

    def __init__(self, read: Callable[[Domain], Any]) -> None:
        self._read = read

    def __getitem__(self, name: str) -> Any:
        if name not in PLANNING_DOMAINS:
            raise KeyError(name)
        return self._read(get(name))

    def __iter__(self) -> Iterator[str]:
        return iter(PLANNING_DOMAINS)

    def __len__(self) -> int:
        return len(PLANNING_DOMAINS)


def view(read: Callable[[Domain], Any]) -> Mapping[str, Any]:
    """A ``{domain: read(domain)}`` mapping over the registered domains, read on access."""
    return _View(read)


def domain_path(name: str) -> Path:
    """Path of the shipped domain file of a planning or example domain."""
    if name in PLANNING_DOMAINS:
        return _folder(name) / "domain.pddl"
    if name in EXAMPLE_DOMAINS:
        return Path(str(resources.files(__name__).joinpath(f"{name}.pddl")))
    raise DomainError(f"unknown domain {name!r}: choose one of {', '.join(PLANNING_DOMAINS + EXAMPLE_DOMAINS)}")


def domain_pddl(name: str) -> str:
    """Text of the shipped domain file."""
    return domain_path(name).read_text()


def shipped_name(pddl: str) -> str | None:
    """The registered domain whose file is exactly ``pddl``, if any."""
    for name in PLANNING_DOMAINS:
        if domain_path(name).read_text() == pddl:
            return name
    return None


def example(name: str) -> tuple[str, str, str]:
    """``(domain_pddl, problem_pddl, plan)`` of a few-shot example domain (gripper or logistics)."""
    if name not in EXAMPLE_DOMAINS:
        raise DomainError(f"unknown example domain {name!r}: choose one of {', '.join(EXAMPLE_DOMAINS)}")
    base = resources.files(__name__)
    return (
        domain_pddl(name),
        base.joinpath(f"{name}_problem.pddl").read_text(),
        base.joinpath(f"{name}_problem.plan").read_text(),
    )
