"""Check ``on_policy_same_samples`` (IDENTITY): SFT-on-valid vs REINFORCE on the same samples of π.

On the same samples, REINFORCE without baseline is (1/N) Σ r_i g_i and SFT on the valid ones is
(1/N⁺) Σ_valid g_i: the same vector times N/N⁺, computed from one graph. The row verifies the code (an
identity that fails only through a coding slip), not an empirical claim. The leave-one-out and mean
baselines are parallel to each other on the same samples for the same reason (A_LOO = G/(G−1) A_mean).
The ``sequence_mean`` row is the one comparison here that is not an identity: it is not parallel when
valid lengths differ."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from iterdeploy_trl.theory.errors import TheoryError, no_valid_message
from iterdeploy_trl.theory.estimators import reinforce_gradient_loss, sft_on_valid_gradient_loss
from iterdeploy_trl.theory.gradients import cosine, flat_grad, per_module_cosine
from iterdeploy_trl.theory.policies import Policy, completion_logprobs
from iterdeploy_trl.theory.report import EMPIRICAL, FAIL, IDENTITY, CheckResult, Row, verdict
from iterdeploy_trl.theory.sampling import sample_completions
from iterdeploy_trl.theory.setting import Setting, TheoryConfig, _dtype, _pad_cat, tolerance
from iterdeploy_trl.theory.tasks import PlanningPrompt, val_rewards
from iterdeploy_trl.trainers import losses


def on_policy_same_samples(
    setting: Setting,
    config: TheoryConfig,
    samples: list[list[tuple[int, ...]]] | None = None,
    rewards: Tensor | None = None,
) -> CheckResult:
    """SFT-on-valid vs REINFORCE gradients on the same N samples of π per prompt (VAL rewards).

    ``samples`` (per prompt) and ``rewards`` (flat, prompt-major) replace sampling and VAL (tests)."""
    name = "on_policy_same_samples"
    start = time.perf_counter()
    pi, params, prompts = setting.pi, setting.params, setting.on_policy_prompts
    tol = tolerance(_dtype(config.dtype))
    if samples is None:
        gen = torch.Generator(device=pi.device).manual_seed(config.seed + 101)
        samples = [
            sample_completions(
                pi,
                p.prompt_ids,
                config.on_policy_samples,
                max_new_tokens=config.on_policy_max_new_tokens,
                generator=gen,
            )
            for p in prompts
        ]
    group = len(samples[0])
    if any(len(s) != group for s in samples):
        raise TheoryError("every prompt needs the same number of samples (baselines are per prompt group)")
    if rewards is None:
        texts = [pi.tokenizer.decode(list(y), skip_special_tokens=True) for s in samples for y in s]
        problems = [p.problem for p, s in zip(prompts, samples, strict=True) for _ in s]
        rewards = val_rewards(setting.domain_pddl, problems, texts)
    rewards = rewards.double().to(pi.device)
    n, n_valid = len(rewards), int(rewards.sum())
    # One forward per distinct completion; rows of the batch index into them (same gradient exactly).
    token_logps, mask = _batch_logprobs(pi, prompts, samples)
    lengths = mask.sum(1)
    valid_lengths = sorted(
        {int(t) for t, r in zip(lengths.tolist(), rewards.tolist(), strict=True) if r > 0.5}
    )
    data: dict[str, Any] = {
        "samples": n,
        "valid": n_valid,
        "prompts": len(prompts),
        "group_size": group,
        "valid_fraction_per_prompt": rewards.view(-1, group).mean(1).tolist(),
        "valid_lengths": valid_lengths,
    }

    def ascent(loss: Tensor) -> Tensor:
        return -flat_grad(loss, params, retain_graph=True)

    g_rl = {
        b: ascent(reinforce_gradient_loss(token_logps, mask, rewards, b, group)) for b in losses.BASELINES
    }
    rows: list[Row] = []
    if n_valid == 0:
        zero = float(g_rl["none"].norm())
        rows.append(
            Row(
                f"{name}: no valid trace",
                "N⁺ = 0 ⇒ REINFORCE gradient exactly 0 (nothing to compare)",
                f"N⁺ = 0 of N = {n}: ‖g_RL‖ = {zero:g}; " + no_valid_message(n),
                verdict(zero == 0.0),
                IDENTITY,
            )
        )
        for norm in losses.NORMALIZATIONS:
            rows.append(
                Row(f"{name}: SFT[{norm}] ∥ REINFORCE", "cosine measurable", "not measurable: N⁺ = 0", FAIL, IDENTITY)
            )
        data["runtime_s"] = time.perf_counter() - start
        return CheckResult(name, rows, data)
    g_sft = {
        norm: ascent(sft_on_valid_gradient_loss(token_logps, mask, rewards, norm))
        for norm in losses.NORMALIZATIONS
    }
    t_valid = float(lengths[rewards > 0.5].sum())
    expected_ratio = {"sequence_sum": n / n_valid, "batch_tokens": n / t_valid}
    comparisons = []
    for norm in losses.NORMALIZATIONS:
        cos = cosine(g_sft[norm], g_rl["none"])
        ratio = float(g_sft[norm].norm() / g_rl["none"].norm())
        entry = {
            "a": f"sft[{norm}]",
            "b": "reinforce[none]",
            "cosine": cos,
            "one_minus_cosine": 1 - cos,
            "norm_ratio": ratio,
            "per_module": per_module_cosine(g_sft[norm], g_rl["none"], params),
        }
        if norm in expected_ratio:
            want = expected_ratio[norm]
            entry["expected_norm_ratio"] = want
            ok = 1 - cos <= tol and abs(ratio - want) <= 1e3 * tol * want
            what = "N/N⁺" if norm == "sequence_sum" else "N/T⁺ (T⁺ valid tokens)"
            rows.append(
                Row(
                    f"{name}: SFT[{norm}] ∥ REINFORCE",
                    f"cosine = 1 (1−cos ≤ {tol:.0e}); ‖g_SFT‖/‖g_RL‖ = {what} = {want:.6g}",
                    f"1−cos = {1 - cos:.1e}; ratio {ratio:.6g} (N = {n}, N⁺ = {n_valid})",
                    verdict(ok),
                    IDENTITY,
                )
            )
        else:
            differ = len(valid_lengths) > 1
            ok = (1 - cos > 1e-6) if differ else (1 - cos <= tol)
            rows.append(
                Row(
                    f"{name}: SFT[{norm}] ∥ REINFORCE",
                    "cosine < 1 when valid lengths differ (trace i weighted by 1/T_i)"
                    if differ
                    else "cosine = 1 (all valid traces have the same length)",
                    f"cos = {cos:.6f} (1−cos = {1 - cos:.2e}); valid lengths {valid_lengths[0]}..{valid_lengths[-1]} "
                    f"tokens",
                    verdict(ok),
                    EMPIRICAL,
                )
            )
        comparisons.append(entry)
    per_group = rewards.view(-1, group).sum(1)
    degenerate = bool(((per_group == 0) | (per_group == group)).all())
    for b in ("mean", "leave_one_out"):
        norm_b = float(g_rl[b].norm())
        if norm_b == 0.0:
            cos_text, cos, ok = "g = 0 (every group all-valid or all-invalid)", float("nan"), degenerate
        else:
            cos = cosine(g_rl[b], g_rl["none"])
            cos_text, ok = f"cos = {cos:.6f} (1−cos = {1 - cos:.2e})", (1 - cos > 1e-6) or degenerate
        comparisons.append(
            {
                "a": f"reinforce[{b}]",
                "b": "reinforce[none]",
                "cosine": cos,
                "one_minus_cosine": 1 - cos if cos == cos else None,
                "norm_ratio": norm_b / float(g_rl["none"].norm()),
                "per_module": per_module_cosine(g_rl[b], g_rl["none"], params) if norm_b else {},
            }
        )
        expected = (
            "not parallel on the same samples (adds −(1/N) Σ_i b_i ∇log π(y_i), b_i = mean reward of y_i's "
            "prompt group); same direction in expectation ((1 − 1/G) ∇J)"
        )
        if b == "leave_one_out":
            expected = (
                "not parallel on the same samples (b_i = mean reward of the others in the group); unbiased; "
                "parallel to the mean-baseline vector: A_LOO = G/(G−1) · A_mean"
            )
            if norm_b > 0:
                to_mean = cosine(g_rl[b], g_rl["mean"])
                cos_text += f"; cos to mean-baseline vector = {to_mean:.12f}"
                ok = ok and 1 - to_mean <= tol
        rows.append(Row(f"{name}: REINFORCE[{b} baseline] vs SFT", expected, cos_text, verdict(ok), IDENTITY))
    data["comparisons"] = comparisons
    data["runtime_s"] = time.perf_counter() - start
    return CheckResult(name, rows, data)


def _batch_logprobs(
    policy: Policy, prompts: Sequence[PlanningPrompt], samples: Sequence[Sequence[tuple[int, ...]]]
) -> tuple[Tensor, Tensor]:
    """Token log-probs (with graph) of every sample, prompt-major, (N, T): one forward per distinct
    completion, rows indexed out of it (duplicates share a row, so the gradient is the same)."""
    tls, masks = [], []
    for prompt, ys in zip(prompts, samples, strict=True):
        distinct = sorted(set(ys))
        where = {y: i for i, y in enumerate(distinct)}
        tl, m = completion_logprobs(policy, prompt.prompt_ids, distinct)
        index = torch.as_tensor([where[y] for y in ys], device=tl.device)
        tls.append(tl[index])
        masks.append(m[index])
    return _pad_cat(tls), _pad_cat(masks)
