r"""Empirical checks of the theory: valid-trace SFT is binary-reward REINFORCE (Prop. 1 and 2).

Notation as in ``theory/README.md``: π the policy being trained, β an earlier (behaviour) policy, x a
prompt, y a completion (token sequence, eos included), r(x, y) ∈ {0, 1} the binary reward, N samples per
prompt of which N⁺ are valid, g_y = ∇_θ log π(y|x) with log π summed over the completion's tokens, and
J(θ) = (1/|X|) Σ_x Σ_y π(y|x) r(x, y) the expected reward, whose gradient is ∇J = E_π[r ∇ log π].

Every "gradient" is an ascent direction g = −∇_θ L of a loss from ``trainers/losses.py`` (the loss
formulas are never re-implemented here), flattened over the trainable parameters (only the LoRA
parameters of a ``peft`` model), and compared by cosine similarity, overall and per module.

One file per check; each row of a check is labelled ``kind``: ``identity`` (true by construction of the
code: it can fail only through a coding slip, e.g. SFT ∥ REINFORCE on the same samples) or ``empirical``
(the outcome is a question about samples, precision, tokenisation or training):

==========================  =====================  =========================================================
check (module)              kind                   what
==========================  =====================  =========================================================
``on_policy_same_samples``  identity + empirical   SFT-on-valid vs REINFORCE on the same samples of π
``exact_gradient``          identity + empirical   ∇J by enumeration; Monte-Carlo SFT / REINFORCE → ∇J
``off_policy``              empirical (+1 identity) plain vs importance-weighted SFT on β's samples
``mixture``                 identity + empirical   Prop. 2 by enumeration and by Monte Carlo
``pipeline``                empirical              the package's deployment backend, TRL's tokenisation,
                                                   LoRA, bf16, T = 0.6 / top-p 0.95 vs T = 1
``pipeline_off_policy``     empirical              the same path with β ≠ π: SFT vs IW-SFT on β's samples
                                                   against π's on-policy REINFORCE
``actual_update``           empirical              a run directory's real per-generation update vs the
                                                   on-policy REINFORCE gradient (``run_update_check``)
``curation``                empirical              the loop's curated update (shortest / random-valid, one
                                                   trace per task) vs REINFORCE and c(J)-re-weighted
                                                   REINFORCE on independent draws
==========================  =====================  =========================================================

``theory.json`` (``TheoryReport.to_json``; ``SCHEMA`` names the version)::

    {
      "schema": "iterdeploy-theory/1",
      "created": ISO time, "runtime_s": float, "command": str | null,
      "machine": {cpu, cpu_family_model, cpu_capability, cpu_count, gpus, python, versions},
      "setup": {model, dtype, device, seed, repeats, sample_sizes, max_actions, warmup: {...},
                tasks: {on_policy: [...], exact: [{id, prompt, valid_plans, valid_mass_pi, valid_mass_beta}]}},
      "rows": [{"check", "expected", "measured", "verdict": "pass" | "fail",
                "kind": "identity" | "empirical"}],
      "checks": {name: {"runtime_s": float, ...check-specific numbers...}},
      "plots": [{
        "id": str, "check": str, "title": str,
        "x_label": str, "y_label": str, "x": [N, ...],        # samples per prompt
        "series": [{"name": str, "label": str,
                    "values": [[cosine of repeat r at x[i] for r] for i],   # raw, for custom bands
                    "mean": [...], "std": [...], "p10": [...], "p50": [...], "p90": [...],
                    "n": [...], "lo": [...], "hi": [...],        # 95% t-interval over the repeats
                    "ceiling": [{n, mean, lo, hi, values} per N],  # cos between disjoint pairs of repeats
                    "per_module_mean": {module: [...]}}],               # mean cosine per module group
        "reference_lines": [{"name": str, "label": str, "y": float}],  # exact limits (1 = on-policy)
        "null_random_direction": {n, mean, std, lo, hi, values}  # cos of random directions in span{g_y}
      }]
    }

The ``pipeline``, ``pipeline_off_policy``, ``actual_update`` and ``curation`` checks write no plot: their
numbers are under ``checks.pipeline``, ``checks.pipeline_off_policy``, ``checks.actual_update`` and
``checks.curation`` (cosine values per repeat with their mean and 95% t-interval: ``{"values",
"n", "mean", "std", "lo", "hi"}``), and ``setup`` is empty when no enumeration check ran.
"""

from iterdeploy_trl.theory.actual_update import UpdateConfig, actual_update
from iterdeploy_trl.theory.curation import CurationConfig, c_weight, curation, expected_cosine
from iterdeploy_trl.theory.driver import CHECKS, ENUMERATION_CHECKS, PIPELINE_CHECKS, run_checks
from iterdeploy_trl.theory.enumeration import (
    ExactContext,
    SamplePool,
    _iw_coefficients,
    _reinforce_coefficients,
    _sft_coefficients,
    exact_context,
)
from iterdeploy_trl.theory.errors import NoValidTraces, TheoryError
from iterdeploy_trl.theory.estimators import (
    iw_sft_gradient_loss,
    reinforce_gradient_loss,
    sft_on_valid_gradient_loss,
)
from iterdeploy_trl.theory.exact_gradient import exact_gradient
from iterdeploy_trl.theory.gradients import (
    ParamSet,
    SequenceGradients,
    cosine,
    flat_grad,
    module_group,
    per_module_cosine,
    sequence_gradients,
    total_valid_probability_gradient,
    trainable_parameters,
    weighted_sequences_gradient,
)
from iterdeploy_trl.theory.mixture import mixture
from iterdeploy_trl.theory.off_policy import off_policy
from iterdeploy_trl.theory.on_policy import _batch_logprobs, on_policy_same_samples
from iterdeploy_trl.theory.pipeline import PipelineConfig, pipeline, t_interval
from iterdeploy_trl.theory.pipeline_off_policy import pipeline_off_policy
from iterdeploy_trl.theory.policies import (
    Policy,
    canonical_completion,
    check_same_tokenizer,
    completion_logprobs,
    encode_completion,
    encode_prompt,
    sequence_logprobs,
    to_precision,
)
from iterdeploy_trl.theory.report import (
    EMPIRICAL,
    FAIL,
    IDENTITY,
    PASS,
    SCHEMA,
    CheckResult,
    Row,
    TheoryReport,
    format_table,
)
from iterdeploy_trl.theory.sampling import sample_completions
from iterdeploy_trl.theory.setting import (
    Setting,
    TheoryConfig,
    _pad_cat,
    build_setting,
    valid_mass,
    warm_up,
)
from iterdeploy_trl.theory.tasks import PlanningPrompt, enumerate_valid_plans, planning_prompts, val_rewards

__all__ = [
    "CHECKS",
    "ENUMERATION_CHECKS",
    "PIPELINE_CHECKS",
    "PipelineConfig",
    "UpdateConfig",
    "actual_update",
    "CurationConfig",
    "c_weight",
    "curation",
    "expected_cosine",
    "pipeline",
    "pipeline_off_policy",
    "t_interval",
    "EMPIRICAL",
    "FAIL",
    "IDENTITY",
    "PASS",
    "SCHEMA",
    "CheckResult",
    "ExactContext",
    "NoValidTraces",
    "ParamSet",
    "PlanningPrompt",
    "Policy",
    "Row",
    "SamplePool",
    "SequenceGradients",
    "Setting",
    "TheoryConfig",
    "TheoryError",
    "TheoryReport",
    "_batch_logprobs",
    "_iw_coefficients",
    "_pad_cat",
    "_reinforce_coefficients",
    "_sft_coefficients",
    "build_setting",
    "canonical_completion",
    "check_same_tokenizer",
    "completion_logprobs",
    "cosine",
    "encode_completion",
    "encode_prompt",
    "enumerate_valid_plans",
    "exact_context",
    "exact_gradient",
    "flat_grad",
    "format_table",
    "iw_sft_gradient_loss",
    "mixture",
    "module_group",
    "off_policy",
    "on_policy_same_samples",
    "per_module_cosine",
    "planning_prompts",
    "reinforce_gradient_loss",
    "run_checks",
    "sample_completions",
    "sequence_gradients",
    "sequence_logprobs",
    "sft_on_valid_gradient_loss",
    "to_precision",
    "total_valid_probability_gradient",
    "trainable_parameters",
    "val_rewards",
    "valid_mass",
    "warm_up",
    "weighted_sequences_gradient",
]
