"""Loss formulas of the three trainers, as small pure functions on tensors.

Notation (``docs/ARCHITECTURE.md``, "The science"): a batch of N traces y_i for prompts x_i; T_i the number of completion tokens of
y_i; log π(y_i|x_i) = Σ_t log π(y_i,t | x_i, y_i,<t) the trace's log-probability, summed over its completion
tokens; β the behaviour policy that sampled a trace; r_i ∈ {0, 1} the binary reward 1[VAL accepts y_i];
N⁺ = Σ_i r_i the number of valid traces.

Shapes: ``token_logps`` and ``mask`` are (N, T) with T the padded completion length (mask 1 on a trace's
own completion tokens, 0 on prompt and padding); sequence-level tensors are (N,).

Gradient accumulation. Each loss divides a sum over traces by a denominator: the number of traces N
("sequence_sum", "sequence_mean") or of completion tokens Σ_i T_i ("batch_tokens"). ``num_items`` replaces
that denominator by its value over the whole optimizer batch (all micro-batches, all devices): the
micro-batch losses then add up to exactly the loss of the full batch, so the gradient does not depend on
how the batch was split. Without it, each micro-batch is normalised on its own.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

# The sampler's distribution (log q at a temperature and top-p) lives in iterdeploy_trl/sampler.py; re-exported.
from iterdeploy_trl.sampler import sampling_log_distribution, sampling_logprobs  # noqa: F401

Normalization = Literal["sequence_sum", "batch_tokens", "sequence_mean"]
Baseline = Literal["none", "mean", "leave_one_out"]

NORMALIZATIONS: tuple[str, ...] = ("sequence_sum", "batch_tokens", "sequence_mean")
BASELINES: tuple[str, ...] = ("none", "mean", "leave_one_out")
BASELINE_ALIASES: dict[str, str] = {"rloo": "leave_one_out"}  # other names a config may use


def token_logprobs(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Per-token log-probabilities log π(labels[i, t] | ...) = log_softmax(logits[i, t])[labels[i, t]].

    ALIGNED, not shifted: ``logits[:, t]`` is the distribution of ``labels[:, t]``. For a causal LM whose
    ``logits[:, t]`` predicts token t + 1, call ``token_logprobs(logits[:, :-1], input_ids[:, 1:],
    mask[:, 1:])``. Positions with ``mask == 0`` are 0 (their label may be anything, e.g. -100)."""
    mask = mask.bool()
    safe_labels = labels.masked_fill(~mask, 0).long()
    logps = torch.log_softmax(
        logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, -1
    )
    logps = logps.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return logps.masked_fill(~mask, 0.0)


def sequence_logprobs(token_logps: Tensor, mask: Tensor) -> Tensor:
    """log π(y_i|x_i) = Σ_t mask_i,t · log π(y_i,t | x_i, y_i,<t), one value per trace (N,)."""
    return (token_logps * mask).sum(-1)


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"unknown loss normalization {normalization!r}: choose one of {', '.join(NORMALIZATIONS)}"
        )


def weighted_nll(
    token_logps: Tensor,
    mask: Tensor,
    weights: Tensor | None,
    normalization: Normalization = "sequence_sum",
    num_items: Tensor | float | None = None,
) -> Tensor:
    """−Σ_i c_i Σ_t log π(y_i,t) / D: the common form of every loss here (c_i = 1 without weights).

    sequence_sum:  c_i = w_i,          D = N
    batch_tokens:  c_i = w_i,          D = Σ_i T_i
    sequence_mean: c_i = w_i / T_i,    D = N
    D is ``num_items`` when given (the count over the whole optimizer batch)."""
    _check_normalization(normalization)
    mask = mask.to(token_logps.dtype)
    per_trace = sequence_logprobs(token_logps, mask)  # (N,)
    if normalization == "sequence_mean":
        per_trace = per_trace / mask.sum(-1).clamp(min=1.0)
    if weights is not None:
        per_trace = per_trace * weights.to(per_trace.dtype)
    if num_items is None:
        num_items = (
            mask.sum() if normalization == "batch_tokens" else per_trace.new_tensor(float(mask.shape[0]))
        )
    # A batch with nothing to count reduces to a finite 0 rather than 0/0.
    return -per_trace.sum() / torch.as_tensor(
        num_items, dtype=per_trace.dtype, device=per_trace.device
    ).clamp(min=1)


def sft_loss(
    token_logps: Tensor,
    mask: Tensor,
    normalization: Normalization = "sequence_sum",
    num_items: Tensor | float | None = None,
) -> Tensor:
    """Negative log-likelihood of the traces, normalised three ways.

    sequence_sum  (default): L = −(1/N) Σ_i Σ_t log π(y_i,t). Its gradient is −(1/N) Σ_i ∇ log π(y_i|x_i),
        exactly (N/N⁺ times, on N⁺ valid traces of N samples) the REINFORCE gradient (Prop. 1).
    batch_tokens  (TRL's default): L = −Σ_i Σ_t log π(y_i,t) / Σ_i T_i. The sequence_sum loss times
        N / Σ_i T_i, a positive constant per batch: same direction, step size varying with lengths.
    sequence_mean: L = −(1/N) Σ_i (1/T_i) Σ_t log π(y_i,t). Reweights trace i by 1/T_i: when lengths
        differ this is NOT the REINFORCE direction (long plans are under-weighted).

    ``num_items``: the denominator (N or Σ_i T_i) over the whole optimizer batch under gradient accumulation."""
    return weighted_nll(token_logps, mask, None, normalization, num_items)


class ImportanceWeights(NamedTuple):
    """Detached per-trace weights and their statistics (0-dim detached tensors)."""

    weights: Tensor
    stats: dict[str, Tensor]


def log_importance_ratios(
    seq_logp_pi: Tensor,
    seq_logp_beta: Tensor,
    *,
    truncate: float | None = None,
    per_token: bool = False,
    lengths: Tensor | None = None,
) -> Tensor:
    """log w_i before any self-normalisation, in float64 and DETACHED:

    per_token=False: log w_i = log π(y_i|x_i) − log β(y_i|x_i) (sequence ratio: unbiased, explodes).
    per_token=True:  log w_i = (log π(y_i|x_i) − log β(y_i|x_i)) / T_i, the geometric mean of the
        per-token ratios (biased, tame). Needs ``lengths`` = T_i.
    truncate = c:    log w_i ← min(log w_i, log c)."""
    log_w = seq_logp_pi.detach().double() - seq_logp_beta.detach().double().to(seq_logp_pi.device)
    if per_token:
        if lengths is None:
            raise ValueError("per_token importance weights need the completion lengths T_i (`lengths`)")
        log_w = log_w / lengths.detach().to(log_w).clamp(min=1.0)
    if truncate is not None:
        if truncate <= 0:
            raise ValueError(f"truncate must be a positive weight cap, got {truncate}")
        log_w = log_w.clamp(max=math.log(truncate))
    return log_w


def importance_weights(
    seq_logp_pi: Tensor,
    seq_logp_beta: Tensor,
    *,
    truncate: float | None = None,
    self_normalize: bool = False,
    per_token: bool = False,
    lengths: Tensor | None = None,
) -> ImportanceWeights:
    """Importance weights w_i = π(y_i|x_i) / β(y_i|x_i), computed in log space and DETACHED.

    1. ``log_importance_ratios``: the sequence (or per-token geometric-mean) ratio, truncated at c if
       ``truncate`` = c: w_i ← min(w_i, c);
    2. self-normalisation, if asked: w_i ← w_i / ((1/N) Σ_j w_j), so the mean weight is 1 (after
       normalisation a weight may exceed c again: c bounds the ratio, normalisation fixes the scale). The
       mean is over the N traces given: pass the whole optimizer batch (all micro-batches, all processes)
       for an estimator that does not depend on how the batch is split.

    No gradient flows through w: ∇[w_i log π(y_i|x_i)] = w_i ∇ log π(y_i|x_i), the off-policy correction
    of the REINFORCE gradient. Stats (over this batch): weight_min, weight_mean, weight_max, the effective
    sample size ess = (Σ_i w_i)² / Σ_i w_i² (N for equal weights, 1 when one trace carries all the weight),
    truncated_fraction, the fraction of ratios the cap lowered, and all_zero (1.0 when every weight is 0).

    A batch whose weights are all 0 (every log w = −∞, e.g. each trace has a token outside π's top-p nucleus,
    or every ratio underflows) has no direction to normalise: its weights are all 0 (never NaN, with or
    without self-normalisation), ess 0 and all_zero 1, so it contributes no gradient; the trainer counts such
    batches."""
    raw = log_importance_ratios(seq_logp_pi, seq_logp_beta, per_token=per_token, lengths=lengths)
    log_w = log_importance_ratios(
        seq_logp_pi, seq_logp_beta, truncate=truncate, per_token=per_token, lengths=lengths
    )
    truncated_fraction = (raw > log_w).double().mean() if log_w.numel() else log_w.new_zeros(())
    if not log_w.numel() or not bool(torch.isfinite(torch.logsumexp(log_w, 0))):
        # every weight is 0: no scale to normalise, and ess would be 0/0
        zeros = torch.zeros_like(log_w)
        zero = log_w.new_zeros(())
        stats = {"weight_min": zero, "weight_mean": zero, "weight_max": zero, "ess": zero,
                 "truncated_fraction": truncated_fraction, "all_zero": log_w.new_ones(())}
        out_dtype = seq_logp_pi.dtype if seq_logp_pi.is_floating_point() else torch.float32
        return ImportanceWeights(zeros.to(out_dtype), {k: v.detach() for k, v in stats.items()})
    if self_normalize:
        # w_i / mean_j w_j = exp(log w_i − logsumexp_j log w_j + log N), stable for huge ratios
        log_w = log_w - torch.logsumexp(log_w, 0) + math.log(log_w.numel())
    weights = log_w.exp()
    ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))
    if weights.max() == 0:  # every ratio underflowed: the weights used are all 0
        ess = torch.zeros_like(ess)
    stats = {
        "weight_min": weights.min(),
        "weight_mean": weights.mean(),
        "weight_max": weights.max(),
        "ess": ess,
        "truncated_fraction": truncated_fraction,
        "all_zero": (weights.max() == 0).to(log_w.dtype),  # every ratio underflowed
    }
    out_dtype = seq_logp_pi.dtype if seq_logp_pi.is_floating_point() else torch.float32
    return ImportanceWeights(weights.to(out_dtype), {k: v.detach() for k, v in stats.items()})


def iw_sft_loss(
    token_logps: Tensor,
    mask: Tensor,
    weights: Tensor,
    normalization: Normalization = "sequence_sum",
    num_items: Tensor | float | None = None,
) -> Tensor:
    """Importance-weighted SFT: L = −(1/N) Σ_i w_i Σ_t log π(y_i,t) (sequence_sum; the other
    normalisations as in ``sft_loss``, with the per-trace factor w_i). ``weights`` are detached here too:
    the gradient is −(1/N) Σ_i w_i ∇ log π(y_i|x_i). With β = π (w = 1) this is ``sft_loss``."""
    return weighted_nll(token_logps, mask, weights.detach(), normalization, num_items)


def mean_baseline(grouped_rewards: Tensor, grouped_scored: Tensor) -> Tensor:
    """b_i = (1/G) Σ_{j in group} r_j, the mean reward of the prompt's group (every sample of it gets the same
    value). (P, G) rewards (0 where unscored) and a 0/1 float mask of the scored ones; unscored samples are
    left out of the mean (G counts the scored ones); a group with none scored has baseline 0."""
    count = grouped_scored.sum(1, keepdim=True)
    return (grouped_rewards.sum(1, keepdim=True) / count.clamp(min=1.0)).expand_as(grouped_rewards)


def leave_one_out_baseline(grouped_rewards: Tensor, grouped_scored: Tensor) -> Tensor:
    """b_i = (1/(G−1)) Σ_{j in group, j≠i} r_j, the mean reward of the OTHER samples of the prompt (RLOO,
    Kool et al. 2019; Ahmadian et al. 2024): b_i does not depend on r_i, so the estimator stays unbiased, and
    r_i − b_i = G/(G−1) · (r_i − mean of the group). (P, G) rewards (0 where unscored) and a 0/1 float mask of
    the scored ones; unscored samples are left out (G counts the scored ones); b_i = 0 where no other sample of
    the group is scored."""
    others = (grouped_scored.sum(1, keepdim=True) - grouped_scored).clamp(min=0.0)
    total = grouped_rewards.sum(1, keepdim=True)
    return torch.where(
        others > 0, (total - grouped_rewards) / others.clamp(min=1.0), torch.zeros_like(grouped_rewards)
    )


def reinforce_advantages(
    rewards: Tensor, baseline: Baseline | str = "none", group_size: int | None = None
) -> Tensor:
    """Advantages A_i = r_i − b_i of N rewards laid out as consecutive groups of ``group_size`` samples of one
    prompt (P prompts × G samples, prompt-major, as GRPO's sampler lays them out). No std scaling.

    none:          b_i = 0, A_i = r_i (the plain REINFORCE estimator of Prop. 1).
    mean:          b_i = ``mean_baseline`` = (1/G) Σ_{j in group} r_j.
    leave_one_out: b_i = ``leave_one_out_baseline`` = (1/(G−1)) Σ_{j in group, j≠i} r_j (RLOO; ``"rloo"`` is
                   accepted as its other name).

    A NaN reward (a completion no reward function could score) is left out of its group's baselines and
    gets A_i = 0. ``group_size=None`` treats the whole batch as one group. A leave-one-out baseline with no
    other scored sample in the group is 0."""
    baseline = BASELINE_ALIASES.get(baseline, baseline)
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}: choose one of {', '.join(BASELINES)} (or 'rloo')")
    scored = ~torch.isnan(rewards)
    r = torch.nan_to_num(rewards, nan=0.0)
    if baseline == "none":
        return r
    group = r.numel() if group_size is None else group_size
    if r.numel() % group != 0:
        raise ValueError(f"{r.numel()} rewards do not split into groups of {group} samples of one prompt")
    if baseline == "leave_one_out" and group < 2:
        raise ValueError("a leave-one-out baseline needs at least 2 samples per prompt (group_size >= 2)")
    grouped_r, grouped_n = r.view(-1, group), scored.view(-1, group).to(r.dtype)
    base_of = mean_baseline if baseline == "mean" else leave_one_out_baseline
    advantages = (grouped_r - base_of(grouped_r, grouped_n)).reshape(-1)
    return torch.where(scored, advantages, torch.zeros_like(advantages))


def policy_gradient_loss(
    token_logps: Tensor,
    mask: Tensor,
    advantages: Tensor,
    normalization: Normalization = "sequence_sum",
    num_items: Tensor | float | None = None,
) -> Tensor:
    """Surrogate whose gradient is the policy gradient: L = −(1/N) Σ_i A_i Σ_t log π(y_i,t) (sequence_sum;
    the other normalisations as in ``sft_loss``, with the per-trace factor A_i). A is detached."""
    return weighted_nll(token_logps, mask, advantages.detach(), normalization, num_items)


def reinforce_loss(
    seq_logps: Tensor,
    rewards: Tensor,
    baseline: Baseline = "none",
    group_size: int | None = None,
) -> Tensor:
    """REINFORCE on whole traces: L = −(1/N) Σ_i A_i log π(y_i|x_i), A from ``reinforce_advantages``.

    ``seq_logps`` are the summed log π(y_i|x_i) (``sequence_logprobs``). With binary rewards and no baseline
    the gradient is (1/N) Σ_{valid} −∇ log π(y_i|x_i) = (N⁺/N) × the sequence_sum SFT gradient on the
    N⁺ valid traces (Prop. 1)."""
    advantages = reinforce_advantages(rewards, baseline, group_size).to(seq_logps.dtype)
    return -(advantages.detach() * seq_logps).sum() / max(seq_logps.numel(), 1)
