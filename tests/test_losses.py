"""The loss formulas of ``iterdeploy_trl.trainers.losses`` on hand-made float64 tensors, and the theory
they carry: on-policy valid-trace SFT points along the binary-reward REINFORCE gradient (Prop. 1), and
importance weights with β = π change nothing."""

from __future__ import annotations

import math

import pytest
import torch

from iterdeploy_trl.trainers import losses


@pytest.fixture(autouse=True)
def _float64():
    """Every tensor of these tests is float64 (restored afterwards: other test files share the process)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


class _ToyPolicy(torch.nn.Module):
    """A tiny autoregressive policy: logits of token t from a table indexed by (t, previous token)."""

    def __init__(self, vocab: int = 5, length: int = 6, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(length, vocab + 1, vocab, generator=g))
        self.vocab = vocab

    def token_logps(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        prev = torch.cat([torch.full_like(tokens[:, :1], self.vocab), tokens[:, :-1]], 1)
        logits = self.table[torch.arange(tokens.shape[1]), prev]  # (N, T, V), aligned with tokens
        return losses.token_logprobs(logits, tokens, mask)


def _batch(n: int = 6, length: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Traces of different lengths (mask) over a 5-token vocabulary."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 5, (n, length), generator=g)
    lengths = torch.tensor([6, 2, 4, 3, 5, 1][:n])
    mask = (torch.arange(length)[None] < lengths[:, None]).to(torch.float64)
    return tokens, mask


def _grad(policy: _ToyPolicy, loss: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, policy.table)
    return g


# --- token and sequence log-probs ----------------------------------------------------------------------


def test_token_logprobs_aligned_and_masked() -> None:
    logits = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]]])
    labels = torch.tensor([[2, -100]])
    mask = torch.tensor([[1, 0]])
    out = losses.token_logprobs(logits, labels, mask)
    expected = 2.0 - math.log(1 + math.e + math.e**2)
    assert out.shape == (1, 2)
    assert out[0, 0].item() == pytest.approx(expected, abs=1e-12)
    assert out[0, 1].item() == 0.0


def test_sequence_logprobs_sums_masked_tokens() -> None:
    lp = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert losses.sequence_logprobs(lp, mask).tolist() == [-7.0, -0.5]


# --- SFT normalisations --------------------------------------------------------------------------------

LP = torch.tensor(
    [[-1.0, -2.0, -3.0, 0.0], [-0.5, -0.25, 0.0, 0.0], [-4.0, 0.0, 0.0, 0.0]], dtype=torch.float64
)
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)


def test_sft_loss_formulas() -> None:
    seq = [-6.0, -0.75, -4.0]
    lengths = [3, 2, 1]
    assert losses.sft_loss(LP, MASK, "sequence_sum").item() == pytest.approx(-sum(seq) / 3)
    assert losses.sft_loss(LP, MASK, "batch_tokens").item() == pytest.approx(-sum(seq) / 6)
    mean = -sum(s / t for s, t in zip(seq, lengths, strict=True)) / 3
    assert losses.sft_loss(LP, MASK, "sequence_mean").item() == pytest.approx(mean)
    with pytest.raises(ValueError, match="unknown loss normalization"):
        losses.sft_loss(LP, MASK, "token_mean")  # type: ignore[arg-type]


def test_num_items_makes_micro_batches_add_up_to_the_full_batch() -> None:
    for normalization, full_count in (("sequence_sum", 3), ("batch_tokens", 6), ("sequence_mean", 3)):
        full = losses.sft_loss(LP, MASK, normalization)
        parts = sum(
            losses.sft_loss(LP[s], MASK[s], normalization, num_items=full_count)
            for s in (slice(0, 2), slice(2, 3))
        )
        assert parts.item() == pytest.approx(full.item(), abs=1e-12)


def test_batch_tokens_keeps_direction_sequence_mean_does_not() -> None:
    policy = _ToyPolicy()
    tokens, mask = _batch()
    g_sum = _grad(policy, losses.sft_loss(policy.token_logps(tokens, mask), mask, "sequence_sum"))
    g_tok = _grad(policy, losses.sft_loss(policy.token_logps(tokens, mask), mask, "batch_tokens"))
    g_mean = _grad(policy, losses.sft_loss(policy.token_logps(tokens, mask), mask, "sequence_mean"))
    assert _cos(g_sum, g_tok) == pytest.approx(1.0, abs=1e-12)
    # the constant factor is N / Σ T_i
    ratio = g_tok.norm() / g_sum.norm()
    assert ratio.item() == pytest.approx(mask.shape[0] / mask.sum().item(), rel=1e-12)
    assert _cos(g_sum, g_mean) < 0.999  # lengths differ, so 1/T_i reweights the traces


# --- REINFORCE ------------------------------------------------------------------------------------------


def test_reinforce_advantages() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert losses.reinforce_advantages(r, "none").tolist() == r.tolist()
    mean = losses.reinforce_advantages(r, "mean", group_size=3)
    assert mean.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0])
    loo = losses.reinforce_advantages(r, "leave_one_out", group_size=3)
    assert loo.tolist() == pytest.approx([1.0, -0.5, -0.5, 0.0, 0.0, 0.0])
    # leave-one-out = G/(G-1) × mean-baseline advantage
    assert loo.tolist() == pytest.approx((mean * 3 / 2).tolist())
    with pytest.raises(ValueError, match="groups"):
        losses.reinforce_advantages(r, "mean", group_size=4)
    with pytest.raises(ValueError, match="at least 2"):
        losses.reinforce_advantages(r, "leave_one_out", group_size=1)


def test_reinforce_advantages_nan_reward_is_left_out() -> None:
    r = torch.tensor([1.0, float("nan"), 0.0])
    assert losses.reinforce_advantages(r, "none").tolist() == [1.0, 0.0, 0.0]
    assert losses.reinforce_advantages(r, "mean").tolist() == pytest.approx([0.5, 0.0, -0.5])
    assert losses.reinforce_advantages(r, "leave_one_out").tolist() == pytest.approx([1.0, 0.0, -1.0])


def test_reinforce_loss_formula() -> None:
    seq = torch.tensor([-2.0, -3.0, -5.0, -7.0])
    r = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert losses.reinforce_loss(seq, r).item() == pytest.approx(-(-2.0 - 5.0) / 4)
    a = torch.tensor([0.5, -0.5, 0.5, -0.5])
    assert losses.reinforce_loss(seq, r, "mean", group_size=4).item() == pytest.approx(
        -(a * seq).sum().item() / 4
    )


def test_reinforce_gradient_is_sft_gradient_on_valid_traces_times_valid_fraction() -> None:
    """Prop. 1: with binary r and no baseline, ∇L_RL = (N⁺/N) ∇L_SFT(valid traces), sequence-sum SFT."""
    policy = _ToyPolicy()
    tokens, mask = _batch()
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    valid = rewards.bool()
    seq = losses.sequence_logprobs(policy.token_logps(tokens, mask), mask)
    g_rl = _grad(policy, losses.reinforce_loss(seq, rewards))
    g_sft = _grad(policy, losses.sft_loss(policy.token_logps(tokens[valid], mask[valid]), mask[valid]))
    assert _cos(g_rl, g_sft) == pytest.approx(1.0, abs=1e-12)
    assert (g_rl.norm() / g_sft.norm()).item() == pytest.approx(valid.sum().item() / len(rewards), rel=1e-12)
    # the token-level surrogate used by the trainer gives the same gradient as the sequence-level one
    g_pg = _grad(policy, losses.policy_gradient_loss(policy.token_logps(tokens, mask), mask, rewards))
    assert torch.allclose(g_pg, g_rl, atol=1e-14)


# --- importance weights ---------------------------------------------------------------------------------


def test_importance_weights_formula_and_stats() -> None:
    lp_pi = torch.tensor([-1.0, -2.0, -3.0])
    lp_beta = torch.tensor([-2.0, -2.0, -1.0])
    w, stats = losses.importance_weights(lp_pi, lp_beta)
    expected = torch.exp(lp_pi - lp_beta)
    assert torch.allclose(w, expected)
    assert stats["weight_min"].item() == pytest.approx(expected.min().item())
    assert stats["weight_mean"].item() == pytest.approx(expected.mean().item())
    assert stats["weight_max"].item() == pytest.approx(expected.max().item())
    ess = expected.sum() ** 2 / (expected**2).sum()
    assert stats["ess"].item() == pytest.approx(ess.item())


def test_importance_weights_ess_bounds() -> None:
    _, equal = losses.importance_weights(torch.zeros(4), torch.zeros(4))
    assert equal["ess"].item() == pytest.approx(4.0)
    _, one = losses.importance_weights(torch.tensor([0.0, -800.0, -800.0]), torch.zeros(3))
    assert one["ess"].item() == pytest.approx(1.0)


def test_importance_weights_per_token_is_geometric_mean() -> None:
    lp_pi, lp_beta, lengths = torch.tensor([-3.0, -10.0]), torch.tensor([-6.0, -4.0]), torch.tensor([3, 2])
    w, _ = losses.importance_weights(lp_pi, lp_beta, per_token=True, lengths=lengths)
    assert w.tolist() == pytest.approx([math.exp(3.0 / 3), math.exp(-6.0 / 2)])
    with pytest.raises(ValueError, match="lengths"):
        losses.importance_weights(lp_pi, lp_beta, per_token=True)


def test_truncation_caps_then_self_normalisation_makes_mean_one() -> None:
    lp_pi = torch.tensor([0.0, 5.0, 1000.0, -2.0])  # a sequence ratio of e^1000: inf outside log space
    lp_beta = torch.zeros(4)
    w, stats = losses.importance_weights(lp_pi, lp_beta, truncate=10.0)
    assert w.max().item() == pytest.approx(10.0)
    assert w.tolist() == pytest.approx([1.0, 10.0, 10.0, math.exp(-2.0)])
    assert stats["truncated_fraction"].item() == pytest.approx(0.5)
    wn, stats_n = losses.importance_weights(lp_pi, lp_beta, truncate=10.0, self_normalize=True)
    assert wn.mean().item() == pytest.approx(1.0)
    assert stats_n["weight_mean"].item() == pytest.approx(1.0)
    assert torch.allclose(wn, w / w.mean())  # truncate first, then normalise
    # self-normalisation alone survives a ratio that overflows exp()
    wh, _ = losses.importance_weights(lp_pi, lp_beta, self_normalize=True)
    assert torch.isfinite(wh).all() and wh.mean().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        losses.importance_weights(lp_pi, lp_beta, truncate=0.0)


def test_importance_weights_are_detached() -> None:
    policy = _ToyPolicy()
    tokens, mask = _batch()
    seq = losses.sequence_logprobs(policy.token_logps(tokens, mask), mask)
    w, stats = losses.importance_weights(seq, seq.detach() + 0.3, truncate=2.0, self_normalize=True)
    assert not w.requires_grad and all(not v.requires_grad for v in stats.values())
    # the gradient of the IW loss is Σ w_i ∇ log π: w is a constant in it
    token_logps = policy.token_logps(tokens, mask)
    g = _grad(policy, losses.iw_sft_loss(token_logps, mask, w))
    seq_again = losses.sequence_logprobs(policy.token_logps(tokens, mask), mask)
    g_const = _grad(policy, -(w.clone() * seq_again).sum() / len(w))
    assert torch.allclose(g, g_const, atol=1e-14)


def test_iw_with_beta_equal_pi_is_plain_sft() -> None:
    policy = _ToyPolicy()
    tokens, mask = _batch()
    token_logps = policy.token_logps(tokens, mask)
    seq = losses.sequence_logprobs(token_logps, mask)
    for per_token in (False, True):
        w, stats = losses.importance_weights(seq, seq.detach(), per_token=per_token, lengths=mask.sum(-1))
        assert w.tolist() == [1.0] * len(w)
        assert stats["ess"].item() == pytest.approx(len(w))
    for normalization in losses.NORMALIZATIONS:
        g_iw = _grad(policy, losses.iw_sft_loss(policy.token_logps(tokens, mask), mask, w, normalization))
        g_sft = _grad(policy, losses.sft_loss(policy.token_logps(tokens, mask), mask, normalization))
        assert torch.equal(g_iw, g_sft)


def test_iw_recovers_the_on_policy_gradient_in_expectation() -> None:
    """Prop. 2 made exact: over ALL traces of a 1-token task, Σ_y β(y) w(y) r(y) ∇log π(y) = Σ_y π(y) r(y) ∇log π(y)."""
    logits = torch.nn.Parameter(torch.tensor([0.3, -1.0, 2.0, 0.5]))
    beta = torch.softmax(torch.tensor([1.0, 0.0, -1.0, 0.2]), 0)
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    logp = torch.log_softmax(logits, 0)
    w, _ = losses.importance_weights(logp, beta.log())
    (g_iw,) = torch.autograd.grad(-(beta * r * w * logp).sum(), logits)
    logp = torch.log_softmax(logits, 0)
    (g_on,) = torch.autograd.grad(-(logp.exp().detach() * r * logp).sum(), logits)
    assert torch.allclose(g_iw, g_on, atol=1e-14)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.6, 1.0), (0.6, 0.95), (1.3, 0.5)])
def test_sampling_logprobs_is_the_samplers_distribution(temperature, top_p) -> None:
    """log q(label) = the log-softmax of transformers' temperature then top-p warpers (what the deployment
    backend samples from) at the label; −inf outside the nucleus; a proper distribution over the vocabulary."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float32) * 3
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p, min_tokens_to_keep=1))
    reference = torch.log_softmax(warpers(None, logits.clone()), -1)
    every = torch.arange(50).repeat(6, 1)
    ours = torch.stack([losses.sampling_logprobs(logits, every[:, v], temperature, top_p) for v in range(50)], 1)
    assert torch.equal(torch.isinf(ours), torch.isinf(reference))
    finite = torch.isfinite(reference)
    assert torch.allclose(ours[finite], reference[finite], atol=1e-6)
    assert torch.allclose(ours.exp().sum(-1), torch.ones(6, dtype=ours.dtype), atol=1e-5)
    assert (torch.isinf(ours).sum(-1) > 0).all() == (top_p < 1)


@pytest.mark.parametrize("self_normalize", [False, True])
def test_importance_weights_of_a_batch_with_no_weight_are_zero_not_nan(self_normalize) -> None:
    """Every log w = −∞ (each trace outside π's nucleus) or underflowing: weights 0, ess 0, all_zero 1; with
    self-normalisation this was NaN."""
    beta = torch.tensor([-3.0, -4.0], dtype=torch.float64)
    for pi in (torch.full((2,), float("-inf"), dtype=torch.float64), torch.tensor([-900.0, -1000.0], dtype=torch.float64)):
        w, stats = losses.importance_weights(pi, beta, self_normalize=self_normalize)
        if self_normalize and torch.isfinite(pi).all():
            assert torch.isfinite(w).all() and stats["all_zero"] == 0  # finite ratios: normalised as usual
            continue
        assert w.tolist() == [0.0, 0.0]
        assert (stats["ess"].item(), stats["all_zero"].item()) == (0.0, 1.0)
    _, stats = losses.importance_weights(torch.tensor([-3.0, float("-inf")]), torch.tensor([-3.0, -3.0]))
    assert stats["all_zero"] == 0
