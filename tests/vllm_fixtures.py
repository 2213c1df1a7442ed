"""Fixtures of the real-vLLM tests (``tests/test_vllm_real.py``, ``tests/test_vllm_server.py``): a small
base model of the head_dim-64 shape vLLM's CPU attention runs, a LoRA adapter with non-zero weights, and
the trainer's log π of given tokens. Nothing here stands in for vLLM."""

from __future__ import annotations

import os
import socket
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the machine is shared


def make_h64_base(out: Path, *, steps: int = 150) -> Path:
    """A blocksworld base model of size ``tiny-h64`` pretrained for ``steps`` steps (150: about a minute on
    one core): it writes plan-like completions that end with EOS, or run on when cut."""
    from iterdeploy_trl.models import pretrain_base_model

    pretrain_base_model(
        "blocksworld",
        out,
        steps=steps,
        seed=0,
        size="tiny-h64",
        num_walks=1000,
        batch_size=32,
        task_size=(2, 3),
        max_walk=6,
        progress=False,
        log_every=1000,
        threads=1,
    )
    return out


def make_lora_adapter(base: Path, out: Path, *, r: int = 8, seed: int = 1, scale: float = 0.5) -> Path:
    """A LoRA adapter (q/k/v/o and MLP projections) whose A and B are random, so that it changes the model
    (a fresh PEFT adapter has B = 0 and changes nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from iterdeploy_trl.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(base, dtype=torch.float32, device="cpu")
    peft = get_peft_model(
        model,
        LoraConfig(
            r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale / p.shape[-1] ** 0.5)
    peft.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def trainer_logprobs(
    model_dir: Path,
    prompt_ids: list[int],
    completions: list[list[int]],
    *,
    adapter: Path | None = None,
    temperature: float = 1.0,
) -> list[float]:
    """log π(y|x) of each completion's tokens after the prompt's, as the trainers compute it: float32
    logits of the same model (base, or base + the adapter unmerged, as training holds it), log-softmax of
    logits / temperature, summed over the completion's tokens."""
    import torch

    from iterdeploy_trl.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(model_dir, dtype=torch.float32, device="cpu")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    out = []
    with torch.no_grad():
        for ids in completions:
            seq = torch.tensor([prompt_ids + list(ids)])
            logits = model(seq).logits[0, len(prompt_ids) - 1 : -1].float() / temperature
            lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None]).sum()
            out.append(float(lp))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
