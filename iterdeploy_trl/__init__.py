"""iterdeploy-trl: iterative deployment of LLMs on planning tasks, validated by VAL, on TRL."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Trainer classes import TRL (seconds): resolved on first use so that `import iterdeploy_trl` stays cheap.
_TRAINERS = (
    "ImportanceWeightedSFTConfig",
    "ImportanceWeightedSFTTrainer",
    "ReinforceConfig",
    "ReinforceTrainer",
    "ValidTraceSFTConfig",
    "ValidTraceSFTTrainer",
)


def __getattr__(name: str) -> Any:
    if name in _TRAINERS:
        from iterdeploy_trl import trainers

        return getattr(trainers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
