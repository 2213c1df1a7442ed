"""Generation backends: sample K completions per prompt and record the behaviour log-probability of
each completion under the distribution it was actually sampled from (temperature and top-p included).

Two backends share one interface, :meth:`Backend.generate`:

- :class:`TransformersBackend` (default): batched ``model.generate`` with the KV cache. Temperature and
  top-p are applied by a logits processor of ours (:class:`SampledLogProbs`) that also keeps, step by
  step, the log-softmax of the processed scores at the token sampled from them: log β(y_t | x, y_<t) of
  the real sampling distribution. Only one step's distribution is held at a time; asking ``generate``
  for ``output_scores`` would hold batch × steps × vocabulary floats (terabytes at a 150 k vocabulary
  and 32 k new tokens).
- :class:`VLLMBackend` (``pip install 'iterdeploy-trl[vllm]'``): vLLM with
  ``logprobs_mode="processed_logprobs"`` for the same quantity, and LoRA adapters served without merging.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

THINK_START = "<think>"
THINK_END = "</think>"


@dataclass(frozen=True)
class Completion:
    """One sampled completion."""

    text: str
    completion_tokens: int
    reasoning_tokens: int  # tokens before ``</think>``; 0 for a model that does not think
    truncated: bool  # hit max_new_tokens before an end-of-sequence token
    behaviour_logprob: float  # log β(y|x) summed over ``token_ids`` (the ending EOS included)
    # The sampled tokens exactly as sampled, the token that ended the sample (EOS / stop) included.
    token_ids: tuple[int, ...] = ()
    # The token that ended the sample; None when max_new_tokens cut it (then truncated is True).
    stop_token_id: int | None = None


def batch_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed derived from ``seed`` and ``parts``: the same chunk gets the same seed on resume."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _find(ids: Sequence[int], marker: Sequence[int]) -> int:
    n = len(marker)
    for i in range(len(ids) - n + 1):
        if list(ids[i : i + n]) == list(marker):
            return i
    return -1


def _reasoning_tokens(token_ids: Sequence[int], think_end_ids: Sequence[int], think_start_ids: Sequence[int] = (),
                      *, opened: bool = False) -> int:
    """Reasoning tokens of a completion: those after the opening ``<think>`` and before ``</think>``.

    The opening is the completion's own ``<think>``, or the prompt's when ``opened`` (Qwen3-Thinking's
    template ends the generation prompt with it, so the completion holds only ``reasoning</think>answer``).
    Reasoning that never closes (cut by ``max_new_tokens``) counts to the end. A completion that never
    thinks has 0."""
    if not think_end_ids:
        return 0
    ids = list(token_ids)
    start = 0
    end = _find(ids, think_end_ids)
    begin = _find(ids, think_start_ids) if think_start_ids else -1
    if begin >= 0 and (end < 0 or begin < end):
        start, opened = begin + len(think_start_ids), True
    if end >= 0:
        return end - start
    return len(ids) - start if opened else 0


def marker_ids(tokenizer: Any, marker: str) -> list[int]:
    """Token ids of a reasoning marker such as ``</think>``; none when the tokenizer cannot spell it (a
    word-level vocabulary without it would give ``<unk>``, which must not match)."""
    ids = tokenizer.encode(marker, add_special_tokens=False)
    unk = getattr(tokenizer, "unk_token_id", None)
    return [] if (not ids or unk in ids) else list(ids)


def prompt_opens_reasoning(prompt: str) -> bool:
    """Whether the prompt ends inside an opened ``<think>`` (a thinking model's generation prompt)."""
    return prompt.rstrip().endswith(THINK_START)


class Backend:
    """Samples completions; subclasses implement :meth:`generate`."""

    def generate(self, prompts: Sequence[str], *, num_samples: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int) -> list[list[Completion]]:
        """``num_samples`` completions for each prompt, deterministic given ``seed``."""
        raise NotImplementedError

    def close(self) -> None:
        """Free memory held by the backend."""


class SampledLogProbs:
    """A ``generate`` logits processor that applies temperature and top-p (``generate``'s own warpers must be
    off: temperature 1, top-p 1, top-k 0) and records the log-probability of each sampled token under the
    processed scores it was sampled from.

    At each step it reads the token sampled at the previous step (the last column of ``input_ids``) from
    that step's log-softmax, then keeps only the new step's: memory is one batch × vocabulary tensor.
    :meth:`result` adds the last token's and returns a batch × new-tokens tensor."""

    def __init__(self, temperature: float, top_p: float) -> None:
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        self.warpers = LogitsProcessorList()
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
        self._last: Any = None
        self._steps: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = self.warpers(input_ids, scores)
        if self._last is not None:
            self._read(input_ids[:, -1:])
        self._last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _read(self, tokens: Any) -> None:
        """Keep the log-probs of ``tokens`` (batch × 1), sampled from the last step's distribution."""
        self._steps.append(self._last.gather(-1, tokens).squeeze(-1))

    def result(self, new_tokens: Any) -> Any:
        """Log-probs of ``new_tokens`` (batch × n, the ids ``generate`` added), one per token. ``generate``
        may drop a last step it had already sampled (deferred stop checks): then that step is not read."""
        import torch

        n = new_tokens.shape[1]
        if len(self._steps) < n and self._last is not None:
            self._read(new_tokens[:, -1:])
        self._last = None
        if len(self._steps) < n:
            raise RuntimeError(f"recorded {len(self._steps)} sampling steps for {n} new tokens")
        return torch.stack(self._steps[:n], dim=1) if n else new_tokens.new_zeros((new_tokens.shape[0], 0), dtype=torch.float)


class TransformersBackend(Backend):
    """Batched sampling with ``transformers``' ``generate`` (KV cache on)."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._think_end = marker_ids(tokenizer, THINK_END)
        self._think_start = marker_ids(tokenizer, THINK_START)

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
            recorder = SampledLogProbs(temperature, top_p)
            with torch.no_grad():
                # generate's own warpers off (the model's generation config may set others): the recorder
                # applies the run's temperature and top-p, last, and reads the distribution sampled from.
                sequences = model.generate(
                    **enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, min_p=None, typical_p=1.0,
                    epsilon_cutoff=0.0, eta_cutoff=0.0, logits_processor=[recorder],
                    max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=sorted(eos_ids),
                )
            new = sequences[:, enc["input_ids"].shape[1]:]
            logp = recorder.result(new)
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
                    text=text, completion_tokens=n,
                    reasoning_tokens=_reasoning_tokens(ids[:n], self._think_end, self._think_start,
                                                       opened=prompt_opens_reasoning(batch[row])),
                    truncated=not ended, behaviour_logprob=lp if math.isfinite(lp) else float("-inf"),
                    token_ids=tuple(ids[:n]), stop_token_id=ids[n - 1] if ended else None,
                ))
        return [out[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


VLLM_INSTALL = "pip install 'iterdeploy-trl[vllm]'"
# Ranks vLLM's LoRAConfig.max_lora_rank accepts (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def check_backend(backend: str) -> None:
    """Raise ``ConfigError`` naming ``sampling.backend`` and the fix when ``backend`` cannot run here.
    Called before a run does any work: importing vLLM takes seconds, failing hours in costs more."""
    if backend != "vllm":
        return
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install (CUDA/torch mismatch)
        from iterdeploy_trl.config import ConfigError

        raise ConfigError(
            f"sampling.backend: 'vllm' but vLLM cannot be imported here ({type(exc).__name__}: {exc}). "
            f"Install it on a CUDA GPU machine with: {VLLM_INSTALL} -- or set sampling.backend: transformers"
        ) from exc


def vllm_lora_rank(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of rank ``r``."""
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"LoRA rank {r} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


class VLLMBackend(Backend):
    """vLLM sampling; a LoRA adapter (``adapter_path``) is served on top of the base weights unmerged.

    Prompts go to vLLM as token ids, tokenised by the model's own Hugging Face tokenizer exactly as TRL's
    SFT tokenises a prompt, so that the behaviour log-prob and the trainer's log π(y|x) condition on the
    same tokens. ``logprobs_mode="processed_logprobs"`` makes the returned log-prob of a sampled token the
    one under the distribution it was drawn from (after temperature, top-k and top-p)."""

    def __init__(self, model_path: str, *, adapter_path: str | None = None, dtype: str = "bfloat16",
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.85,
                 max_lora_rank: int = 16) -> None:
        check_backend("vllm")
        from transformers import AutoTokenizer
        from vllm import LLM

        kwargs: dict[str, Any] = dict(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                      enable_prefix_caching=True, logprobs_mode="processed_logprobs")
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if adapter_path:
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=vllm_lora_rank(max_lora_rank))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.llm = LLM(**kwargs)
        self.adapter_path = adapter_path
        self._think_end = marker_ids(self.tokenizer, THINK_END)
        self._think_start = marker_ids(self.tokenizer, THINK_START)

    def generate(self, prompts: Sequence[str], *, num_samples: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int) -> list[list[Completion]]:
        from vllm import SamplingParams

        lora = None
        if self.adapter_path:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("adapter", 1, self.adapter_path)
        inputs = [{"prompt_token_ids": self.tokenizer(p)["input_ids"]} for p in prompts]
        # top_k=0: no top-k (as the transformers backend), whatever the model's generation_config says.
        # logprobs=0: the sampled token's log-prob only. skip_special_tokens=False: the text keeps what was
        # sampled (vLLM never detokenises the final EOS), as the transformers backend decodes it.
        params = [SamplingParams(n=num_samples, temperature=temperature, top_p=top_p, top_k=0,
                                 max_tokens=max_new_tokens, seed=batch_seed(seed, i), logprobs=0,
                                 skip_special_tokens=False) for i in range(len(prompts))]
        results = self.llm.generate(inputs, params, lora_request=lora, use_tqdm=True)
        out = []
        for prompt, res in zip(prompts, results, strict=True):
            opened = prompt_opens_reasoning(prompt)
            row = []
            for c in res.outputs:
                row.append(Completion(
                    text=c.text, completion_tokens=len(c.token_ids),
                    reasoning_tokens=_reasoning_tokens(c.token_ids, self._think_end, self._think_start,
                                                       opened=opened),
                    # "stop": an EOS or stop token ended it; "length" (max_tokens or max_model_len) or "abort": cut.
                    truncated=c.finish_reason != "stop", behaviour_logprob=_sampled_logprob(c),
                    # vLLM keeps the EOS / stop token that ended a sample in token_ids (not in the text).
                    token_ids=tuple(c.token_ids),
                    stop_token_id=c.token_ids[-1] if c.finish_reason == "stop" and c.token_ids else None,
                ))
            if len(row) != num_samples:
                raise RuntimeError(f"vLLM returned {len(row)} completions for a prompt, asked for {num_samples}")
            out.append(row)
        return out

    def close(self) -> None:
        """Shut vLLM's engine down and free its GPU memory, so the next generation can be trained in
        this process (best effort: vLLM has no documented in-process teardown)."""
        import gc

        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if callable(getattr(core, "shutdown", None)):
            core.shutdown()
        del llm, core
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _sampled_logprob(c: Any) -> float:
    """log β(y|x) of a vLLM ``CompletionOutput``: the sum over its tokens (EOS included) of the sampled
    token's log-prob, each looked up by its token id (the dict may also hold top-ranked tokens)."""
    if c.logprobs is None:
        raise RuntimeError("vLLM returned no logprobs: SamplingParams(logprobs=0) must be set")
    lp = 0.0
    for token_id, entry in zip(c.token_ids, c.logprobs, strict=True):
        lp += entry[token_id].logprob
    return float(lp) if math.isfinite(lp) else float("-inf")


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
