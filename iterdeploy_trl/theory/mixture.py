"""Check ``mixture`` (Prop. 2). The exact row is an IDENTITY (λ E_π[r g] + (1−λ) E_β[r g] =
E_π[r(λ + (1−λ)β/π) g], both sides by enumeration); the Monte-Carlo row is empirical."""

from __future__ import annotations

import time

import torch

from iterdeploy_trl.theory.enumeration import (
    ExactContext,
    SamplePool,
    _record,
    _sft_coefficients,
    exact_context,
)
from iterdeploy_trl.theory.gradients import (
    cosine,
    total_valid_probability_gradient,
    weighted_sequences_gradient,
)
from iterdeploy_trl.theory.policies import sequence_logprobs
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
from iterdeploy_trl.theory.setting import Setting, TheoryConfig, _dtype, tolerance


def mixture(setting: Setting, config: TheoryConfig, ctx: ExactContext | None = None) -> CheckResult:
    """Prop. 2: SFT on a λ : 1−λ mixture of π- and β-samples = REINFORCE with reward r(λ + (1−λ)β/π)."""
    name = "mixture"
    start = time.perf_counter()
    ctx = ctx or exact_context(setting)
    params, pi, beta, prompts = setting.params, setting.pi, setting.beta, setting.exact_prompts
    tol = tolerance(_dtype(config.dtype))
    # Exact, by enumeration, with direct backward passes through the model:
    #   LHS = λ ∇ Σ_valid π  +  (1−λ) Σ_valid β ∇log π          (the mixture's expected SFT-on-valid gradient)
    #   RHS = Σ_valid π · r(λ + (1−λ) β/π) ∇log π               (REINFORCE with the effective reward)
    on_policy_part = total_valid_probability_gradient(pi, prompts, params)
    per_prompt_beta = ctx.per_prompt(ctx.logp_beta)
    per_prompt_pi = [sequence_logprobs(pi, p.prompt_ids, p.valid_ids) for p in prompts]
    off_policy_part = weighted_sequences_gradient(pi, prompts, params, [lb.exp() for lb in per_prompt_beta])
    exact_rows = []
    worst = 0.0
    for lam in config.lambdas:
        lhs = lam * on_policy_part + (1 - lam) * off_policy_part
        advantages = [
            lp.exp() * (lam + (1 - lam) * (lb - lp).exp())
            for lp, lb in zip(per_prompt_pi, per_prompt_beta, strict=True)
        ]
        rhs = weighted_sequences_gradient(pi, prompts, params, advantages)
        rel = float((lhs - rhs).norm() / rhs.norm())
        worst = max(worst, rel)
        exact_rows.append(
            {
                "lambda": lam,
                "relative_error": rel,
                "cosine": cosine(lhs, rhs),
                "cosine_to_on_policy": cosine(rhs, on_policy_part),
            }
        )
    rows = [
        Row(
            f"{name}: E[SFT on λ·π + (1−λ)·β samples] = REINFORCE with r(λ + (1−λ)β/π)",
            f"equal to float precision for λ ∈ {{{', '.join(f'{x:g}' for x in config.lambdas)}}} "
            f"(relative error ≤ {1e3 * tol:.0e})",
            f"max relative error {worst:.1e}; cos to ∇J of the mixture direction: "
            + ", ".join(f"λ={e['lambda']:g}: {e['cosine_to_on_policy']:.4f}" for e in exact_rows),
            verdict(worst <= 1e3 * tol),
            IDENTITY,
        )
    ]
    # Monte Carlo: round(λN) samples of π and N − round(λN) of β per prompt, SFT on the valid ones.
    lam = config.mixture_lambda
    p_pi, p_beta = ctx.logp_pi.exp() / len(prompts), ctx.logp_beta.exp() / len(prompts)
    target = ctx.grads.direction(lam * p_pi + (1 - lam) * p_beta)
    sizes = list(config.sample_sizes)
    mc = _Series("mixture_sft", f"SFT on valid samples, λ = {lam:g} from π, {1 - lam:g} from β")
    gen = torch.Generator(device=pi.device).manual_seed(config.seed + 404)
    from_pi = [round(lam * n) for n in sizes]
    pool_pi = SamplePool(pi, setting, ctx, config.repeats * sum(from_pi), gen)
    pool_beta = SamplePool(beta, setting, ctx, config.repeats * (sum(sizes) - sum(from_pi)), gen)
    for _ in range(config.repeats):
        for i, n in enumerate(sizes):
            valid_rows = torch.cat([pool_pi.take(from_pi[i])[0], pool_beta.take(n - from_pi[i])[0]])
            if len(valid_rows) == 0:
                mc.add_nan(i, params.groups)
                continue
            _record(mc, i, ctx, _sft_coefficients(ctx, valid_rows), target, params)
    fill_ceilings(mc, ctx.grads.direction)
    null = random_direction_null(
        ctx.grads.matrix, target, config.repeats, torch.Generator().manual_seed(config.seed + 414)
    )
    rows.append(
        Row(
            f"{name}: Monte-Carlo mixture SFT → effective-reward REINFORCE direction",
            f"cosine → 1 as N grows (λ = {lam:g}; mean ≥ 0.9 at N = {sizes[-1]}; {config.repeats} repeats; "
            "mean [95% t-interval over the repeats])",
            _fmt_curve(mc, sizes)
            + f"; null (random direction in span{{g_y}}, {null['n']} draws): {fmt_interval(null)}",
            verdict(_converges(mc, 0.9)),
            EMPIRICAL,
        )
    )
    data = {
        "exact": exact_rows,
        "mc_lambda": lam,
        "null_random_direction": null,
        "runtime_s": time.perf_counter() - start,
    }
    plot = _plot(
        "mixture_convergence",
        name,
        f"Mixture (λ = {lam:g}) SFT vs the effective-reward gradient",
        sizes,
        [mc],
        y_label="cosine to E_π[r(λ + (1−λ)β/π)∇log π]",
        reference=[
            ("effective_reward", "effective-reward gradient", 1.0),
            ("on_policy", "cos(effective-reward gradient, ∇J)", cosine(target, ctx.exact_direction)),
        ],
    )
    plot["null_random_direction"] = null  # beside the curves, not an exact limit
    return CheckResult(name, rows, data, [plot])
