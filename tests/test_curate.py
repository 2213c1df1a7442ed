"""Curation policies on hand-made trace records."""

from iterdeploy_trl.curate import curate, training_rows


def trace(task, gen, k, valid, length, reasoning=0, truncated=False, split="pool"):
    return {"task_id": task, "generation": gen, "sample_index": k, "valid": valid, "plan_length": length,
            "reasoning_tokens": reasoning, "completion_tokens": length * 4 + reasoning, "truncated": truncated,
            "split": split, "prompt": f"p-{task}", "completion": f"c-{task}-{gen}-{k}", "behaviour_logprob": -1.0}


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
    assert [(t["task_id"], t["generation"], t["sample_index"]) for t in chosen] == [("t1", 1, 0), ("t3", 1, 0)]


def test_all_valid_and_none():
    assert len(curate(TRACES, "all-valid")) == 4
    uncurated = curate(TRACES, "none")
    assert len(uncurated) == 6  # every untruncated pool trace, valid or not
    assert all(not t["truncated"] and t["split"] == "pool" for t in uncurated)


def test_random_valid_is_one_per_task_and_seeded():
    a = curate(TRACES, "random-valid", seed=1)
    assert sorted(t["task_id"] for t in a) == ["t1", "t3"]
    assert all(t["valid"] for t in a)
    assert a == curate(TRACES, "random-valid", seed=1)
    picks = {curate(TRACES, "random-valid", seed=s)[0]["completion"] for s in range(30)}
    assert len(picks) > 1


def test_training_rows_keep_behaviour_logprob():
    rows = training_rows(curate(TRACES, "shortest"))
    assert rows[0] == {"prompt": "p-t1", "completion": "c-t1-1-0", "behaviour_logprob": -1.0, "task_id": "t1"}
