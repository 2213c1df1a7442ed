"""The estimators compared, as losses from ``trainers/losses.py`` (never re-implemented here):
SFT on the valid traces, REINFORCE, importance-weighted SFT."""

from __future__ import annotations

from torch import Tensor

from iterdeploy_trl.theory.errors import NoValidTraces, no_valid_message
from iterdeploy_trl.trainers import losses


def sft_on_valid_gradient_loss(
    token_logps: Tensor, mask: Tensor, rewards: Tensor, normalization: losses.Normalization
) -> Tensor:
    """SFT on the valid traces only: ``losses.sft_loss`` on the rows with r = 1.

    sequence_sum: L = −(1/N⁺) Σ_valid log π(y_i|x_i). Raises ``NoValidTraces`` if N⁺ = 0."""
    valid = rewards > 0.5
    if not bool(valid.any()):
        raise NoValidTraces(no_valid_message(len(rewards)))
    return losses.sft_loss(token_logps[valid], mask[valid], normalization)


def reinforce_gradient_loss(
    token_logps: Tensor,
    mask: Tensor,
    rewards: Tensor,
    baseline: losses.Baseline = "none",
    group_size: int | None = None,
) -> Tensor:
    """REINFORCE surrogate ``losses.reinforce_loss``: L = −(1/N) Σ_i A_i log π(y_i|x_i), A = r − b."""
    return losses.reinforce_loss(losses.sequence_logprobs(token_logps, mask), rewards, baseline, group_size)


def iw_sft_gradient_loss(
    token_logps: Tensor,
    mask: Tensor,
    seq_logp_beta: Tensor,
    *,
    truncate: float | None = None,
    self_normalize: bool = False,
    per_token: bool = False,
    plain: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Importance-weighted SFT on valid β-samples: ``losses.iw_sft_loss`` with
    ``losses.importance_weights(log π, log β)`` (w = π/β, detached; optionally truncated, self-normalised,
    or the per-token geometric mean w^(1/T)).
    ``plain=True`` gives plain SFT (w = 1). Returns the loss and the weight statistics."""
    if plain:
        return losses.sft_loss(token_logps, mask, "sequence_sum"), {}
    seq_pi = losses.sequence_logprobs(token_logps, mask)
    iw = losses.importance_weights(
        seq_pi,
        seq_logp_beta.to(seq_pi),
        truncate=truncate,
        self_normalize=self_normalize,
        per_token=per_token,
        lengths=mask.sum(1),
    )
    return losses.iw_sft_loss(token_logps, mask, iw.weights, "sequence_sum"), iw.stats
