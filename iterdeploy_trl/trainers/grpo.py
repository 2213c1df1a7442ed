"""The reference RL arm: TRL's own ``GRPOTrainer`` with TRL's defaults, rewarded by VAL.

Nothing of GRPO's objective is changed here: its loss type (``"dapo"`` in TRL 1.16), group std scaling of the
advantages, ratio clipping (ε = 0.2), importance-sampling level and, with ``use_vllm``, its vLLM
importance-sampling correction (``sequence_mask``, clip 3) are whatever TRL's ``GRPOConfig`` sets.
``grpo_reference_config`` refuses a setting that would change them, and ``grpo_settings_record`` writes what
TRL switched on into the run directory. The only departures from a bare ``GRPOTrainer``: the reward is
``ValidPlanReward`` (r = 1[VAL accepts the plan]) by default, its columns are checked when the trainer is
built, ``bf16`` unset means bf16 only where it can run (as in the package's other configs), and a model
object given to the trainer comes back from ``train()`` as it went in (``RestoresModelState``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trl import GRPOConfig, GRPOTrainer

from iterdeploy_trl.trainers.reinforce import (
    _check_reward_columns,
    importance_sampling_record,
    step_layout_record,
)
from iterdeploy_trl.trainers.sft import RestoresModelState, default_bf16

# GRPOConfig fields that set GRPO's objective: how advantages are formed, what is clipped, reweighted or
# masked, and the penalty terms. The reference arm keeps each at TRL's default.
GRPO_OBJECTIVE_FIELDS: tuple[str, ...] = (
    "loss_type",
    "scale_rewards",
    "multi_objective_aggregation",
    "beta",
    "num_iterations",
    "epsilon",
    "epsilon_high",
    "delta",
    "importance_sampling_level",
    "sapo_temperature_neg",
    "sapo_temperature_pos",
    "vespo_k_pos",
    "vespo_lambda_pos",
    "vespo_k_neg",
    "vespo_lambda_neg",
    "mask_truncated_completions",
    "top_entropy_quantile",
    "entropy_coef",
    "use_adaptive_entropy",
    "off_policy_mask_threshold",
    "use_bias_correction_kl",
    "sync_ref_model",
    "vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode",
    "vllm_importance_sampling_clip_min",
    "vllm_importance_sampling_clip_max",
    "vllm_importance_sampling_cap",
    "reward_weights",
)
TRL_GRPO_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(GRPOConfig) if f.name in GRPO_OBJECTIVE_FIELDS
}


def grpo_reference_config(output_dir: str, **kwargs: Any) -> GRPOConfig:
    """TRL's ``GRPOConfig`` for the reference arm: generation, batch and optimiser settings from ``kwargs``
    (``num_generations``, ``max_completion_length``, ``temperature``, ``learning_rate``, ``max_grad_norm``,
    ``use_vllm``, the batch arguments of ``reinforce_step_batch``, ...), GRPO's objective at TRL's defaults.

    A kwarg among ``GRPO_OBJECTIVE_FIELDS`` that differs from TRL's default is refused (this arm is GRPO as TRL
    ships it; ``ReinforceConfig`` is the package's own estimator). ``bf16`` unset: bf16 only where it can run."""
    changed = sorted(
        f"{key}={value!r}"
        for key, value in kwargs.items()
        if key in TRL_GRPO_DEFAULTS and value != TRL_GRPO_DEFAULTS[key]
    )
    if changed:
        raise ValueError(
            f"grpo_reference_config: {', '.join(changed)} change GRPO's objective away from TRL's defaults; the "
            "reference GRPO arm keeps them as TRL sets them: drop these settings (or build trl.GRPOConfig yourself "
            "for another GRPO variant)"
        )
    if kwargs.get("bf16") is None and not kwargs.get("fp16"):
        kwargs["bf16"] = default_bf16(bool(kwargs.get("use_cpu", False)))
    return GRPOConfig(output_dir=output_dir, **kwargs)


def grpo_settings_record(args: GRPOConfig) -> dict[str, Any]:
    """Every setting of a GRPO run that reweights, clips, masks or rescales, as TRL ran it (for its run
    directory): the objective fields (``GRPO_OBJECTIVE_FIELDS``) with their values and whether each is TRL's
    default, the clipping range actually used (ε_low, ε_high = ε when unset), ``max_grad_norm``, the step's
    layout and the vLLM importance-sampling setting as applied (``importance_sampling_record``: on only with
    ``use_vllm``)."""
    objective = {name: getattr(args, name) for name in GRPO_OBJECTIVE_FIELDS}
    return {
        "estimator": f"trl-grpo ({args.loss_type})",
        "objective": objective,
        "at_trl_defaults": sorted(k for k, v in objective.items() if v == TRL_GRPO_DEFAULTS[k]),
        "not_at_trl_defaults": sorted(k for k, v in objective.items() if v != TRL_GRPO_DEFAULTS[k]),
        "std_scaling": args.scale_rewards,
        "ratio_clip_range": [1 - args.epsilon, 1 + (args.epsilon_high if args.epsilon_high is not None
                                                    else args.epsilon)],
        "max_grad_norm": args.max_grad_norm,
        "temperature": args.temperature,
        "top_p": args.top_p,
        **step_layout_record(args),
        "importance_sampling": importance_sampling_record(args),
    }


class ReferenceGRPOTrainer(RestoresModelState, GRPOTrainer):
    """TRL's ``GRPOTrainer``, unchanged, with ``ValidPlanReward`` as its default reward and the reward's dataset
    columns (``prompt``, ``domain_pddl``, ``problem_pddl``) checked when built. Build its config with
    ``grpo_reference_config``."""

    _tag_names = ["trl", "grpo", "iterdeploy"]

    def __init__(self, model: Any, reward_funcs: Any = None, args: GRPOConfig | None = None,
                 train_dataset: Any = None, eval_dataset: Any = None, **kwargs: Any) -> None:
        if args is None:
            args = grpo_reference_config("GRPO-output")
        if reward_funcs is None:
            from iterdeploy_trl.reward import ValidPlanReward  # lazy: VAL is only needed here

            reward_funcs = [ValidPlanReward()]
        _check_reward_columns(reward_funcs, train_dataset, eval_dataset)
        super().__init__(model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, **kwargs)
