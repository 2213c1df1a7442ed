"""Check ``off_policy``: valid samples of β train π; plain SFT converges to E_β[r g] (reward r·β/π),
importance-weighted SFT to ∇J.

Empirical rows: the Monte-Carlo estimates against their exact limits. IDENTITY row: self-normalisation
rescales every weight of a batch by one scalar, so its direction equals plain w's by construction; what
is checked empirically about it is its step size (norm ratio to plain w = 1/mean w)."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from iterdeploy_trl.theory.enumeration import (
    ExactContext,
    SamplePool,
    _iw_coefficients,
    _record,
    exact_context,
)
from iterdeploy_trl.theory.gradients import cosine
from iterdeploy_trl.theory.policies import check_same_tokenizer
from iterdeploy_trl.theory.report import (
    EMPIRICAL,
    IDENTITY,
    CheckResult,
    Row,
    _converges,
    _fmt_curve,
    _nanmean,
    _plot,
    _Series,
    fill_ceilings,
    fmt_interval,
    interval,
    random_direction_null,
    verdict,
)
from iterdeploy_trl.theory.setting import Setting, TheoryConfig, _dtype, tolerance


def off_policy(setting: Setting, config: TheoryConfig, ctx: ExactContext | None = None) -> CheckResult:
    """Valid samples of β training π: plain SFT vs importance-weighted SFT, cosine to π's ∇J.

    Exact limits (N → ∞) of each estimator's direction, Σ_valid β(y) a(y) g_y / |X| with a = 1 (plain),
    w (IW; = ∇J), min(w, c) (truncated), w^(1/T) (per-token geometric mean), are computed by enumeration.
    Self-normalisation rescales every weight of a batch by one factor: the direction of IW-SFT is unchanged
    (its cosines equal those of plain w; only the step size differs)."""
    name = "off_policy"
    start = time.perf_counter()
    ctx = ctx or exact_context(setting)
    params, beta, prompts = setting.params, setting.beta, setting.exact_prompts
    check_same_tokenizer(setting.pi.tokenizer, beta.tokenizer)
    sizes = list(config.sample_sizes)
    target = ctx.exact_direction
    log_w = ctx.logp_pi - ctx.logp_beta  # log π(y)/β(y) on the valid sequences
    lengths = ctx.grads.mask.sum(1)
    beta_p = ctx.logp_beta.exp() / len(prompts)
    c = config.truncate
    limits = {
        "plain_sft": cosine(ctx.grads.direction(beta_p), target),
        "iw": cosine(ctx.grads.direction(beta_p * log_w.exp()), target),
        "iw_truncated": cosine(ctx.grads.direction(beta_p * log_w.exp().clamp(max=c)), target),
        "iw_per_token": cosine(ctx.grads.direction(beta_p * (log_w / lengths).exp()), target),
    }
    variants: dict[str, tuple[str, dict[str, Any]]] = {  # name: (label, iw_sft_gradient_loss options)
        "plain_sft": ("plain SFT on valid β-samples", {"plain": True}),
        "iw": ("IW-SFT, w = π/β", {}),
        "iw_self_normalized": ("IW-SFT, self-normalised w", {"self_normalize": True}),
        "iw_truncated": (f"IW-SFT, w = min(π/β, {c:g})", {"truncate": c}),
        "iw_per_token": ("IW-SFT, per-token geometric mean of π/β", {"per_token": True}),
    }
    series = {key: _Series(key, label) for key, (label, _) in variants.items()}
    ess: list[list[float]] = [[] for _ in sizes]
    gen = torch.Generator(device=beta.device).manual_seed(config.seed + 303)
    pool = SamplePool(beta, setting, ctx, config.repeats * sum(sizes), gen)
    empty = 0
    # Self-normalisation's step size: ‖g_SN‖/‖g_w‖ should be 1/mean(w) of the batch (empirical on the draws).
    sn_ratio_error = 0.0
    sn_ratios: list[float] = []
    for _ in range(config.repeats):
        for i, n in enumerate(sizes):
            rows_, _total = pool.take(n)  # every variant on the same β-samples (paired comparison)
            if len(rows_) == 0:
                empty += 1
                for s in series.values():
                    s.add_nan(i, params.groups)
                continue
            coefs: dict[str, Tensor] = {}
            for key, s in series.items():
                coef, stats = _iw_coefficients(ctx, rows_, **variants[key][1])
                coefs[key] = coef
                if key == "iw":
                    ess[i].append(stats["ess"] / len(rows_))
                    mean_w = stats["weight_mean"]
                _record(s, i, ctx, coef, target, params)
            ratio = float(
                ctx.grads.direction(coefs["iw_self_normalized"]).norm() / ctx.grads.direction(coefs["iw"]).norm()
            )
            sn_ratios.append(ratio * mean_w)
            sn_ratio_error = max(sn_ratio_error, abs(ratio * mean_w - 1))
    last = len(sizes) - 1
    for s_ in series.values():
        fill_ceilings(s_, ctx.grads.direction)
    null = random_direction_null(
        ctx.grads.matrix, target, config.repeats, torch.Generator().manual_seed(config.seed + 313)
    )
    null_text = f"; null (random direction in span{{g_y}}, {null['n']} draws): {fmt_interval(null)}"
    plain_last = _nanmean(series["plain_sft"].values[last])
    iw, sn = series["iw"], series["iw_self_normalized"]
    same = max(
        (
            abs(a - b)
            for va, vb in zip(iw.values, sn.values, strict=True)
            for a, b in zip(va, vb, strict=True)
            if a == a and b == b
        ),
        default=0.0,
    )
    rows = [
        Row(
            f"{name}: plain SFT on β-samples",
            "converges to E_β[r ∇log π] (reward r·β/π), not to ∇J: exact limit cosine < 1",
            f"{_fmt_curve(series['plain_sft'], sizes)}; exact limit {limits['plain_sft']:.4f}{null_text}",
            verdict(limits["plain_sft"] < 1 - 1e-3 and abs(plain_last - limits["plain_sft"]) < 0.1),
            EMPIRICAL,
        ),
        Row(
            f"{name}: {iw.label}",
            f"→ 1 (unbiased for ∇J); closer to ∇J than plain SFT at N = {sizes[-1]}",
            _fmt_curve(iw, sizes) + null_text,
            verdict(_nanmean(iw.values[last]) > plain_last and _converges(iw, 0.9)),
            EMPIRICAL,
        ),
        Row(
            f"{name}: {sn.label}",
            "same direction as w (one scale factor per batch): equal cosines; only the step size differs",
            f"max |cos_SN − cos_w| = {same:.1e} over all draws",
            verdict(same <= 1e3 * tolerance(_dtype(config.dtype))),
            IDENTITY,
        ),
        Row(
            f"{name}: {sn.label}, step size",
            "‖g_SN‖/‖g_w‖ = 1/mean(w) in every draw (the batch's weights rescaled to mean 1)",
            f"max |mean(w)·‖g_SN‖/‖g_w‖ − 1| = {sn_ratio_error:.1e} over {len(sn_ratios)} draws; "
            f"weights range {float(log_w.exp().min()):.3g}..{float(log_w.exp().max()):.3g}",
            verdict(bool(sn_ratios) and sn_ratio_error <= 1e3 * tolerance(_dtype(config.dtype))),  # 0 draws: no check
            IDENTITY,
        ),
    ]
    for key in ("iw_truncated", "iw_per_token"):
        s = series[key]
        rows.append(
            Row(
                f"{name}: {s.label}",
                f"→ its own biased limit, exact cosine {limits[key]:.4f} (lower variance than w)",
                _fmt_curve(s, sizes) + null_text,
                verdict(abs(_nanmean(s.values[last]) - limits[key]) < 0.1),
                EMPIRICAL,
            )
        )
    data = {
        "limits": limits,
        "truncate": c,
        "self_normalized_step_ratio_times_mean_w": sn_ratios,
        "weights": {
            "min": float(log_w.exp().min()),
            "max": float(log_w.exp().max()),
            "truncated_beta_mass": float((beta_p * (log_w.exp() > c)).sum() / beta_p.sum()),
        },
        "relative_ess_mean": [_nanmean(v) for v in ess],
        "relative_ess": [interval(v) for v in ess],
        "null_random_direction": null,
        "draws_without_valid": empty,
        "valid_mass_beta": [float(lb.exp().sum()) for lb in ctx.per_prompt(ctx.logp_beta)],
        "runtime_s": time.perf_counter() - start,
    }
    plot = _plot(
        "off_policy_convergence",
        name,
        "Valid traces of β training π: plain vs importance-weighted SFT",
        sizes,
        list(series.values()),
        reference=[
            ("on_policy", "∇J (IW limit)", 1.0),
            ("plain_sft_limit", "plain SFT limit", limits["plain_sft"]),
            ("iw_truncated_limit", f"truncated-IW limit (c = {c:g})", limits["iw_truncated"]),
            ("iw_per_token_limit", "per-token IW limit", limits["iw_per_token"]),
        ],
    )
    plot["null_random_direction"] = null  # beside the curves, not an exact limit
    return CheckResult(name, rows, data, [plot])
