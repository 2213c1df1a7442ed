"""TRL trainers of the study: valid-trace SFT, importance-weighted SFT and binary-reward REINFORCE.

Loss formulas live in ``losses`` as pure functions on tensors. The trainer classes are imported lazily
(importing TRL takes seconds): ``from iterdeploy_trl.trainers import losses`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iterdeploy_trl.trainers.iw_sft import ImportanceWeightedSFTConfig, ImportanceWeightedSFTTrainer
    from iterdeploy_trl.trainers.reinforce import ReinforceConfig, ReinforceTrainer
    from iterdeploy_trl.trainers.sft import ValidTraceSFTConfig, ValidTraceSFTTrainer

_LAZY: dict[str, str] = {
    "ValidTraceSFTConfig": "iterdeploy_trl.trainers.sft",
    "ValidTraceSFTTrainer": "iterdeploy_trl.trainers.sft",
    "ImportanceWeightedSFTConfig": "iterdeploy_trl.trainers.iw_sft",
    "ImportanceWeightedSFTTrainer": "iterdeploy_trl.trainers.iw_sft",
    "ReinforceConfig": "iterdeploy_trl.trainers.reinforce",
    "ReinforceTrainer": "iterdeploy_trl.trainers.reinforce",
}

__all__ = [
    "ImportanceWeightedSFTConfig",
    "ImportanceWeightedSFTTrainer",
    "ReinforceConfig",
    "ReinforceTrainer",
    "ValidTraceSFTConfig",
    "ValidTraceSFTTrainer",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
