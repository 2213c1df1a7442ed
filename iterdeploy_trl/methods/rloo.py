"""REINFORCE with the leave-one-out baseline (RLOO) and several prompts per optimizer step, as practitioners run
it: ``ReinforceTrainer`` with ``baseline: leave_one_out``; section ``rloo`` (prompts per step, default 4; its
own learning rate). The plain arm with these settings is ``reinforce`` with ``baseline``/``prompts_per_step``
set; this arm names them so that a comparison reports RLOO beside plain REINFORCE."""

from __future__ import annotations

from dataclasses import dataclass

from iterdeploy_trl.errors import check_learning_rate, require
from iterdeploy_trl.methods import reinforce
from iterdeploy_trl.methods.registry import PROMPTS, Method, register


@dataclass(frozen=True)
class RLOOSettings:
    """RLOO's own settings (section ``rloo``; read by method rloo only)."""

    baseline = "leave_one_out"  # fixed (not a setting): the arm's estimator
    prompts_per_step: int = 4  # prompts per optimizer step, K samples each (see reinforce.prompts_per_step)
    learning_rate: float | None = None  # null: training.learning_rate

    def check(self) -> None:
        require(self.prompts_per_step >= 1, "rloo.prompts_per_step", self.prompts_per_step, "must be >= 1")
        if self.learning_rate is not None:
            check_learning_rate("rloo.learning_rate", self.learning_rate)


METHOD = register(Method(
    name="rloo", label="RLOO", colour="#CC79A7", order=4,
    summary="n*K fresh samples, leave-one-out baseline, P prompts a step (ReinforceTrainer, online)",
    trains_on=PROMPTS, train=reinforce.train, section="rloo", settings=RLOOSettings, reads=(), continues=True,
    tuning_key="reinforce_learning_rates", check=reinforce.check, launch_check=reinforce.launch_check,
    server_backend=False,
))
