"""Drift measures (``iterdeploy drift``): the estimators on hand-made records, and a real tiny run whose KL
terms score each sample under the model that sampled it within float tolerance."""

from __future__ import annotations

import json
import math

import pytest
from conftest import tiny_run_config

from iterdeploy_trl.drift import (
    distinct_valid_plans,
    entropy_estimate,
    generation_row,
    kl_estimate,
    measure_run,
    tiebreak_share,
)


def rec(task, k, *, valid=True, plan="(a)", length=1, lp=-1.0, tokens=3, reasoning=0, completion=None,
        split="pool"):
    return {"task_id": task, "sample_index": k, "valid": valid, "plan": plan, "plan_length": length,
            "behaviour_logprob": lp, "completion_tokens": tokens, "reasoning_tokens": reasoning,
            "completion": completion if completion is not None else f"{plan}#{k}", "split": split}


def test_entropy_and_kl_estimates_by_hand():
    e = entropy_estimate([rec("t", 0, lp=-1.0, tokens=2), rec("t", 1, lp=-3.0, tokens=2)])
    assert e["entropy"] == pytest.approx(2.0)
    assert e["entropy_se"] == pytest.approx(math.sqrt(2.0 / 2))  # sample var 2, n 2
    assert e["entropy_per_token"] == pytest.approx(4.0 / 4)
    k = kl_estimate([-1.0, -2.0, -3.0], [-1.5, -2.0, -4.0])
    assert k["kl"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)


def test_distinct_plans_and_the_tiebreak_by_hand():
    recs = [rec("a", 0, plan="(x)"), rec("a", 1, plan="(x)"), rec("a", 2, plan="(y)"), rec("a", 3, valid=False),
            rec("b", 0, plan="(z)"), rec("c", 0, valid=False)]
    assert distinct_valid_plans(recs) == pytest.approx((2 + 1) / 2)
    # task a: two shortest samples; the later one has fewer completion tokens, so the tie-break acts there
    tie = [rec("a", 0, plan="(x)", tokens=5), rec("a", 1, plan="(y)", tokens=4), rec("b", 0, plan="(z)", tokens=4),
           rec("b", 1, plan="(w)", tokens=4)]
    assert tiebreak_share(tie) == pytest.approx(1 / 2)
    assert tiebreak_share([r | {"completion_tokens": 4} for r in tie]) == 0


def test_plan_length_change_over_tasks_solved_in_both():
    prev = generation_row([rec("a", 0, length=4), rec("b", 0, length=2)], None)
    row = generation_row([rec("a", 0, length=2), rec("a", 1, length=4), rec("c", 0, length=9)],
                         prev["valid_plan_length_by_task"])
    assert row["plan_length_change_common"] == pytest.approx(3.0 - 4.0) and row["tasks_solved_both"] == 1


@pytest.mark.slow
def test_drift_of_a_real_run(tiny_base_model, tmp_path, monkeypatch):
    """Two generations of the tiny loop at temperature 0.7: KL and entropy are finite; scoring generation g's
    own held-out samples under generation g's model gives back their recorded behaviour log-probs (the KL
    of a model to itself is 0), so the KL's second term is the previous model's, not noise."""
    from iterdeploy_trl.cli import main
    from iterdeploy_trl.config import config_from_dict
    from iterdeploy_trl.drift import _deployed_model, _score
    from iterdeploy_trl.loop import run_loop

    data = tiny_run_config(tiny_base_model, generations=1, method="uncurated-sft", curation="none",
                           tasks={"n": 8, "heldout": 4}, sampling={"samples_per_task": 2, "temperature": 0.7},
                           chunk_size=4)
    out = tmp_path / "run"
    run_loop(config_from_dict(data), out, progress=False)
    rows = measure_run(out)
    assert [r["generation"] for r in rows] == [0, 1]
    assert math.isfinite(rows[1]["kl_prev_heldout"]) and rows[1]["entropy_heldout"] > 0
    assert "kl_prev_heldout" not in rows[0]
    held = [json.loads(line) for p in sorted((out / "seed_0" / "gen_01" / "traces").glob("heldout-*.jsonl"))
            for line in p.read_text().splitlines()]
    own = _score(out, data, _deployed_model(out, 0, 1), held, 0.7, 1.0)
    assert max(abs(a - r["behaviour_logprob"]) for a, r in zip(own, held, strict=True)) < 1e-3
    # the loop wrote the model-free measures into each generation's metrics row, equal to the post-hoc ones
    metrics = [json.loads(line) for line in (out / "seed_0" / "metrics.jsonl").read_text().splitlines()]
    fields = [k for k in rows[0] if k not in ("seed", "generation", "valid_plan_length_by_task")]
    assert "entropy_heldout" in fields and "plan_length_change_common" in fields and "tiebreak_acts" in fields
    for m, r in zip(metrics, rows, strict=True):
        missing = [k for k in fields if k not in m]
        assert not missing, f"generation {m['generation']}'s metrics row lacks {missing}"
        for k in fields:  # the same records in another order: float sums may differ in the last bits
            assert (m[k] is None and r[k] is None) or m[k] == pytest.approx(r[k], rel=1e-9), (m['generation'], k)
    assert main(["drift", str(out), "--figure", str(tmp_path / "fig" / "drift.png")]) == 0
    assert (out / "drift.jsonl").is_file() and (tmp_path / "fig" / "drift.png").is_file()
    assert main(["drift", str(tmp_path / "nothing")]) == 2
    # --reuse takes the rows just written (no re-scoring) while they cover every finished generation ...
    import iterdeploy_trl.drift as drift_module

    measured = (out / "drift.jsonl").read_text()
    monkeypatch.setattr(drift_module, "measure_run", lambda *a, **k: pytest.fail("re-measured a covered run"))
    assert main(["drift", str(out), "--reuse", "--figure", str(tmp_path / "fig2" / "drift.png")]) == 0
    assert (tmp_path / "fig2" / "drift.png").is_file() and (out / "drift.jsonl").read_text() == measured
    # ... and measures again when they do not (a generation more in metrics.jsonl than in drift.jsonl)
    (out / "drift.jsonl").write_text("".join(line + "\n" for line in measured.splitlines()[:1]))
    monkeypatch.setattr(drift_module, "measure_run", lambda *a, **k: rows)
    assert main(["drift", str(out), "--reuse"]) == 0
    assert (out / "drift.jsonl").read_text().count("\n") == 2


def test_generation_metrics_carry_the_drift_measures_of_their_records():
    """``metrics.generation_metrics`` (the loop's metrics row) against ``generation_row`` on the same records,
    with the previous generation's records giving the plan-length change over tasks solved in both."""
    from iterdeploy_trl.metrics import generation_metrics
    from iterdeploy_trl.traces import TraceRecord

    def tr(g, task, k, **over):
        r = rec(task, k, **over)
        return TraceRecord(run="r", method="valid-sft", generation=g, seed=0, domain="blocksworld", prompt="p",
                           reason="", truncated=False, reference_length=None, model="m", sampling={}, validator={},
                           **r)

    before = [tr(0, "a", 0, length=4), tr(0, "b", 0, length=2), tr(0, "h", 0, split="heldout", lp=-2.0)]
    now = [tr(1, "a", 0, length=2, tokens=5), tr(1, "a", 1, length=4, plan="(b)"), tr(1, "c", 0, length=9),
           tr(1, "h", 0, split="heldout", lp=-1.0), tr(1, "h", 1, split="heldout", lp=-3.0, reasoning=2)]
    m = generation_metrics(now, 1, 3, 1, before)
    row = generation_row([r.to_dict() for r in now], generation_row([r.to_dict() for r in before],
                                                                    None)["valid_plan_length_by_task"])
    row.pop("valid_plan_length_by_task")
    assert {k: m[k] for k in row} == row
    assert m["plan_length_change_common"] == pytest.approx(3.0 - 4.0) and m["entropy_heldout"] == pytest.approx(2.0)
    assert generation_metrics(now, 1, 3, 1)["plan_length_change_common"] is None


def test_kl_previous_is_not_hashed_and_off_by_default():
    """``drift.kl_previous`` measures, it does not change the run: off by default, and not in the run hash (a
    run directory made without it resumes with it)."""
    from iterdeploy_trl.config import config_from_dict, config_hash

    assert config_from_dict({}).drift.kl_previous is False
    assert config_hash(config_from_dict({"drift": {"kl_previous": True}})) == config_hash(config_from_dict({}))


@pytest.mark.slow
def test_loop_writes_the_kl_to_the_previous_model(tiny_base_model, tmp_path):
    """With ``drift.kl_previous: true`` every trained generation's metrics row carries kl_prev_heldout and its
    se, equal to what ``iterdeploy drift`` computes afterwards on the same run directory (one function,
    ``metrics.kl_to_previous``); the same run without it writes the same numbers otherwise and no KL."""
    from iterdeploy_trl.config import config_from_dict
    from iterdeploy_trl.loop import run_loop

    data = tiny_run_config(tiny_base_model, generations=2, tasks={"n": 8, "heldout": 4},
                           sampling={"samples_per_task": 2, "temperature": 0.7}, chunk_size=4)
    runs = {}
    for on in (True, False):
        out = tmp_path / f"kl-{on}"
        run_loop(config_from_dict({**data, "drift": {"kl_previous": on}}), out, progress=False)
        runs[on] = [json.loads(line) for line in (out / "seed_0" / "metrics.jsonl").read_text().splitlines()]
    on, off = runs[True], runs[False]
    assert "kl_prev_heldout" not in on[0]  # generation 0 has no previous model
    post = measure_run(tmp_path / "kl-True")
    for m, r in zip(on[1:], post[1:], strict=True):
        assert "kl_prev_heldout" in m and "kl_prev_heldout_se" in m, f"generation {m['generation']}: no KL written"
        assert math.isfinite(m["kl_prev_heldout"])
        assert m["kl_prev_heldout"] == r["kl_prev_heldout"] and m["kl_prev_heldout_se"] == r["kl_prev_heldout_se"]
    assert all("kl_prev_heldout" not in m for m in off)
    timing = ("deploy_seconds", "train_seconds", "kl_prev_heldout", "kl_prev_heldout_se")
    for a, b in zip(on, off, strict=True):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    # the two runs differ in a measurement only: `iterdeploy drift A B --paired` finds every difference 0
    from iterdeploy_trl.cli import main

    md = tmp_path / "paired" / "p.md"
    assert main(["drift", str(tmp_path / "kl-True"), str(tmp_path / "kl-False"), "--paired", str(md)]) == 0
    paired = json.loads(md.with_suffix(".json").read_text())
    assert {r["measure"] for r in paired} >= {"solved", "heldout_solved", "completion_tokens_mean"}
    assert all(r["diff"] == 0 and r["per_seed_diff"] == [0] for r in paired)
    assert md.with_suffix(".png").is_file() and "kl-True − kl-False" in md.read_text()


def test_paired_difference_by_hand():
    """A − B per generation, paired by seed: the mean of the per-seed differences with its t-interval, the
    task-and-seed bootstrap of the solved counts centred on the same difference, and the summary row over
    generations 1..G; a seed only one run has is left out of the pairs."""
    from iterdeploy_trl.drift import paired_difference
    from iterdeploy_trl.stats import paired_t, task_seed_bootstrap

    def row(solved, length):
        return {"solved": len(solved), "solved_task_ids": solved, "tasks": 10, "mean_valid_plan_length": length}

    a = {(0, 0): row(["t1"], 2.0), (1, 0): row(["t1"], 2.0), (0, 1): row(["t1", "t2", "t3"], 3.0),
         (1, 1): row(["t1", "t2"], 4.0), (2, 1): row(["t9"], 9.0)}
    b = {(0, 0): row(["t1"], 2.0), (1, 0): row(["t1"], 2.0), (0, 1): row(["t1"], 3.5), (1, 1): row(["t2"], 3.0)}
    rows = {(r["measure"], r["generation"]): r for r in paired_difference(a, b)}
    g1 = rows["solved", 1]
    assert g1["seeds"] == [0, 1] and g1["per_seed_diff"] == [2.0, 1.0] and g1["diff"] == pytest.approx(1.5)
    assert (g1["lo"], g1["hi"]) == pytest.approx((paired_t([2.0, 1.0]).lo, paired_t([2.0, 1.0]).hi))
    est, lo, hi = g1["bootstrap"]
    assert est == pytest.approx(1.5) and lo <= 1.5 <= hi
    # tasks × seeds (t1, t2, t3 and the 7 of the 10 tasks neither run solved): the never-solved are resampled too
    by_hand = [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]] + [[0.0, 0.0]] * 7  # t1: 1-1, 1-0; t2: 1-0, 1-1; t3: 1-0, 0-0
    assert g1["bootstrap"] == list(task_seed_bootstrap(by_hand))
    assert rows["solved", 0]["diff"] == 0 and rows["solved", 0]["bootstrap"] == [0.0, 0.0, 0.0]
    assert rows["mean_valid_plan_length", 1]["per_seed_diff"] == pytest.approx([-0.5, 1.0])
    assert rows["solved", "1-1"]["diff"] == pytest.approx(1.5) and "bootstrap" not in rows["solved", "1-1"]


def test_paired_needs_two_run_dirs(tmp_path, capsys):
    from iterdeploy_trl.cli import main

    assert main(["drift", str(tmp_path), "--paired", str(tmp_path / "p.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exactly two RUNDIRs" in err[0]
    assert main(["drift", str(tmp_path / "a"), str(tmp_path / "b"), "--paired", str(tmp_path / "p.md")]) == 2
    assert not (tmp_path / "p.md").exists()
