"""Check ``exact_gradient``: ∇J by enumeration, and Monte-Carlo SFT / REINFORCE converging to it.

The first row (Σ_valid π g_y = ∇ Σ_valid π, autograd) is an IDENTITY (the score-function identity, to
float precision). The Monte-Carlo rows are empirical: estimates on independent samples, cosine and
norm to ∇J as N grows (REINFORCE is unbiased in norm too: E[ĝ_RL] = ∇J)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from iterdeploy_trl import stats
from iterdeploy_trl.theory.enumeration import (
    ExactContext,
    SamplePool,
    _record,
    _reinforce_coefficients,
    _sft_coefficients,
    exact_context,
)
from iterdeploy_trl.theory.gradients import cosine, total_valid_probability_gradient
from iterdeploy_trl.theory.report import (
    EMPIRICAL,
    IDENTITY,
    CheckResult,
    Row,
    _converges,
    _fmt_curve,
    _plot,
    _Series,
    fill_ceilings,
    fmt_interval,
    random_direction_null,
    verdict,
)
from iterdeploy_trl.theory.sampling import sample_completions
from iterdeploy_trl.theory.setting import Setting, TheoryConfig, _dtype, tolerance, valid_mass
from iterdeploy_trl.theory.tasks import val_rewards


def exact_gradient(setting: Setting, config: TheoryConfig, ctx: ExactContext | None = None) -> CheckResult:
    """∇J by enumeration vs autograd; VAL on the enumerated plans; MC SFT / REINFORCE converging to ∇J."""
    from iterdeploy_trl.validate import validate_batch

    name = "exact_gradient"
    start = time.perf_counter()
    ctx = ctx or exact_context(setting)
    prompts, params, pi = setting.exact_prompts, setting.params, setting.pi
    tol = tolerance(_dtype(config.dtype))
    rows: list[Row] = []
    # 1. VAL accepts every enumerated plan (the canonical reward is VAL validity on canonical outputs).
    jobs = [(setting.domain_pddl, p.problem, list(plan)) for p in prompts for plan in p.valid_plans]
    verdicts = validate_batch(jobs)
    accepted = sum(v.valid for v in verdicts)
    roundtrip = sum(
        _roundtrip(pi.tokenizer, ids) == plan
        for p in prompts
        for plan, ids in zip(p.valid_plans, p.valid_ids, strict=True)
    )
    rows.append(
        Row(
            f"{name}: VAL accepts every enumerated plan",
            f"all {len(jobs)} plans of ≤ {config.max_actions} actions valid; canonical text round-trips",
            f"VAL: {accepted}/{len(jobs)} valid; extract(decode(ids)) = plan for {roundtrip}/{len(jobs)}",
            verdict(accepted == len(jobs) == roundtrip),
            EMPIRICAL,
        )
    )
    # 2. Σ π g (per-sequence gradients) = ∇ Σ π (autograd of the total valid probability).
    auto = total_valid_probability_gradient(pi, prompts, params)
    rel = float((auto - ctx.exact_direction).norm() / auto.norm())
    cos = cosine(auto, ctx.exact_direction)
    rows.append(
        Row(
            f"{name}: Σ_valid π(y)∇log π(y) = ∇ Σ_valid π(y)",
            f"equal to float precision (relative error ≤ {1e3 * tol:.0e})",
            f"relative error {rel:.1e}, 1−cos {1 - cos:.1e} ({len(ctx.grads.keys)} sequences, "
            f"{len(prompts)} prompts)",
            verdict(rel <= 1e3 * tol),
            IDENTITY,
        )
    )
    # 3. Monte Carlo: SFT-on-valid and REINFORCE, each on its own samples, converge to ∇J.
    sizes = list(config.sample_sizes)
    sft = _Series("sft_on_valid", "SFT on valid samples of π (sequence_sum)")
    rl = _Series("reinforce", "REINFORCE, binary reward, no baseline")
    none_valid = {"sft_on_valid": 0, "reinforce": 0}
    gen = torch.Generator(device=pi.device).manual_seed(config.seed + 202)
    pool = SamplePool(pi, setting, ctx, 2 * config.repeats * sum(sizes), gen)
    agree = _val_agreement(setting, ctx, sizes[-1], gen)
    estimators = (
        (sft, lambda rows_, tot: _sft_coefficients(ctx, rows_)),
        (rl, lambda rows_, tot: _reinforce_coefficients(ctx, rows_, tot)),
    )
    # REINFORCE is unbiased: the average of the R estimates at the largest N approaches ∇J in norm too
    # (SFT-on-valid is not: its scale is 1/P(valid)). A draw without a valid sample is a zero estimate.
    rl_sum = torch.zeros_like(ctx.exact_direction)
    last = len(sizes) - 1
    for _ in range(config.repeats):
        for i, n in enumerate(sizes):
            for series, make in estimators:
                valid_rows, total = pool.take(n)
                if series is rl and i == last and len(valid_rows):
                    rl_sum += ctx.grads.direction(make(valid_rows, total))
                if len(valid_rows) == 0:
                    none_valid[series.name] += 1
                    series.add_nan(i, params.groups)
                    continue
                _record(series, i, ctx, make(valid_rows, total), ctx.exact_direction, params)
    rl_mean = rl_sum / config.repeats
    rl_norm_ratio = float(rl_mean.norm() / ctx.exact_direction.norm())
    rl_mean_cos = cosine(rl_mean, ctx.exact_direction) if float(rl_mean.norm()) > 0 else float("nan")
    # Beside every cosine: its ceiling (two independent draws of the estimator) and its null (a random
    # direction in the span of the g_y, the subspace every estimate lives in).
    for series in (sft, rl):
        fill_ceilings(series, ctx.grads.direction)
    null = random_direction_null(
        ctx.grads.matrix, ctx.exact_direction, config.repeats,
        torch.Generator().manual_seed(config.seed + 212),
    )
    null_text = f"null (random direction in span{{g_y}}, {null['n']} draws): {fmt_interval(null)}"
    threshold = 0.9
    for series in (sft, rl):
        rows.append(
            Row(
                f"{name}: {series.label} → ∇J",
                f"cosine to ∇J → 1 as N grows (mean ≥ {threshold} at N = {sizes[-1]}; {config.repeats} repeats; "
                "mean [95% t-interval over the repeats])",
                _fmt_curve(series, sizes)
                + f"; {null_text}"
                + (
                    f"; {none_valid[series.name]} draws without a valid sample (NaN, dropped)"
                    if none_valid[series.name]
                    else ""
                ),
                verdict(_converges(series, threshold)),
                EMPIRICAL,
            )
        )
    zero = torch.zeros(len(ctx.grads.keys), dtype=torch.float64)
    unbiased = _bootstrap_mean_estimate(  # a draw without a valid sample is a zero estimate, as in rl_mean
        [zero if c is None else c for c in rl.coefs[last]] if rl.coefs else [], ctx, config.seed
    )
    rows.append(
        Row(
            f"{name}: REINFORCE is unbiased (E[ĝ_RL] = ∇J, norm included)",
            f"the mean of {config.repeats} estimates at N = {sizes[-1]}: ‖mean‖/‖∇J‖ within 0.15 of 1 and "
            f"cosine ≥ 0.98 (a baseline or a rescaling would change the norm)",
            f"‖mean ĝ_RL‖/‖∇J‖ = {rl_norm_ratio:.4f} {_fmt_pair(unbiased['norm_ratio'])}, "
            f"cos(mean ĝ_RL, ∇J) = {rl_mean_cos:.4f} {_fmt_pair(unbiased['cosine'])} "
            f"[95% bootstrap percentile interval over the {config.repeats} estimates]",
            verdict(abs(rl_norm_ratio - 1) <= 0.15 and rl_mean_cos >= 0.98),
            EMPIRICAL,
        )
    )
    ok = agree["canonical_not_val_valid"] == 0
    disagree = stats.wilson_interval(agree["canonical_not_val_valid"], max(1, agree["canonical_valid"]))
    rows.append(
        Row(
            f"{name}: canonical reward vs VAL on samples",
            "every canonical-valid sample is VAL-valid (VAL may also accept non-canonical samples)",
            f"{agree['samples']} samples: canonical-valid {agree['canonical_valid']}, VAL-valid "
            f"{agree['val_valid']}, canonical but VAL-invalid {agree['canonical_not_val_valid']} "
            f"(rate 95% Wilson interval [{disagree[0]:.4f}, {disagree[1]:.4f}])",
            verdict(ok),
            EMPIRICAL,
        )
    )
    data = {
        "sequences": len(ctx.grads.keys),
        "enumeration_vs_autograd": {"relative_error": rel, "cosine": cos},
        "val_enumerated": {"plans": len(jobs), "valid": accepted},
        "val_agreement_on_samples": agree,
        "exact_gradient_norm": float(ctx.exact_direction.norm()),
        "valid_mass_pi": valid_mass(pi, prompts),
        "draws_without_valid": none_valid,
        "reinforce_mean_estimate": {"samples_per_prompt": sizes[-1], "repeats": config.repeats,
                                    "norm_ratio_to_exact": rl_norm_ratio, "cosine_to_exact": rl_mean_cos,
                                    "bootstrap_percentile_95": unbiased},
        "null_random_direction": null,
        "canonical_not_val_valid_rate_wilson_95": list(disagree),
        "runtime_s": time.perf_counter() - start,
    }
    plot = _plot(
        "exact_gradient_convergence",
        name,
        "On-policy Monte-Carlo estimates vs the exact gradient ∇J",
        sizes,
        [sft, rl],
        reference=[("on_policy", "∇J", 1.0)],
    )
    plot["null_random_direction"] = null  # beside the curves, not an exact limit
    return CheckResult(name, rows, data, [plot])


def _bootstrap_mean_estimate(
    coefs: Sequence[torch.Tensor], ctx: ExactContext, seed: int
) -> dict[str, list[float] | None]:
    """The bootstrap's own 95% percentile interval (``stats.percentile_interval``) of ‖mean ĝ‖/‖∇J‖ and
    cos(mean ĝ, ∇J) over the R independent estimates (coefficients over the g_y): each replicate resamples
    the R estimates with replacement. None with fewer than 2 estimates."""
    if len(coefs) < 2:
        return {"norm_ratio": None, "cosine": None}
    c = torch.stack([x.double() for x in coefs])  # (R, U)
    gram = ctx.grads.matrix @ ctx.grads.matrix.T  # (U, U)
    to_target = ctx.grads.matrix @ ctx.exact_direction  # (U,)
    target_norm = float(ctx.exact_direction.norm())
    gen = torch.Generator().manual_seed(stats.BOOTSTRAP_SEED + seed)
    picks = torch.randint(len(coefs), (stats.BOOTSTRAP_REPLICATES, len(coefs)), generator=gen)
    means = c[picks].mean(1).to(gram)  # (B, U)
    norms = ((means @ gram) * means).sum(1).clamp(min=0).sqrt()
    keep = norms > 0
    ratios = (norms[keep] / target_norm).tolist()
    cosines = ((means[keep] @ to_target) / (norms[keep] * target_norm)).tolist()
    return {
        "norm_ratio": list(stats.percentile_interval(ratios)),
        "cosine": list(stats.percentile_interval(cosines)),
    }


def _fmt_pair(pair: list[float] | None) -> str:
    return "(no interval)" if pair is None else f"[{pair[0]:.4f}, {pair[1]:.4f}]"


def _roundtrip(tokenizer: Any, ids: Sequence[int]) -> tuple[str, ...]:
    from iterdeploy_trl.extract import extract_plan

    return extract_plan(tokenizer.decode(list(ids), skip_special_tokens=True)).actions


def _val_agreement(setting: Setting, ctx: ExactContext, n: int, gen: torch.Generator) -> dict[str, int]:
    """VAL verdicts vs the canonical reward on n fresh samples of π per exact prompt."""
    texts, problems, canonical = [], [], []
    for k, prompt in enumerate(setting.exact_prompts):
        for y in sample_completions(
            setting.pi, prompt.prompt_ids, n, max_new_tokens=ctx.max_new_tokens, generator=gen
        ):
            texts.append(setting.pi.tokenizer.decode(list(y), skip_special_tokens=True))
            problems.append(prompt.problem)
            canonical.append(y in ctx.index[k])
    val = val_rewards(setting.domain_pddl, problems, texts)
    can = torch.tensor(canonical)
    return {
        "samples": len(texts),
        "canonical_valid": int(can.sum()),
        "val_valid": int(val.sum()),
        "canonical_not_val_valid": int((can & (val < 0.5)).sum()),
        "val_valid_not_canonical": int((~can & (val > 0.5)).sum()),
    }
