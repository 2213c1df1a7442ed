"""Binary-reward REINFORCE on TRL's ``GRPOTrainer``: its generation (transformers or vLLM), reward calls and
logging, with REINFORCE's advantages and loss.

g_RL = (1/N) Σ_i A_i ∇ log π(y_i|x_i), A_i = r_i by default (r = 1[VAL accepts y_i]): the estimator of
Prop. 1, whose direction valid-trace SFT shares. On-policy only (one gradient step per batch of samples),
so there is no ratio to clip and no KL term.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from iterdeploy_trl.trainers import losses
from iterdeploy_trl.trainers.sft import RestoresModelState, default_bf16

# The multimodal tensors GRPO's `_compute_loss` forwards to `_get_per_token_logps_and_entropies`.
_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


# GRPO settings read by its loss only (the REINFORCE loss replaces it), at GRPO's defaults
_GRPO_LOSS_ONLY = ("sapo_temperature_neg", "sapo_temperature_pos", "vespo_k_pos", "vespo_lambda_pos",
                   "vespo_k_neg", "vespo_lambda_neg")
_GRPO_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}

# generation_kwargs that change the distribution sampled (the loss models temperature and top_p only)
_SAMPLER_KWARGS = frozenset(
    {"top_k", "top_p", "min_p", "typical_p", "temperature", "repetition_penalty", "epsilon_cutoff", "eta_cutoff"}
)


@dataclass
class ReinforceConfig(GRPOConfig):
    r"""
    Configuration for [`ReinforceTrainer`]: [`~trl.GRPOConfig`] plus the fields below. GRPO's generation
    settings (`num_generations`, `max_completion_length`, `temperature`, `use_vllm`, ...) apply unchanged;
    its objective settings (`loss_type`, `epsilon`, `importance_sampling_level`, `scale_rewards`) do not,
    since the REINFORCE loss replaces GRPO's clipped surrogate.

    Defaults that differ from GRPO's, so that the estimator is plain REINFORCE unless asked otherwise:
    `loss_type="reinforce"` (GRPO's clipped-surrogate variants `"dapo"`, `"grpo"`, ... and their `epsilon`,
    `epsilon_high`, `delta`, `importance_sampling_level`, `sapo_*`, `vespo_*` settings are refused: the loss
    below reads none of them), `vllm_importance_sampling_correction=False` (GRPO's default `True` reweights,
    and in its `"sequence_mask"` mode with `vllm_importance_sampling_clip_max=3` drops, samples by the ratio
    of the trainer's to vLLM's log-probs; set it `True` to opt in, and [`importance_sampling_record`] says
    which was used), and `bf16` `None` → `True` only where it can run (a CUDA GPU with bf16, or
    `use_cpu=True` as in TRL), else `False`, so that `ReinforceConfig(output_dir=...)` works on a CPU machine.

    Parameters:
        baseline (`str`, *optional*, defaults to `"none"`):
            Baseline subtracted from the reward, within the `num_generations` samples of one prompt:
            `"none"` (A = r: the estimator of Prop. 1), `"mean"` (A = r − group mean) or `"leave_one_out"`
            (A_i = r_i − mean of the others; `"rloo"` is read as `"leave_one_out"`). No division by the
            standard deviation in any case.
        prompts_per_step (`int` or `None`, *optional*, defaults to `None`):
            P distinct prompts per optimizer step, `num_generations` = K samples each: exactly P·K completions
            are generated, scored and trained on per optimizer step. The step's batch is laid out by TRL as
            `per_device_train_batch_size` × `gradient_accumulation_steps` × processes completions, generated
            in one generation batch (`steps_per_generation` = `gradient_accumulation_steps`, TRL's default)
            whose sampler draws `generation_batch_size` / K = P prompts; the config refuses any other layout,
            and [`reinforce_step_batch`] gives the arguments that make it. `None`: no such check (the step has
            `generation_batch_size` / K prompts, as the batch arguments make it).
        loss_normalization (`str`, *optional*, defaults to `"sequence_sum"`):
            `"sequence_sum"`: −(1/N) Σ_i A_i Σ_t log π(y_i,t), REINFORCE on whole traces. `"batch_tokens"`
            divides by Σ_i T_i instead of N (a constant factor per batch, like DAPO); `"sequence_mean"` by
            N·T_i per trace (like GRPO; not REINFORCE's direction when lengths differ). N and Σ_i T_i count the
            whole optimizer batch (all micro-batches, all processes), as in `ValidTraceSFTConfig`;
            `"batch_tokens"` needs `steps_per_generation` = `gradient_accumulation_steps` (the default).
        scale_rewards (`str`, *optional*, defaults to `"none"`):
            Overrides GRPO's `"group"`. Only GRPO's logged `frac_reward_zero_std` reads it here.
        beta (`float`, *optional*, defaults to `0.0`):
            Must be 0: REINFORCE has no KL penalty.
        num_iterations (`int`, *optional*, defaults to `1`):
            Must be 1: one gradient step per batch of samples keeps the update on-policy (the ratio
            π/π_old is 1, so nothing to clip); reusing samples is GRPO/PPO, not REINFORCE.
    """

    baseline: str = field(
        default="none",
        metadata={
            "help": "Baseline within each prompt's group of samples: 'none' (A = r, Prop. 1), 'mean' (A = r − "
            "group mean) or 'leave_one_out' (A_i = r_i − mean of the other samples).",
            "choices": list(losses.BASELINES),
        },
    )
    prompts_per_step: int | None = field(
        default=None,
        metadata={
            "help": "Distinct prompts per optimizer step (K = num_generations samples each): the step trains on "
            "exactly prompts_per_step × K completions. Build the batch arguments with reinforce_step_batch."
        },
    )
    loss_normalization: str = field(
        default="sequence_sum",
        metadata={
            "help": "'sequence_sum' (−(1/N) Σ_i A_i Σ_t log π; REINFORCE), 'batch_tokens' (/ Σ_i T_i) or "
            "'sequence_mean' (per-trace token mean, GRPO-like).",
            "choices": list(losses.NORMALIZATIONS),
        },
    )
    scale_rewards: str = field(
        default="none",
        metadata={"help": "GRPO's reward scaling; REINFORCE's advantages are never divided by a std."},
    )
    beta: float = field(default=0.0, metadata={"help": "Must be 0.0: REINFORCE has no KL penalty."})
    num_iterations: int = field(
        default=1, metadata={"help": "Must be 1: one gradient step per batch of samples (on-policy)."}
    )
    loss_type: str = field(
        default="reinforce",
        metadata={"help": "Must be 'reinforce': the policy-gradient loss above replaces GRPO's loss types."},
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={
            "help": "GRPO's correction of the vLLM sampler vs trainer log-prob mismatch (GRPO's default True). "
            "Off here: the plain REINFORCE estimator. True multiplies each token's log-prob by GRPO's ratio "
            "(and, in the mask modes, drops samples whose ratio leaves the clip range)."
        },
    )

    def __post_init__(self) -> None:
        if self.bf16 is None and not self.fp16:
            self.bf16 = default_bf16(self.use_cpu)
        super().__post_init__()
        unused = {
            "loss_type": (self.loss_type, "reinforce"),
            "epsilon": (self.epsilon, 0.2),
            "epsilon_high": (self.epsilon_high, None),
            "delta": (self.delta, None),
            "importance_sampling_level": (self.importance_sampling_level, "token"),
            "multi_objective_aggregation": (self.multi_objective_aggregation, "sum_then_normalize"),
            **{name: (getattr(self, name), _GRPO_DEFAULTS[name]) for name in _GRPO_LOSS_ONLY},
        }
        changed = [f"{name}={value!r}" for name, (value, default) in unused.items() if value != default]
        if changed:
            raise ValueError(
                f"ReinforceConfig: {', '.join(changed)} set GRPO's clipped-surrogate objective, which "
                "ReinforceTrainer's loss (−(1/N) Σ_i A_i Σ_t log π) does not read; leave them at their defaults "
                "(loss_type='reinforce'), or use trl.GRPOTrainer for GRPO's losses."
            )
        self.baseline = losses.BASELINE_ALIASES.get(self.baseline, self.baseline)
        if self.baseline not in losses.BASELINES:
            raise ValueError(
                f"baseline={self.baseline!r}: choose one of {', '.join(losses.BASELINES)} (or 'rloo')"
            )
        _check_prompts_per_step(self)
        if self.loss_normalization not in losses.NORMALIZATIONS:
            raise ValueError(
                f"loss_normalization={self.loss_normalization!r}: choose one of {', '.join(losses.NORMALIZATIONS)}"
            )
        off_objective = {
            "beta": (self.beta, 0.0),
            "num_iterations": (self.num_iterations, 1),
            "entropy_coef": (self.entropy_coef, 0.0),
            "use_adaptive_entropy": (self.use_adaptive_entropy, False),
            "top_entropy_quantile": (self.top_entropy_quantile, 1.0),
            "off_policy_mask_threshold": (self.off_policy_mask_threshold, None),
        }
        changed = [
            f"{name}={value!r}" for name, (value, default) in off_objective.items() if value != default
        ]
        if changed:
            raise ValueError(
                f"ReinforceConfig: {', '.join(changed)} change the objective away from on-policy REINFORCE; "
                "leave them at their defaults, or use trl.GRPOTrainer for KL, sample reuse or entropy terms."
            )
        if self.gradient_accumulation_steps % self.steps_per_generation != 0:
            raise ValueError(
                f"steps_per_generation={self.steps_per_generation} does not divide gradient_accumulation_steps="
                f"{self.gradient_accumulation_steps}: samples would outlive an optimizer step and be off-policy"
            )
        off_sampler = {
            "top_k": (self.top_k, (0, None)),
            "min_p": (self.min_p, (None, 0.0)),
            "repetition_penalty": (self.repetition_penalty, (1.0,)),
        }
        changed = [
            f"{name}={value!r}" for name, (value, neutral) in off_sampler.items() if value not in neutral
        ]
        sampling_kwargs = sorted(set(self.generation_kwargs or {}) & _SAMPLER_KWARGS)
        changed += [f"generation_kwargs[{key!r}]" for key in sampling_kwargs]
        if changed:
            raise ValueError(
                f"ReinforceConfig: {', '.join(changed)} change the distribution the samples are drawn from, "
                "and the REINFORCE loss is the gradient of that distribution's log-prob: this trainer computes "
                "it for `temperature` and `top_p` only. Leave these at their defaults and set the sampler with "
                "temperature and top_p."
            )
        if (
            self.loss_normalization == "batch_tokens"
            and self.steps_per_generation != self.gradient_accumulation_steps
        ):
            raise ValueError(
                f"loss_normalization='batch_tokens' with steps_per_generation={self.steps_per_generation} below "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps}: the optimizer batch's token count "
                "is known only when one generation batch makes the whole step. Leave steps_per_generation at its "
                "default (= gradient_accumulation_steps), or use loss_normalization='sequence_sum'."
            )


def reinforce_step_batch(
    prompts_per_step: int, num_generations: int, *, world_size: int = 1, micro_batch: int | None = None
) -> dict[str, int]:
    """The batch arguments of a `ReinforceConfig` whose optimizer step is `prompts_per_step` prompts × K =
    `num_generations` samples: `per_device_train_batch_size` (completions per micro-batch on each process) and
    `gradient_accumulation_steps`, with per_device_train_batch_size × gradient_accumulation_steps × world_size
    = P·K. `micro_batch`: completions per forward on each process (default: all of the process's share in
    one micro-batch, no accumulation). Pass them with `prompts_per_step` (and leave `steps_per_generation` and
    `generation_batch_size` unset): one generation batch of P·K completions then makes one optimizer step."""
    if prompts_per_step < 1 or num_generations < 1 or world_size < 1:
        raise ValueError(
            f"prompts_per_step={prompts_per_step}, num_generations={num_generations}, world_size={world_size}: "
            "each must be at least 1"
        )
    total = prompts_per_step * num_generations
    if total % world_size:
        raise ValueError(
            f"prompts_per_step={prompts_per_step} × num_generations={num_generations} = {total} completions do "
            f"not split over {world_size} processes: choose prompts_per_step so that the product is a multiple "
            f"of {world_size}"
        )
    share = total // world_size
    micro = share if micro_batch is None else micro_batch
    if micro < 1 or share % micro:
        raise ValueError(
            f"micro_batch={micro_batch} does not divide the {share} completions of each process per step "
            f"(prompts_per_step={prompts_per_step} × num_generations={num_generations} / {world_size} "
            "processes): choose a divisor of it"
        )
    return {"per_device_train_batch_size": micro, "gradient_accumulation_steps": share // micro}


def _check_prompts_per_step(args: ReinforceConfig) -> None:
    """With `prompts_per_step` = P: one generation batch of exactly P·K completions per optimizer step."""
    if args.prompts_per_step is None:
        return
    p, k = args.prompts_per_step, args.num_generations
    step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    if p < 1 or step != p * k or args.steps_per_generation != args.gradient_accumulation_steps:
        raise ValueError(
            f"ReinforceConfig: prompts_per_step={p} with num_generations={k} needs {p * k} completions per "
            f"optimizer step in one generation batch, but per_device_train_batch_size="
            f"{args.per_device_train_batch_size} × gradient_accumulation_steps={args.gradient_accumulation_steps}"
            f" × {args.world_size} processes = {step} (steps_per_generation={args.steps_per_generation}): pass "
            "reinforce_step_batch(prompts_per_step, num_generations, world_size=...) as the batch arguments and "
            "leave steps_per_generation and generation_batch_size unset"
        )


def _check_reward_columns(reward_funcs: Any, train_dataset: Any, eval_dataset: Any) -> None:
    """Before any generation: each reward function with a ``check_columns`` method (``ValidPlanReward``)
    finds its columns in the train and eval datasets (TRL would otherwise fail at the first reward call,
    after generating a batch)."""
    funcs = reward_funcs if isinstance(reward_funcs, list | tuple) else [reward_funcs]
    evals = eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval", eval_dataset)]
    for name, dataset in [("train", train_dataset), *evals]:
        columns = getattr(dataset, "column_names", None)
        if columns is None:  # no dataset, or a stream of unknown columns: checked at the first reward call
            continue
        for func in funcs:
            if callable(getattr(func, "check_columns", None)):
                func.check_columns(list(columns), where=f"the {name} dataset")


def importance_sampling_record(args: GRPOConfig) -> dict[str, Any]:
    """The vLLM importance-sampling setting a REINFORCE (or GRPO) run trained with, for its saved statistics:
    whether GRPO's correction was on and, if so, its mode and clip range (None where it does not apply). TRL
    applies it only with `use_vllm`."""
    on = bool(args.use_vllm and args.vllm_importance_sampling_correction)
    return {
        "use_vllm": bool(args.use_vllm),
        "vllm_importance_sampling_correction": on,
        "vllm_importance_sampling_mode": args.vllm_importance_sampling_mode if on else None,
        "vllm_importance_sampling_clip_min": args.vllm_importance_sampling_clip_min if on else None,
        "vllm_importance_sampling_clip_max": args.vllm_importance_sampling_clip_max if on else None,
    }


def step_layout_record(args: GRPOConfig) -> dict[str, Any]:
    """How one optimizer step's batch was made: prompts × samples, micro-batches, generation batch."""
    step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return {
        "num_generations": args.num_generations,
        "prompts_per_step": step // args.num_generations,
        "completions_per_step": step,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "world_size": args.world_size,
        "generation_batch_size": args.generation_batch_size,
        "steps_per_generation": args.steps_per_generation,
    }


def reinforce_settings_record(args: ReinforceConfig) -> dict[str, Any]:
    """Every setting of a REINFORCE run that TRL's GRPO would use to reweight, clip or rescale, as this run
    had it (for its run directory): the estimator (baseline, normalisation, no std scaling, no ratio or its
    clipping: one gradient step per batch of samples), the step's layout, `max_grad_norm`, and the vLLM
    importance-sampling setting (`importance_sampling_record`)."""
    return {
        "estimator": "reinforce",
        "baseline": args.baseline,
        "loss_normalization": args.loss_normalization,
        "std_scaling": False,  # advantages are never divided by a std (GRPO's scale_rewards is not read)
        "ratio_clipping": False,  # num_iterations = 1: π/π_old = 1, GRPO's epsilon is not read
        "beta": args.beta,
        "num_iterations": args.num_iterations,
        "max_grad_norm": args.max_grad_norm,
        "temperature": args.temperature,
        "top_p": args.top_p,
        **step_layout_record(args),
        "importance_sampling": importance_sampling_record(args),
    }


class ReinforceTrainer(RestoresModelState, GRPOTrainer):
    """[`~trl.GRPOTrainer`] turned into binary-reward REINFORCE.

    Dataset: columns `prompt`, `domain_pddl`, `problem_pddl` (the reward reads the last two). Reward: by
    default `iterdeploy_trl.reward.ValidPlanReward()`, r = 1[VAL accepts the plan].

    Advantages are `losses.reinforce_advantages(r, args.baseline, num_generations)` (raw reward by default:
    no group mean, no std scaling); the loss is `losses.policy_gradient_loss`, −(1/N) Σ_i A_i Σ_t log π(y_i,t)
    over the optimizer batch. With `num_iterations=1` the samples are on-policy, so GRPO's ratio would be 1:
    the gradient is the REINFORCE gradient and no clipping is involved. log π is the log-prob under the
    distribution sampled: logits / `temperature` (as GRPO takes it) and, for `top_p` < 1, renormalised over
    the top-p nucleus (GRPO ignores top-p in its loss; here ∇ log q of the nucleus sampler, so the estimator
    stays unbiased for the objective of the policy actually deployed). Other sampler transformations
    (`top_k`, `min_p`, `repetition_penalty`) are refused by the config. GRPO's vLLM importance-sampling
    correction is off unless the config turns it on (`importance_sampling_record`). Logged beside GRPO's metrics:
    `reward/valid_fraction` (fraction of samples with r > 0, N⁺/N for a binary reward) and
    `advantage/mean`.
    """

    config_class = ReinforceConfig
    _tag_names = ["trl", "reinforce", "iterdeploy"]
    _name = "Reinforce"

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: ReinforceConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = ReinforceConfig(output_dir=f"{self._name}-output")
        if not isinstance(args, ReinforceConfig):
            raise TypeError(
                f"ReinforceTrainer needs a ReinforceConfig, got {type(args).__name__}: build it with "
                "ReinforceConfig(...)"
            )
        if reward_funcs is None:
            from iterdeploy_trl.reward import ValidPlanReward  # lazy: VAL is only needed here

            reward_funcs = [ValidPlanReward()]
        _check_reward_columns(reward_funcs, train_dataset, eval_dataset)
        prompts = len(train_dataset) if hasattr(train_dataset, "__len__") else None
        if args.prompts_per_step is not None and prompts is not None and prompts < args.prompts_per_step:
            raise ValueError(
                f"ReinforceTrainer: the training set has {prompts} prompts, fewer than prompts_per_step="
                f"{args.prompts_per_step} (TRL's sampler would draw no full step): lower prompts_per_step to at "
                "most the number of prompts, or give more prompts"
            )
        self._rewards_per_func: torch.Tensor | None = None
        super().__init__(
            model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )

    def _calculate_rewards(
        self, inputs: list[dict[str, Any]], prompts: list, completions: list, completion_ids_list: list
    ) -> torch.Tensor:
        """GRPO's reward calls, unchanged; the gathered rewards are kept for the advantages."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """GRPO's generation and scoring, then REINFORCE's advantages in place of GRPO's."""
        output = super()._generate_and_score_completions(inputs)
        rewards_per_func = self._rewards_per_func  # (N over all processes, number of reward functions)
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan  # unscorable: advantage 0
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        advantages = losses.reinforce_advantages(rewards, self.args.baseline, group)

        local = slice(
            self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs)
        )
        output["advantages"] = advantages[local].to(output["advantages"].dtype)
        # the completions table shows the advantages trained on
        for _ in range(min(len(advantages), len(self._logs["advantages"]))):
            self._logs["advantages"].pop()
        self._logs["advantages"].extend(advantages.tolist())

        scored = rewards[~torch.isnan(rewards)]
        valid = (scored > 0).float().mean().item() if scored.numel() else 0.0
        self._metrics[mode]["reward/valid_fraction"].append(valid)
        self._metrics[mode]["advantage/mean"].append(advantages.mean().item())
        return output

    def _get_per_token_logps_and_entropies(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
        compute_aux_loss: bool = False,
        **forward_inputs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Per-token log q(y_t) of the distribution the samples were drawn from, and its entropy.

        With `top_p` = 1 this is GRPO's: log softmax(z/T) from TRL's fused LM head. With `top_p` < 1 the
        sampler draws from the nucleus renormalised, q = softmax(z/T) restricted to the nucleus, and
        REINFORCE's gradient is of log q, not of log softmax(z/T): the logits are taken from a plain forward
        and `losses.sampling_logprobs` gives log q (a sampled token that float rounding puts outside the
        recomputed nucleus is kept in its row's support, and counted in the `nucleus/outside_fraction`
        metric). This materialises (batch, completion length, vocabulary) logits per chunk of `batch_size`
        samples, which GRPO's fused head avoids."""
        if self.args.top_p >= 1.0:
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size,
                compute_entropy,
                compute_aux_loss,
                **forward_inputs,
            )
        extra = sorted(key for key, value in forward_inputs.items() if value is not None)
        if extra or compute_aux_loss:
            raise ValueError(
                f"ReinforceTrainer with top_p={self.args.top_p} supports text-only, non-MoE models; got "
                f"{', '.join(extra) or 'compute_aux_loss'}. Use top_p=1.0 (TRL's fused log-probs) for this model."
            )
        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies, outside, scored = [], [], 0.0, 0.0
        for start in range(0, input_ids.size(0), batch_size):
            ids = input_ids[start : start + batch_size]
            mask = attention_mask[start : start + batch_size]
            with self.accelerator.autocast():
                logits = model(
                    input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=logits_to_keep + 1
                ).logits
            logits = logits[:, -logits_to_keep - 1 : -1]  # the positions that predict the completion
            labels = ids[:, -logits_to_keep:]
            flat_logits, flat_labels = logits.reshape(-1, logits.size(-1)), labels.reshape(-1)
            completion = mask[:, -logits_to_keep:].bool().reshape(-1)
            log_q = losses.sampling_log_distribution(flat_logits, self.temperature, self.args.top_p)
            logps = log_q.gather(-1, flat_labels.unsqueeze(-1)).squeeze(-1)
            off = torch.isinf(logps) & completion  # sampled, yet outside the recomputed nucleus
            if off.any():
                kept = losses.sampling_logprobs(
                    flat_logits[off], flat_labels[off], self.temperature, self.args.top_p, keep_labels=True
                )
                logps = logps.masked_scatter(off, kept)
            outside += float(off.sum())
            scored += float(completion.sum())
            # padding: no log-prob, no gradient
            all_logps.append(logps.masked_fill(~completion, 0.0).view_as(labels))
            if compute_entropy:
                with torch.no_grad():
                    entropy = -(log_q.exp() * log_q.nan_to_num(neginf=0.0)).sum(-1)
                all_entropies.append(entropy.view_as(labels))
        mode = "train" if self.model.training else "eval"
        totals = self.accelerator.reduce(torch.tensor([outside, scored], device=input_ids.device), "sum")
        self._metrics[mode]["nucleus/outside_fraction"].append((totals[0] / totals[1].clamp(min=1.0)).item())
        logps = torch.cat(all_logps, dim=0)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        return logps, entropies, None

    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """−(1/N) Σ_i A_i Σ_t log π(y_i,t) on this micro-batch's share of the optimizer batch."""
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in _FORWARD_KEYS},
        )
        if "importance_sampling_ratio" in inputs and self.args.vllm_importance_sampling_correction:
            # vLLM sampler vs trainer mismatch, as in GRPO, only where the config asks for it
            token_logps = token_logps * inputs["importance_sampling_ratio"].detach()

        mode = "train" if self.model.training else "eval"
        normalization = self.args.loss_normalization
        if normalization == "batch_tokens":
            # num_items_in_batch counts the completion tokens of the whole generation batch (all processes)
            num_items = inputs["num_items_in_batch"] / self.accelerator.num_processes
            if mode == "train":
                num_items = (
                    num_items * self.current_gradient_accumulation_steps / self.args.steps_per_generation
                )
        else:
            steps = self.current_gradient_accumulation_steps if mode == "train" else 1
            num_items = mask.size(0) * steps  # micro-batches of a generation batch are equal in size
        loss = losses.policy_gradient_loss(token_logps, mask, inputs["advantages"], normalization, num_items)
        if self.aux_loss_enabled:
            steps = self.current_gradient_accumulation_steps if mode == "train" else 1
            loss = loss + self.router_aux_loss_coef * aux_loss / steps
            self._metrics[mode]["aux_loss"].append(
                self.accelerator.gather_for_metrics(aux_loss).mean().item()
            )

        totals = self.accelerator.reduce(torch.stack([(entropies * mask).sum(), mask.sum().float()]), "sum")
        self._metrics[mode]["entropy"].append((totals[0] / totals[1].clamp(min=1.0)).item())
        return loss
