"""`iterdeploy audit` on a HAND-MADE run directory whose funnel, curated sets and effective rewards are known
by construction and recomputed here independently (the tiny model scores the completions one at a time,
without the audit's code), and on bad input (never a traceback)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from iterdeploy_trl.cli import main

K = 2  # samples per task


def with_undo(sim, plan: list[str]) -> list[str]:
    """``plan`` with two actions inserted somewhere, the second putting the state back (e.g. pick-up then
    put-down): still a valid plan, with exactly one undone action (the detour leads to neither neighbour)."""
    states = [sim.init_state]
    for a in plan:
        states.append(sim.apply(states[-1], a))
    for i, s in enumerate(states):
        near = {states[i - 1] if i else None, states[i + 1] if i + 1 < len(states) else None}
        for a in sim.applicable(s):
            s1 = sim.apply(s, a)
            if s1 in near:
                continue
            for b in sim.applicable(s1):
                if sim.apply(s1, b) == s:
                    return [*plan[:i], a, b, *plan[i:]]
    raise AssertionError("no detour found")


def make_run(root: Path, model: Path) -> tuple[Path, dict]:
    """A run directory as `iterdeploy run` lays it out, written by hand: 3 pool tasks + 1 held-out,
    2 samples each, generations 0..2, curation shortest accumulated. What each trace is:

    gen 0: t0 = [ref (valid), ref+undo (valid: the state is put back)]; t1 = [junk, junk]; t2 = [ref (valid), junk]; h = [ref (valid), junk]
    gen 1: t0 = [ref (valid, the same plan as gen 0), junk]; t1 = [ref (valid, new), ref+undo (valid)];
           t2 = [junk, junk] (lost); h = [junk, junk]
    gen 2: t0 = [ref (valid), junk]; t1, t2, h all junk
    """
    from iterdeploy_trl.config import config_from_dict, config_hash
    from iterdeploy_trl.prompts import build_prompt
    from iterdeploy_trl.runio import write_json, write_jsonl
    from iterdeploy_trl.sim import Simulator
    from iterdeploy_trl.tasks import generate_tasks, write_task_set

    run = root / "run"
    cfg = config_from_dict({"name": "handmade", "domain": "blocksworld", "generations": 2, "seeds": [0],
                            "curation": "shortest", "tasks": {"n": 3, "heldout": 1, "size": [3, 3], "seed": 0},
                            "model": {"path": str(model)}, "sampling": {"samples_per_task": K}})
    tasks = generate_tasks("blocksworld", 4, 0, size=(3, 3))
    write_task_set(tasks, run / "tasks")
    write_json(run / "resolved_config.json", {"hash": config_hash(cfg), "config": cfg.to_dict()})
    dom = (run / "tasks" / "domain.pddl").read_text()
    plans = {}
    for t in tasks:
        sim = Simulator(dom, t.problem)
        ref = list(t.reference_plan)
        plans[t.id] = {"ref": ref, "undo": with_undo(sim, ref), "junk": ["(stack b1 b1)"]}
    ids = [t.id for t in tasks]
    layout = {0: {ids[0]: ["ref", "undo"], ids[1]: ["junk", "junk"], ids[2]: ["ref", "junk"], ids[3]: ["ref", "junk"]},
              1: {ids[0]: ["ref", "junk"], ids[1]: ["ref", "undo"], ids[2]: ["junk", "junk"], ids[3]: ["junk", "junk"]},
              2: {ids[0]: ["ref", "junk"], ids[1]: ["junk", "junk"], ids[2]: ["junk", "junk"], ids[3]: ["junk", "junk"]}}
    # behaviour log-probs chosen by hand (not the model's): the ratios beta/pi are then far from 1
    logb = {(g, tid, k): -2.0 - 0.5 * g - 0.25 * k - 0.1 * i for g in layout for i, tid in enumerate(ids) for k in range(K)}
    records = {}
    sdir = run / "seed_0"
    for g, per_task in layout.items():
        recs = []
        for i, t in enumerate(tasks):
            for k, kind in enumerate(per_task[t.id]):
                plan = plans[t.id][kind]
                recs.append({
                    "run": "handmade", "method": "valid-sft", "generation": g, "seed": 0,
                    "split": "pool" if i < 3 else "heldout", "task_id": t.id, "sample_index": k,
                    "domain": "blocksworld", "prompt": build_prompt(dom, t.problem, "compact", domain="blocksworld"),
                    "completion": "".join(a + "\n" for a in plan), "plan": "\n".join(plan),
                    "plan_length": len(plan), "valid": kind != "junk", "reason": "valid" if kind != "junk" else "x",
                    "reasoning_tokens": 0, "completion_tokens": 5 * len(plan) + 1, "truncated": False,
                    "behaviour_logprob": logb[(g, t.id, k)], "reference_length": t.reference_length,
                    "model": str(model) if g == 0 else f"seed_0/gen_{g:02d}/model", "sampling": {},
                    "validator": {"version": "4", "sha256": "ab" * 32}})
        write_jsonl(sdir / f"gen_{g:02d}" / "traces" / "pool-00000.jsonl", [r for r in recs if r["split"] == "pool"])
        write_jsonl(sdir / f"gen_{g:02d}" / "traces" / "heldout-00000.jsonl", [r for r in recs if r["split"] != "pool"])
        records[g] = recs
    # the curated sets, by construction (shortest valid plan per task, ties to the earlier generation):
    # after gen 0: t0 gen0 s0 (ref), t2 gen0 s0; after gen 1: t0 gen0 s0, t1 gen1 s0, t2 gen0 s0
    pick = {0: [(0, ids[0], 0), (0, ids[2], 0)], 1: [(0, ids[0], 0), (1, ids[1], 0), (0, ids[2], 0)]}
    by = {(r["generation"], r["task_id"], r["sample_index"]): r for recs in records.values() for r in recs}
    for g, keys in pick.items():
        write_jsonl(sdir / f"gen_{g:02d}" / "train.jsonl",
                    [{"prompt": by[k]["prompt"], "completion": by[k]["completion"],
                      "behaviour_logprob": by[k]["behaviour_logprob"], "task_id": k[1]} for k in keys])
    for g in (1, 2):  # every generation's model: the tiny model, perturbed (loaded from the run dir)
        perturbed_copy(model, sdir / f"gen_{g:02d}" / "model", seed=g)
    with open(sdir / "metrics.jsonl", "w") as fh:
        for g, recs in records.items():
            pool = [r for r in recs if r["split"] == "pool"]
            held = [r for r in recs if r["split"] != "pool"]
            fh.write(json.dumps({"generation": g, "solved": len({r["task_id"] for r in pool if r["valid"]}),
                                 "heldout_solved": len({r["task_id"] for r in held if r["valid"]})}) + "\n")
    write_json(run / "summary.json", {"complete": True, "base_model": str(model), "generations": []})
    return run, {"ids": ids, "pick": pick, "by": by, "plans": plans}


def perturbed_copy(model: Path, dest: Path, seed: int, scale: float = 0.02) -> Path:
    """A copy of ``model`` with N(0, scale²) noise added to every weight: another generation's model, whose
    log-probabilities differ from the base's (so that the ratios β_k/π of Prop. 2 are not all 1)."""
    import torch

    from iterdeploy_trl.models import load_model_and_tokenizer

    shutil.copytree(model, dest)
    m, _ = load_model_and_tokenizer(model, dtype=torch.float32, device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    m.save_pretrained(dest)
    return dest


def logprob_one(model, tok, prompt: str, completion: str) -> float:
    """log pi(completion | prompt) of one completion, computed directly (no batching, no padding)."""
    import torch

    p = tok(prompt)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + c])).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return sum(float(logp[len(p) - 1 + i, tok_id]) for i, tok_id in enumerate(c))


@pytest.fixture(scope="module")
def handmade(tiny_base_model, tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("audit"), tiny_base_model)


@pytest.fixture(scope="module")
def report(handmade, tmp_path_factory):
    from iterdeploy_trl.audit import write_audit

    run, _ = handmade
    out = tmp_path_factory.mktemp("audit-out")
    write_audit([run], out)
    return json.loads((out / "audit.json").read_text())["runs"][0], out


def test_funnel_of_a_handmade_run(report, handmade):
    audit, out = report
    gens = audit["seeds"]["0"]["generations"]
    assert [e["generation"] for e in gens] == [0, 1, 2]
    funnel = [{st: e["funnel"][st]["n"] for st in e["funnel"]} for e in gens]
    assert funnel == [{"sampled": 6, "valid": 3, "curated": 2}, {"sampled": 6, "valid": 3, "curated": 1},
                      {"sampled": 6, "valid": 1}]
    assert [e["funnel_tasks"] for e in gens] == [{"sampled": 3, "valid": 2, "curated": 2},
                                                 {"sampled": 3, "valid": 2, "curated": 1}, {"sampled": 3, "valid": 1}]
    _, info = handmade
    ids, plans = info["ids"], info["plans"]
    ref = {t: len(plans[t]["ref"]) for t in ids}
    # gen 0 valid: t0 ref, t0 undo+ref (2 longer), t2 ref; curated: t0 ref, t2 ref
    v0 = gens[0]["funnel"]["valid"]
    assert v0["plan_length_mean"] == pytest.approx((ref[ids[0]] * 2 + 2 + ref[ids[2]]) / 3, abs=1e-4)
    assert v0["undone_per_plan"] == pytest.approx(1 / 3, abs=1e-4)  # one of the three valid plans undoes a step
    c0 = gens[0]["funnel"]["curated"]
    assert c0["undone_per_plan"] == 0 and c0["relative_length_mean"] == pytest.approx(1.0)
    assert c0["plan_length_mean"] == pytest.approx((ref[ids[0]] + ref[ids[2]]) / 2, abs=1e-4)
    # novelty: gen 1's t0 ref was written in gen 0 already, t1's two valid plans are new
    assert gens[1]["funnel"]["valid"]["novel_fraction"] == pytest.approx(2 / 3, abs=1e-4)
    # regressions: t2 solved in gen 0, lost in gen 1; held-out solved in gen 0 only
    assert gens[1]["solved"]["lost_since_previous"] == [ids[2]] and gens[1]["solved"]["gained"] == [ids[1]]
    assert gens[2]["solved"]["lost_since_ever"] == sorted([ids[1], ids[2]])
    assert [e["solved"]["heldout"] for e in gens] == [1, 0, 0]
    # lineage and checks: every check passes on this complete, consistent directory
    assert gens[1]["training_set"]["by_source_generation"] == {"0": 2, "1": 1}
    failed = [c for c in audit["checks"] if not c["ok"]]
    assert not failed, failed
    md = (out / "audit.md").read_text()
    assert "| 0 | curated | 2 | 2 |" in md and "| 1 | curated | 1 | 1 |" in md
    assert (out / "audit_funnel-handmade.png").stat().st_size > 10_000


def test_effective_rewards_recomputed_independently(report, handmade, tiny_base_model):
    """Prop. 2's weight Σ_k λ_k β_k(y)/π(y), each trace scored here one at a time under every source
    generation's model (gen 0: the base; gen 1: its perturbed copy) and π = the base (training.init base)."""
    from iterdeploy_trl.models import load_model_and_tokenizer

    audit, _ = report
    run, info = handmade
    models = {0: load_model_and_tokenizer(tiny_base_model)[0],
              1: load_model_and_tokenizer(run / "seed_0" / "gen_01" / "model")[0]}
    tok = load_model_and_tokenizer(tiny_base_model)[1]
    for g, keys in info["pick"].items():
        er = audit["seeds"]["0"]["generations"][g]["effective_reward"]
        assert er["computed"], er
        lam = {k[0]: sum(1 for kk in keys if kk[0] == k[0]) / len(keys) for k in keys}
        assert er["shares_by_source_generation"] == pytest.approx({str(k): v for k, v in lam.items()})
        assert er["pi_generation"] == 0
        expected = []
        for k in keys:
            rec = info["by"][k]
            lp = {src: logprob_one(models[src], tok, rec["prompt"], rec["completion"]) for src in lam}
            expected.append(sum(lam[src] * math.exp(lp[src] - lp[0]) for src in lam))
        got = [t["weight"] for t in er["per_trace"]]
        assert got == pytest.approx(expected, rel=1e-4)
        st = er["statistics"]
        assert st["mean"] == pytest.approx(sum(expected) / len(expected), rel=1e-4)
        assert st["max"] == pytest.approx(max(expected), rel=1e-4)
        ess = sum(expected) ** 2 / sum(w * w for w in expected) / len(expected)
        assert st["ess_fraction"] == pytest.approx(ess, rel=1e-4)
        share0 = sum(w for w, k in zip(expected, keys, strict=True) if k[0] == 0) / sum(expected)
        assert st["share_by_source_generation"]["0"] == pytest.approx(share0, rel=1e-4)
    # after gen 0 every trace was sampled by the base, where the training starts: every weight 1
    assert {t["weight"] for t in audit["seeds"]["0"]["generations"][0]["effective_reward"]["per_trace"]} == {1.0}
    # after gen 1 the gen-1 model's traces are not weighted 1: its model differs from π
    assert max(abs(w - 1) for w in (t["weight"] for t in
                                    audit["seeds"]["0"]["generations"][1]["effective_reward"]["per_trace"])) > 1e-3


def test_inconsistent_training_set_is_reported(handmade, tmp_path):
    """A train.jsonl that the curation rule would not have written (a row dropped) fails the check."""
    from iterdeploy_trl.audit import audit_run

    run = tmp_path / "run"
    shutil.copytree(handmade[0], run)
    train = run / "seed_0" / "gen_01" / "train.jsonl"
    train.write_text("".join(train.read_text().splitlines(keepends=True)[:-1]))
    failed = {c["check"] for c in audit_run(run, score=False)["checks"] if c["ok"] is False}
    assert failed == {"seed 0 gen 1 curation recomputed"}


@pytest.mark.parametrize("case", ["missing", "file", "empty", "compare", "broken-config"])
def test_not_a_run_directory_is_a_message(case, handmade, tmp_path, capsys):
    bad = tmp_path / case
    if case == "file":
        bad.write_text("x")
    elif case == "empty":
        bad.mkdir()
    elif case == "compare":
        bad.mkdir()
        shutil.copytree(handmade[0], bad / "valid-sft", ignore=shutil.ignore_patterns("model"))
    elif case == "broken-config":
        shutil.copytree(handmade[0], bad, ignore=shutil.ignore_patterns("model"))
        (bad / "resolved_config.json").write_text("{not json")
    assert main(["audit", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written
    if case == "compare":
        assert "valid-sft" in err and "audit those" in err


def test_incomplete_and_older_run_directories_are_reported(handmade, tmp_path, capsys):
    """A run killed during generation 2 (no gen-2 traces, no summary.json), made by an older version (a
    config key this version does not know, traces without validator and sample fields): a report that
    says what is missing, exit 0."""
    run = tmp_path / "old"
    shutil.copytree(handmade[0], run, ignore=shutil.ignore_patterns("model"))
    shutil.rmtree(run / "seed_0" / "gen_02" / "traces")
    (run / "summary.json").unlink()
    resolved = json.loads((run / "resolved_config.json").read_text())
    resolved["config"]["sampling"]["old_knob"] = 1
    (run / "resolved_config.json").write_text(json.dumps(resolved))
    for f in (run / "seed_0").glob("gen_*/traces/*.jsonl"):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        f.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("validator", "sample_index")}) + "\n"
                             for r in rows))
    assert main(["audit", str(run), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    md = (tmp_path / "o" / "audit.md").read_text()
    assert "gen_02/traces: no trace file" in md and "summary.json missing" in md
    assert "does not load with this version" in md
    assert "(not recorded)" in md  # the validator identity the old traces lack
    audit = json.loads((tmp_path / "o" / "audit.json").read_text())["runs"][0]
    assert not audit["complete"]
    er = audit["seeds"]["0"]["generations"][1]["effective_reward"]
    assert er["computed"] is False and "sampling.old_knob" in er["why"]  # said, not raised
    # a trace file cut in the middle of a line: an error naming the file
    bad = run / "seed_0" / "gen_00" / "traces" / "pool-00000.jsonl"
    bad.write_text(bad.read_text()[:-40])
    assert main(["audit", str(run), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "pool-00000.jsonl" in err and "Traceback" not in err


def test_release_criteria(monkeypatch):
    """Release gates on solved sets made by hand (2 seeds, generations 0-3)."""
    from types import SimpleNamespace

    from iterdeploy_trl import release

    def s(pool, held):
        return {"pool": set(pool), "heldout": set(held)}

    sets = {0: {0: s("a", ""), 1: s("ab", "x"), 2: s("abc", "xy"), 3: s("bcd", "xy")},
            1: {0: s("a", ""), 1: s("a", "x"), 2: s("abc", "xy"), 3: s("abcd", "xyz")}}
    monkeypatch.setattr(release, "solved_sets", lambda run: sets)
    run = SimpleNamespace(path=Path("r"), config={"tasks": {"heldout": 3}})
    # held-out solved, mean over seeds: 0, 1, 2, 2.5 -> generation 3
    assert release.choose_generation(run, "best-heldout")[0] == 3
    # unanimous pool sets: {a}, {a}, {a,b,c}, {b,c,d}: generation 3 loses a (solved by both seeds before)
    g, why = release.choose_generation(run, "no-regression")
    assert g == 2 and why["lost_tasks_by_generation"] == {0: [], 1: [], 2: [], 3: ["a"]}
    sets[1][3] = s("abcd", "xy")  # now generations 2 and 3 tie on held-out: the earlier wins
    assert release.choose_generation(run, "best-heldout")[0] == 2
    with pytest.raises(release.ReleaseError, match="not finished by every seed"):
        release.choose_generation(run, "7")
    with pytest.raises(release.ReleaseError, match="no held-out split"):
        release.choose_generation(SimpleNamespace(path=Path("r"), config={"tasks": {"heldout": 0}}), "best-heldout")


def test_export_copies_the_chosen_model(handmade, tmp_path, capsys):
    run, _ = handmade
    assert main(["export", str(run), "--select", "2", "--out", str(tmp_path / "m")]) == 0
    info = json.loads((tmp_path / "m" / "release.json").read_text())
    assert info["generation"] == 2 and info["seed"] == 0
    src = run / "seed_0" / "gen_02" / "model"
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in (tmp_path / "m").iterdir() if
                                                          p.name != "release.json")
    assert (src / "config.json").read_bytes() == (tmp_path / "m" / "config.json").read_bytes()
    # the hand-made run's held-out task is solved in generation 0 only: the base model is released
    assert main(["export", str(run), "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "release.json").read_text())["generation"] == 0
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "b")]) == 2  # not empty: refused
    assert "not empty" in capsys.readouterr().err
