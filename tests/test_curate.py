"""Curation policies on hand-made trace records."""

import dataclasses

from iterdeploy_trl.curate import curate, training_rows
from iterdeploy_trl.traces import TraceRecord


def trace(task, gen, k, valid, length, reasoning=0, truncated=False, split="pool", ids=None):
    return TraceRecord(
        run="t", method="valid-sft", generation=gen, seed=0, split=split, task_id=task, sample_index=k,
        domain="blocksworld", prompt=f"p-{task}", completion=f"c-{task}-{gen}-{k}", plan="", plan_length=length,
        valid=valid, reason="valid" if valid else "bad", reasoning_tokens=reasoning,
        completion_tokens=length * 4 + reasoning, truncated=truncated, behaviour_logprob=-1.0, reference_length=2,
        model="base", sampling={}, validator={}, prompt_ids=ids and ids[0], completion_ids=ids and ids[1],
        stop_token_id=ids and (None if truncated else ids[1][-1]))


TRACES = [
    trace("t1", 0, 0, True, 6, reasoning=30),
    trace("t1", 0, 1, True, 4, reasoning=50),
    trace("t1", 1, 0, True, 4, reasoning=20),  # same length, fewer reasoning tokens: wins
    trace("t1", 1, 1, False, 2),
    trace("t2", 0, 0, False, 3),
    trace("t2", 0, 1, False, 0, truncated=True),
    trace("t3", 1, 0, True, 8),
    trace("t4", 0, 0, True, 2, split="heldout"),  # never trained on
]


def test_shortest_then_fewest_reasoning_tokens():
    chosen = curate(TRACES, "shortest")
    assert [(t.task_id, t.generation, t.sample_index) for t in chosen] == [("t1", 1, 0), ("t3", 1, 0)]


def test_all_valid_and_none():
    assert len(curate(TRACES, "all-valid")) == 4
    uncurated = curate(TRACES, "none")
    assert len(uncurated) == 6  # every untruncated pool trace, valid or not
    assert all(not t.truncated and t.split == "pool" for t in uncurated)


def test_random_valid_is_one_per_task_and_seeded():
    a = curate(TRACES, "random-valid", seed=1)
    assert sorted(t.task_id for t in a) == ["t1", "t3"]
    assert all(t.valid for t in a)
    assert a == curate(TRACES, "random-valid", seed=1)
    picks = {curate(TRACES, "random-valid", seed=s)[0].completion for s in range(30)}
    assert len(picks) > 1


def test_training_rows_keep_behaviour_logprob():
    rows = training_rows(curate(TRACES, "shortest"))
    assert rows[0] == {"prompt": "p-t1", "completion": "c-t1-1-0", "behaviour_logprob": -1.0, "task_id": "t1"}


def test_training_rows_carry_the_sampled_token_ids():
    """Contract 3: rows of traces with recorded ids carry them unchanged (EOS as sampled, none when cut)."""
    ended = dataclasses.replace(trace("t1", 0, 0, True, 2), prompt_ids=[1, 5, 6], completion_ids=[7, 8, 2],
                                stop_token_id=2)
    cut = dataclasses.replace(trace("t2", 0, 0, True, 2), prompt_ids=[1, 5], completion_ids=[7, 7])
    rows = training_rows([ended, cut])
    assert rows[0]["prompt_ids"] == [1, 5, 6] and rows[0]["completion_ids"] == [7, 8, 2]
    assert rows[1]["completion_ids"] == [7, 7]  # truncated: no EOS added
    old = training_rows([trace("t3", 0, 0, True, 2)])[0]  # a trace file from before the ids
    assert "prompt_ids" not in old and "completion_ids" not in old


def test_shortest_plan_breaks_ties_by_earliest_sample_not_tokens():
    """``shortest-plan`` keeps the shortest valid plan like ``shortest``, but among equal lengths the earliest
    sample (generation, then index) whatever its token counts: t1's two length-4 plans differ in reasoning
    tokens, so the two rules keep different traces."""
    plain = curate(TRACES, "shortest-plan")
    assert [(t.task_id, t.generation, t.sample_index) for t in plain] == [("t1", 0, 1), ("t3", 1, 0)]
    tokens_first = curate(TRACES, "shortest")
    assert plain[0].plan_length == tokens_first[0].plan_length
    assert plain[0].completion != tokens_first[0].completion
    swapped = [dataclasses.replace(t, reasoning_tokens=0, completion_tokens=0) for t in TRACES]
    assert curate(swapped, "shortest") == curate(swapped, "shortest-plan")  # without token differences: the same


def test_shortest_plan_is_a_configurable_curation():
    from iterdeploy_trl.config import config_from_dict, load_config

    assert config_from_dict({"curation": "shortest-plan"}).curation == "shortest-plan"
    assert load_config("experiments/cpu_drift10_tiebreak.yaml").curation == "shortest-plan"
