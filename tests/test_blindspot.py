"""Validators with a declared blind spot (VAL on a changed task) and the curation counter-reward. Plans are
checked by the real VAL; the blind validator must accept exactly the plans that exploit its blind spot (and
the valid ones), the exact validator must reject the exploits, and the counter-reward must keep the exploits
out of the curated set."""

from __future__ import annotations

import pytest
from conftest import tiny_run_config

from iterdeploy_trl.blindspot import (
    BlindSpotError,
    apply_counter_reward,
    check_completions_blind,
    drop_precondition,
    keep_goal_atoms,
    parse_sexpr,
    to_text,
)
from iterdeploy_trl.config import BlindSpotConfig, ConfigError, config_from_dict
from iterdeploy_trl.curate import curate
from iterdeploy_trl.domains import domain_pddl

BW = domain_pddl("blocksworld")
# b3 sits on b2; the goal wants b1 on b2: the exact plan clears b2 first, the exploit stacks onto b3's block
TOWER = """(define (problem tower) (:domain blocksworld) (:objects b1 b2 b3)
  (:init (ontable b1) (ontable b2) (on b3 b2) (clear b1) (clear b3) (handempty))
  (:goal (and (on b1 b2))))"""
# every block on the table; the goal is a tower of three: (on b1 b2) first, (on b2 b3) second
TABLE = """(define (problem table) (:domain blocksworld) (:objects b1 b2 b3)
  (:init (ontable b1) (ontable b2) (ontable b3) (clear b1) (clear b2) (clear b3) (handempty))
  (:goal (and (on b1 b2) (on b2 b3))))"""

PLANS = {  # name -> (problem, plan)
    "tower-exact": (TOWER, ["(unstack b3 b2)", "(put-down b3)", "(pick-up b1)", "(stack b1 b2)"]),
    "tower-exploit": (TOWER, ["(pick-up b1)", "(stack b1 b2)"]),  # b2 is not clear: b3 is on it
    "tower-other-illegal": (TOWER, ["(pick-up b2)", "(put-down b2)", "(pick-up b1)", "(stack b1 b2)"]),
    "tower-short": (TOWER, ["(pick-up b1)"]),  # goal not reached under either validator
    "table-exact": (TABLE, ["(pick-up b2)", "(stack b2 b3)", "(pick-up b1)", "(stack b1 b2)"]),
    "table-first-goal-only": (TABLE, ["(pick-up b1)", "(stack b1 b2)"]),
}


def verdicts(blind: BlindSpotConfig) -> tuple[dict[str, bool], dict[str, bool]]:
    names = list(PLANS)
    _, train, exact = check_completions_blind(blind, BW, [PLANS[n][0] for n in names],
                                              ["\n".join(PLANS[n][1]) + "\n" for n in names], timeout=30, workers=2)
    return ({n: v.valid for n, v in zip(names, train, strict=True)},
            {n: v.valid for n, v in zip(names, exact, strict=True)})


def test_unchecked_precondition_accepts_exactly_the_exploits():
    train, exact = verdicts(BlindSpotConfig(precondition="stack: (clear ?y)"))
    assert {n for n, ok in exact.items() if ok} == {"tower-exact", "table-exact"}
    assert {n for n, ok in train.items() if ok} == {"tower-exact", "table-exact", "tower-exploit"}


def test_partial_goal_accepts_exactly_the_exploits():
    train, exact = verdicts(BlindSpotConfig(goal_atoms=1))
    assert {n for n, ok in exact.items() if ok} == {"tower-exact", "table-exact"}
    assert {n for n, ok in train.items() if ok} == {"tower-exact", "table-exact", "table-first-goal-only"}


def test_both_blind_spots_at_once():
    train, exact = verdicts(BlindSpotConfig(precondition="stack: (clear ?y)", goal_atoms=1))
    assert {n for n, ok in train.items() if ok} - {n for n, ok in exact.items() if ok} == {
        "tower-exploit", "table-first-goal-only"}


def test_blind_domain_removes_one_literal_of_one_action():
    blind = parse_sexpr(drop_precondition(BW, "stack", "(clear ?y)"))[0]
    exact = parse_sexpr(BW)[0]
    changed = [(a, b) for a, b in zip(exact, blind, strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0][1] == "stack"
    assert to_text(changed[0][1][changed[0][1].index(":precondition") + 1]) == "(and (holding ?x))"
    assert "(clear ?x)" in to_text(blind)  # pick-up and unstack keep theirs
    assert "(and (on b1 b2))" in keep_goal_atoms(TABLE, 1)
    with pytest.raises(BlindSpotError, match="no literal"):
        drop_precondition(BW, "stack", "(ontable ?y)")
    with pytest.raises(BlindSpotError, match="no action 'stak'"):
        drop_precondition(BW, "stak", "(clear ?y)")
    with pytest.raises(ConfigError, match="validator.blind_spot.precondition"):
        config_from_dict({"validator": {"blind_spot": {"precondition": "stack (clear ?y)"}}})
    with pytest.raises(ConfigError, match="validator.counter_reward"):
        config_from_dict({"validator": {"counter_reward": "shortest"}})


def _trace(task, k, plan_length, valid, exact_valid):
    from iterdeploy_trl.traces import TraceRecord

    return TraceRecord(run="r", method="valid-sft", generation=0, seed=0, split="pool", task_id=task, sample_index=k,
                       domain="blocksworld", prompt="p", completion="c", plan="", plan_length=plan_length,
                       valid=valid, reason="", reasoning_tokens=0, completion_tokens=5 * plan_length, truncated=False,
                       behaviour_logprob=-1.0, reference_length=2, model="m", sampling={}, validator={},
                       exact_valid=exact_valid)


def test_counter_reward_removes_the_exploits_from_the_curated_set():
    traces = [_trace("t0", 0, 2, True, False), _trace("t0", 1, 4, True, True),  # the exploit is shorter
              _trace("t1", 0, 2, True, False),  # only an exploit
              _trace("t2", 0, 3, True, True), _trace("t2", 1, 5, False, False)]
    plain = curate(traces, "shortest")
    assert [(t.task_id, t.sample_index) for t in plain] == [("t0", 0), ("t1", 0), ("t2", 0)]
    guarded = curate(apply_counter_reward(traces, "exact"), "shortest")
    assert [(t.task_id, t.sample_index) for t in guarded] == [("t0", 1), ("t2", 0)]
    assert all(t.exact_valid for t in guarded)
    # uncurated: every untruncated trace returns to training, unless the counter-reward removes it
    assert len(curate(apply_counter_reward(traces, "exact"), "none")) == 2


def test_loop_records_both_verdicts_and_the_counter_reward_guards_training(tiny_base_model, tmp_path):
    from iterdeploy_trl.loop import run_loop
    from iterdeploy_trl.runio import read_jsonl
    from iterdeploy_trl.validate import validate_batch

    cfg = config_from_dict(tiny_run_config(
        tiny_base_model, generations=1, tasks={"n": 8, "heldout": 0},
        validator={"blind_spot": {"precondition": "stack: (clear ?y)", "goal_atoms": 1}, "counter_reward": "exact"}))
    run_loop(cfg, tmp_path / "run", progress=False)
    rows = [r for f in sorted((tmp_path / "run" / "seed_0" / "gen_00" / "traces").glob("*.jsonl"))
            for r in read_jsonl(f)]
    assert rows and all(r["valid"] == r["validators"]["train"]["valid"] for r in rows)
    assert all(r["exact_valid"] == r["validators"]["exact"]["valid"] for r in rows)
    assert all(r["validator"]["blind_spot"].startswith("precondition not checked: stack: (clear ?y)") for r in rows)
    # the exact verdicts are VAL's on the untouched task
    from iterdeploy_trl.tasks import load_task_set

    ts = load_task_set(tmp_path / "run" / "tasks")
    problems = {t.id: t.problem for t in ts.tasks}
    planned = [r for r in rows if r["plan"]]
    again = validate_batch([(ts.domain_pddl, problems[r["task_id"]], r["plan"].split("\n")) for r in planned],
                           workers=2)
    assert [v.valid for v in again] == [r["exact_valid"] for r in planned]
    assert all(r["valid"] or not r["exact_valid"] for r in rows)  # the blind validator accepts a superset
    train = read_jsonl(tmp_path / "run" / "seed_0" / "gen_00" / "train.jsonl")
    exact_ok = {(r["task_id"], r["completion"]) for r in rows if r["exact_valid"]}
    assert all((t["task_id"], t["completion"]) in exact_ok for t in train)
    # The experiment's measures: read from the recorded verdicts, or (a run that did not record them, as
    # an exact-validator run) checked again by VAL on the blind task: the same numbers either way.
    import json
    import shutil

    from iterdeploy_trl.audit import open_run
    from iterdeploy_trl.blindspot import measure_run

    recorded = measure_run(open_run(tmp_path / "run"), cfg.validator.blind_spot)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy, ignore=shutil.ignore_patterns("model"))
    for f in copy.glob("seed_0/gen_*/traces/*.jsonl"):
        f.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "validators"}) + "\n"
                             for r in read_jsonl(f)))
    rechecked = measure_run(open_run(copy), cfg.validator.blind_spot)
    assert [r["rechecked"] for r in recorded["0"]] == [0, 0]
    assert [r["rechecked"] for r in rechecked["0"]] == [8 * 4, 8 * 4]
    strip = [{k: v for k, v in r.items() if k != "rechecked"} for r in recorded["0"]]
    assert strip == [{k: v for k, v in r.items() if k != "rechecked"} for r in rechecked["0"]]
    exact_solved = len({r["task_id"] for r in rows if r["exact_valid"]}) / 8
    assert recorded["0"][0]["exact_solved"] == exact_solved
    blind_solved = len({r["task_id"] for r in rows if r["valid"]}) / 8
    assert recorded["0"][0]["blind_solved"] == blind_solved
    assert recorded["0"][0]["exploit_fraction"] == sum(r["valid"] and not r["exact_valid"] for r in rows) / len(rows)
    # the training set the run wrote, every row traced (the counter-reward kept the exploits out of it)
    assert recorded["0"][0]["curated"] == len(train) and recorded["0"][0]["curated_unmatched"] == 0
    assert recorded["0"][0]["curated_exploits"] == 0


# ------------------------------------------------------------------ the experiment's statistics, by hand
# Hand-made run directories (no model, no VAL: every trace records both verdicts under the blind spot, so
# nothing is checked again) whose exploit counts and paired differences are worked out here by hand.

ONE_ATOM = "only the first 1 goal atom(s) checked"  # blindspot.describe(BlindSpotConfig(goal_atoms=1))
VERDICT = {"V": (True, True), "E": (True, False), "I": (False, False)}  # valid, exploit, invalid: (blind, exact)


def _fake_run(root, name, blind_spot, samples, train):
    """A run directory: ``samples[seed][g]`` one letter per pool sample (4 per task: t0 = letters 0-3, t1 =
    4-7), ``train[seed][g]`` the training set written after g as (task, generation, sample) triples."""
    import json

    cfg = {"name": name, "domain": "blocksworld", "seeds": [int(s) for s in samples], "accumulate": True,
           "generations": max(len(gs) for gs in samples.values()) - 1, "tasks": {"n": 2, "heldout": 0},
           "validator": {"blind_spot": blind_spot} if blind_spot else {}}
    path = root / name
    path.mkdir()
    (path / "resolved_config.json").write_text(json.dumps({"config": cfg, "hash": "hand-made"}))
    for seed, gens in samples.items():
        for g, letters in enumerate(gens):
            d = path / f"seed_{seed}" / f"gen_{g:02d}"
            (d / "traces").mkdir(parents=True)
            recs = []
            for i, ch in enumerate(letters):
                b, e = VERDICT[ch]
                recs.append({"task_id": f"t{i // 4}", "sample_index": i % 4, "split": "pool", "generation": g,
                             "completion": f"plan of gen {g} sample {i}", "valid": b if blind_spot else e,
                             "exact_valid": e, "validators": {"train": {"valid": b}, "exact": {"valid": e}},
                             "validator": {"blind_spot": ONE_ATOM}})
            (d / "traces" / "chunk_0000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
            rows = train.get(seed, {}).get(g)
            if rows is not None:
                (d / "train.jsonl").write_text("".join(json.dumps(
                    {"task_id": t, "completion": f"plan of gen {sg} sample {k + 4 * int(t[1:])}" if sg is not None
                     else "a completion no trace wrote"}) + "\n" for t, sg, k in rows))
    return path


def test_exploit_counts_by_hand():
    from iterdeploy_trl.blindspot import exploit_counts

    c = exploit_counts([True, True, True, False, True], [True, False, False, False, True])
    assert (c["samples"], c["blind_accepted"], c["exploits"]) == (5, 4, 2)
    assert c["exploit_fraction"] == 2 / 5 and c["exploit_share_of_blind_accepted"] == 2 / 4
    assert exploit_counts([False], [False])["exploit_share_of_blind_accepted"] is None
    with pytest.raises(ValueError, match="2 blind verdicts but 1 exact"):
        exploit_counts([True, True], [True])


def test_measure_run_gives_the_three_exploit_shares_by_hand(tmp_path):
    from iterdeploy_trl.audit import open_run
    from iterdeploy_trl.blindspot import measure_run, summarise

    samples = {"0": ["VEEI" + "EIII", "VVEI" + "VIII", "IIII" + "IIII"]}
    train = {"0": {0: [("t0", 0, 1), ("t1", 0, 0), ("t1", None, 0)],  # two exploits and a row no trace wrote
                   1: [("t0", 0, 1), ("t0", 1, 0), ("t1", 1, 0)]}}   # accumulated: one exploit from gen 0
    rows = measure_run(open_run(_fake_run(tmp_path, "blind", {"goal_atoms": 1}, samples, train)),
                       BlindSpotConfig(goal_atoms=1))["0"]
    assert [r["rechecked"] for r in rows] == [0, 0, 0]
    # gen 0: 8 samples, 4 accepted by the blind validator (V E E E), 3 exploits; t0 solved exactly, both blind
    assert (rows[0]["samples"], rows[0]["blind_accepted"], rows[0]["exploits"]) == (8, 4, 3)
    assert rows[0]["exploit_fraction"] == 3 / 8 and rows[0]["exploit_share_of_blind_accepted"] == 3 / 4
    assert (rows[0]["exact_solved"], rows[0]["blind_solved"]) == (1 / 2, 1.0)
    assert (rows[0]["curated"], rows[0]["curated_exploits"], rows[0]["curated_unmatched"]) == (2, 2, 1)
    assert rows[0]["curated_exploit_share"] == 1.0 and rows[0]["new_curated"] == 2
    # gen 1: 1 exploit of 8 samples, of 4 accepted; training set: 1 exploit (from gen 0) of 3, 0 of the 2 new
    assert rows[1]["exploit_fraction"] == 1 / 8 and rows[1]["exploit_share_of_blind_accepted"] == 1 / 4
    assert rows[1]["curated_exploit_share"] == 1 / 3
    assert (rows[1]["new_curated"], rows[1]["new_curated_exploits"]) == (2, 0)
    # gen 2 (the last: trains nothing): nothing accepted, so no share of the accepted
    assert rows[2]["exploit_share_of_blind_accepted"] is None and rows[2]["curated_exploit_share"] is None
    s = summarise({"0": rows})
    assert s[0]["curated_exploit_share"]["mean"] == 1.0 and s[2]["curated_exploit_share"] is None


def test_paired_statistics_by_hand():
    """Three conditions, three shared seeds: paired differences, t, p and Holm worked out by hand. With
    n = 3 (2 degrees of freedom) the t distribution has a closed form, P(|t₂| ≥ T) = 1 − T/√(2 + T²)."""
    import math

    from iterdeploy_trl.blindspot import paired_comparisons

    def rows(g0, g1):
        return [{"generation": 0, "exploit_fraction": g0}, {"generation": 1, "exploit_fraction": g1}]

    a = {s: rows(0.05, 0.10) for s in "012"}
    b = {"0": rows(0.05, 0.12), "1": rows(0.05, 0.13), "2": rows(0.05, 0.14)}
    c = {"0": rows(0.05, 0.10), "1": rows(0.05, 0.12), "2": rows(0.05, 0.11), "3": rows(0.05, 0.90)}  # 3: unpaired
    out = paired_comparisons([("A", a), ("B", b), ("C", c)], measures=("exploit_fraction",))
    assert [(r["a"], r["b"], r["generation"]) for r in out] == [("B", "A", 1), ("C", "A", 1), ("C", "B", 1)]
    # d(B − A) = .02, .03, .04: mean .03, s .01, T = .03 / (.01/√3) = 3√3
    # d(C − A) = 0, .02, .01: mean .01, s .01, T = √3;  d(C − B) = −.02, −.01, −.03: mean −.02, T = −2√3
    p = [1 - t / math.sqrt(2 + t * t) for t in (3 * math.sqrt(3), math.sqrt(3), 2 * math.sqrt(3))]
    assert [r["n"] for r in out] == [3, 3, 3]
    assert [r["mean_diff"] for r in out] == pytest.approx([0.03, 0.01, -0.02])
    assert [d["diff"] for d in out[0]["per_seed"]] == pytest.approx([0.02, 0.03, 0.04])
    assert [r["p"] for r in out] == pytest.approx(p)
    assert [(r["a_higher_on"], r["a_lower_on"]) for r in out] == [(3, 0), (2, 0), (0, 3)]
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # t_{0.975, 2} · s/√n
    assert out[0]["ci"] == pytest.approx([0.03 - half, 0.03 + half])
    # Holm over the 3 tests: sorted p_B−A < p_C−B < p_C−A; adjusted 3·p₁, max(that, 2·p₂), max(that, p₃)
    h1 = 3 * p[0]
    h2 = max(h1, 2 * p[2])
    h3 = max(h2, p[1])
    assert [r["p_holm"] for r in out] == pytest.approx([h1, h3, h2])


def test_experiment_report_pairs_by_seed(tmp_path):
    """Two hand-made conditions through the audit's blind-spot experiment: the paired rows and the report."""
    from iterdeploy_trl.audit import blind_spot_experiment, blind_spot_markdown, open_run

    same0 = "VEII" + "IIII"
    exact = {s: [same0, "VVEI" + "IIII"] for s in "012"}              # gen 1: 1 exploit of 8 on every seed
    blind = {"0": [same0, "VEEI" + "EIII"], "1": [same0, "VEEE" + "EIII"], "2": [same0, "VEEE" + "EEII"]}  # 3, 4, 5
    runs = [open_run(_fake_run(tmp_path, n, bs, s, {})) for n, bs, s in
            (("exact", None, exact), ("blind", {"goal_atoms": 1}, blind))]
    exp = blind_spot_experiment(runs)
    assert [r["condition"] for r in exp["runs"]] == ["exact validator", "blind spot"]
    row = next(r for r in exp["paired"] if r["measure"] == "exploit_fraction")
    assert [d["diff"] for d in row["per_seed"]] == pytest.approx([2 / 8, 3 / 8, 4 / 8])
    t = (3 / 8) / ((1 / 8) / 3 ** 0.5)
    assert row["p"] == pytest.approx(1 - t / (2 + t * t) ** 0.5)
    assert all(r["generation"] == 1 for r in exp["paired"])  # generation 0 is the same base model
    assert len(exp["paired"]) == 4 and row["p_holm"] >= row["p"]
    text = "\n".join(blind_spot_markdown(exp))
    assert "Holm p" in text and "0: +0.250, 1: +0.375, 2: +0.500" in text
    from iterdeploy_trl.figures.audit import fig_blind_spot

    assert {f.suffix for f in fig_blind_spot(exp, tmp_path, "blind_spot_experiment")} == {".png", ".pdf"}
