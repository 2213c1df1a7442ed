"""Prop. 2's effective reward in the reward audit: r · Σ_k λ_k β_k(y) / π(y), the mixture density over every
source generation k of a curated set, with π the model the generation's training starts from. Checked on
hand-specified log-probabilities (the pure functions) and on a hand-made three-generation run directory whose
three models differ (the tiny model and two perturbed copies), each trace scored here one at a time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_audit import logprob_one, perturbed_copy

from iterdeploy_trl.audit import effective_rewards, log_effective_weights, mixture_logprob, source_shares

INF = math.inf


def test_effective_rewards_of_hand_specified_logprobs() -> None:
    """Three source generations, shares 1/2, 1/4, 1/4 (rows from generations 0, 0, 1, 2)."""
    shares = source_shares([0, 0, 1, 2])
    assert shares == {0: 0.5, 1: 0.25, 2: 0.25}
    log_beta = [{0: -3.0, 1: -2.0, 2: -5.0}, {0: -1.0, 1: -4.0, 2: -0.5}, {0: -INF, 1: -2.0, 2: -6.0}]
    log_pi = [-2.5, -1.5, -3.0]
    by_hand = [
        0.5 * math.exp(-3.0 + 2.5) + 0.25 * math.exp(-2.0 + 2.5) + 0.25 * math.exp(-5.0 + 2.5),
        0.5 * math.exp(-1.0 + 1.5) + 0.25 * math.exp(-4.0 + 1.5) + 0.25 * math.exp(-0.5 + 1.5),
        0.0 + 0.25 * math.exp(-2.0 + 3.0) + 0.25 * math.exp(-6.0 + 3.0),  # β_0 cannot draw it (outside its nucleus)
    ]
    assert effective_rewards([1.0, 1.0, 1.0], log_beta, log_pi, shares) == pytest.approx(by_hand, rel=1e-12)
    assert effective_rewards([0.0, 2.0, 1.0], log_beta, log_pi, shares) == pytest.approx(
        [0.0, 2 * by_hand[1], by_hand[2]], rel=1e-12)
    assert mixture_logprob(log_beta[0], shares) == pytest.approx(
        math.log(0.5 * math.exp(-3) + 0.25 * math.exp(-2) + 0.25 * math.exp(-5)), rel=1e-12)
    # far in the tails (log-probs of long traces) the mixture stays finite: logsumexp, not exp then log
    assert mixture_logprob({0: -2000.0, 1: -2001.0}, {0: 0.5, 1: 0.5}) == pytest.approx(
        -2000.0 + math.log(0.5 * (1 + math.exp(-1))), rel=1e-12)
    # π = 0 where the mixture is not: an infinite log-weight, the weight capped finite
    assert log_effective_weights([{0: -1.0}], [-INF], {0: 1.0}) == [INF]
    assert math.isfinite(effective_rewards([1.0], [{0: -1.0}], [-INF], {0: 1.0})[0])
    with pytest.raises(ValueError, match=r"source generation\(s\) \[2\]"):
        mixture_logprob({0: -1.0, 1: -1.0}, shares)
    with pytest.raises(ValueError, match="empty training set"):
        source_shares([])


def plan_text(actions: list[str]) -> str:
    return "".join(a + "\n" for a in actions)


def make_three_generation_run(root: Path, model: Path, init: str) -> tuple[Path, dict]:
    """Generations 0..2 deployed by three different models (the tiny model, then two perturbed copies), 4
    pool tasks × 1 sample, and the curated set written after generation 2 by hand: tasks 0 and 1 sampled in
    generation 0, task 2 in generation 1, task 3 in generation 2 (λ = 1/2, 1/4, 1/4). Each trace's recorded
    behaviour log-prob is its source model's, computed here one completion at a time."""
    from iterdeploy_trl.config import config_from_dict, config_hash
    from iterdeploy_trl.models import load_model_and_tokenizer
    from iterdeploy_trl.prompts import build_prompt
    from iterdeploy_trl.runio import write_json, write_jsonl
    from iterdeploy_trl.tasks import generate_tasks, write_task_set

    run = root / "run"
    sdir = run / "seed_0"
    cfg = config_from_dict({"name": "three-generations", "domain": "blocksworld", "generations": 3, "seeds": [0],
                            "curation": "shortest", "tasks": {"n": 4, "heldout": 0, "size": [3, 3], "seed": 0},
                            "model": {"path": str(model)}, "sampling": {"samples_per_task": 1},
                            "training": {"init": init}})
    tasks = generate_tasks("blocksworld", 4, 0, size=(3, 3))
    write_task_set(tasks, run / "tasks")
    write_json(run / "resolved_config.json", {"hash": config_hash(cfg), "config": cfg.to_dict()})
    dom = (run / "tasks" / "domain.pddl").read_text()
    dirs = {0: model, **{g: perturbed_copy(model, sdir / f"gen_{g:02d}" / "model", seed=10 + g) for g in (1, 2)}}
    tok = load_model_and_tokenizer(model)[1]
    models = {g: load_model_and_tokenizer(d)[0] for g, d in dirs.items()}
    by = {}
    for g in range(3):
        recs = []
        for t in tasks:
            plan = [*list(t.reference_plan)[:g], *t.reference_plan]  # a different completion in each generation
            prompt = build_prompt(dom, t.problem, "compact", domain="blocksworld")
            completion = plan_text(plan)
            recs.append({
                "run": "three-generations", "method": "valid-sft", "generation": g, "seed": 0, "split": "pool",
                "task_id": t.id, "sample_index": 0, "domain": "blocksworld", "prompt": prompt,
                "completion": completion, "plan": "\n".join(plan), "plan_length": len(plan), "valid": True,
                "reason": "valid", "reasoning_tokens": 0, "completion_tokens": 5 * len(plan) + 1, "truncated": False,
                "behaviour_logprob": logprob_one(models[g], tok, prompt, completion),
                "reference_length": t.reference_length, "model": str(dirs[g]), "sampling": {}})
            by[(g, t.id)] = recs[-1]
        write_jsonl(sdir / f"gen_{g:02d}" / "traces" / "pool-00000.jsonl", recs)
    keys = [(0, tasks[0].id), (0, tasks[1].id), (1, tasks[2].id), (2, tasks[3].id)]
    write_jsonl(sdir / "gen_02" / "train.jsonl",
                [{"prompt": by[k]["prompt"], "completion": by[k]["completion"], "task_id": k[1],
                  "behaviour_logprob": by[k]["behaviour_logprob"]} for k in keys])
    write_json(run / "summary.json", {"complete": True, "base_model": str(model), "generations": []})
    scores = {k: {src: logprob_one(models[src], tok, by[k]["prompt"], by[k]["completion"]) for src in models}
              for k in keys}
    return run, {"keys": keys, "scores": scores}


@pytest.mark.parametrize("init", ["base", "previous"])
def test_three_generation_effective_reward_is_the_mixture_density(init, tiny_base_model, tmp_path) -> None:
    """The audit's weight of each curated trace = Σ_k λ_k β_k(y)/π(y) by hand, π = the base (training.init
    base) or the model generation 2 deployed (training.init previous); the heuristic the audit used before,
    λ_g + (1 − λ_g)·β_own/M_g, differs from it on this case (so this test tells them apart)."""
    from iterdeploy_trl.audit import audit_run

    run, info = make_three_generation_run(tmp_path, tiny_base_model, init)
    er = audit_run(run)["seeds"]["0"]["generations"][2]["effective_reward"]
    assert er["computed"], er
    lam = {0: 0.5, 1: 0.25, 2: 0.25}
    pi = 0 if init == "base" else 2
    assert er["shares_by_source_generation"] == {str(k): v for k, v in lam.items()}
    assert er["pi_generation"] == pi
    by_hand, heuristic = [], []
    for k in info["keys"]:
        lp = info["scores"][k]
        by_hand.append(sum(lam[src] * math.exp(lp[src] - lp[pi]) for src in lam))
        heuristic.append(lam[2] + (1 - lam[2]) * math.exp(lp[k[0]] - lp[2]))
    got = [t["weight"] for t in er["per_trace"]]
    assert [t["generation"] for t in er["per_trace"]] == [k[0] for k in info["keys"]]
    assert got == pytest.approx(by_hand, rel=1e-4)
    assert max(abs(h / w - 1) for h, w in zip(heuristic, by_hand, strict=True)) > 0.05
    for t, k in zip(er["per_trace"], info["keys"], strict=True):  # every trace under every source model
        assert {int(s): v for s, v in t["log_beta_by_source"].items()} == pytest.approx(
            {s: info["scores"][k][s] for s in lam}, abs=1e-4)
    # the recorded behaviour log-probs are the source models' (the identity the audit reports)
    assert er["recorded_behaviour_max_abs_logprob_diff"] < 1e-4
    json.dumps(er)
