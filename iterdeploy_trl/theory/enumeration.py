"""Shared by the enumeration checks: per-sequence gradients of every canonical valid completion, the exact
∇J, independent sample pools, and estimator coefficients c_u (−∇L = Σ_u c_u g_u)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from iterdeploy_trl.theory.estimators import iw_sft_gradient_loss
from iterdeploy_trl.theory.gradients import (
    ParamSet,
    SequenceGradients,
    cosine,
    per_module_cosine,
    sequence_gradients,
)
from iterdeploy_trl.theory.policies import Policy, sequence_logprobs
from iterdeploy_trl.theory.report import _Series
from iterdeploy_trl.theory.sampling import sample_completions
from iterdeploy_trl.theory.setting import Setting
from iterdeploy_trl.trainers import losses


@dataclass
class ExactContext:
    """Shared by the exact checks: per-sequence gradients of every canonical valid completion, log π and
    log β of each, and the exact on-policy gradient ∇J."""

    grads: SequenceGradients
    logp_pi: Tensor  # (U,)
    logp_beta: Tensor  # (U,)
    prompt_of: Tensor  # (U,) prompt index of each sequence
    index: list[dict[tuple[int, ...], int]]  # per prompt: completion ids -> row
    exact_direction: Tensor  # ∇J
    max_new_tokens: int

    def per_prompt(self, values: Tensor) -> list[Tensor]:
        """A (U,) tensor over the sequences split into one tensor per prompt (rows are prompt-major)."""
        return list(values.split(torch.bincount(self.prompt_of, minlength=len(self.index)).tolist()))


def exact_context(setting: Setting) -> ExactContext:
    prompts = setting.exact_prompts
    grads = sequence_gradients(setting.pi, prompts, setting.params)
    prompt_of = torch.as_tensor([k for k, _ in grads.keys])
    index: list[dict[tuple[int, ...], int]] = [{} for _ in prompts]
    for u, (k, ids) in enumerate(grads.keys):
        index[k][ids] = u
    logp_pi = grads.seq_logps
    logp_beta = torch.cat([sequence_logprobs(setting.beta, p.prompt_ids, p.valid_ids) for p in prompts])
    # ∇J = (1/|X|) Σ_x Σ_valid π(y|x) g_y
    exact = grads.direction(logp_pi.exp() / len(prompts))
    longest = max(len(ids) for p in prompts for ids in p.valid_ids)
    return ExactContext(grads, logp_pi, logp_beta.to(logp_pi), prompt_of, index, exact, longest)


class SamplePool:
    """Samples of a policy for the exact prompts, drawn in one batch per prompt and handed out in disjoint
    consecutive blocks, so that every estimate uses its own independent samples.

    A sample is stored as its row in the per-sequence gradients (−1: not a canonical valid completion,
    reward 0)."""

    def __init__(
        self, policy: Policy, setting: Setting, ctx: ExactContext, per_prompt: int, generator: torch.Generator
    ) -> None:
        self.rows: list[Tensor] = []
        for k, prompt in enumerate(setting.exact_prompts):
            ys = (
                sample_completions(
                    policy,
                    prompt.prompt_ids,
                    per_prompt,
                    max_new_tokens=ctx.max_new_tokens,
                    generator=generator,
                )
                if per_prompt
                else []
            )
            self.rows.append(torch.as_tensor([ctx.index[k].get(y, -1) for y in ys], dtype=torch.long))
        self.position = 0

    def take(self, n: int) -> tuple[Tensor, int]:
        """The next n samples of every prompt: (rows of the valid ones, total number of samples)."""
        block = torch.cat([r[self.position : self.position + n] for r in self.rows])
        if len(block) != n * len(self.rows):
            raise RuntimeError("sample pool exhausted")
        self.position += n
        return block[block >= 0], len(block)


def _sft_coefficients(ctx: ExactContext, rows: Tensor) -> Tensor:
    """SFT on the valid samples ``rows`` (sequence_sum), as coefficients over the sequences."""
    return ctx.grads.coefficients(lambda tl: losses.sft_loss(tl[rows], ctx.grads.mask[rows], "sequence_sum"))


def _reinforce_coefficients(ctx: ExactContext, rows: Tensor, n_total: int) -> Tensor:
    """REINFORCE without baseline on n_total samples of which ``rows`` are valid: the invalid ones have
    A = r = 0, so only the valid rows' log-probs carry gradient (their values are irrelevant)."""

    def loss_of(tl: Tensor) -> Tensor:
        seq = losses.sequence_logprobs(tl[rows], ctx.grads.mask[rows])
        padded = torch.cat([seq, seq.new_zeros(n_total - len(rows))])
        rewards = torch.cat([torch.ones(len(rows)), torch.zeros(n_total - len(rows))]).to(seq)
        return losses.reinforce_loss(padded, rewards, "none")

    return ctx.grads.coefficients(loss_of)


def _iw_coefficients(ctx: ExactContext, rows: Tensor, **kwargs: Any) -> tuple[Tensor, dict[str, float]]:
    stats: dict[str, float] = {}

    def loss_of(tl: Tensor) -> Tensor:
        loss, s = iw_sft_gradient_loss(tl[rows], ctx.grads.mask[rows], ctx.logp_beta[rows], **kwargs)
        stats.update({k: float(v) for k, v in s.items()})
        return loss

    return ctx.grads.coefficients(loss_of), stats


def _record(
    series: _Series, i: int, ctx: ExactContext, coef: Tensor, target: Tensor, params: ParamSet
) -> None:
    """Cosine of the estimate Σ c_u g_u to ``target``; NaN when the estimate is 0 (no valid sample)."""
    if not bool(coef.abs().sum() > 0):
        series.add_nan(i, params.groups)
        return
    vec = ctx.grads.direction(coef)
    series.add(i, cosine(vec, target), per_module_cosine(vec, target, params), coef)
