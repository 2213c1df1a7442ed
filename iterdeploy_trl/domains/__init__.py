"""PDDL domains shipped as package data.

Planning domains (deployment targets): ``blocksworld``, ``rovers``, ``sokoban``.
Example domains (few-shot prompts only): ``gripper``, ``logistics``, each with one small problem
and a plan VAL accepts.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PLANNING_DOMAINS: tuple[str, ...] = ("blocksworld", "rovers", "sokoban")
EXAMPLE_DOMAINS: tuple[str, ...] = ("gripper", "logistics")


def _check(name: str, allowed: tuple[str, ...]) -> None:
    if name not in allowed:
        raise ValueError(f"unknown domain {name!r}: choose one of {', '.join(allowed)}")


def domain_path(name: str) -> Path:
    """Path of the shipped ``<name>.pddl`` (planning or example domain)."""
    _check(name, PLANNING_DOMAINS + EXAMPLE_DOMAINS)
    return Path(str(resources.files(__name__).joinpath(f"{name}.pddl")))


def domain_pddl(name: str) -> str:
    """Text of the shipped domain file."""
    return domain_path(name).read_text()


def example(name: str) -> tuple[str, str, str]:
    """``(domain_pddl, problem_pddl, plan)`` of a few-shot example domain (gripper or logistics)."""
    _check(name, EXAMPLE_DOMAINS)
    base = resources.files(__name__)
    return (
        domain_pddl(name),
        base.joinpath(f"{name}_problem.pddl").read_text(),
        base.joinpath(f"{name}_problem.plan").read_text(),
    )
