"""PDDL problem text shared by the generators of the IPC-2023 learning-track domains."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def problem_text(
    name: str,
    domain: str,
    objects: Sequence[tuple[Sequence[str], str]],
    init: Iterable[str],
    goal: Iterable[str],
) -> str:
    """``(define (problem name) ...)`` with typed ``objects`` (``(names, type)`` pairs, empty ones
    left out), one init atom a line and a conjunctive goal."""
    lines = [f"(define (problem {name})", f"  (:domain {domain})", "  (:objects"]
    lines += [f"    {' '.join(names)} - {type_}" for names, type_ in objects if names]
    lines[-1] += ")"
    lines.append("  (:init")
    lines += [f"    {atom}" for atom in init]
    lines[-1] += ")"
    lines.append("  (:goal (and")
    lines += [f"    {atom}" for atom in goal]
    lines[-1] += ")))"
    return "\n".join(lines) + "\n"


def check_size(domain: str, size: int, limits: tuple[int, int], meaning: str) -> None:
    """Refuse a size outside ``limits`` with a message naming the domain and what size means."""
    lo, hi = limits
    if not lo <= size <= hi:
        raise ValueError(f"{domain} size ({meaning}) must be in {lo}..{hi}, got {size}")
