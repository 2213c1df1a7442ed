"""VLLMBackend's translation to and from vLLM, tested against a FAKE ``vllm`` module.

This checks the GPU path (per-request seeds, GPU memory share) in any environment; real vLLM (its CPU
build) is tested in ``tests/test_vllm_real.py`` and ``tests/test_vllm_server.py``. The fake below is NOT
vLLM: it records what VLLMBackend asks of vLLM's API (``LLM(...)``, ``SamplingParams(...)``,
``LLM.generate(...)``, ``LoRARequest(...)``) and answers with canned ``CompletionOutput``-like objects
shaped as vLLM documents them (``token_ids``, ``text`` without the final EOS, ``finish_reason``,
``logprobs`` as one ``{token_id: Logprob}`` dict a token holding the sampled token and, as vLLM may,
better-ranked ones). It checks the translation only; that real vLLM returns what it documents is not
tested here. The tokenizer is real (the tiny chat model's)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import paper_run_config

from iterdeploy_trl.backends import make_backend
from iterdeploy_trl.config import ConfigError, config_from_dict
from iterdeploy_trl.deploy import VLLM_INSTALL, VLLMBackend, batch_seed, vllm_lora_rank
from iterdeploy_trl.loop import run_loop


@dataclass
class FakeLogprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class FakeCompletionOutput:  # vllm.outputs.CompletionOutput
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, FakeLogprob]] | None
    finish_reason: str | None


@dataclass
class FakeRequestOutput:  # vllm.outputs.RequestOutput
    prompt_token_ids: list[int]
    outputs: list[FakeCompletionOutput]


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeLoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


class FakeLLM:
    """Answers every request with ``n`` canned completions: even samples end with EOS ("stop"), odd ones
    are cut ("length"). Sampled token t gets log-prob -0.1 * (t + 1); a better-ranked other token is put
    first in each dict, as vLLM may list top tokens beside the sampled one."""

    instances: list[FakeLLM] = []

    def __init__(self, **kwargs):
        from transformers import AutoTokenizer

        self.kwargs = kwargs
        self.calls: list[tuple] = []
        self.shut_down = False
        self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self._shutdown))
        self.tok = AutoTokenizer.from_pretrained(kwargs["model"], local_files_only=True)
        FakeLLM.instances.append(self)

    def _shutdown(self):
        self.shut_down = True

    def generate(self, prompts, sampling_params, lora_request=None, use_tqdm=True):
        self.calls.append((prompts, sampling_params, lora_request))
        eos = self.tok.eos_token_id
        results = []
        for prompt, params in zip(prompts, sampling_params, strict=True):
            outputs = []
            for k in range(params.kwargs["n"]):
                text = "I think.</think>\n\n```plan\n(pick-up b1)\n```" if k % 2 == 0 else "I think and think"
                ids = self.tok(text, add_special_tokens=False)["input_ids"] + ([eos] if k % 2 == 0 else [])
                logprobs = [{(t + 1) % len(self.tok): FakeLogprob(-0.01, 1), t: FakeLogprob(-0.1 * (i + 1), 2)}
                            for i, t in enumerate(ids)]
                outputs.append(FakeCompletionOutput(
                    index=k, text=text, token_ids=ids, cumulative_logprob=sum(d[t].logprob for d, t in
                                                                               zip(logprobs, ids, strict=True)),
                    logprobs=logprobs, finish_reason="stop" if k % 2 == 0 else "length"))
            results.append(FakeRequestOutput(prompt["prompt_token_ids"], outputs))
        return results


@pytest.fixture
def fake_vllm(monkeypatch):
    """Install the fake as ``vllm`` (and ``vllm.lora.request``) for one test."""
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    platforms = types.ModuleType("vllm.platforms")  # a GPU platform
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: False)
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request),
                         ("vllm.platforms", platforms)):
        monkeypatch.setitem(sys.modules, name, module)
    FakeLLM.instances.clear()
    return vllm


def _vllm_config(chat_model: Path, **over):
    return config_from_dict(paper_run_config(chat_model, sampling={"backend": "vllm", "temperature": 0.6,
                                                                  "top_p": 0.95, "max_new_tokens": 64}, **over))


def test_fake_vllm_base_model_request_and_completion_translation(fake_vllm, chat_model):
    cfg = _vllm_config(chat_model)
    backend = make_backend(cfg, chat_model, None)
    assert isinstance(backend, VLLMBackend)
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["model"] == str(chat_model) and llm.kwargs["dtype"] == "bfloat16"
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs"  # log-probs after temperature and top-p
    assert llm.kwargs["max_model_len"] == cfg.training.max_length
    assert llm.kwargs["gpu_memory_utilization"] == cfg.sampling.gpu_memory_utilization
    assert "enable_lora" not in llm.kwargs and "enforce_eager" not in llm.kwargs

    prompts = ["<|im_start|>user\nplan<|im_end|>\n<|im_start|>assistant\n<think>\n", "plain prompt"]
    out = backend.generate(prompts, num_samples=2, temperature=0.6, top_p=0.95, max_new_tokens=64, seed=7)
    sent, params, lora = llm.calls[-1]
    tok = backend.tokenizer
    # prompts go as token ids, tokenised as TRL's SFT tokenises them
    assert [s["prompt_token_ids"] for s in sent] == [tok(p)["input_ids"] for p in prompts]
    assert lora is None
    for i, p in enumerate(params):
        assert p.kwargs == dict(n=2, temperature=0.6, top_p=0.95, top_k=0, max_tokens=64,
                                seed=batch_seed(7, i), logprobs=0, skip_special_tokens=False)  # GPU: seeds
    assert params[0].kwargs["seed"] != params[1].kwargs["seed"]

    think_end = tok.convert_tokens_to_ids("</think>")
    for prompt, row, result in zip(prompts, out, llm.generate(sent, params), strict=True):
        for c, raw in zip(row, result.outputs, strict=True):
            assert c.text == raw.text and c.completion_tokens == len(raw.token_ids)
            assert c.token_ids == tuple(raw.token_ids)
            assert c.truncated == (raw.finish_reason == "length") == (c.stop_token_id is None)
            # the sampled tokens' log-probs, looked up by token id (not the first, better-ranked entry)
            assert c.behaviour_logprob == pytest.approx(-0.1 * sum(range(1, len(raw.token_ids) + 1)))
            assert c.behaviour_logprob == pytest.approx(raw.cumulative_logprob)
            if think_end in raw.token_ids:
                assert c.reasoning_tokens == raw.token_ids.index(think_end)
            else:  # never closed: all reasoning when the prompt opened <think>, none otherwise
                assert c.reasoning_tokens == (len(raw.token_ids) if prompt.endswith("<think>\n") else 0)
    backend.close()
    assert llm.shut_down and not hasattr(backend, "llm")


def test_fake_vllm_serves_a_lora_adapter_unmerged(fake_vllm, chat_model, tmp_path):
    adapter = tmp_path / "gen_01" / "model"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    cfg = _vllm_config(chat_model)  # LoRA r = 4: vLLM's smallest max_lora_rank above it is 8
    backend = make_backend(cfg, chat_model, adapter)
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["model"] == str(chat_model)  # the base weights, the adapter beside them
    assert (llm.kwargs["enable_lora"], llm.kwargs["max_lora_rank"], llm.kwargs["max_loras"]) == (True, 8, 1)
    backend.generate(["x"], num_samples=1, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=0)
    lora = llm.calls[-1][2]
    assert (lora.lora_name, lora.lora_int_id, lora.lora_path) == ("adapter", 1, str(adapter))


def _nothing_written(run: Path) -> bool:
    """Nothing of a run in ``run`` but the run-directory lock's session files (taken before the checks)."""
    from iterdeploy_trl.runlock import SESSION_FILES

    return not run.exists() or {p.name for p in run.iterdir()} <= set(SESSION_FILES)


def test_vllm_lora_ranks():
    assert [vllm_lora_rank(r) for r in (1, 4, 8, 16, 17, 64, 300)] == [1, 8, 8, 16, 32, 64, 320]
    with pytest.raises(ValueError, match="512"):
        vllm_lora_rank(1024)


def test_vllm_backend_without_vllm_fails_before_any_work(chat_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, installed or not
    cfg = _vllm_config(chat_model)
    with pytest.raises(ConfigError, match=r"sampling\.backend") as err:
        run_loop(cfg, tmp_path / "run", progress=False)
    assert VLLM_INSTALL in str(err.value) and VLLM_INSTALL == "pip install 'iterdeploy-trl[vllm]'"
    assert "./setup.sh --vllm" in str(err.value)  # the CPU install path
    assert _nothing_written(tmp_path / "run")
    # the extra that install command names exists
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "iterdeploy-trl"
    assert any(d.startswith("vllm") for d in pyproject["project"]["optional-dependencies"]["vllm"])


def test_vllm_server_config_keys_checked_and_out_of_the_run_hash(chat_model):
    """The server keys are checked by name, and left out of the run hash (a run resumes on other servers);
    configs without them hash as before (the default config's hash is pinned)."""
    from conftest import tiny_run_config

    from iterdeploy_trl.config import config_hash

    assert config_hash(config_from_dict({})) == "1e0d0cc7569e319d"

    def cfg(**sampling):
        return config_from_dict(tiny_run_config(chat_model, sampling={"backend": "vllm-server", **sampling}))

    with pytest.raises(ConfigError, match=r"sampling\.servers: \[\] is empty"):
        cfg()
    with pytest.raises(ConfigError, match=r"sampling\.servers: '127\.0\.0\.1:8000' must be an http"):
        cfg(servers=["127.0.0.1:8000"])
    with pytest.raises(ConfigError, match=r"sampling\.server_retries"):
        cfg(servers=["http://a:1"], server_retries=-1)
    a = cfg(servers=["http://a:1"])
    b = cfg(servers=["http://b:2", "http://c:3"], server_timeout=5.0, server_retries=0, server_model="m")
    assert config_hash(a) == config_hash(b)


def test_several_processes_deploy_through_vllm_servers(chat_model, monkeypatch):
    """Under several processes vllm-server passes the launch check (each process sends its chunks to the
    servers); in-process vllm is refused with the way out named."""
    from conftest import tiny_run_config

    from iterdeploy_trl.errors import RunError
    from iterdeploy_trl.runchecks import check_launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    check_launch(config_from_dict(tiny_run_config(chat_model, sampling={"backend": "vllm-server",
                                                                             "servers": ["http://a:1"]})))
    with pytest.raises(RunError, match="vllm-server"):
        check_launch(config_from_dict(tiny_run_config(chat_model, sampling={"backend": "vllm"})))


def test_vllm_server_unreachable_fails_before_any_work(chat_model, tmp_path):
    """A server URL that does not answer: a ConfigError naming sampling.servers, nothing written. (Needs no
    vLLM: nothing listens on the port.)"""
    import socket

    from conftest import tiny_run_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config_from_dict(tiny_run_config(chat_model, sampling={
        "backend": "vllm-server", "servers": [f"http://127.0.0.1:{port}"]}))
    with pytest.raises(ConfigError, match=rf"sampling\.servers: http://127\.0\.0\.1:{port} does not answer"):
        run_loop(cfg, tmp_path / "run", progress=False)
    assert _nothing_written(tmp_path / "run")


def test_reinforce_through_vllm_servers_is_refused_before_any_work(chat_model, tmp_path):
    """REINFORCE samples inside TRL's GRPOTrainer, whose server mode talks to `trl vllm-serve`, not `vllm serve`:
    a ConfigError naming sampling.backend, before any server is asked (the URL answers nothing) or anything
    written."""
    from conftest import tiny_run_config

    data = tiny_run_config(chat_model, method="reinforce",
                           sampling={"backend": "vllm-server", "servers": ["http://127.0.0.1:9"]})
    del data["training"]["epochs"]  # an SFT setting, refused for REINFORCE
    with pytest.raises(ConfigError, match=r"^sampling\.backend: 'vllm-server' with method reinforce.*trl vllm-serve"):
        run_loop(config_from_dict(data), tmp_path / "run", progress=False)
    assert _nothing_written(tmp_path / "run")


def test_a_comparison_with_reinforce_through_vllm_servers_is_refused_before_any_work(chat_model, tmp_path):
    """The same refusal for `iterdeploy compare` when REINFORCE is one of the compared methods (the config's
    own method is an SFT one), before any server is asked or anything written; a comparison of SFT methods
    only on the same config reaches the server check instead."""
    from conftest import tiny_run_config

    from iterdeploy_trl.compare import run_compare

    data = tiny_run_config(chat_model, sampling={"backend": "vllm-server", "servers": ["http://127.0.0.1:9"]})
    data["compare_methods"] = ["valid-sft", "reinforce"]
    with pytest.raises(ConfigError, match=r"^sampling\.backend: 'vllm-server' with method reinforce.*trl vllm-serve"):
        run_compare(config_from_dict(data), tmp_path / "cmp", progress=False)
    assert _nothing_written(tmp_path / "cmp")
    with pytest.raises(ConfigError, match=r"sampling\.servers: http://127\.0\.0\.1:9 does not answer"):
        run_compare(config_from_dict(data), tmp_path / "cmp", methods=("valid-sft",), progress=False)
    assert _nothing_written(tmp_path / "cmp")
