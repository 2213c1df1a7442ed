"""The package's two user-facing errors and the checks a config value goes through (bottom layer: imports
nothing of the package, so that ``config``, the method plug-ins and the training code can all raise them).

``ConfigError``: a configuration that cannot be run (the message names the dotted key); ``RunError``: a run
that cannot start or continue (the message says what to do). ``config`` and ``loop`` re-export them.
"""

from __future__ import annotations

import math
from typing import Any

MAX_LEARNING_RATE = 1.0  # every learning rate (AdamW diverges far below it)


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the key."""


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says what to do."""


def require(ok: bool, key: str, value: Any, what: str) -> None:
    """Raise ``ConfigError("<key>: <value> <what>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {value!r} {what}")


def finite(value: float) -> bool:
    return math.isfinite(value)


def check_learning_rate(key: str, value: float) -> None:
    require(finite(value) and 0 < value <= MAX_LEARNING_RATE, key, value,
            f"must be a finite number in (0, {MAX_LEARNING_RATE:g}] (the study used 1e-5 to 3e-3)")
