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
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from iterdeploy_trl.theory.errors import TheoryError
from iterdeploy_trl.theory.gradients import ParamSet, cosine, flat_grad, trainable_parameters
from iterdeploy_trl.theory.report import EMPIRICAL, PASS, CheckResult, Row, interval, verdict
from iterdeploy_trl.theory.report import fmt_interval as report_fmt_interval
from iterdeploy_trl.trainers import losses


@dataclass
class PipelineConfig:
    """Settings of the ``pipeline`` check."""

    model_path: str = ""  # a local causal LM that solves some tasks (e.g. a run's base model)
    beta_model_path: str = ""  # pipeline_off_policy only: the model that samples (β); gradients at model_path
    domain: str = "blocksworld"
    tasks: int = 24  # pool tasks (``tasks.generate_tasks``), or the tasks of ``task_dir``
    task_size: tuple[int, int] = (2, 3)  # small tasks: the small base model solves a few percent of them
    task_dir: str | None = None  # a task-set directory (e.g. RUN/tasks) instead of generated tasks
    prompt_style: str = "compact"
    samples_per_task: int = 8
    max_new_tokens: int = 100
    settings: tuple[tuple[float, float], ...] = ((1.0, 1.0), (0.6, 0.95))  # (temperature, top_p)
    precisions: tuple[str, ...] = ("float32", "bfloat16")  # bfloat16: autocast around the float32 model
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: str | list[str] = "all-linear"
    lora_init_scale: float = 0.02  # B ~ N(0, s²) instead of peft's B = 0 (see ``lora_model``)
    loss_normalization: str = "sequence_sum"
    repeats: int = 5
    seed: int = 0
    device: str = "cpu"
    backend: str = "transformers"  # or "vllm": deploy.VLLMBackend serving the LoRA adapter (needs vLLM)
    vllm_dtype: str = "float32"  # the engine's (vLLM's CPU build runs float32, the trainer's recomputation's)
    vllm_gpu_memory_utilization: float = 0.3  # on a GPU the engine shares it with the differentiated model


BACKENDS = ("transformers", "vllm")
# Largest |recorded − recomputed| behaviour log-prob (nats, per sequence) the check accepts, the same for
# both backends: vLLM's CPU build in float32 (its kernels, the adapter unmerged) stays ~50x below it (max
# 2.0e-5 over 5760 samples of a tiny-h64 base, three runs; transformers 9.8e-6 on the same model:
# theory/README.md, "Sampled by vLLM"). Serving the base without the adapter puts it at 2.7-3.9 nats.
LOGPROB_TOLERANCE = 1e-3


# ------------------------------------------------------------------------------------------- shared


def t_interval(values: Sequence[float]) -> dict[str, float]:
    """Mean, std and the 95% Student-t interval of the mean over *independent* repeats (fresh sampling seeds):
    ``report.interval`` without the raw values; NaN values dropped, no interval (NaN bounds) from one value.
    Never over bootstrap replicates: their spread is already a standard error (``stats.percentile_interval``)."""
    iv = interval(values)
    return {key: iv[key] for key in ("n", "mean", "std", "lo", "hi")}


def safe_cosine(a: Tensor, b: Tensor) -> float:
    """``cosine``, NaN where a vector is zero (e.g. every weight underflowed)."""
    try:
        return cosine(a, b)
    except TheoryError:
        return float("nan")


def fmt_interval(s: dict[str, float], digits: int = 4) -> str:
    """``report.fmt_interval`` at 4 digits, one value read as one repeat."""
    return report_fmt_interval(s, digits, one="1 repeat")


@contextlib.contextmanager
def precision(name: str, device: str) -> Iterator[None]:
    """float32 as is; bfloat16 as mixed precision trains it (autocast; the weights stay float32)."""
    if name == "float32":
        yield
    elif name == "bfloat16":
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            yield
    else:
        raise TheoryError(f"unknown precision {name!r}: use float32 or bfloat16")


def nucleus_token_logprobs(
    logits: Tensor, tokens: Tensor, temperature: float, top_p: float
) -> tuple[Tensor, Tensor]:
    """log β(y_t | ·) of the sampler that ``deploy.SampledLogProbs`` records: softmax(logits/T) restricted
    to the top-p nucleus (:func:`iterdeploy_trl.sampler.sampling_log_distribution`; the nucleus is a mask,
    so ∇ flows through the kept logits only). Returns (log-probs (…, T), in_nucleus (…, T) bool)."""
    from iterdeploy_trl.sampler import sampling_log_distribution

    logp = sampling_log_distribution(logits, temperature, top_p).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    inside = torch.isfinite(logp)
    return logp.masked_fill(~inside, 0.0), inside


def sampler_sequence_logprobs(
    model: torch.nn.Module, batch: dict[str, Tensor], temperature: float, top_p: float
) -> tuple[Tensor, Tensor]:
    """Σ_t log β_θ(y_t | ·) over each row's completion tokens (labels ≠ −100) of a TRL-collated batch, and
    the number of completion tokens outside the nucleus per row (0 when the sample is consistent)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels.ne(-100)
    logp, inside = nucleus_token_logprobs(logits, labels.clamp(min=0), temperature, top_p)
    return (logp * mask).sum(-1), (mask & ~inside).sum(-1)


def lora_record(config: PipelineConfig) -> dict[str, Any]:
    """The LoRA adapter's settings as a check's result records them."""
    return {"r": config.lora_r, "alpha": config.lora_alpha, "target_modules": config.lora_target_modules,
            "init_scale_B": config.lora_init_scale}


def lora_model(model: torch.nn.Module, config: PipelineConfig, seed: int) -> torch.nn.Module:
    """``model`` with a LoRA adapter. peft starts B at 0, where the adapter's gradient lives in B alone
    and is a fixed random projection of the weight gradient; a small random B (``lora_init_scale``) makes
    A's gradient non-zero too, as after the first steps of training. The adapter is the same for every
    estimator, so cosines compare gradients of one function."""
    from peft import LoraConfig, get_peft_model

    # peft draws A from torch's global generator, whose state here depends on what ran before (it differed
    # between processes with different PYTHONHASHSEEDs): seeded, so that a check is reproducible
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=0.0,
                target_modules=config.lora_target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name and config.lora_init_scale > 0:
                p.copy_(torch.randn(p.shape, generator=gen) * config.lora_init_scale)
    return peft_model


def sft_trainer(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    *,
    importance_weighted: bool,
    normalization: str,
    temperature: float = 1.0,
    top_p: float = 1.0,
    out_dir: str,
) -> Any:
    """The package's SFT trainer (valid-trace or importance-weighted) over ``rows``, for its tokenisation,
    collator and ``compute_loss``; nothing is trained. The IW config gets the sampling settings that
    produced the behaviour log-probs when it has fields for them."""
    from datasets import Dataset

    from iterdeploy_trl.trainers import (
        ImportanceWeightedSFTConfig,
        ImportanceWeightedSFTTrainer,
        ValidTraceSFTConfig,
        ValidTraceSFTTrainer,
    )

    common = dict(
        output_dir=out_dir,
        report_to=[],
        bf16=False,
        use_cpu=not str(model.device).startswith("cuda"),
        loss_normalization=normalization,
        per_device_train_batch_size=max(1, len(rows)),
        max_length=None,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    cols = (
        ("prompt_ids", "completion_ids")
        if all(r.get("completion_ids") for r in rows)
        else ("prompt", "completion")
    )
    if importance_weighted:
        cols += ("behaviour_logprob",)
    data = Dataset.from_list([{k: r[k] for k in cols} for r in rows])
    if importance_weighted:
        fields = ImportanceWeightedSFTConfig.__dataclass_fields__
        extra = {}
        if "sampling_temperature" in fields:
            extra["sampling_temperature"] = temperature
        if "sampling_top_p" in fields:
            extra["sampling_top_p"] = top_p
        # self-normalised over the batch: the direction of plain w (one scalar), without underflow of
        # exp(log π − log β) for long or unlikely traces
        args = ImportanceWeightedSFTConfig(**common, **extra, iw_self_normalize=True)
        cls = ImportanceWeightedSFTTrainer
    else:
        args = ValidTraceSFTConfig(**common)
        cls = ValidTraceSFTTrainer
    return cls(model=model, args=args, train_dataset=data, processing_class=tokenizer)


_MODEL_COLUMNS = (
    "input_ids",
    "labels",
    "completion_mask",
    "assistant_masks",
    "attention_mask",
    "behaviour_logprob",
)


def collate(trainer: Any, device: Any) -> dict[str, Any]:
    """The trainer's whole (prepared, tokenised) train dataset as one collated batch on ``device``."""
    data = trainer.train_dataset
    keep = [c for c in _MODEL_COLUMNS if c in data.column_names]
    batch = trainer.data_collator([{k: data[i][k] for k in keep} for i in range(len(data))])
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def trainer_gradient(trainer: Any, batch: dict[str, Any], params: ParamSet, prec: str, device: str) -> Tensor:
    """−∇ of the trainer's own ``compute_loss`` on ``batch`` (eval mode: no dropout; the loss's own
    denominators), flattened over ``params``."""
    trainer.model.eval()
    with precision(prec, device):
        loss = trainer.compute_loss(trainer.model, dict(batch))
    return -flat_grad(loss, params)


def reinforce_vector(
    model: torch.nn.Module,
    valid_batch: dict[str, Any],
    n_samples: int,
    temperature: float,
    top_p: float,
    params: ParamSet,
    prec: str = "float32",
    device: str = "cpu",
) -> Tensor:
    """(1/N) Σ r ∇log β_θ(y), the REINFORCE vector of a draw of N samples (binary reward, no baseline) from the
    collated batch of its valid ones: invalid samples have A = r = 0, so their log-probs carry no gradient and
    only the valid rows are run through the model; N counts them all."""
    with precision(prec, device):
        seq_valid, _ = sampler_sequence_logprobs(model, valid_batch, temperature, top_p)
    n_valid = seq_valid.shape[0]
    seq = torch.cat([seq_valid.double(), seq_valid.new_zeros(n_samples - n_valid, dtype=torch.float64)])
    reward = torch.cat([torch.ones(n_valid), torch.zeros(n_samples - n_valid)]).to(seq)
    return -flat_grad(losses.reinforce_loss(seq, reward, "none"), params)


def check_backend(name: str) -> None:
    """A clear error, before any work, for a backend that cannot run here."""
    if name == "transformers":
        return
    if name == "vllm":
        try:
            import vllm  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install (CUDA/torch mismatch)
            raise TheoryError(
                "the pipeline check with backend 'vllm' needs vLLM, which cannot be imported here "
                f"({type(exc).__name__}: {exc}); install iterdeploy-trl[vllm] or use the transformers backend"
            ) from exc
        return
    raise TheoryError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")


def sampling_backend(
    config: PipelineConfig, model: torch.nn.Module, tok: Any, work_dir: str, probe_prompt: str
) -> tuple[Any, dict[str, Any]]:
    """The deployment backend that samples from ``model`` (the LoRA model being differentiated), and what
    it is (for the report). vLLM cannot take an in-memory model: the adapter (A and the drawn B) and the
    tokenizer are saved to ``work_dir/adapter`` and served on the base unmerged, as the loop serves a
    trained generation (``loop.make_backend``). One token of ``probe_prompt`` is sampled first: vLLM's CPU
    engine starts on a model whose attention it cannot run (head_dim 16) and fails only at the first step."""
    from iterdeploy_trl.deploy import TransformersBackend, VLLMBackend

    if config.backend == "transformers":
        return TransformersBackend(model, tok, batch_size=64), {
            "name": "transformers",
            "class": "deploy.TransformersBackend",
            "model": "the differentiated model",
        }
    import os

    import vllm

    adapter = os.path.join(work_dir, "adapter")
    model.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    backend = None
    try:
        backend = VLLMBackend(
            config.model_path,
            adapter_path=adapter,
            dtype=config.vllm_dtype,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            max_lora_rank=config.lora_r,
            seed=config.seed,
        )
        backend.generate([probe_prompt], num_samples=1, temperature=1.0, top_p=1.0, max_new_tokens=1, seed=0)
    except Exception as exc:  # vLLM raises many kinds (e.g. CPU attention refusing head_dim 16)
        if backend is not None:
            backend.close()
        raise TheoryError(
            f"{config.model_path}: vLLM cannot serve this model with its LoRA adapter ({type(exc).__name__}: "
            f"{exc}); use the transformers backend (vLLM's CPU attention refuses head_dim 16: size tiny-h64 runs)"
        ) from exc
    return backend, {
        "name": "vllm",
        "class": "deploy.VLLMBackend",
        "vllm_version": vllm.__version__,
        "dtype": config.vllm_dtype,
        "on_cpu": backend.on_cpu,
        "model": "the base with the differentiated model's LoRA adapter, unmerged",
    }


def sample_rows(
    backend: Any,
    dom: str,
    tasks: Sequence[Any],
    prompts: Sequence[str],
    prompt_ids: dict[str, list[int]],
    config: PipelineConfig,
    temperature: float,
    top_p: float,
    seed: int,
) -> tuple[list[tuple[Any, str, Any]], list[dict[str, Any]], Tensor]:
    """``config.samples_per_task`` samples of every prompt from ``backend``, VAL's rewards, and the rows the
    loop trains on: the prompt's tokens as the backend feeds them and the sampled completion tokens (its
    stop token included, none when truncated), not re-tokenised text. Returns (the (task, prompt,
    completion) triples, the rows, the float64 rewards)."""
    from iterdeploy_trl.reward import check_completions

    samples = backend.generate(
        list(prompts),
        num_samples=config.samples_per_task,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=config.max_new_tokens,
        seed=seed,
    )
    flat = [(t, p, c) for t, p, row in zip(tasks, prompts, samples, strict=True) for c in row]
    _, verdicts = check_completions(
        [dom] * len(flat),
        [t.problem for t, _, _ in flat],
        [c.text for *_, c in flat],
        timeout=30.0,
        workers=None,
    )
    rows = [
        {
            "prompt": p,
            "completion": c.text,
            "prompt_ids": prompt_ids[p],
            "completion_ids": list(c.token_ids),
            "behaviour_logprob": float(c.behaviour_logprob),
        }
        for _, p, c in flat
    ]
    return flat, rows, torch.tensor([float(v.valid) for v in verdicts], dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- check


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


def _load_tasks(config: PipelineConfig) -> tuple[str, list[Any]]:
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.tasks import generate_tasks

    if config.task_dir:
        from iterdeploy_trl.tasks.taskset import load_task_set

        ts = load_task_set(config.task_dir)
        return ts.domain_pddl, list(ts.tasks)[: config.tasks]
    return domain_pddl(config.domain), list(
        generate_tasks(config.domain, config.tasks, config.seed + 7, size=config.task_size)
    )


class SamplingSetup(NamedTuple):
    """What a check on the real pipeline samples from: the model (with its LoRA adapter), tokenizer, domain
    PDDL, tasks, their prompts, the trainable parameters and each prompt's token ids."""

    model: torch.nn.Module
    tok: Any
    dom: str
    tasks: list[Any]
    prompts: list[str]
    params: ParamSet
    prompt_ids: dict[str, list[int]]


def sampling_setup(config: PipelineConfig, name: str) -> SamplingSetup:
    """The checks every pipeline-style check (``pipeline``, ``curation``) makes before sampling, then its model
    (float32, LoRA drawn under ``config.seed``), tasks and prompts. :class:`TheoryError` names what is missing."""
    import datasets

    from iterdeploy_trl.models import load_model_and_tokenizer
    from iterdeploy_trl.prompts import build_prompt

    datasets.disable_progress_bars()
    check_backend(config.backend)
    if not config.model_path:
        raise TheoryError(
            f"the {name} check needs a model that solves some tasks: pass --model PATH (a local causal LM, "
            "e.g. the base model of a run) or --run-dir RUN"
        )
    if config.repeats < 2:
        raise TheoryError(f"the {name} check needs at least 2 repeats for an interval, got {config.repeats}")
    try:
        model, tok = load_model_and_tokenizer(config.model_path, dtype=torch.float32, device=config.device)
    except (OSError, ValueError) as exc:
        raise TheoryError(f"{config.model_path}: cannot load the model ({exc})") from exc
    dom, tasks = _load_tasks(config)
    prompts = [build_prompt(dom, t.problem, config.prompt_style, domain=config.domain) for t in tasks]
    model = lora_model(model, config, config.seed)
    params = trainable_parameters(model)
    prompt_ids = {p: list(tok(p)["input_ids"]) for p in dict.fromkeys(prompts)}
    return SamplingSetup(model, tok, dom, tasks, prompts, params, prompt_ids)


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
