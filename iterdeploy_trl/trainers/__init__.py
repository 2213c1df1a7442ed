"""TRL trainers of the study: valid-trace SFT, importance-weighted SFT, binary-reward REINFORCE (baselines
none / mean / leave-one-out, several prompts per step) and TRL's own GRPO as a reference arm; a callback that
counts how often ``max_grad_norm`` clips, for any of them.

Loss formulas live in ``losses`` as pure functions on tensors. The trainer classes are imported lazily
(importing TRL takes seconds): ``from iterdeploy_trl.trainers import losses`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iterdeploy_trl.trainers.callbacks import GradClipCallback
    from iterdeploy_trl.trainers.grpo import ReferenceGRPOTrainer, grpo_reference_config, grpo_settings_record
    from iterdeploy_trl.trainers.iw_sft import ImportanceWeightedSFTConfig, ImportanceWeightedSFTTrainer
    from iterdeploy_trl.trainers.reinforce import (
        ReinforceConfig,
        ReinforceTrainer,
        reinforce_settings_record,
        reinforce_step_batch,
    )
    from iterdeploy_trl.trainers.sft import ValidTraceSFTConfig, ValidTraceSFTTrainer

_LAZY: dict[str, str] = {
    "ValidTraceSFTConfig": "iterdeploy_trl.trainers.sft",
    "ValidTraceSFTTrainer": "iterdeploy_trl.trainers.sft",
    "ImportanceWeightedSFTConfig": "iterdeploy_trl.trainers.iw_sft",
    "ImportanceWeightedSFTTrainer": "iterdeploy_trl.trainers.iw_sft",
    "ReinforceConfig": "iterdeploy_trl.trainers.reinforce",
    "ReinforceTrainer": "iterdeploy_trl.trainers.reinforce",
    "reinforce_step_batch": "iterdeploy_trl.trainers.reinforce",
    "reinforce_settings_record": "iterdeploy_trl.trainers.reinforce",
    "ReferenceGRPOTrainer": "iterdeploy_trl.trainers.grpo",
    "grpo_reference_config": "iterdeploy_trl.trainers.grpo",
    "grpo_settings_record": "iterdeploy_trl.trainers.grpo",
    "GradClipCallback": "iterdeploy_trl.trainers.callbacks",
}

__all__ = [
    "GradClipCallback",
    "ImportanceWeightedSFTConfig",
    "ImportanceWeightedSFTTrainer",
    "ReferenceGRPOTrainer",
    "ReinforceConfig",
    "ReinforceTrainer",
    "ValidTraceSFTConfig",
    "ValidTraceSFTTrainer",
    "grpo_reference_config",
    "grpo_settings_record",
    "reinforce_settings_record",
    "reinforce_step_batch",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
