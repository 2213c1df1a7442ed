"""TRL's own GRPO as a reference arm (``ReferenceGRPOTrainer``, ``grpo_reference_config``): GRPO's objective
at TRL's defaults (its loss type, std scaling, ratio clipping and, with ``use_vllm``, its vLLM
importance-sampling correction), the VAL reward; every such setting is recorded in ``train_stats.json``
(``grpo_settings_record``). Section ``grpo``: prompts per optimizer step (K samples each), learning rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iterdeploy_trl.errors import check_learning_rate, require
from iterdeploy_trl.methods import reinforce
from iterdeploy_trl.methods.registry import PROMPTS, Method, TrainJob, register


@dataclass(frozen=True)
class GRPOSettings:
    """The reference GRPO arm's own settings (section ``grpo``; read by method grpo only)."""

    prompts_per_step: int = 4  # prompts per optimizer step, K samples each (one generation batch a step)
    learning_rate: float | None = None  # null: training.learning_rate

    def check(self) -> None:
        require(self.prompts_per_step >= 1, "grpo.prompts_per_step", self.prompts_per_step, "must be >= 1")
        if self.learning_rate is not None:
            check_learning_rate("grpo.learning_rate", self.learning_rate)


def train(cfg: Any, job: TrainJob, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One segment of TRL's GRPO from the deployed model (``training.train_grpo``)."""
    from iterdeploy_trl.training import train_grpo

    return train_grpo(cfg, job.base, rows, job.out_dir, seed=job.seed, init_from=job.model_dir)


METHOD = register(Method(
    name="grpo", label="GRPO (TRL defaults)", colour="#56B4E9", order=5,
    summary="n*K fresh samples, P prompts a step, GRPO's objective at TRL's defaults (ReferenceGRPOTrainer)",
    trains_on=PROMPTS, train=train, section="grpo", settings=GRPOSettings, reads=(), continues=True,
    tuning_key="reinforce_learning_rates", check=reinforce.check, launch_check=reinforce.launch_check,
    server_backend=False,
))
