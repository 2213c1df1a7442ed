r"""Check ``pipeline`` (EMPIRICAL): SFT-on-valid vs REINFORCE on samples of the package's own deployment.

Everything the enumeration checks idealise away is real here: completions are drawn by a deployment
backend of the loop (``PipelineConfig.backend``: ``deploy.TransformersBackend`` on the differentiated
model itself, or ``deploy.VLLMBackend`` serving that model's LoRA adapter, saved to a temporary
directory, on the base unmerged in float32, one engine for the whole check) at the run's sampling
settings — (T, top-p) = (1, 1) and (0.6, 0.95) by default — rewarded by VAL, trained on as the loop
trains on them (rows of the sampled token ids, prepared by the package's SFT trainers: no
re-tokenisation, no EOS a truncated sample never sampled), and differentiated through a LoRA adapter, in
float32 and under bf16 autocast.

Per repeat (an independent sampling seed) and setting, on the same N samples:

- ``sft``: −∇ of ``ValidTraceSFTTrainer.compute_loss`` on the valid rows (the loop's SFT, log π at T = 1);
- ``iw``: −∇ of ``ImportanceWeightedSFTTrainer.compute_loss`` with the recorded behaviour log-probs
  (self-normalised over the batch: plain w's direction, without underflow);
- ``reinforce``: (1/N) Σ r_i ∇ log β_θ(y_i), the on-policy REINFORCE gradient of the deployed sampler
  β_θ = softmax(logits/T) restricted to the top-p nucleus (nucleus chosen on detached logits), on the
  same TRL-tokenised completion tokens, via ``losses.reinforce_loss``;

and the cosines sft–reinforce, iw–reinforce, sft–iw, each precision's vectors against float32's, and how
well the recorded behaviour log-prob matches log β recomputed on the trained tokens by one float32 forward
pass of the trainer's model (``LOGPROB_TOLERANCE``). With transformers the recorded value comes from the
same float32 model (its KV-cached generation); with vLLM it is vLLM's processed log-prob (its own kernels,
the adapter applied unmerged), so the row measures how far vLLM's sampler is from the trainer's model.
Theory says: at T = 1, top-p 1 SFT ∥ REINFORCE (Prop. 1; only tokenisation and rounding can break it); at
T < 1 the sampler's score ∇ log β_θ is not the score ∇ log π_θ that SFT follows, so nothing forces the
cosine to 1.
Intervals are 95% Student-t intervals over the repeats (independent sampling seeds: ``stats.t_interval``).

The check's settings, model and sampling are in ``pipeline_sampling`` and its gradient vectors in
``pipeline_gradients`` (shared with ``pipeline_off_policy`` and ``curation``); this module runs the check and
writes its rows. It re-exports the names of both, which other modules and the tests import from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from iterdeploy_trl.theory.gradients import ParamSet
from iterdeploy_trl.theory.pipeline_gradients import (
    collate,
    fmt_interval,
    nucleus_token_logprobs,
    precision,
    reinforce_vector,
    safe_cosine,
    sampler_sequence_logprobs,
    sft_trainer,
    t_interval,
    trainer_gradient,
)
from iterdeploy_trl.theory.pipeline_sampling import (
    BACKENDS,
    LOGPROB_TOLERANCE,
    PipelineConfig,
    SamplingSetup,
    check_backend,
    load_tasks,
    lora_model,
    lora_record,
    sample_rows,
    sampling_backend,
    sampling_setup,
)
from iterdeploy_trl.theory.report import EMPIRICAL, PASS, CheckResult, Row, verdict

__all__ = [
    "BACKENDS", "LOGPROB_TOLERANCE", "PipelineConfig", "SamplingSetup", "check_backend", "collate", "fmt_interval",
    "load_tasks", "lora_model", "lora_record", "nucleus_token_logprobs", "passed", "pipeline", "precision",
    "reinforce_vector", "safe_cosine", "sample_rows", "sampler_sequence_logprobs", "sampling_backend",
    "sampling_setup", "sft_trainer", "t_interval", "trainer_gradient",
]


@dataclass
class _Draw:
    """One repeat of one (T, top-p) setting: samples, rewards and the gradient vectors per precision."""

    temperature: float
    top_p: float
    repeat: int
    n: int
    n_valid: int
    vectors: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # precision -> estimator -> g
    logprob_gap: dict[str, float] = field(default_factory=dict)
    outside_nucleus: int = 0
    truncated: int = 0
    retokenised_differs: int | None = None
    weights: dict[str, float] = field(default_factory=dict)


def pipeline(config: PipelineConfig, log: Callable[[str], None] | None = None) -> CheckResult:
    """Run the ``pipeline`` check (module docstring); rows per setting and precision, with intervals."""
    import tempfile

    from iterdeploy_trl.deploy import batch_seed

    name = "pipeline"
    start = time.perf_counter()
    model, tok, dom, tasks, prompts, params, prompt_ids = sampling_setup(config, name)
    draws: list[_Draw] = []
    tmp = tempfile.TemporaryDirectory(prefix="iterdeploy-theory-")
    backend = None
    try:
        backend, backend_info = sampling_backend(config, model, tok, tmp.name, prompts[0])
        if log:
            log(f"  pipeline: sampling with {backend_info['class']} ({backend_info['model']})")
        for temperature, top_p in config.settings:
            for r in range(config.repeats):
                seed = batch_seed(config.seed, "theory-pipeline", temperature, top_p, r) % (2**31)
                flat, rows, rewards = sample_rows(
                    backend, dom, tasks, prompts, prompt_ids, config, temperature, top_p, seed
                )
                draw = _Draw(temperature, top_p, r, len(rows), int(rewards.sum()))
                draw.truncated = sum(c.truncated for *_, c in flat)
                if log:
                    log(
                        f"  pipeline T={temperature:g} top-p={top_p:g} repeat {r}: {draw.n_valid}/{draw.n} valid"
                    )
                draws.append(draw)
                if draw.n_valid == 0:
                    continue
                _measure(draw, model, tok, rows, rewards, flat, params, config, tmp.name)
    finally:
        if backend is not None:
            backend.close()
        tmp.cleanup()
    return _report(name, draws, config, params, backend_info, time.perf_counter() - start)


def _measure(
    draw: _Draw,
    model: torch.nn.Module,
    tok: Any,
    rows: list[dict[str, Any]],
    rewards: Tensor,
    flat: list[tuple[Any, str, Any]],
    params: ParamSet,
    config: PipelineConfig,
    out_dir: str,
) -> None:
    """Gradients of one draw in every precision, the behaviour log-prob match and the weight statistics."""
    device = config.device
    valid = [row for row, r in zip(rows, rewards.tolist(), strict=True) if r > 0.5]
    everything = sft_trainer(
        model, tok, rows, importance_weighted=False, normalization="sequence_sum", out_dir=out_dir
    )
    all_batch = collate(everything, model.device)
    sampled_ids = [tuple(getattr(c, "token_ids", ()) or ()) for *_, c in flat]
    if all(sampled_ids):  # the backend recorded the sampled ids (``Completion.token_ids``)
        mask = all_batch["labels"].ne(-100)
        trained = [all_batch["input_ids"][i][mask[i]].tolist() for i in range(len(rows))]
        draw.retokenised_differs = sum(list(a) != list(b) for a, b in zip(trained, sampled_ids, strict=True))
    sft = sft_trainer(
        model, tok, valid, importance_weighted=False, normalization=config.loss_normalization, out_dir=out_dir
    )
    iw = sft_trainer(
        model,
        tok,
        valid,
        importance_weighted=True,
        normalization=config.loss_normalization,
        temperature=draw.temperature,
        top_p=draw.top_p,
        out_dir=out_dir,
    )
    sft_batch, iw_batch = collate(sft, model.device), collate(iw, model.device)
    recorded = torch.tensor([r["behaviour_logprob"] for r in rows], dtype=torch.float64)
    model.eval()
    n = len(rows)
    for prec in config.precisions:
        vectors: dict[str, Tensor] = {}
        vectors["sft"] = trainer_gradient(sft, sft_batch, params, prec, device)
        vectors["iw"] = trainer_gradient(iw, iw_batch, params, prec, device)
        vectors["reinforce"] = reinforce_vector(
            model, sft_batch, n, draw.temperature, draw.top_p, params, prec, device
        )
        draw.vectors[prec] = vectors
        with torch.no_grad(), precision(prec, device):
            seq_all, outside = sampler_sequence_logprobs(model, all_batch, draw.temperature, draw.top_p)
        draw.logprob_gap[prec] = float((seq_all.double().cpu() - recorded).abs().max())
        if prec == "float32":
            draw.outside_nucleus = int((outside > 0).sum())
            with torch.no_grad():
                pi_seq, _ = sampler_sequence_logprobs(model, all_batch, 1.0, 1.0)
            # β = π here: IW-SFT's log w (π under the sampler's transformation, as the trainer takes it) is 0
            # up to rounding; π at T = 1, top-p 1 (the trainer's old weight) shows what that transformation is
            log_w = (seq_all.double().cpu() - recorded)[rewards > 0.5]
            log_w_t1 = (pi_seq.double().cpu() - recorded)[rewards > 0.5]
            w = torch.exp(log_w_t1 - log_w_t1.max())
            draw.weights = {
                "max_abs_log_w": float(log_w.abs().max()),
                "log_w_t1_min": float(log_w_t1.min()),
                "log_w_t1_max": float(log_w_t1.max()),
                "log_w_t1_mean": float(log_w_t1.mean()),
                "relative_ess_t1": float(w.sum() ** 2 / (w * w).sum() / len(w)),
            }


def _report(
    name: str,
    draws: list[_Draw],
    config: PipelineConfig,
    params: ParamSet,
    backend: dict[str, Any],
    runtime: float,
) -> CheckResult:
    rows: list[Row] = []
    table: list[dict[str, Any]] = []
    pairs = (("sft", "reinforce"), ("iw", "reinforce"), ("sft", "iw"))
    for temperature, top_p in config.settings:
        mine = [d for d in draws if d.temperature == temperature and d.top_p == top_p]
        measured = [d for d in mine if d.vectors]
        setting = f"T = {temperature:g}, top-p = {top_p:g}"
        valid = f"{sum(d.n_valid for d in mine)}/{sum(d.n for d in mine)} valid over {len(mine)} repeats"
        for prec in config.precisions:
            entry: dict[str, Any] = {
                "temperature": temperature,
                "top_p": top_p,
                "precision": prec,
                "repeats": len(measured),
                "valid": [d.n_valid for d in mine],
                "samples": [d.n for d in mine],
            }
            for a, b in pairs:
                values = [safe_cosine(d.vectors[prec][a], d.vectors[prec][b]) for d in measured]
                entry[f"cos_{a}_{b}"] = {"values": values, **t_interval(values)}
            if prec != "float32" and "float32" in config.precisions:
                for est in ("sft", "iw", "reinforce"):
                    values = [safe_cosine(d.vectors[prec][est], d.vectors["float32"][est]) for d in measured]
                    entry[f"cos_{est}_vs_float32"] = {"values": values, **t_interval(values)}
            entry["max_abs_logprob_gap"] = [d.logprob_gap.get(prec) for d in measured]
            table.append(entry)
            sft_rl, iw_rl = entry["cos_sft_reinforce"], entry["cos_iw_reinforce"]
            exact_setting = temperature == 1.0 and top_p == 1.0
            if exact_setting:
                expected = (
                    "Prop. 1 on the real pipeline: cosine 1 up to tokenisation and rounding "
                    "(≥ 0.999 in float32)"
                )
                ok = (sft_rl["n"] >= 2 and sft_rl["lo"] >= 0.999) if prec == "float32" else sft_rl["n"] >= 2
            else:
                expected = (
                    "not forced to 1: SFT follows ∇log π (T = 1), REINFORCE the sampler's "
                    "∇log β_θ (T, nucleus); measured"
                )
                ok = sft_rl["n"] >= 2
            rows.append(
                Row(
                    f"{name}: SFT ∥ REINFORCE, {setting}, {prec}",
                    expected,
                    f"cos(SFT, REINFORCE) {fmt_interval(sft_rl)}; cos(IW-SFT, REINFORCE) {fmt_interval(iw_rl)}; "
                    f"cos(SFT, IW-SFT) {fmt_interval(entry['cos_sft_iw'])} ({valid}; sampled by {backend['name']})",
                    verdict(ok),
                    EMPIRICAL,
                )
            )
        fp = [d for d in measured if "float32" in d.logprob_gap]
        if fp:
            gaps = [d.logprob_gap["float32"] for d in fp]
            outside = sum(d.outside_nucleus for d in fp)
            truncated = sum(d.truncated for d in mine)
            retok = [d.retokenised_differs for d in fp if d.retokenised_differs is not None]
            ok = max(gaps) <= LOGPROB_TOLERANCE and outside == 0 and not sum(retok)
            rows.append(
                Row(
                    f"{name}: recorded behaviour log-prob = log β on the trained tokens, {setting}",
                    f"|recorded ({backend['name']}) − recomputed (trainer, float32)| ≤ {LOGPROB_TOLERANCE:g} on "
                    "every sample; the trained tokens are the sampled ones",
                    f"max |gap| {max(gaps):.2e} over {sum(d.n for d in fp)} samples; tokens outside the nucleus "
                    f"{outside}; truncated samples {truncated} (trained on without an EOS)"
                    + (f"; trained ≠ sampled ids: {sum(retok)}" if retok else "; sampled ids not recorded"),
                    verdict(ok),
                    EMPIRICAL,
                )
            )
            weights = [d.weights for d in fp]
            table.append(
                {
                    "temperature": temperature,
                    "top_p": top_p,
                    "importance_weights": weights,
                    "truncated": truncated,
                }
            )
    data = {
        "model": config.model_path,
        "backend": backend,
        "logprob_tolerance": LOGPROB_TOLERANCE,
        "tasks": config.tasks,
        "samples_per_task": config.samples_per_task,
        "lora": lora_record(config),
        "parameters": params.size,
        "loss_normalization": config.loss_normalization,
        "repeats": config.repeats,
        "table": table,
        "runtime_s": runtime,
    }
    return CheckResult(name, rows, data)


def passed(result: CheckResult) -> bool:
    return all(r.verdict == PASS for r in result.rows)
