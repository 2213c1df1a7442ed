"""What each domain's generator returns."""

from __future__ import annotations

from typing import Any, NamedTuple


class Generated(NamedTuple):
    """One generated problem: its PDDL text, a plan VAL accepts, and the parameters that made it."""

    problem: str
    plan: tuple[str, ...]
    params: dict[str, Any]
