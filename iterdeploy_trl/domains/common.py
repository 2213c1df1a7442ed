"""What every domain folder shares: the generator's return type and the compact prompt's note helpers.

Bottom layer (imports nothing of the package), so that ``domains/<name>/generator.py`` and
``domains/<name>/prompt.py`` need nothing above them; ``prompts`` and ``tasks`` re-export these names.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

NOTE = ";"  # a plan comment: VAL and extract.py skip it, the small model reads it


class Generated(NamedTuple):
    """One generated problem: its PDDL text, a plan VAL accepts, and the parameters that made it."""

    problem: str
    plan: tuple[str, ...]
    params: dict[str, Any]


def natural_key(atom: tuple[str, ...]) -> tuple:
    """Sort key putting ``(on b2 b10)`` before ``(on b10 b2)`` (numbers compared as numbers)."""
    return tuple(tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", w)) for w in atom)
