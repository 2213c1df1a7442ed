r"""What the ``pipeline``-style checks (``pipeline``, ``pipeline_off_policy``, ``curation``) sample from, and how:
their settings (:class:`PipelineConfig`), the LoRA model that is differentiated (:func:`lora_model`), the tasks
and prompts (:func:`sampling_setup`), the deployment backend of the loop that samples it (:func:`sampling_backend`:
``deploy.TransformersBackend`` on the model itself, or ``deploy.VLLMBackend`` serving its adapter), and one
draw rewarded by VAL as the rows the loop trains on (:func:`sample_rows`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from iterdeploy_trl.theory.errors import TheoryError
from iterdeploy_trl.theory.gradients import ParamSet, trainable_parameters


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


# ------------------------------------------------------------------------------------------ the model


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

# ---------------------------------------------------------------------------------------- the sampler


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


# ---------------------------------------------------------------------------------------------- setup


def load_tasks(config: PipelineConfig) -> tuple[str, list[Any]]:
    """(domain PDDL, the tasks) of a check: the first ``config.tasks`` of ``config.task_dir``, else generated."""
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
    dom, tasks = load_tasks(config)
    prompts = [build_prompt(dom, t.problem, config.prompt_style, domain=config.domain) for t in tasks]
    model = lora_model(model, config, config.seed)
    params = trainable_parameters(model)
    prompt_ids = {p: list(tok(p)["input_ids"]) for p in dict.fromkeys(prompts)}
    return SamplingSetup(model, tok, dom, tasks, prompts, params, prompt_ids)
