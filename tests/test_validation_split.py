"""training.validation_fraction: the study's hold-out of 10% of each generation's traces, its eval loss
logged every epoch; off (0.0) by default so that CPU results do not change."""

from __future__ import annotations

import math

import pytest
from conftest import tiny_run_config

from iterdeploy_trl.config import ConfigError, RunConfig, config_from_dict, config_hash
from iterdeploy_trl.curate import validation_split
from iterdeploy_trl.domains import domain_pddl
from iterdeploy_trl.prompts import build_prompt
from iterdeploy_trl.runio import read_json
from iterdeploy_trl.tasks import generate_tasks
from iterdeploy_trl.training import train_generation


def _rows(n_tasks: int, per_task: int = 1) -> list[dict]:
    return [{"task_id": f"t{i:02d}", "k": k, "prompt": "p", "completion": "c"} for i in range(n_tasks)
            for k in range(per_task)]


def test_split_holds_out_whole_tasks_deterministically():
    rows = _rows(20, per_task=2)
    train, held, note = validation_split(rows, 0.1, seed=3)
    assert len({r["task_id"] for r in held}) == 2 and len(held) == 4 and len(train) == 36
    assert not {r["task_id"] for r in held} & {r["task_id"] for r in train}  # a task on one side only
    assert [r for r in rows if r in train] == train  # order kept
    assert validation_split(rows, 0.1, seed=3) == (train, held, note)
    assert note == "2 of 20 tasks (4 rows) held out"


@pytest.mark.parametrize("rows, fraction, why", [
    (_rows(30), 0.0, "validation_fraction is 0"),
    (_rows(9), 0.5, "9 rows < 10"),
    (_rows(12), 0.05, "0.05 of 12 tasks is 0 tasks"),
])
def test_no_split_trains_on_all_and_says_why(rows, fraction, why):
    train, held, note = validation_split(rows, fraction, seed=0)
    assert train == rows and held == []
    assert note.startswith("none: ") and why in note


def test_split_always_leaves_a_task_to_train_on():
    train, held, _ = validation_split(_rows(10), 0.99, seed=0)
    assert len(train) == 1 and len(held) == 9


def test_config_default_paper_value_and_hash():
    assert RunConfig().training.validation_fraction == 0.0
    with pytest.raises(ConfigError, match=r"^training\.validation_fraction: "):
        config_from_dict({"training": {"validation_fraction": 1.0}})
    # the new key at its default leaves the hash of existing runs unchanged (they resume)
    base = config_from_dict({})
    assert config_hash(base) == config_hash(config_from_dict({"training": {"validation_fraction": 0.0}}))
    assert config_hash(base) != config_hash(config_from_dict({"training": {"validation_fraction": 0.1}}))


def test_train_generation_logs_eval_loss_each_epoch(tmp_path):
    """A random tiny compact model, 12 valid traces (reference plans), 25% of the tasks held out."""
    import torch

    from iterdeploy_trl.models import build_tokenizer, make_small_model

    torch.set_num_threads(1)
    tok = build_tokenizer("blocksworld")
    base = tmp_path / "base"
    make_small_model(tok, "tiny", seed=0).save_pretrained(base)
    tok.save_pretrained(base)
    dom = domain_pddl("blocksworld")
    rows = [{"prompt": build_prompt(dom, t.problem), "completion": "".join(a + "\n" for a in t.reference_plan),
             "behaviour_logprob": -5.0, "task_id": t.id} for t in generate_tasks("blocksworld", 12, 0, size=(2, 3))]
    for method in ("valid-sft", "iw-sft"):
        cfg = config_from_dict(tiny_run_config(base, method=method, training={
            "epochs": 2, "batch_size": 4, "validation_fraction": 0.25}))
        out = tmp_path / method / "model"
        stats = train_generation(cfg, base, rows, out, seed=0)
        assert read_json(out / "train_stats.json") == stats
        assert (stats["train_traces"], stats["eval_traces"]) == (9, 3)
        assert stats["validation"] == "3 of 12 tasks (3 rows) held out"
        assert len(stats["eval_loss_per_epoch"]) == 2 and all(math.isfinite(x) for x in stats["eval_loss_per_epoch"])
        assert stats["eval_loss"] == stats["eval_loss_per_epoch"][-1] > 0
        assert stats["train_steps"] == 2 * math.ceil(9 / 4)
