"""The head-to-head schedules methods of the one loop and does statistics: no second driver, no import
cycle, each method's run config holds only what it reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from iterdeploy_trl.compare import method_config
from iterdeploy_trl.config import ConfigError, check_settings_read, config_from_dict

PACKAGE = Path(__file__).resolve().parents[1] / "iterdeploy_trl"


def _imports(module: str, *, everywhere: bool) -> set[str]:
    """The package modules ``module`` imports: at module level, and with ``everywhere`` inside functions too."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if everywhere else iter(tree.body)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("iterdeploy_trl"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if PACKAGE.joinpath(*node.module.split(".")[1:], a.name + ".py").exists())
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("iterdeploy_trl"))
    return {m for m in found if m != "iterdeploy_trl"}


def test_compare_imports_nothing_that_imports_compare():
    """No module compare imports, directly or through others, imports compare: module-level imports of every
    module, and every import of the loop and of compare itself (a lazy import in a function included, as the
    old loop's ``from iterdeploy_trl.compare import run_reinforce`` was)."""
    lazy_too = {"iterdeploy_trl.compare", "iterdeploy_trl.loop"}
    seen, todo = set(), list(_imports("iterdeploy_trl.compare", everywhere=True))
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        assert m != "iterdeploy_trl.compare", "a module compare imports imports compare back"
        todo.extend(_imports(m, everywhere=m in lazy_too))
    assert "iterdeploy_trl.loop" in seen


def test_compare_holds_no_second_driver():
    import iterdeploy_trl.compare as compare

    for name in ("run_reinforce", "_reinforce_seed", "train_reinforce_segment", "deploy_generation"):
        assert not hasattr(compare, name), name


def test_each_method_gets_only_its_own_settings():
    cfg = config_from_dict({"iw_sft": {"truncate": 5.0}, "reinforce": {"learning_rate": 1e-4},
                            "training": {"epochs": 2}, "curation": "all-valid"})
    for method in ("valid-sft", "iw-sft", "uncurated-sft", "reinforce"):
        mcfg = method_config(cfg, method)
        check_settings_read(mcfg, (method,))  # nothing in it the method ignores
        assert mcfg.method == method and mcfg.name == f"cpu-default/{method}"
    assert method_config(cfg, "iw-sft").iw_sft_settings.truncate == 5.0
    assert method_config(cfg, "reinforce").reinforce_settings.learning_rate == 1e-4
    assert method_config(cfg, "valid-sft").training.epochs == 2 and method_config(cfg, "valid-sft").reinforce is None
    assert method_config(cfg, "uncurated-sft").curation == "none"
    with pytest.raises(ConfigError, match=r"^iw_sft\.truncate: set"):
        check_settings_read(cfg, ("valid-sft", "reinforce"))  # what run_compare checks before any work


def test_tuning_settings_are_checked_before_work():
    with pytest.raises(ConfigError, match=r"^tuning\.seeds: .* must not hold a result seed"):
        config_from_dict({"seeds": [0, 1], "tuning": {"seeds": [1], "sft_learning_rates": [1e-3]}})
    cfg = config_from_dict({"tuning": {"seeds": [99], "reinforce_learning_rates": [1e-4]}})
    with pytest.raises(ConfigError, match=r"^tuning: set, but only iterdeploy compare reads it"):
        check_settings_read(cfg, ("reinforce",))  # iterdeploy run
    with pytest.raises(ConfigError, match=r"^tuning\.reinforce_learning_rates: set"):
        check_settings_read(cfg, ("valid-sft",), compare=True)
    check_settings_read(cfg, ("valid-sft", "reinforce"), compare=True)
    assert method_config(cfg, "reinforce").tuning is None


def test_compare_tunes_each_method_on_its_own_seeds(tiny_base_model, tmp_path):
    from conftest import tiny_run_config

    from iterdeploy_trl.compare import run_compare
    from iterdeploy_trl.runio import read_json

    data = tiny_run_config(tiny_base_model, generations=1, seeds=[0], tasks={"n": 8, "heldout": 2},
                           sampling={"samples_per_task": 2}, chunk_size=8,
                           tuning={"seeds": [7], "sft_learning_rates": [1e-2, 1e-3]})
    report = run_compare(config_from_dict(data), tmp_path / "cmp", methods=("valid-sft",), progress=False,
                         log=lambda m: None)
    tuned = report["tuning"]["valid-sft"]
    assert [r["learning_rate"] for r in tuned["table"]] == [1e-2, 1e-3] and tuned["seeds"] == [7]
    best = max(tuned["table"], key=lambda r: r["solved_mean"])
    assert tuned["chosen"] == best["learning_rate"] == report["learning_rates"]["valid-sft"]
    for lr in (1e-2, 1e-3):  # each tuning run on the tuning seed only
        tdir = tmp_path / "cmp" / "tuning" / f"valid-sft-lr{lr:g}"
        assert sorted(p.name for p in tdir.glob("seed_*")) == ["seed_7"]
    resolved = read_json(tmp_path / "cmp" / "valid-sft" / "resolved_config.json")["config"]
    assert resolved["training"]["learning_rate"] == tuned["chosen"] and resolved["seeds"] == [0]


def test_a_subset_of_the_comparison_may_run_but_no_setting_goes_unread(tmp_path):
    from iterdeploy_trl.compare import run_compare

    cfg = config_from_dict({"reinforce": {"learning_rate": 1e-4}, "compare_methods": ["valid-sft", "iw-sft"],
                            "model": {"path": str(tmp_path)}})
    with pytest.raises(ConfigError, match=r"^reinforce\.learning_rate: set"):  # reinforce is not compared
        run_compare(cfg, tmp_path / "out", methods=("valid-sft",), progress=False, log=lambda m: None)
    assert not (tmp_path / "out" / "valid-sft").exists() and not (tmp_path / "out" / "config.yaml").exists()


def test_adding_a_method_to_the_comparison_resumes_the_methods_already_run(tiny_base_model, tmp_path):
    from conftest import tiny_run_config

    from iterdeploy_trl.compare import run_compare

    data = tiny_run_config(tiny_base_model, generations=1, seeds=[0], tasks={"n": 8, "heldout": 2},
                           sampling={"samples_per_task": 2}, chunk_size=8, compare_methods=["valid-sft"])
    first = run_compare(config_from_dict(data), tmp_path / "cmp", progress=False, log=lambda m: None)
    model = tmp_path / "cmp" / "valid-sft" / "seed_0" / "gen_01" / "model"
    stamps = {p: p.stat().st_mtime_ns for p in model.rglob("*") if p.is_file()}
    assert stamps
    # A second method joins the comparison: valid-sft's run directory is resumed (a changed hash would be
    # refused as "a run of another config"), not run again.
    report = run_compare(config_from_dict({**data, "compare_methods": ["valid-sft", "uncurated-sft"]}),
                         tmp_path / "cmp", progress=False, log=lambda m: None)
    assert report["method_order"] == ["valid-sft", "uncurated-sft"] and sorted(report["methods"]) == \
        ["uncurated-sft", "valid-sft"]
    assert report["methods"]["valid-sft"] == first["methods"]["valid-sft"]
    assert {p: p.stat().st_mtime_ns for p in model.rglob("*") if p.is_file()} == stamps  # not trained again
    # valid-sft's wall time is the one measured when it ran (its metrics rows' deploy and train seconds, on
    # this machine), not the resume's seconds of reading it back
    from iterdeploy_trl.runio import machine_id, read_json, read_rows

    rows = read_rows(tmp_path / "cmp" / "valid-sft" / "seed_0" / "metrics.jsonl")
    measured = round(sum(r["deploy_seconds"] + r["train_seconds"] for r in rows), 1)
    assert first["wall_seconds"]["valid-sft"] == report["wall_seconds"]["valid-sft"] == measured > 0
    assert report["measured_seconds"]["valid-sft"] == first["measured_seconds"]["valid-sft"]
    assert report["measured_seconds"]["valid-sft"]["machines"] == [machine_id()]
    assert report["invocation_wall_seconds"]["valid-sft"] < measured  # this resume only read the run back
    assert report["total_wall_seconds"] == round(measured + report["wall_seconds"]["uncurated-sft"], 1)
    assert read_json(tmp_path / "cmp" / "compare.json")["wall_seconds"] == report["wall_seconds"]


def test_a_run_hashed_with_its_compare_methods_still_resumes():
    from iterdeploy_trl.config import config_hash, hash_matches

    cfg = method_config(config_from_dict({"compare_methods": ["valid-sft", "reinforce"]}), "valid-sft")
    other = method_config(config_from_dict({"compare_methods": ["valid-sft", "iw-sft", "reinforce"]}), "valid-sft")
    assert config_hash(cfg) == config_hash(other) == config_hash(method_config(config_from_dict({}), "valid-sft"))
    # What a run directory of the comparison holds when it was made before compare_methods left the hash:
    old = {"hash": config_hash(cfg, _compare_methods=("valid-sft", "reinforce")), "config": cfg.to_dict()}
    assert old["hash"] != config_hash(cfg) and hash_matches(cfg, old) and hash_matches(other, old)
    changed = method_config(config_from_dict({"compare_methods": ["valid-sft", "reinforce"], "generations": 2}),
                            "valid-sft")
    assert not hash_matches(changed, old)
    assert not hash_matches(cfg, {"hash": old["hash"], "config": {"compare_methods": "valid-sft"}})


def _rows(seed: int, g: int, pool: set[str], held: set[str]) -> dict:
    """A metrics row of the loop with what the statistics read (10 pool tasks, 4 held-out)."""
    return {"generation": g, "seed": seed, "solved": len(pool), "heldout_solved": len(held), "tasks": 10,
            "heldout_tasks": 4, "samples_used": g * 20, "solved_task_ids": sorted(pool),
            "heldout_solved_task_ids": sorted(held), "train_traces": 0, "train_completion_tokens": 0,
            "train_seconds": 0.0, "deploy_seconds": 0.0}


def _summary(gen1: list[tuple[set[str], set[str]]]) -> dict:
    """A method's summary over seeds 0-2: generation 0 the base model's (p0 solved under every seed), then
    generation 1 as given (pool ids, held-out ids per seed)."""
    from iterdeploy_trl.metrics import aggregate

    per_seed = {s: [_rows(s, 0, {"p0"}, set()), _rows(s, 1, *gen1[s])] for s in range(3)}
    return {"per_seed": {str(s): rows for s, rows in per_seed.items()}, "generations": aggregate(per_seed)}


def test_statistics_held_out_first_holm_over_every_test_bootstrap_and_verdicts():
    """Numbers by hand. Paired differences at generation 1 (3 seeds; 2 degrees of freedom, where
    P(t ≥ T) = 1/2 − T/(2√(T² + 2))): a − ref pool [1, 2, 3] → p = 1 − 2√3/√14 = 0.07418, held-out [2, 2, 2]
    → p = 0 (no spread); b − ref pool [0, 0, 0] → p = 1, held-out [1, 2, 3] → p = 0.07418. Holm over the
    four (generation 0 is not tested): 4·0 = 0; 3·0.07418 = 0.22254; 2·0.07418 → 0.22254 (the running max); 1."""
    import math

    from iterdeploy_trl.compare import compare_statistics

    ref = _summary([({"p0"}, set())] * 3)
    a = _summary([({"p0", "p1"}, {"h0", "h1"}), ({"p0", "p1", "p2"}, {"h0", "h1"}),
                  ({"p0", "p1", "p2", "p3"}, {"h0", "h1"})])
    b = _summary([({"p0"}, {"h0"}), ({"p0"}, {"h0", "h1"}), ({"p0"}, {"h0", "h1", "h2"})])
    out = compare_statistics({"valid-sft": ref, "a": a, "b": b})
    assert out["primary_measure"] == "heldout_solved" and list(out["measures"]) == ["heldout_solved", "solved"]
    assert out["tests"]["m"] == 4
    p = 1 - 2 * math.sqrt(3) / math.sqrt(14)
    g0, g1 = out["paired"]["a - valid-sft"]
    assert g0["heldout_solved"]["p_value"] is None and g0["heldout_solved"]["p_holm"] is None  # not tested
    assert g0["solved"]["verdict"].endswith("no detectable difference")
    a_held, a_pool = g1["heldout_solved"], g1["solved"]
    b_held, b_pool = (out["paired"]["b - valid-sft"][1][m] for m in ("heldout_solved", "solved"))
    assert (a_held["p_value"], b_pool["p_value"]) == (0.0, 1.0)
    assert a_pool["p_value"] == pytest.approx(p) and b_held["p_value"] == pytest.approx(p)
    assert a_held["p_holm"] == 0.0 and b_pool["p_holm"] == 1.0
    assert a_pool["p_holm"] == pytest.approx(3 * p) and b_held["p_holm"] == pytest.approx(3 * p)
    # a's held-out gain is +2 under every seed (seed-t interval [2, 2], Holm p 0), but it is two tasks of four:
    # resampling tasks draws neither of them with chance (1/2)^4 = 1/16 > 2.5% and both all four times with
    # chance 1/16: the task-and-seed bootstrap interval is [0, 4], so the verdict claims nothing
    assert a_held["t_ci"] == [2.0, 2.0] and a_held["bootstrap_ci"] == [0.0, 4.0]
    assert a_held["verdict"].endswith("no detectable difference")
    assert out["verdicts"]["heldout_solved"] == [a_held["verdict"], b_held["verdict"]]
    # unanimous@3 of a at generation 1: p0 and p1, 2 of 10; Wilson (0.05668, 0.50984) of 10 tasks
    row = out["methods"]["a"][1]
    assert row["unanimous"] == 2 and row["unanimous_ci"] == pytest.approx([0.5668, 5.0984], abs=1e-3)
    assert row["heldout_unanimous"] == 2 and row["heldout_ci"] == [2.0, 2.0]
    # rows without task ids (a summary.json's): no bootstrap, no unanimous interval for held-out
    for summary in (ref, a, b):
        for rows in summary["per_seed"].values():
            for r in rows:
                del r["solved_task_ids"], r["heldout_solved_task_ids"]
    bare = compare_statistics({"valid-sft": ref, "a": a, "b": b})
    assert bare["paired"]["a - valid-sft"][1]["heldout_solved"]["bootstrap_ci"] is None
    assert bare["methods"]["a"][1]["heldout_unanimous"] is None


def test_the_figures_table_reads_both_compare_json_layouts():
    from iterdeploy_trl.compare import compare_statistics
    from iterdeploy_trl.figures.compare import paired_rows

    ref = _summary([({"p0"}, set())] * 3)
    a = _summary([({"p0", "p1"}, {"h0"}), ({"p0"}, {"h0"}), ({"p0", "p2"}, set())])
    rows = paired_rows(compare_statistics({"valid-sft": ref, "a": a})["paired"])
    # generations 0 and 1, held-out (the primary measure) before pool at each
    assert [(r[1], r[2]) for r in rows] == [("held-out tasks solved", 0), ("pool tasks solved", 0),
                                            ("held-out tasks solved", 1), ("pool tasks solved", 1)]
    assert rows[2][3] == pytest.approx(2 / 3) and rows[2][6] is not None and rows[2][7] is not None
    old = {"x - valid-sft": [{"generation": 1, "samples_used": 8, "diff_mean": 1.5, "diff_ci": [0.5, 2.5],
                              "diff_per_seed": [1, 2], "p_value": 0.2}]}  # written before the measures
    assert paired_rows(old) == [("x - valid-sft", "pool solved", 1, 1.5, "[0.5, 2.5]", None, 0.2, None)]


def _protocol_config(model, task_seed: int) -> dict:
    """Two arms and one curation arm, one tuning seed, a 2-point grid each, a tuning pool of its own."""
    from conftest import tiny_run_config

    return tiny_run_config(
        model, generations=1, seeds=[0], tasks={"n": 8, "heldout": 2, "size": [2, 3], "seed": 0},
        sampling={"samples_per_task": 2}, chunk_size=8, training={"batch_size": 4},
        compare_methods=["valid-sft", "reinforce", "valid-sft@random-valid"],
        tuning={"seeds": [7], "task_seed": task_seed,
                "grids": {"valid-sft": {"learning_rate": [1e-2, 1e-3]},
                          "reinforce": {"learning_rate": [1e-3], "prompts_per_step": [1, 2]},
                          "valid-sft@random-valid": {"learning_rate": [1e-2, 1e-3]}}})


def test_a_changed_config_keeps_the_earlier_one(tmp_path):
    """compare's record of its config: an invocation with another config (here a moved grid) keeps the config the
    comparison ran with before as config.earlier-<n>.yaml; the same config again writes nothing."""
    from iterdeploy_trl.compare import record_config

    lines: list[str] = []
    texts = ["grids: {reinforce: {learning_rate: [3.0e-5, 1.0e-4, 3.0e-4]}}\n",
             "grids: {reinforce: {learning_rate: [1.0e-4, 3.0e-4, 1.0e-3]}}\n", "grids: {}\n"]
    for text in (texts[0], texts[1], texts[1], texts[2]):
        record_config(tmp_path, text, lines.append)
    assert (tmp_path / "config.yaml").read_text() == texts[2]
    assert (tmp_path / "config.earlier-1.yaml").read_text() == texts[0]
    assert (tmp_path / "config.earlier-2.yaml").read_text() == texts[1]
    assert not (tmp_path / "config.earlier-3.yaml").exists() and len(lines) == 2
    assert "kept as config.earlier-2.yaml" in lines[1]


def test_a_tuning_pool_sharing_a_task_with_the_reported_one_is_refused_before_any_work(tmp_path):
    from iterdeploy_trl.compare import run_compare

    # tasks.seed 1 draws 2 of the 7 distinct tasks of seed 0 (2-3 blocks): refused, nothing written
    cfg = config_from_dict(_protocol_config(tmp_path, task_seed=1))
    with pytest.raises(ConfigError, match=r"^tuning\.task_seed: 1 draws 2 task\(s\) of the reported pool"):
        run_compare(cfg, tmp_path / "out", progress=False, log=lambda m: None)
    # nothing but the run-directory lock, taken before the checks
    assert {p.name for p in (tmp_path / "out").glob("*")} <= {".lock", ".lock.json"}
    with pytest.raises(ConfigError, match=r"^tuning\.grids: .* every arm needs the same number of tuning runs"):
        data = _protocol_config(tmp_path, task_seed=4)
        data["tuning"]["grids"]["reinforce"]["prompts_per_step"] = [1, 2, 4]
        config_from_dict(data)
    with pytest.raises(ConfigError, match=r"^tuning\.task_seed: .* must differ from tasks\.seed"):
        config_from_dict(_protocol_config(tmp_path, task_seed=0))
    # exclude_reported: the same seed's draw skips the reported problems (and repeats); the pool it writes
    # shares no problem with the reported tasks, read back from disk
    from iterdeploy_trl.compare import check_tuning_pool, problem_key, write_tuning_pool
    from iterdeploy_trl.tasks import generate_tasks, load_task_set

    data = _protocol_config(tmp_path, task_seed=1)
    data["tuning"]["exclude_reported"] = True
    cfg = config_from_dict(data)
    root = write_tuning_pool(cfg, tmp_path / "x")
    tuned = [problem_key(t.problem) for t in load_task_set(root).tasks]
    reported = {problem_key(t.problem) for t in generate_tasks("blocksworld", 10, 0, size=(2, 3))}
    assert len(tuned) == len(set(tuned)) == 10 and not set(tuned) & reported
    assert check_tuning_pool(cfg, root)["disjoint"] is True
    assert write_tuning_pool(cfg, tmp_path / "x") == root  # a resume: the same draw, kept
    data["tuning"]["task_seed"] = 2
    with pytest.raises(ConfigError, match=r"^tuning\.task_seed: .* holds another tuning pool"):
        write_tuning_pool(config_from_dict(data), tmp_path / "x")


def test_protocol_tunes_every_arm_on_its_own_pool_reports_budgets_and_deploys_generation_zero_once(
        tiny_base_model, tmp_path, capsys):
    """End to end, tiny: valid-sft, reinforce and valid-sft@random-valid, each tuned over 2 grid points on a
    tuning pool disjoint from the reported one (tasks.seed 4: no shared problem), then run on the result seed."""
    import yaml

    from iterdeploy_trl.compare import problem_key, run_compare
    from iterdeploy_trl.runio import read_json, read_rows
    from iterdeploy_trl.tasks import load_task_set
    from iterdeploy_trl.traces import read_traces

    out = tmp_path / "cmp"
    report = run_compare(config_from_dict(_protocol_config(tiny_base_model, task_seed=4)), out, progress=False,
                         log=lambda m: None,
                         config_text=yaml.safe_dump(_protocol_config(tiny_base_model, task_seed=4)))
    arms = ["valid-sft", "reinforce", "valid-sft@random-valid"]
    assert report["method_order"] == arms and sorted(report["methods"]) == sorted(arms)
    # the arm's run directory holds that method with that curation
    assert read_json(out / "valid-sft@random-valid" / "resolved_config.json")["config"]["curation"] == "random-valid"
    assert read_json(out / "valid-sft@random-valid" / "resolved_config.json")["config"]["method"] == "valid-sft"
    # tuning: the same number of runs for every arm, on the tuning seed and the tuning pool only
    tuning = report["tuning"]
    assert {a: t["runs"] for a, t in tuning.items()} == {a: 2 for a in arms}
    reported = {problem_key(t.problem) for t in load_task_set(out / "valid-sft" / "tasks").tasks}
    for arm in arms:
        for row in tuning[arm]["table"]:
            name = f"{arm}-lr{row['learning_rate']:g}" + (f"-prompts_per_step{row['prompts_per_step']:g}"
                                                          if "prompts_per_step" in row else "")
            tdir = out / "tuning" / name
            assert sorted(p.name for p in tdir.glob("seed_*")) == ["seed_7"]
            tuned_on = {problem_key(t.problem) for t in load_task_set(tdir / "tasks").tasks}
            assert tuned_on and not tuned_on & reported
    assert report["tuning_pool"]["disjoint"] is True
    tasks = load_task_set(out / "valid-sft" / "tasks").tasks  # held-out problems that repeat a pool one, by hand
    pool_keys = {problem_key(t.problem) for t in tasks[:8]}
    assert report["task_overlap"]["heldout_tasks_in_pool"] == sum(problem_key(t.problem) in pool_keys
                                                                  for t in tasks[8:10])
    # a 2-point grid: the chosen value is at its edge, and compare.json says so for that knob
    assert tuning["valid-sft"]["at_edge"] and tuning["valid-sft"]["edge_knobs"] == ["learning_rate"]
    assert tuning["reinforce"]["edge_knobs"] == ["prompts_per_step"]  # lr has one value: no edge
    assert report["tuning_at_edge"] == sorted(arms)
    chosen_p = tuning["reinforce"]["chosen_settings"]["prompts_per_step"]
    resolved = read_json(out / "reinforce" / "resolved_config.json")["config"]
    assert resolved["reinforce"]["prompts_per_step"] == chosen_p
    # budgets in every unit, each checked against the files they are read from
    for arm in arms:
        b = report["budgets"][arm]
        rows = read_rows(out / arm / "seed_0" / "metrics.jsonl")
        assert b["sampled_completions"] == 1 * 8 * 2  # generations x pool tasks x K: equal by design
        stats = out / arm / "seed_0" / "gen_01" / "model" / "train_stats.json"  # absent: nothing to train on
        assert b["optimizer_steps"] == (read_json(stats)["train_steps"] if stats.exists() else 0)
        assert b["training_tokens"] == sum(r["train_completion_tokens"] for r in rows)
        assert b["deployed_completions"] == 2 * (8 + 2) * 2  # 2 deployments of pool + held-out, K each
        assert b["seconds"]["train"] == round(sum(r["train_seconds"] for r in rows), 1)
        assert b["seconds"]["deploy"] + b["seconds"]["train"] == pytest.approx(b["seconds"]["total"], abs=0.11)
    assert report["budgets"]["reinforce"]["optimizer_steps"] == -(-8 // chosen_p) > 0  # ceil(n / P)
    assert report["budgets"]["reinforce"]["generated_completions"] == 40 + 16  # its trainer samples n*K more
    assert report["budgets"]["valid-sft"]["generated_completions"] == 40
    # generation 0 deployed once per (deployment, seed): the later arms copy valid-sft's traces
    g0 = {a: read_traces(next((out / a / "seed_0" / "gen_00" / "traces").glob("pool-*.jsonl"))) for a in arms}
    assert report["generation0_reuse"]["arms"]["valid-sft"] == {}
    for arm in arms[1:]:
        assert report["generation0_reuse"]["arms"][arm]["0"]["from"] == str(out / "valid-sft" / "seed_0" / "gen_00")
        assert [(r.task_id, r.completion, r.valid) for r in g0[arm]] == \
            [(r.task_id, r.completion, r.valid) for r in g0["valid-sft"]]
        assert {r.method for r in g0[arm]} == {"valid-sft" if "@" in arm else arm}
        assert {r.run for r in g0[arm]} == {f"tiny/{arm}"}
    # what the copy stands for: reinforce deploying generation 0 itself writes the same records
    import dataclasses

    from iterdeploy_trl.compare import apply_settings, method_config
    from iterdeploy_trl.loop import run_loop

    own_cfg = method_config(apply_settings(config_from_dict(_protocol_config(tiny_base_model, task_seed=4)),
                                           "reinforce", tuning["reinforce"]["chosen_settings"]), "reinforce")
    run_loop(dataclasses.replace(own_cfg, generations=0), tmp_path / "own", progress=False, log=lambda m: None)
    for split in ("pool", "heldout"):
        mine = read_traces(next((tmp_path / "own" / "seed_0" / "gen_00" / "traces").glob(f"{split}-*.jsonl")))
        copied = read_traces(next((out / "reinforce" / "seed_0" / "gen_00" / "traces").glob(f"{split}-*.jsonl")))
        assert [r.to_dict() for r in mine] == [r.to_dict() for r in copied]
    reused_tuning = [row["generation0_reused"] for t in tuning.values() for row in t["table"]]
    assert sum(bool(r) for r in reused_tuning) == 5  # 6 tuning runs on one pool and seed: 1 deploys
    assert report["generation0_reuse"]["saved_seconds"] > 0
    # wall-clock per budget point (the figure's x axis): cumulative, from the rows
    for arm in arms:
        walls = [r["wall_seconds_cumulative"] for r in report["methods"][arm]]
        assert walls == sorted(walls) and walls[-1] == pytest.approx(report["budgets"][arm]["seconds"]["total"],
                                                                     abs=0.11)
    # a resume reads everything back: budgets and wall times as measured
    again = run_compare(config_from_dict(_protocol_config(tiny_base_model, task_seed=4)), out, progress=False,
                        log=lambda m: None)
    assert again["budgets"] == report["budgets"] and again["wall_seconds"] == report["wall_seconds"]
    assert again["generation0_reuse"] == report["generation0_reuse"]  # the copies made before, not none
    # a first invocation killed before it wrote compare.json: the copies are read from the run directories
    (out / "compare.json").unlink()
    third = run_compare(config_from_dict(_protocol_config(tiny_base_model, task_seed=4)), out, progress=False,
                        log=lambda m: None)
    assert third["generation0_reuse"] == report["generation0_reuse"]
    # the report (figures' results.md) says where a chosen value lies at its grid's edge, and the budgets
    from iterdeploy_trl.figures import render_figures

    render_figures([out], tmp_path / "fig")
    md = (tmp_path / "fig" / "results.md").read_text()
    assert "- reinforce: the chosen prompts_per_step lies at an edge of its grid" in md
    assert "| reinforce | 16 | " + str(report["budgets"]["reinforce"]["optimizer_steps"]) + " |" in md
    _check_comparison_status(out, report, capsys)


def _check_comparison_status(out: Path, report: dict, capsys) -> None:
    """`iterdeploy status OUT` on the finished comparison of the test above, then on the same directory cut
    back to what a comparison in its tuning stage holds."""
    import json
    import shutil

    from iterdeploy_trl.cli import main
    from iterdeploy_trl.compare_status import comparison_status

    capsys.readouterr()  # what the comparison printed
    assert main(["status", str(out), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["finished"] and {r["state"] for r in st["tuning"] + st["arms"]} == {"finished"}
    assert len(st["tuning"]) == 6 and [r["name"] for r in st["arms"]] == report["method_order"]
    # each arm's choice is compare.json's, by the same rule, with its edges
    for arm, tuned in report["tuning"].items():
        chosen = st["chosen"][arm]
        best = next(row for row in tuned["table"] if row["run"] == chosen["run"])
        assert best["solved_mean"] == chosen["solved_mean"] and chosen["edge_knobs"] == tuned["edge_knobs"]
        assert {k: best[k] for k in tuned["grid"]} == tuned["chosen_settings"]
    # the run seconds are the ones compare.json measured
    assert sum(r["seconds"] for r in st["arms"]) == pytest.approx(sum(report["wall_seconds"].values()), abs=0.5)
    # cut back to the tuning stage: the result arms not started, one tuning run stopped after generation 0,
    # one not started (a comparison at this point holds no OUT/<method>/ run directory)
    for arm in report["method_order"]:
        shutil.rmtree(out / arm)
    (out / "compare.json").unlink()
    stopped, gone = st["tuning"][1]["name"], st["tuning"][4]["name"]
    (out / "tuning" / stopped / "summary.json").unlink()  # killed while training generation 1: no summary yet
    shutil.rmtree(out / "tuning" / stopped / "seed_7" / "gen_01")
    rows = (out / "tuning" / stopped / "seed_7" / "metrics.jsonl").read_text().splitlines()
    (out / "tuning" / stopped / "seed_7" / "metrics.jsonl").write_text(rows[0] + "\n")
    shutil.rmtree(out / "tuning" / gone)
    # one with generation 0 deployed but not scored, beside the summary.json of a finished run (its metrics rows
    # and generation 1 lost since): what the run directory holds, not the stale summary, says where it stands
    scored_next = st["tuning"][0]["name"]
    (out / "tuning" / scored_next / "seed_7" / "metrics.jsonl").unlink()
    shutil.rmtree(out / "tuning" / scored_next / "seed_7" / "gen_01")
    now = comparison_status(out)
    states = {r.name: r.state for r in now.tuning}
    assert states[stopped] == states[scored_next] == "stopped" and states[gone] == "not started"
    assert sum(s == "finished" for s in states.values()) == 3
    assert next(r for r in now.tuning if r.name == scored_next).detail == [
        "seed 7: 0/2 generations done; generation 0 deployed (2/2 chunks of traces written), not yet scored"]
    assert {r.state for r in now.arms} == {"not started"} and not now.finished
    stopped_run = next(r for r in now.tuning if r.name == stopped)
    assert stopped_run.detail == ["seed 7: 1/2 generations done; stopped while training the generation-1 model"]
    # an arm with an unfinished grid has no choice yet; one with a finished grid keeps it
    arms_left = {r.arm for r in now.tuning if r.state != "finished"}
    assert set(now.choices()) == set(report["tuning"]) - arms_left != set()
    left = now.seconds_left()
    assert left["tuning"] > 0 and left["arms"] > 0
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tuning runs: 3 of 6 finished, 0 under way, 2 stopped, 1 not started" in text
    assert "result arms: 0 of 3 finished, 0 under way, 0 stopped, 3 not started" in text
    assert f"    stopped: {stopped}\n      seed 7: 1/2 generations done" in text


def _without_timings(value, out: Path):
    """compare.json with what depends on the clock, the machine or the directory's path left out."""
    import json

    skip = ("seconds", "wall", "machine", "invocation", "jobs")
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if not any(s in k for s in skip)}
        return [strip(x) for x in v] if isinstance(v, list) else v
    return strip(json.loads(json.dumps(value).replace(str(out), "OUT")))


def test_jobs_2_writes_what_jobs_1_writes(tiny_base_model, tmp_path):
    """The protocol of the test above with two worker processes: compare.json's numbers (timings aside) and
    every trace chunk and metrics row (seconds aside) are those of one run after another; generation 0 is still
    deployed once per tuning pool and per result seed, the copies made from the same runs."""
    from iterdeploy_trl.compare import run_compare
    from iterdeploy_trl.runio import read_rows

    lines: list[str] = []
    one = run_compare(config_from_dict(_protocol_config(tiny_base_model, task_seed=4)), tmp_path / "one",
                      progress=False, log=lambda m: None)
    two = run_compare(config_from_dict(_protocol_config(tiny_base_model, task_seed=4)), tmp_path / "two",
                      progress=False, log=lines.append, jobs=2)
    assert two["jobs"] == 2 and one["jobs"] == 1
    assert _without_timings(two, tmp_path / "two") == _without_timings(one, tmp_path / "one")
    assert sum(bool(r) for t in two["tuning"].values() for row in t["table"] for r in [row["generation0_reused"]]) == 5
    chunks = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("traces/*.jsonl"))
    assert len(chunks) >= 2 * 9  # pool and held-out, generations 0 and 1, of 6 tuning runs and 3 arms
    for rel in chunks:
        assert (tmp_path / "two" / rel).read_bytes() == (tmp_path / "one" / rel).read_bytes(), rel
    for metrics in (tmp_path / "one").rglob("metrics.jsonl"):
        rows = [read_rows(d / metrics.relative_to(tmp_path / "one")) for d in (tmp_path / "one", tmp_path / "two")]
        assert [_without_timings(r, tmp_path) for r in rows[0]] == [_without_timings(r, tmp_path) for r in rows[1]]
    # one line per finished run, numbered within its stage
    finished = [m for m in lines if m.startswith("[compare] finished ")]
    assert len(finished) == 6 + 3 and finished[-1].split("(")[1].startswith("3/3 of this stage")
    assert two["invocation_wall_seconds"]["total"] > 0


def test_a_failing_worker_stops_the_comparison_with_one_line(tiny_base_model, tmp_path):
    """A tuning run that fails in its worker (its directory holds another config's run) ends the comparison with
    one line naming the run and its log, where the traceback is."""
    from iterdeploy_trl.compare import run_compare
    from iterdeploy_trl.errors import RunError
    from iterdeploy_trl.runio import write_json

    bad = tmp_path / "cmp" / "tuning" / "valid-sft-lr0.01"
    bad.mkdir(parents=True)
    write_json(bad / "resolved_config.json", {"hash": "0" * 16, "config": {"generations": 9}})
    with pytest.raises(RunError) as info:
        run_compare(config_from_dict(_protocol_config(tiny_base_model, task_seed=4)), tmp_path / "cmp",
                    progress=False, log=lambda m: None, jobs=2)
    message = str(info.value)
    assert "\n" not in message and message.startswith("tuning valid-sft-lr0.01 (seeds 7) failed: ")
    assert str(bad / "run.log") in message and "Traceback" in (bad / "run.log").read_text()
    assert not (tmp_path / "cmp" / "compare.json").exists()


def test_jobs_are_refused_where_runs_cannot_share_the_machine():
    from iterdeploy_trl.compare import check_jobs
    from iterdeploy_trl.errors import RunError

    check_jobs(config_from_dict({}), 2)
    with pytest.raises(RunError, match=r"^--jobs 0: must be at least 1$"):
        check_jobs(config_from_dict({}), 0)
    with pytest.raises(RunError, match=r"^--jobs 2: with sampling\.backend vllm each worker"):
        check_jobs(config_from_dict({"sampling": {"backend": "vllm"}}), 2)
    check_jobs(config_from_dict({"sampling": {"backend": "vllm"}}), 1)
