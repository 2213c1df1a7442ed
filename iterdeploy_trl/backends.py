"""Building the sampling backend of a generation (``sampling.backend``: transformers, vLLM in process, vLLM
servers) serving the base model, a full fine-tuned model or base + a LoRA adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iterdeploy_trl import dist
from iterdeploy_trl.basemodel import auto_base_model_path
from iterdeploy_trl.config import RunConfig
from iterdeploy_trl.deploy import Backend, TransformersBackend, VLLMBackend, check_backend
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.training import torch_dtype


def server_model_name(cfg: RunConfig) -> str:
    """The name vLLM servers serve the run's base model under: ``sampling.server_model``, else the base
    model's directory (``vllm serve DIR`` serves it as DIR)."""
    if cfg.sampling.server_model:
        return cfg.sampling.server_model
    return str(auto_base_model_path(cfg) if cfg.model.path == "auto" else Path(cfg.model.path).expanduser())


def load_for_generation(cfg: RunConfig, base: Path, model_dir: Path | None) -> tuple[Any, Any]:
    """Model and tokenizer of a generation: the base, a full fine-tuned model, or base + LoRA adapter."""
    from iterdeploy_trl.models import load_model_and_tokenizer

    device = dist.device()
    if model_dir is not None and (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        model, tok = load_model_and_tokenizer(base, dtype=torch_dtype(cfg.model.dtype), device=device)
        # Unmerged, as vLLM serves it and as the trainer computed log pi: merged into bf16 weights, a LoRA
        # update of a few lr-1e-5 steps is mostly rounded away (bf16 keeps ~3 significant digits).
        model = PeftModel.from_pretrained(model, str(model_dir))
        model.eval()
        return model, tok
    return load_model_and_tokenizer(model_dir or base, dtype=torch_dtype(cfg.model.dtype), device=device)


def make_backend(cfg: RunConfig, base: Path, model_dir: Path | None) -> Backend:
    """The sampling backend of ``sampling.backend`` serving the base (``model_dir`` None), a full model,
    or base + a LoRA adapter."""
    check_backend(cfg.sampling.backend)
    adapter = str(model_dir) if model_dir and (model_dir / "adapter_config.json").exists() else None
    if cfg.sampling.backend == "vllm":
        model_path = str(base if adapter or model_dir is None else model_dir)
        return VLLMBackend(model_path, adapter_path=adapter, dtype=cfg.model.dtype,
                           max_model_len=cfg.training.max_length,
                           gpu_memory_utilization=cfg.sampling.gpu_memory_utilization,
                           max_lora_rank=cfg.training.lora.r if cfg.training.lora else 16)
    if cfg.sampling.backend == "vllm-server":
        from iterdeploy_trl.vllm_server import VLLMServerBackend

        if model_dir is not None and adapter is None:
            raise RunError(f"sampling.backend vllm-server serves the base model and LoRA adapters, and {model_dir} "
                           "is a full fine-tuned model: set training.lora (docs/scale-out.md)")
        s = cfg.sampling
        # one adapter name per process: each unloads its own when its share of the generation is done
        return VLLMServerBackend(s.servers, base, model=server_model_name(cfg), adapter_path=adapter, timeout=s.server_timeout,
                                 retries=s.server_retries, adapter_tag=f"rank{dist.rank()}")
    model, tok = load_for_generation(cfg, base, model_dir)
    return TransformersBackend(model, tok, batch_size=cfg.sampling.batch_size)


