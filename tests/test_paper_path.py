"""The paper configs' code path, executed on CPU at toy scale with a tiny Qwen3-Thinking-like chat model
(``conftest.chat_model``): the paper prompt through the chat template, a model whose generation prompt
opens ``<think>``, bf16 weights, a fresh LoRA on the base model each generation (and ``init: previous``),
the transformers backend. vLLM has its own (fake-module) unit test in ``test_vllm_backend.py``.

The tiny model writes the answer format but cannot plan, so training is tested on hand-made valid traces
(reference plans in the answer format, checked by VAL first), and the loop with training runs the
uncurated ablation, which trains on every untruncated trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import paper_run_config

from iterdeploy_trl.backends import load_for_generation, make_backend
from iterdeploy_trl.config import config_from_dict
from iterdeploy_trl.deployment import deploy_chunk, prompt_for, score_completions
from iterdeploy_trl.domains import domain_pddl
from iterdeploy_trl.loop import run_loop
from iterdeploy_trl.models import load_model_and_tokenizer
from iterdeploy_trl.prompts import paper_answer
from iterdeploy_trl.runio import read_json, read_jsonl
from iterdeploy_trl.tasks import generate_tasks
from iterdeploy_trl.training import train_generation

DOMAIN = domain_pddl("blocksworld")
TASKS = generate_tasks("blocksworld", 4, 0, size=(2, 3))


def _config(chat_model: Path, **over):
    return config_from_dict(paper_run_config(chat_model, **over))


def _valid_rows(cfg, tok) -> list[dict]:
    """Hand-made valid traces: each task's reference plan in the paper answer format, after its
    chat-templated prompt. VAL accepts every one (checked here, not assumed)."""
    rows = [{"prompt": prompt_for(cfg, DOMAIN, t, tok), "completion": paper_answer(t.reference_plan, "I stack them."),
             "behaviour_logprob": 0.0, "task_id": t.id} for t in TASKS]
    _, verdicts = score_completions(DOMAIN, TASKS, [r["completion"] for r in rows], timeout=30, workers=2)
    assert all(v.valid for v in verdicts), [v.reason for v in verdicts]
    return rows


@pytest.fixture(scope="module")
def adapter(chat_model, tmp_path_factory):
    """Generation 1 as the paper configs make it: a fresh LoRA on the bf16 base, trained on valid traces."""
    cfg = _config(chat_model, training={"epochs": 2})
    _, tok = load_model_and_tokenizer(chat_model)
    rows = _valid_rows(cfg, tok)
    out = tmp_path_factory.mktemp("gen") / "model"
    stats = train_generation(cfg, chat_model, rows, out, seed=0)
    return cfg, out, stats, rows


def test_chat_model_has_qwen3_thinking_conventions(chat_model):
    cfg = _config(chat_model)
    model, tok = load_model_and_tokenizer(chat_model)
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert tok("plan")["input_ids"] == tok("plan", add_special_tokens=False)["input_ids"]  # no BOS added
    assert len(tok.encode("</think>", add_special_tokens=False)) == 1
    assert sorted(model.generation_config.eos_token_id) == sorted(tok.convert_tokens_to_ids(["<|im_end|>",
                                                                                             "<|endoftext|>"]))
    prompt = prompt_for(cfg, DOMAIN, TASKS[0], tok)
    assert prompt.startswith("<|im_start|>user\nYou are given a classical planning task")
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert TASKS[0].problem.strip() in prompt


def test_lora_generation_trains_on_valid_traces(adapter):
    cfg, out, stats, rows = adapter
    assert (out / "adapter_config.json").exists() and not (out / "config.json").exists()  # an adapter, no copy
    lora = json.loads((out / "adapter_config.json").read_text())
    assert (lora["r"], lora["lora_alpha"], lora["lora_dropout"]) == (4, 8, 0.05)
    assert read_json(out / "train_stats.json") == stats
    assert stats["train_traces"] == len(rows) and stats["overlong_skipped"] == 0
    assert stats["train_steps"] == 4 and stats["train_loss"] > 0
    assert stats["eval_traces"] == 0 and stats["eval_loss"] is None


def test_adapter_is_deployed_unmerged_and_changes_the_samples(adapter, chat_model):
    from peft import PeftModel

    cfg, out, _, rows = adapter
    model, _ = load_for_generation(cfg, chat_model, out)
    assert isinstance(model, PeftModel)  # served unmerged, as vLLM serves it and the trainer trained it
    assert model.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
    prompts = [r["prompt"] for r in rows[:2]]
    kw = dict(num_samples=2, temperature=1.0, top_p=1.0, max_new_tokens=24, seed=3)
    base = make_backend(cfg, chat_model, None).generate(prompts, **kw)
    tuned = make_backend(cfg, chat_model, out).generate(prompts, **kw)
    flat = [(a, b) for ra, rb in zip(base, tuned, strict=True) for a, b in zip(ra, rb, strict=True)]
    assert any(a.text != b.text for a, b in flat)
    assert all(a.behaviour_logprob != b.behaviour_logprob for a, b in flat)


def _trainer_logprobs(model, tok, prompts: list[str], completions: list) -> list[tuple[float, int]]:
    """(log pi(y|x), completion tokens) of each completion as ValidTraceSFTTrainer computes it: TRL's
    tokenisation of the prompt-completion row (EOS appended), the fused forward, the sequence-sum loss."""
    from datasets import Dataset

    from iterdeploy_trl.trainers import ValidTraceSFTConfig, ValidTraceSFTTrainer

    data = Dataset.from_list([{"prompt": p, "completion": c.text} for p, c in zip(prompts, completions, strict=True)])
    trainer = ValidTraceSFTTrainer(model, args=ValidTraceSFTConfig("unused", max_length=4096, report_to=[],
                                                                   use_cpu=True), train_dataset=data,
                                   processing_class=tok)
    out = []
    with torch.no_grad():
        for row in trainer.train_dataset:
            batch = trainer._prepare_inputs(trainer.data_collator([row]))
            out.append((-trainer.compute_loss(trainer.model, batch).item(), int(batch["labels"].ne(-100).sum())))
    return out


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-3), ("bfloat16", 0.1)])
def test_behaviour_logprob_is_the_trainers_logpi_with_lora(adapter, chat_model, dtype, tol, tmp_path,
                                                           monkeypatch):
    """beta = pi: sampled at temperature 1, no top-p, the recorded behaviour log-prob of a completion is
    log pi(y|x) as the trainer computes it, through the LoRA adapter (float32: to 1e-3 nats; bf16: to
    bf16's noise, 0.1 nats on ~30 tokens)."""
    monkeypatch.chdir(tmp_path)
    cfg, out, _, rows = adapter
    cfg = _config(chat_model, model={"dtype": dtype})
    backend = make_backend(cfg, chat_model, out)
    prompts = [r["prompt"] for r in rows[:3]]
    samples = backend.generate(prompts, num_samples=3, temperature=1.0, top_p=1.0, max_new_tokens=40, seed=5)
    flat = [(p, c) for p, row in zip(prompts, samples, strict=True) for c in row]
    assert all(torch.isfinite(torch.tensor(c.behaviour_logprob)) and c.behaviour_logprob < 0 for _, c in flat)
    ended = [(p, c) for p, c in flat if not c.truncated]
    pis = _trainer_logprobs(backend.model, backend.tokenizer, [p for p, _ in ended], [c for _, c in ended])
    checked = 0
    for (_, c), (pi, n) in zip(ended, pis, strict=True):
        # Byte-level BPE: a sampled token sequence may re-tokenise differently (the trainer then scores
        # other tokens); compare where the trainer sees the sampled number of tokens.
        if n == c.completion_tokens:
            assert abs(pi - c.behaviour_logprob) < tol, (dtype, pi, c.behaviour_logprob, c.text)
            checked += 1
    assert checked >= 2, (len(ended), checked)


def test_deployed_traces_record_chat_prompts_and_reasoning_tokens(chat_model):
    cfg = _config(chat_model)
    backend = make_backend(cfg, chat_model, None)
    tok = backend.tokenizer
    records = deploy_chunk(cfg, backend, DOMAIN, TASKS[:2], seed=0, sample_seed=11, generation=0, split="pool",
                           model_id="base", run_name="t", method="valid-sft", validator={})
    assert len(records) == 2 * cfg.sampling.samples_per_task
    recounted = 0
    for r, task in zip(records, [t for t in TASKS[:2] for _ in range(2)], strict=True):
        assert r.prompt == prompt_for(cfg, DOMAIN, task, tok)
        assert r.prompt.startswith("<|im_start|>user\n") and r.prompt.endswith("<think>\n")
        assert r.behaviour_logprob < 0 and r.completion_tokens <= cfg.sampling.max_new_tokens
        if "</think>" in r.completion:
            # reasoning = the sampled tokens before </think>; the prompt opened <think>
            assert 0 < r.reasoning_tokens < r.completion_tokens
            before = r.completion.split("</think>")[0]
            recounted += r.reasoning_tokens == len(tok(before, add_special_tokens=False)["input_ids"])
        else:
            assert r.reasoning_tokens == r.completion_tokens  # never closed: all reasoning
    assert recounted >= 1


def test_loop_paper_path_trains_lora_each_generation(chat_model, tmp_path):
    """The loop end to end in the paper configs' path: generation 1 a fresh LoRA on the bf16 base,
    generation 2 continuing it (init: previous); each generation deployed with its adapter."""
    cfg = _config(chat_model, generations=2, method="uncurated-sft", curation="none",
                  training={"init": "previous", "validation_fraction": 0.1})
    summary = run_loop(cfg, tmp_path / "run", progress=False)
    assert [g["generation"] for g in summary["generations"]] == [0, 1, 2]
    sdir = tmp_path / "run" / "seed_0"
    traces = [r for p in sorted(sdir.glob("gen_*/traces/*.jsonl")) for r in read_jsonl(p)]
    assert len(traces) == 3 * 3 * 2
    assert all(r["prompt"].startswith("<|im_start|>user\n") and r["prompt"].endswith("<think>\n") for r in traces)
    assert {r["model"] for r in traces} == {str(chat_model), "seed_0/gen_01/model", "seed_0/gen_02/model"}
    for g in (1, 2):
        model = sdir / f"gen_{g:02d}" / "model"
        assert (model / "adapter_config.json").exists() and not (model / "config.json").exists()
        stats = read_json(model / "train_stats.json")
        assert stats["train_traces"] >= 1 and stats["eval_traces"] == 0
        assert stats["validation"].startswith("none:")  # < 10 rows: all trained on, and said so
    metrics = read_jsonl(sdir / "metrics.jsonl")
    assert all(m["eval_traces"] == 0 and m["eval_loss"] is None for m in metrics)
    assert all(m["mean_reasoning_tokens"] > 0 for m in metrics)


def test_loop_paper_path_with_no_valid_trace_keeps_the_model(chat_model, tmp_path):
    """12 new tokens cannot hold a plan after the reasoning: nothing is valid, the curated set is empty
    and generation 1 deploys the base model again."""
    cfg = _config(chat_model, generations=1, sampling={"max_new_tokens": 12})
    summary = run_loop(cfg, tmp_path / "run", progress=False)
    sdir = tmp_path / "run" / "seed_0"
    assert read_json(sdir / "gen_01" / "model" / "same_as.json")["generation"] == 0
    assert read_jsonl(sdir / "gen_00" / "train.jsonl") == []
    assert [g["solved"] for g in summary["generations"]] == [0, 0]
    assert [g["train_traces"] for g in summary["generations"]] == [0, 0]
    gen1 = read_jsonl(next((sdir / "gen_01" / "traces").glob("pool-*.jsonl")))
    assert {r["model"] for r in gen1} == {str(chat_model)}
