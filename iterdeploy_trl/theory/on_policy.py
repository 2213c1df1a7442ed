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
from iterdeploy_trl.theory.report import (
    EMPIRICAL,
    FAIL,
    IDENTITY,
    CheckResult,
    Row,
    fmt_interval,
    interval,
    verdict,
)
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
    """SFT-on-valid vs REINFORCE gradients on the same N samples of π per prompt (VAL rewards), on
    ``config.repeats`` independent sample draws (one generator, seeded ``config.seed + 101``: draw 0 is the
    single draw of earlier versions). Identity rows must hold in every draw; the empirical magnitudes (N⁺, the
    ``sequence_mean`` and mean-baseline cosines) are reported as the mean and 95% t-interval over the draws,
    each cosine with its null (a random direction in the span of the draw's score vectors) and the ceiling
    cos(ĝ_RL of draw a, ĝ_RL of draw b) of two independent draws.

    ``samples`` (per prompt) and ``rewards`` (flat, prompt-major) replace sampling and VAL (tests): one draw."""
    name = "on_policy_same_samples"
    start = time.perf_counter()
    pi, prompts = setting.pi, setting.on_policy_prompts
    tol = tolerance(_dtype(config.dtype))
    null_gen = torch.Generator().manual_seed(config.seed + 111)
    if samples is not None:
        draws = [_draw(setting, samples, rewards, null_gen)]
    else:
        gen = torch.Generator(device=pi.device).manual_seed(config.seed + 101)
        draws = []
        for _ in range(max(1, config.repeats)):
            drawn = [
                sample_completions(
                    pi,
                    p.prompt_ids,
                    config.on_policy_samples,
                    max_new_tokens=config.on_policy_max_new_tokens,
                    generator=gen,
                )
                for p in prompts
            ]
            draws.append(_draw(setting, drawn, None, null_gen))
    first = draws[0]
    data: dict[str, Any] = {
        key: first[key]
        for key in ("samples", "valid", "prompts", "group_size", "valid_fraction_per_prompt", "valid_lengths")
    }
    data["repeats"] = len(draws)
    usable = [d for d in draws if d["valid"] > 0]
    data["draws_without_valid"] = len(draws) - len(usable)
    if not usable:
        n = first["samples"]
        rows = [
            Row(
                f"{name}: no valid trace",
                "N⁺ = 0 ⇒ REINFORCE gradient exactly 0 (nothing to compare)",
                f"N⁺ = 0 of N = {n} in all {len(draws)} draws: ‖g_RL‖ = {first['rl_norm']:g}; "
                + no_valid_message(n),
                verdict(all(d["rl_norm"] == 0.0 for d in draws)),
                IDENTITY,
            )
        ]
        for norm in losses.NORMALIZATIONS:
            rows.append(
                Row(f"{name}: SFT[{norm}] ∥ REINFORCE", "cosine measurable", "not measurable: N⁺ = 0", FAIL, IDENTITY)
            )
        data["runtime_s"] = time.perf_counter() - start
        return CheckResult(name, rows, data)
    data["comparisons"] = usable[0]["comparisons"]
    rows = _rows(name, usable, tol, setting.info.get("warmup", {}))
    data["draws"] = [{k: v for k, v in d.items() if k not in ("comparisons", "g_rl")} for d in draws]
    data["intervals"] = {
        "valid": interval(d["valid"] for d in usable),
        "sequence_mean_cosine": interval(d["cos_sequence_mean"] for d in usable),
        "mean_baseline_cosine": interval(d["cos_mean_baseline"] for d in usable),
    }
    data["null_random_direction"] = interval(d["null_cosine"] for d in usable)
    data["ceiling_reinforce"] = _ceiling(usable)
    data["warmup_steps"] = setting.info.get("warmup", {}).get("steps")
    data["machine_dependent"] = (
        "N⁺, the warm-up steps and the empirical cosines depend on the CPU's float kernels (AVX2 vs AVX-512 "
        "gave N⁺ 98 vs 73 on draw 0): see the machine in theory.json"
    )
    data["runtime_s"] = time.perf_counter() - start
    return CheckResult(name, rows, data)


def _draw(
    setting: Setting,
    samples: list[list[tuple[int, ...]]],
    rewards: Tensor | None,
    null_gen: torch.Generator,
) -> dict[str, Any]:
    """Every comparison on one draw of samples (rewards from VAL unless given)."""
    pi, params, prompts = setting.pi, setting.params, setting.on_policy_prompts
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
    out: dict[str, Any] = {
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
    out["rl_norm"] = float(g_rl["none"].norm())
    if n_valid == 0:
        return out
    # The null: (1/N) Σ z_i g_{y_i}, z ~ N(0, 1): a random direction in the span of this draw's score
    # vectors (the library's REINFORCE loss with z as the advantages).
    z = torch.randn(n, generator=null_gen, dtype=torch.float64).to(rewards)
    g_null = ascent(losses.reinforce_loss(losses.sequence_logprobs(token_logps, mask), z, "none"))
    out["null_cosine"] = cosine(g_null, g_rl["none"])
    g_sft = {
        norm: ascent(sft_on_valid_gradient_loss(token_logps, mask, rewards, norm))
        for norm in losses.NORMALIZATIONS
    }
    t_valid = float(lengths[rewards > 0.5].sum())
    expected_ratio = {"sequence_sum": n / n_valid, "batch_tokens": n / t_valid}
    comparisons = []
    for norm in losses.NORMALIZATIONS:
        cos = cosine(g_sft[norm], g_rl["none"])
        entry = {
            "a": f"sft[{norm}]",
            "b": "reinforce[none]",
            "cosine": cos,
            "one_minus_cosine": 1 - cos,
            "norm_ratio": float(g_sft[norm].norm() / g_rl["none"].norm()),
            "per_module": per_module_cosine(g_sft[norm], g_rl["none"], params),
        }
        if norm in expected_ratio:
            entry["expected_norm_ratio"] = expected_ratio[norm]
        comparisons.append(entry)
    out["cos_sequence_mean"] = next(c["cosine"] for c in comparisons if c["a"] == "sft[sequence_mean]")
    per_group = rewards.view(-1, group).sum(1)
    out["degenerate"] = bool(((per_group == 0) | (per_group == group)).all())
    for b in ("mean", "leave_one_out"):
        norm_b = float(g_rl[b].norm())
        cos = cosine(g_rl[b], g_rl["none"]) if norm_b else float("nan")
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
        out[f"cos_{b}_baseline"] = cos
    loo_norm = float(g_rl["leave_one_out"].norm())
    out["loo_to_mean_cosine"] = (
        cosine(g_rl["leave_one_out"], g_rl["mean"]) if loo_norm and float(g_rl["mean"].norm()) else float("nan")
    )
    out["comparisons"] = comparisons
    out["g_rl"] = g_rl["none"].detach()
    return out


def _ceiling(draws: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """cos(ĝ_RL of draw 2k, ĝ_RL of draw 2k+1): two independent draws of REINFORCE on the same prompts,
    disjoint pairs (independent values), with the mean and 95% t-interval."""
    return interval(
        cosine(draws[k]["g_rl"], draws[k + 1]["g_rl"]) for k in range(0, len(draws) - 1, 2)
    )


def _rows(name: str, draws: Sequence[dict[str, Any]], tol: float, warmup: dict[str, Any]) -> list[Row]:
    """The rows over the draws with N⁺ > 0: identities checked in every draw (the worst one shown), empirical
    magnitudes as mean [95% t-interval] over the draws with their null and ceiling."""
    r = len(draws)
    rows: list[Row] = []
    comps = [{c["a"]: c for c in d["comparisons"]} for d in draws]
    valid = interval(d["valid"] for d in draws)
    n = draws[0]["samples"]
    for norm in ("sequence_sum", "batch_tokens"):
        worst_cos = max(c[f"sft[{norm}]"]["one_minus_cosine"] for c in comps)
        worst_ratio = max(
            abs(c[f"sft[{norm}]"]["norm_ratio"] / c[f"sft[{norm}]"]["expected_norm_ratio"] - 1) for c in comps
        )
        what = "N/N⁺" if norm == "sequence_sum" else "N/T⁺ (T⁺ valid tokens)"
        rows.append(
            Row(
                f"{name}: SFT[{norm}] ∥ REINFORCE",
                f"cosine = 1 (1−cos ≤ {tol:.0e}); ‖g_SFT‖/‖g_RL‖ = {what}, in every draw",
                f"max 1−cos = {worst_cos:.1e}, max |ratio/({what.split(' ')[0]}) − 1| = {worst_ratio:.1e} over {r} "
                f"draw(s) (N = {n}, N⁺ {fmt_interval(valid, 1)})",
                verdict(worst_cos <= tol and worst_ratio <= 1e3 * tol),
                IDENTITY,
            )
        )
    null = interval(d["null_cosine"] for d in draws)
    ceiling = _ceiling(draws)
    beside = (
        f"; null (random direction in span{{g_y}} of the draw) {fmt_interval(null)}; ceiling cos(ĝ_RL, ĝ_RL of "
        f"an independent draw) {fmt_interval(ceiling)}"
    )
    differ = [len(d["valid_lengths"]) > 1 for d in draws]
    seq_mean = interval(d["cos_sequence_mean"] for d in draws)
    ok = all(
        (1 - d["cos_sequence_mean"] > 1e-6) if dif else (1 - d["cos_sequence_mean"] <= tol)
        for d, dif in zip(draws, differ, strict=True)
    )
    lengths = sorted({t for d in draws for t in d["valid_lengths"]})
    rows.append(
        Row(
            f"{name}: SFT[sequence_mean] ∥ REINFORCE",
            "cosine < 1 in every draw whose valid lengths differ (trace i weighted by 1/T_i); = 1 otherwise",
            f"cos = {fmt_interval(seq_mean, 4)} over {r} draw(s) (machine-dependent); valid lengths "
            f"{lengths[0]}..{lengths[-1]} tokens; lengths differ in {sum(differ)}/{r} draws" + beside,
            verdict(ok),
            EMPIRICAL,
        )
    )
    mean_b = interval(d["cos_mean_baseline"] for d in draws)
    ok = all((1 - d["cos_mean_baseline"] > 1e-6) or d["degenerate"] for d in draws if d["cos_mean_baseline"] == d["cos_mean_baseline"])
    ok = ok and all(d["cos_mean_baseline"] == d["cos_mean_baseline"] or d["degenerate"] for d in draws)
    rows.append(
        Row(
            f"{name}: REINFORCE[mean baseline] vs SFT",
            "not parallel on the same samples (adds −(1/N) Σ_i b_i ∇log π(y_i), b_i = mean reward of y_i's "
            "prompt group); same direction in expectation ((1 − 1/G) ∇J)",
            f"cos = {fmt_interval(mean_b, 4)} over {r} draw(s) (machine-dependent)" + beside,
            verdict(ok),
            EMPIRICAL,
        )
    )
    loo = [d["loo_to_mean_cosine"] for d in draws if d["loo_to_mean_cosine"] == d["loo_to_mean_cosine"]]
    worst = max((1 - c for c in loo), default=float("nan"))
    rows.append(
        Row(
            f"{name}: REINFORCE[leave_one_out baseline] ∥ REINFORCE[mean baseline]",
            f"parallel on the same samples: A_LOO = G/(G−1) · A_mean (1−cos ≤ {tol:.0e} in every draw); "
            "unbiased (b_i = mean reward of the others in the group)",
            f"max 1−cos = {worst:.1e} over {len(loo)} draw(s) (the others: every group all-valid or all-invalid)",
            verdict(all(1 - c <= tol for c in loo) and (bool(loo) or all(d["degenerate"] for d in draws))),
            IDENTITY,
        )
    )
    steps = warmup.get("steps")
    rows.append(
        Row(
            f"{name}: valid samples N⁺ and warm-up (machine-dependent)",
            "N⁺ > 0 in every draw (Prop. 1 checkable); magnitudes depend on the seed and the CPU's float kernels",
            f"N⁺ = {fmt_interval(valid, 1)} of N = {n} over {r} draw(s) (min {min(d['valid'] for d in draws)}, "
            f"max {max(d['valid'] for d in draws)}); warm-up "
            + (f"{steps} steps (one seed: no interval)" if steps is not None else "not run (given samples)"),
            verdict(all(d["valid"] > 0 for d in draws)),
            EMPIRICAL,
        )
    )
    return rows


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
