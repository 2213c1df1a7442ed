"""Generation backends: sample K completions per prompt and record the behaviour log-probability of
each completion under the distribution it was actually sampled from (temperature and top-p included).

Two backends share one interface, :meth:`Backend.generate`:

- :class:`TransformersBackend` (default): batched ``model.generate`` with the KV cache. The processed
  scores that ``generate`` returns are the logits after temperature and top-p, so their log-softmax at
  the sampled token is log β(y_t | x, y_<t) of the real sampling distribution.
- :class:`VLLMBackend` (``pip install iterdeploy-trl[vllm]``): vLLM with ``logprobs_mode="processed_logprobs"``
  for the same quantity, and LoRA adapters served without merging.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

THINK_END = "</think>"


@dataclass(frozen=True)
class Completion:
    """One sampled completion."""

    text: str
    completion_tokens: int
    reasoning_tokens: int  # tokens before ``</think>``; 0 for a model that does not think
    truncated: bool  # hit max_new_tokens before an end-of-sequence token
    behaviour_logprob: float  # log β(y|x) summed over the completion's tokens (eos included)


def batch_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed derived from ``seed`` and ``parts``: the same chunk gets the same seed on resume."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _reasoning_tokens(token_ids: Sequence[int], think_end_ids: Sequence[int]) -> int:
    """Number of tokens before the end-of-reasoning marker (all of them if it never closes)."""
    if not think_end_ids:
        return 0
    n = len(think_end_ids)
    for i in range(len(token_ids) - n + 1):
        if list(token_ids[i : i + n]) == list(think_end_ids):
            return i
    return 0


class Backend:
    """Samples completions; subclasses implement :meth:`generate`."""

    def generate(self, prompts: Sequence[str], *, num_samples: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int) -> list[list[Completion]]:
        """``num_samples`` completions for each prompt, deterministic given ``seed``."""
        raise NotImplementedError

    def close(self) -> None:
        """Free memory held by the backend."""


class TransformersBackend(Backend):
    """Batched sampling with ``transformers``' ``generate`` (KV cache on)."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._think_end = self._marker_ids(THINK_END)

    def _marker_ids(self, marker: str) -> list[int]:
        ids = self.tokenizer.encode(marker, add_special_tokens=False)
        unk = getattr(self.tokenizer, "unk_token_id", None)
        return [] if (not ids or unk in ids) else list(ids)

    def generate(self, prompts: Sequence[str], *, num_samples: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int) -> list[list[Completion]]:
        import torch

        tok = self.tokenizer
        model = self.model
        model.eval()
        eos_ids = {tok.eos_token_id} | set(_as_list(getattr(model.generation_config, "eos_token_id", None)))
        eos_ids.discard(None)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        flat = [p for p in prompts for _ in range(num_samples)]
        out: list[Completion] = []
        for start in range(0, len(flat), self.batch_size):
            batch = flat[start : start + self.batch_size]
            # Tokenise exactly as TRL's SFT does (special tokens included, e.g. BOS), so that the recorded
            # behaviour log-prob and the trainer's log pi(y|x) condition on the same context.
            enc = tok(batch, return_tensors="pt", padding=True, padding_side="left").to(model.device)
            torch.manual_seed(batch_seed(seed, start))
            with torch.no_grad():
                gen = model.generate(
                    **enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                    max_new_tokens=max_new_tokens, output_scores=True, return_dict_in_generate=True,
                    pad_token_id=pad_id, eos_token_id=sorted(eos_ids),
                )
            new = gen.sequences[:, enc["input_ids"].shape[1]:]
            # scores[t] are the processed logits (after temperature / top-p) at step t.
            scores = torch.stack(gen.scores, dim=1).float()
            logp = torch.log_softmax(scores, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
            for row in range(new.shape[0]):
                ids = new[row].tolist()
                n = len(ids)
                for t, tid in enumerate(ids):
                    if tid in eos_ids:
                        n = t + 1
                        break
                ended = n <= len(ids) and n > 0 and ids[n - 1] in eos_ids
                lp = float(logp[row, :n].sum())
                # Decode every sampled token but the final end-of-sequence one (TRL appends it again), so
                # that re-tokenising the text gives back the sampled tokens the log-prob was taken on.
                text = tok.decode(ids[: n - 1] if ended else ids[:n], skip_special_tokens=False)
                out.append(Completion(
                    text=text, completion_tokens=n, reasoning_tokens=_reasoning_tokens(ids[:n], self._think_end),
                    truncated=not ended, behaviour_logprob=lp if math.isfinite(lp) else float("-inf"),
                ))
        return [out[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


class VLLMBackend(Backend):
    """vLLM sampling; a LoRA adapter (``adapter_path``) is served on top of the base weights unmerged."""

    def __init__(self, model_path: str, *, adapter_path: str | None = None, dtype: str = "bfloat16",
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.85,
                 max_lora_rank: int = 64) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise RuntimeError("sampling.backend is vllm but vLLM is not installed: "
                               "pip install 'iterdeploy-trl[vllm]' (needs a GPU)") from exc
        kwargs: dict[str, Any] = dict(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                      enable_prefix_caching=True, logprobs_mode="processed_logprobs")
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if adapter_path:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank)
        self.llm = LLM(**kwargs)
        self.adapter_path = adapter_path
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[str], *, num_samples: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int) -> list[list[Completion]]:  # pragma: no cover - GPU only
        from vllm import SamplingParams

        lora = None
        if self.adapter_path:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("adapter", 1, self.adapter_path)
        params = [SamplingParams(n=num_samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                 seed=batch_seed(seed, i), logprobs=0) for i in range(len(prompts))]
        results = self.llm.generate(list(prompts), params, lora_request=lora, use_tqdm=True)
        think_end = self.tokenizer.encode(THINK_END, add_special_tokens=False)
        out = []
        for res in results:
            row = []
            for c in res.outputs:
                lp = sum(next(iter(d.values())).logprob for d in (c.logprobs or []))
                row.append(Completion(
                    text=c.text, completion_tokens=len(c.token_ids),
                    reasoning_tokens=_reasoning_tokens(c.token_ids, think_end),
                    truncated=c.finish_reason == "length", behaviour_logprob=float(lp),
                ))
            out.append(row)
        return out

    def close(self) -> None:  # pragma: no cover - GPU only
        import gc

        del self.llm
        gc.collect()


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
