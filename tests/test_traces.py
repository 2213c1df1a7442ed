"""The typed trace record: one reader and writer, old files still read, bad files refused by name; and the
sampled token ids it stores are exactly the tokens the backend sampled (their log-probs under the sampling
distribution add up to the recorded behaviour log-prob)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import tiny_run_config

from iterdeploy_trl.config import config_from_dict
from iterdeploy_trl.deploy import TransformersBackend
from iterdeploy_trl.deployment import deploy_chunk, prompt_for
from iterdeploy_trl.domains import domain_pddl
from iterdeploy_trl.models import load_model_and_tokenizer
from iterdeploy_trl.tasks import generate_tasks
from iterdeploy_trl.traces import GROUPS, TraceFormatError, TraceRecord, read_traces, write_traces

DOMAIN = domain_pddl("blocksworld")
TASKS = generate_tasks("blocksworld", 4, 0, size=(2, 4))


def record(**over) -> TraceRecord:
    base = dict(run="r", method="valid-sft", generation=1, seed=0, split="pool", task_id="blocksworld-0-00000",
                sample_index=3, domain="blocksworld", prompt="p", completion="(pick-up b1)", plan="(pick-up b1)",
                plan_length=1, valid=True, reason="valid", reasoning_tokens=0, completion_tokens=4, truncated=False,
                behaviour_logprob=-2.5, reference_length=1, model="base", sampling={"temperature": 1.0},
                validator={"version": "x"}, completion_ids=[5, 6, 7, 2], stop_token_id=2, prompt_ids=[1, 9])
    return TraceRecord(**{**base, **over})


def test_write_then_read_gives_the_same_records(tmp_path):
    rows = [record(), record(sample_index=4, truncated=True, stop_token_id=None, completion_ids=[5, 5, 5, 5]),
            record(behaviour_logprob=float("-inf"), valid=False, reason="bad", plan_length=0)]
    write_traces(tmp_path / "t.jsonl", rows)
    assert read_traces(tmp_path / "t.jsonl") == rows


def test_old_files_without_token_ids_still_read(tmp_path):
    old = record().to_dict()
    for key in ("completion_ids", "stop_token_id", "prompt_ids"):
        del old[key]
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
    (got,) = read_traces(tmp_path / "old.jsonl")
    assert (got.completion_ids, got.stop_token_id, got.prompt_ids) == (None, None, None)
    assert got == dataclasses.replace(record(), completion_ids=None, stop_token_id=None, prompt_ids=None)


@pytest.mark.parametrize("change, match", [
    ({"colour": "red"}, r"t\.jsonl:2: unknown field 'colour'"),
    ({"valid": "yes"}, r"t\.jsonl:2: field 'valid' is 'yes'"),
    ({"completion_ids": [1, "2"]}, r"t\.jsonl:2: field 'completion_ids'"),
    ({"generation": 1.5}, r"t\.jsonl:2: field 'generation'"),
])
def test_bad_lines_are_refused_naming_file_line_and_field(tmp_path, change, match):
    good = record().to_dict()
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **change}) + "\n")
    with pytest.raises(TraceFormatError, match=match):
        read_traces(path)
    missing = {k: v for k, v in good.items() if k != "task_id"}
    path.write_text(json.dumps(missing) + "\n")
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:1: field 'task_id' is missing"):
        read_traces(path)


# The keys of a trace line in the order every run so far wrote them (old readers read these files).
FILE_KEYS = ("run", "method", "generation", "seed", "split", "task_id", "sample_index", "domain", "prompt",
             "completion", "plan", "plan_length", "valid", "reason", "reasoning_tokens", "completion_tokens",
             "truncated", "behaviour_logprob", "reference_length", "model", "sampling", "validator",
             "completion_ids", "stop_token_id", "prompt_ids", "exact_valid", "validators")


def test_every_field_is_in_exactly_one_group_with_its_type():
    """The record's four groups (asked, sampled, verdict, provenance) partition its fields, each typed as the
    record types it."""
    import typing

    record_types = typing.get_type_hints(TraceRecord)
    seen = []
    for group in GROUPS.values():
        hints = typing.get_type_hints(group)
        for f in dataclasses.fields(group):
            assert hints[f.name] == record_types[f.name], (group.__name__, f.name)
            seen.append(f.name)
    assert sorted(seen) == sorted(record_types)


def test_a_record_built_from_its_groups_writes_the_old_files_bytes(tmp_path):
    """TraceRecord.of(asked, sampled, verdict, provenance) is the flat record; its file is byte for byte the
    one the flat record writes, with the keys in the order of every earlier run (FILE_KEYS)."""
    flat = [record(), record(sample_index=4, truncated=True, stop_token_id=None, completion_ids=[5, 5, 5, 5]),
            record(exact_valid=False, validators={"train": {"valid": True}, "exact": {"valid": False}})]
    grouped = [TraceRecord.of(r.asked, r.sampled, r.verdict, r.provenance) for r in flat]
    assert grouped == flat
    assert (flat[1].asked.prompt_ids, flat[1].sampled.stop_token_id, flat[2].verdict.exact_valid,
            flat[0].provenance.generation) == ([1, 9], None, False, 1)
    write_traces(tmp_path / "flat.jsonl", flat)
    write_traces(tmp_path / "grouped.jsonl", grouped)
    assert (tmp_path / "grouped.jsonl").read_bytes() == (tmp_path / "flat.jsonl").read_bytes()
    for line in (tmp_path / "grouped.jsonl").read_text().splitlines():
        assert tuple(json.loads(line)) == FILE_KEYS


def test_judged_replaces_the_verdict_and_keeps_the_sample():
    r = record(exact_valid=True, validators={"train": {}, "exact": {}})
    again = r.judged(dataclasses.replace(r.verdict, valid=False, reason="bad", plan_length=0, validator={"v": 2}))
    assert (again.valid, again.reason, again.plan_length, again.validator) == (False, "bad", 0, {"v": 2})
    assert (again.asked, again.sampled, again.provenance) == (r.asked, r.sampled, r.provenance)


def _rescored(model, prompt_ids, completion_ids, temperature, top_p) -> float:
    """log β(y|x) recomputed in one forward pass over prompt + completion, with the sampling
    transformation (temperature, then top-p) applied to each position's logits."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    scores = TemperatureLogitsWarper(temperature)(None, logits) if temperature != 1.0 else logits
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    logp = torch.log_softmax(scores, dim=-1)
    return float(logp.gather(-1, torch.tensor(completion_ids)[:, None]).sum())


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.6, 0.95)])
def test_backend_records_exactly_the_sampled_tokens(tiny_base_model, temperature, top_p):
    model, tok = load_model_and_tokenizer(tiny_base_model)
    cfg = config_from_dict(tiny_run_config(tiny_base_model))
    prompts = [prompt_for(cfg, DOMAIN, t, tok) for t in TASKS]
    eos = tok.eos_token_id
    # 14 new tokens: some samples end with EOS, others are cut (2-3 actions of 5 tokens)
    out = TransformersBackend(model, tok, batch_size=5).generate(
        prompts, num_samples=4, temperature=temperature, top_p=top_p, max_new_tokens=14, seed=7)
    ended = truncated = 0
    for prompt, row in zip(prompts, out, strict=True):
        for c in row:
            assert len(c.token_ids) == c.completion_tokens
            if c.truncated:
                truncated += 1
                assert c.stop_token_id is None and len(c.token_ids) == 14 and eos not in c.token_ids
            else:
                ended += 1
                assert c.stop_token_id == eos and c.token_ids[-1] == eos and eos not in c.token_ids[:-1]
                assert tok.decode(list(c.token_ids[:-1])) == c.text
            pi = _rescored(model, tok(prompt)["input_ids"], c.token_ids, temperature, top_p)
            assert pi == pytest.approx(c.behaviour_logprob, abs=1e-3), (c.text, pi, c.behaviour_logprob)
    assert ended and truncated, (ended, truncated)


def test_deployed_records_carry_prompt_and_completion_ids(tiny_base_model):
    cfg = config_from_dict(tiny_run_config(tiny_base_model, sampling={"samples_per_task": 2, "max_new_tokens": 14}))
    model, tok = load_model_and_tokenizer(tiny_base_model)
    backend = TransformersBackend(model, tok, batch_size=8)
    records = deploy_chunk(cfg, backend, DOMAIN, TASKS[:2], seed=0, sample_seed=3, generation=0, split="pool",
                           model_id="base", run_name="t", method="valid-sft", validator={})
    again = backend.generate([r.prompt for r in records[::2]], num_samples=2, temperature=1.0, top_p=1.0,
                             max_new_tokens=14, seed=3)
    for r, c in zip(records, [c for row in again for c in row], strict=True):
        assert r.prompt_ids == tok(r.prompt)["input_ids"]
        assert r.completion_ids == list(c.token_ids) and r.stop_token_id == c.stop_token_id
        assert (r.stop_token_id is None) == r.truncated
