"""A causal LM as a sampling distribution; float64 precision; prompt and completion tokenisation as TRL's
SFT makes it; per-token and per-sequence log-probabilities."""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from iterdeploy_trl.tasks.taskset import plan_text
from iterdeploy_trl.theory.errors import TheoryError
from iterdeploy_trl.trainers import losses


@dataclass
class Policy:
    """A causal LM as a sampling distribution: softmax(logits / temperature), token by token."""

    model: torch.nn.Module
    tokenizer: Any
    temperature: float = 1.0
    name: str = "π"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eos_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise TheoryError("the tokenizer has no eos token: completions need an end-of-sequence token")
        return int(eos)


def _rmsnorm_in_input_dtype(self: torch.nn.Module, hidden_states: Tensor) -> Tensor:
    """w ⊙ x / sqrt(mean(x²) + ε) in x's own dtype when x is float64; the layer's own forward otherwise."""
    if hidden_states.dtype != torch.float64:
        return type(self).forward(self, hidden_states)
    eps = getattr(self, "variance_epsilon", None) or self.eps
    return self.weight * (hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + eps))


def to_precision(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast ``model`` to ``dtype``; in float64 also make its RMSNorm layers compute in float64.

    Hugging Face RMSNorm layers compute in float32 (an upcast for half precision, a DOWNcast for float64),
    so in float64 two losses that differ by a constant factor would give gradients whose ratio is off by
    ~1e-8. A layer is patched only if the float64 formula reproduces its output on a probe (so a variant
    such as Gemma's (1 + w) scale is left alone)."""
    model.to(dtype)
    if dtype != torch.float64:
        return model
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (
            not type(module).__name__.endswith("RMSNorm")
            or not isinstance(weight, Tensor)
            or weight.dim() != 1
        ):
            continue
        if getattr(module, "variance_epsilon", None) is None and getattr(module, "eps", None) is None:
            continue
        patched = types.MethodType(_rmsnorm_in_input_dtype, module)
        probe = torch.randn(3, weight.shape[0], dtype=torch.float64, device=weight.device)
        with torch.no_grad():
            ok = torch.allclose(patched(probe), type(module).forward(module, probe), rtol=1e-5, atol=1e-6)
        if ok:
            module.forward = patched
    return model


def check_same_tokenizer(a: Any, b: Any) -> None:
    """β and π must tokenise identically: an importance weight π(y)/β(y) compares probabilities of the
    same token sequence. Raises ``TheoryError`` naming the first difference."""
    if a is b:
        return
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id"):
        if getattr(a, attr, None) != getattr(b, attr, None):
            raise TheoryError(
                f"β and π have different tokenizers ({attr}: {getattr(b, attr, None)} vs "
                f"{getattr(a, attr, None)}): importance weights π(y)/β(y) need the same token sequences; "
                f"load both models with the same tokenizer"
            )
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        diff = sorted(set(va.items()) ^ set(vb.items()))[:3]
        raise TheoryError(
            f"β and π have different tokenizers (vocabularies of {len(vb)} and {len(va)} tokens differ, e.g. "
            f"{diff}): importance weights π(y)/β(y) need the same token sequences; load both models with the "
            f"same tokenizer"
        )


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a prompt as TRL's SFT tokenises it (the tokenizer's special tokens included)."""
    return list(tokenizer(prompt)["input_ids"])


def canonical_completion(plan: Sequence[str]) -> str:
    """The plan as the model writes it: one action a line, ``(name a b)\\n`` each (``plan_text``)."""
    return plan_text(plan)


def encode_completion(tokenizer: Any, prompt: str, completion: str) -> tuple[int, ...]:
    """Completion token ids as TRL's SFT makes them: tokenise prompt + completion + eos and keep what
    follows the tokenised prompt. Raises ``TheoryError`` if the prompt's tokens are not a prefix."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    full = list(tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"])
    if full[: len(prompt_ids)] != prompt_ids:
        raise TheoryError(
            "the tokenised prompt is not a prefix of the tokenised prompt + completion (tokens merge across "
            "the boundary): end the prompt on a token boundary, e.g. with a newline"
        )
    ids = full[len(prompt_ids) :]
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    return tuple(ids)


def completion_logprobs(
    policy: Policy, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]]
) -> tuple[Tensor, Tensor]:
    """Per-token log-probabilities of completions of one prompt, (n, T) each, T the longest completion.

    token_logps[i, t] = log softmax(logits/τ)[y_i,t] given (x, y_i,<t), by ``losses.token_logprobs``;
    mask[i, t] = 1 on y_i's own tokens. Differentiable (call under ``torch.no_grad()`` to avoid a graph)."""
    if not completions:
        raise TheoryError("no completions to score")
    device = policy.device
    n, p = len(completions), len(prompt_ids)
    t_max = max(len(c) for c in completions)
    pad = policy.tokenizer.pad_token_id if policy.tokenizer.pad_token_id is not None else policy.eos_id
    ids = torch.full((n, p + t_max), pad, dtype=torch.long, device=device)
    attention = torch.zeros_like(ids)
    ids[:, :p] = torch.as_tensor(list(prompt_ids), device=device)
    mask = torch.zeros(n, t_max, device=device)
    for i, c in enumerate(completions):
        ids[i, p : p + len(c)] = torch.as_tensor(list(c), device=device)
        attention[i, : p + len(c)] = 1
        mask[i, : len(c)] = 1
    logits = policy.model(input_ids=ids, attention_mask=attention).logits[:, p - 1 : p - 1 + t_max]
    if policy.temperature != 1.0:
        logits = logits / policy.temperature
    token_logps = losses.token_logprobs(logits, ids[:, p:], mask)
    return token_logps, mask.to(token_logps.dtype)


def sequence_logprobs(
    policy: Policy, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]], batch_size: int = 256
) -> Tensor:
    """log policy(y|x) summed over each completion's tokens (no gradient), (n,)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(completions), batch_size):
            tl, m = completion_logprobs(policy, prompt_ids, completions[start : start + batch_size])
            out.append(losses.sequence_logprobs(tl, m).double())
    return torch.cat(out)
