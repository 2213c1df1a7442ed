r"""Check ``pipeline_off_policy`` (EMPIRICAL): SFT vs IW-SFT on an earlier policy's samples, on the real pipeline.

``pipeline`` samples from the model it differentiates (β = π), where IW-SFT's weights are 1 and it cannot be
told from SFT. Here the samples come from another model β (``--beta-model``: e.g. a run's base model) and
the gradients are taken at π (``--model``: e.g. a later generation of the same run), as in the loop, whose
accumulated training set holds traces of earlier generations. Everything else is the ``pipeline`` check's
path: ``deploy.TransformersBackend`` samples at the run's sampling settings, VAL rewards, rows of the
sampled token ids prepared by the package's trainers, a LoRA adapter on π (B drawn N(0, s²)), float32.

Per repeat (independent sampling seeds) and setting (T, top-p):

- ``sft_beta``: −∇ of ``ValidTraceSFTTrainer.compute_loss`` at π on β's valid samples: plain SFT, whose
  expectation is E_β[r ∇log π] (the direction β's samples favour; Prop. 2 with λ = 0);
- ``iw_beta``: −∇ of ``ImportanceWeightedSFTTrainer.compute_loss`` at π on the same rows with β's recorded
  behaviour log-probs, self-normalised over the batch: w = π/β with π under the sampler's temperature and
  nucleus, a consistent estimate of ∇J(π)'s direction;
- ``rl_pi``, ``rl_pi_2``: (1/N) Σ r ∇log π_sampler(y) on two independent draws of π itself (the on-policy
  REINFORCE gradient of the policy being trained, and a second one: how close two estimates of the same
  direction come at this sample size, the ceiling any estimator can reach here).

What would show the off-policy correction working: cos(iw_beta, rl_pi) above cos(sft_beta, rl_pi); how much
is bounded by cos(rl_pi, rl_pi_2). Nothing forces either: both are measurements, and with few valid samples
or degenerate weights (relative ESS near 1/N) the correction's variance can cost more than the bias it
removes. Intervals are 95% Student-t intervals over the repeats.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from iterdeploy_trl.theory.errors import TheoryError
from iterdeploy_trl.theory.gradients import trainable_parameters
from iterdeploy_trl.theory.pipeline_gradients import (
    collate,
    fmt_interval,
    reinforce_vector,
    safe_cosine,
    sampler_sequence_logprobs,
    sft_trainer,
    t_interval,
    trainer_gradient,
)
from iterdeploy_trl.theory.pipeline_sampling import PipelineConfig, load_tasks, lora_model, sample_rows
from iterdeploy_trl.theory.report import EMPIRICAL, CheckResult, Row, verdict

PAIRS = (("iw_beta", "rl_pi"), ("sft_beta", "rl_pi"), ("rl_pi", "rl_pi_2"), ("sft_beta", "iw_beta"))


def pipeline_off_policy(config: PipelineConfig, log: Callable[[str], None] | None = None) -> CheckResult:
    """Run the ``pipeline_off_policy`` check (module docstring)."""
    import datasets

    from iterdeploy_trl.deploy import TransformersBackend, batch_seed
    from iterdeploy_trl.models import load_model_and_tokenizer
    from iterdeploy_trl.prompts import build_prompt

    name = "pipeline_off_policy"
    start = time.perf_counter()
    datasets.disable_progress_bars()
    if not config.model_path or not config.beta_model_path:
        raise TheoryError(
            "the pipeline_off_policy check needs two models: --model PATH (π, the policy the gradients are "
            "taken at, e.g. a later generation's model) and --beta-model PATH (β, the policy that sampled, e.g. "
            "the run's base model)"
        )
    if config.backend != "transformers":
        raise TheoryError("the pipeline_off_policy check samples with the transformers backend only")
    if config.repeats < 2:
        raise TheoryError(f"the pipeline_off_policy check needs at least 2 repeats, got {config.repeats}")
    loaded = {}
    for role, path in (("π", config.model_path), ("β", config.beta_model_path)):
        try:
            loaded[role] = load_model_and_tokenizer(path, dtype=torch.float32, device=config.device)
        except (OSError, ValueError) as exc:
            raise TheoryError(f"{path}: cannot load the model ({exc})") from exc
    (pi_model, tok), (beta_model, beta_tok) = loaded["π"], loaded["β"]
    if beta_tok.get_vocab() != tok.get_vocab():
        raise TheoryError(f"{config.beta_model_path}: β's tokenizer differs from π's ({config.model_path})")
    dom, tasks = load_tasks(config)
    prompts = [build_prompt(dom, t.problem, config.prompt_style, domain=config.domain) for t in tasks]
    pi = lora_model(pi_model, config, config.seed)
    params = trainable_parameters(pi)
    backends = {
        "β": TransformersBackend(beta_model.eval(), tok, batch_size=64),
        "π": TransformersBackend(pi, tok, batch_size=64),
    }
    prompt_ids = {p: list(tok(p)["input_ids"]) for p in dict.fromkeys(prompts)}

    def draw(role: str, temperature: float, top_p: float, repeat: int) -> tuple[list[dict[str, Any]], Tensor]:
        seed = batch_seed(config.seed, "theory-pipeline-off-policy", role, temperature, top_p, repeat) % (
            2**31
        )
        _, rows, rewards = sample_rows(
            backends[role.rstrip("'")], dom, tasks, prompts, prompt_ids, config, temperature, top_p, seed
        )
        return rows, rewards

    measured: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="iterdeploy-theory-") as tmp:
        for temperature, top_p in config.settings:
            for r in range(config.repeats):
                entry: dict[str, Any] = {"temperature": temperature, "top_p": top_p, "repeat": r}
                vectors: dict[str, Tensor] = {}
                beta_rows, beta_r = draw("β", temperature, top_p, r)
                entry["beta_valid"] = int(beta_r.sum())
                entry["samples"] = len(beta_rows)
                valid = [row for row, x in zip(beta_rows, beta_r.tolist(), strict=True) if x > 0.5]
                for key, role in (("rl_pi", "π"), ("rl_pi_2", "π'")):
                    rows, rewards = draw(role, temperature, top_p, r)
                    entry[f"{key}_valid"] = int(rewards.sum())
                    if rewards.sum() > 0:
                        vectors[key] = _reinforce(pi, tok, rows, rewards, temperature, top_p, params, tmp)
                if valid:
                    sft = sft_trainer(
                        pi,
                        tok,
                        valid,
                        importance_weighted=False,
                        normalization=config.loss_normalization,
                        out_dir=tmp,
                    )
                    iw = sft_trainer(
                        pi,
                        tok,
                        valid,
                        importance_weighted=True,
                        normalization=config.loss_normalization,
                        temperature=temperature,
                        top_p=top_p,
                        out_dir=tmp,
                    )
                    vectors["sft_beta"] = trainer_gradient(
                        sft, collate(sft, pi.device), params, "float32", config.device
                    )
                    iw_batch = collate(iw, pi.device)
                    vectors["iw_beta"] = trainer_gradient(iw, iw_batch, params, "float32", config.device)
                    with torch.no_grad():
                        pi.eval()
                        seq_pi, _ = sampler_sequence_logprobs(pi, iw_batch, temperature, top_p)
                    log_w = seq_pi.double().cpu() - torch.tensor(
                        [row["behaviour_logprob"] for row in valid], dtype=torch.float64
                    )
                    w = torch.exp(log_w - log_w.max())
                    entry["log_w_min"], entry["log_w_max"] = float(log_w.min()), float(log_w.max())
                    entry["relative_ess"] = float(w.sum() ** 2 / (w * w).sum() / len(w))
                for a, b in PAIRS:
                    if a in vectors and b in vectors:
                        entry[f"cos_{a}_{b}"] = safe_cosine(vectors[a], vectors[b])
                if log:
                    log(
                        f"  pipeline_off_policy T={temperature:g} top-p={top_p:g} repeat {r}: β valid "
                        f"{entry['beta_valid']}/{entry['samples']}, π valid {entry.get('rl_pi_valid')}, "
                        f"{entry.get('rl_pi_2_valid')}"
                    )
                measured.append(entry)
    return _report(name, measured, config, params.size, time.perf_counter() - start)


def _reinforce(
    model: torch.nn.Module,
    tok: Any,
    rows: list[dict[str, Any]],
    rewards: Tensor,
    temperature: float,
    top_p: float,
    params: Any,
    out_dir: str,
) -> Tensor:
    """``pipeline.reinforce_vector`` of one draw of π: (1/N) Σ r ∇log π_sampler(y)."""
    valid = [row for row, x in zip(rows, rewards.tolist(), strict=True) if x > 0.5]
    trainer = sft_trainer(
        model, tok, valid, importance_weighted=False, normalization="sequence_sum", out_dir=out_dir
    )
    model.eval()
    return reinforce_vector(model, collate(trainer, model.device), len(rows), temperature, top_p, params)


def _report(
    name: str, measured: list[dict[str, Any]], config: PipelineConfig, n_params: int, runtime: float
) -> CheckResult:
    rows: list[Row] = []
    table: list[dict[str, Any]] = []
    for temperature, top_p in config.settings:
        mine = [m for m in measured if m["temperature"] == temperature and m["top_p"] == top_p]
        summary: dict[str, Any] = {"temperature": temperature, "top_p": top_p, "repeats": len(mine)}
        for a, b in PAIRS:
            values = [m[f"cos_{a}_{b}"] for m in mine if f"cos_{a}_{b}" in m]
            summary[f"cos_{a}_{b}"] = {"values": values, **t_interval(values)}
        for key in ("beta_valid", "rl_pi_valid", "rl_pi_2_valid", "relative_ess", "log_w_min", "log_w_max"):
            summary[key] = [m.get(key) for m in mine]
        table.append(summary)
        iw, sft, ceiling = (summary[f"cos_{a}_{b}"] for a, b in PAIRS[:3])
        gain = [
            m["cos_iw_beta_rl_pi"] - m["cos_sft_beta_rl_pi"]
            for m in mine
            if "cos_iw_beta_rl_pi" in m and "cos_sft_beta_rl_pi" in m
        ]
        summary["iw_minus_sft"] = {"values": gain, **t_interval(gain)}
        ess = [e for e in summary["relative_ess"] if e is not None]
        rows.append(
            Row(
                f"{name}: β's samples, gradients at π, T = {temperature:g}, top-p = {top_p:g}",
                "measured: IW-SFT (w = π/β) should sit closer than SFT to π's REINFORCE direction, up to the "
                "ceiling of two REINFORCE draws of π",
                f"cos(IW-SFT, RL_π) {fmt_interval(iw)}; cos(SFT, RL_π) {fmt_interval(sft)}; IW − SFT "
                f"{fmt_interval(summary['iw_minus_sft'])}; ceiling cos(RL_π, RL_π′) {fmt_interval(ceiling)}; β valid "
                f"{summary['beta_valid']}, relative ESS {min(ess, default=float('nan')):.2f}–"
                f"{max(ess, default=float('nan')):.2f}",
                verdict(len(gain) >= 2 and ceiling["n"] >= 2),
                EMPIRICAL,
            )
        )
    data = {
        "model": config.model_path,
        "beta_model": config.beta_model_path,
        "backend": "transformers (deploy.TransformersBackend)",
        "tasks": config.tasks,
        "samples_per_task": config.samples_per_task,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "init_scale_B": config.lora_init_scale},
        "parameters": n_params,
        "loss_normalization": config.loss_normalization,
        "repeats": config.repeats,
        "table": table,
        "per_repeat": measured,
        "runtime_s": runtime,
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "lora_target_modules"},
    }
    return CheckResult(name, rows, data)
