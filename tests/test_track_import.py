"""Importing folders without plans, beyond tests/test_import.py: a plan from Fast Downward is a candidate
that VAL must accept, action costs are read while other numeric fluents are refused, more bad input
refused before any work, and `run --check` on an imported set of a domain that is not built in.

The IPC 2023 track's own instances are in tests/test_ipc2023_track.py (run where ITERDEPLOY_IPC2023_DIR
is set). These folders are written by the tests from generated tasks; every planner call is real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iterdeploy_trl.cli import main
from iterdeploy_trl.domains import domain_pddl
from iterdeploy_trl.pddlio import PDDLReadError
from iterdeploy_trl.tasks import TaskSetError, generate_tasks
from iterdeploy_trl.tasks import importer as importer_module
from iterdeploy_trl.tasks.importer import import_folder
from iterdeploy_trl.tasks.planner import PlannerResult, run_fast_downward
from iterdeploy_trl.validate import validate_batch


def _folder(root: Path, domain: str, problems: dict[str, str], plans: dict[str, str] | None = None) -> Path:
    (root / "problems").mkdir(parents=True)
    (root / "domain.pddl").write_text(domain)
    for name, text in problems.items():
        (root / "problems" / f"{name}.pddl").write_text(text)
    for name, text in (plans or {}).items():
        (root / "plans").mkdir(exist_ok=True)
        (root / "plans" / f"{name}.plan").write_text(text)
    return root


def test_a_plan_from_fast_downward_is_kept_only_if_val_accepts_it(tmp_path: Path, monkeypatch) -> None:
    """The planner is real; for one task its plan loses the last action on the way back (a wrapper around
    the real call, standing in for a planner bug). VAL rejects that plan: the task is left out, with the
    reason, and the others are kept with their VAL-valid plans."""
    calls = []

    def planner_with_a_bug(domain_text, problem_text, **kwargs):
        result = run_fast_downward(domain_text, problem_text, **kwargs)
        calls.append(result.plan)
        if len(calls) == 2:  # p1: tasks are planned in name order
            return PlannerResult(result.plan[:-1], result.status, result.seconds, result.alias)
        return result

    monkeypatch.setattr(importer_module, "run_fast_downward", planner_with_a_bug)
    tasks = generate_tasks("ferry", 3, seed=11, size=(2, 2))
    src = _folder(tmp_path / "src", domain_pddl("ferry"), {f"p{i}": t.problem for i, t in enumerate(tasks)})
    task_set, report = import_folder(src, tmp_path / "out", time_limit=60)
    assert len(calls) == 3 and all(calls)
    assert list(report.left_out) == ["p1"] and "Fast Downward's plan rejected by VAL" in report.left_out["p1"]
    assert report.kept == {"p0": "fast-downward lama-first", "p2": "fast-downward lama-first"}
    assert [t.id for t in task_set] == ["p0", "p2"] and not (tmp_path / "out" / "problems" / "p1.pddl").exists()
    verdicts = validate_batch([(task_set.domain_pddl, t.problem, list(t.reference_plan)) for t in task_set])
    assert all(v.valid for v in verdicts), [v.reason for v in verdicts]
    assert json.loads((tmp_path / "out" / "import_report.json").read_text())["left_out"] == report.left_out


def _with_action_costs(domain: str) -> str:
    return (domain.replace("(:requirements :strips :typing :negative-preconditions)",
                           "(:requirements :strips :typing :negative-preconditions :action-costs)")
            .replace("(on ?c - car))", "(on ?c - car))\n  (:functions (total-cost) - number)")
            .replace(":effect (and (not (at-ferry ?from)) (at-ferry ?to)))",
                     ":effect (and (not (at-ferry ?from)) (at-ferry ?to) (increase (total-cost) 1)))"))


def test_action_costs_are_read_and_other_numeric_fluents_refused(tmp_path: Path) -> None:
    """STRIPS + typing + negative preconditions with action costs imports (Fast Downward plans it, VAL checks
    it); a numeric fluent that is not total-cost is refused, naming the file and the fluent."""
    costed = _with_action_costs(domain_pddl("ferry"))
    assert "(increase (total-cost) 1)" in costed and "(:functions (total-cost)" in costed
    problems = {f"p{i}": t.problem.replace("(:init", "(:init (= (total-cost) 0)").rstrip()[:-1]
                + "\n  (:metric minimize (total-cost)))\n"
                for i, t in enumerate(generate_tasks("ferry", 2, seed=12, size=(2, 3)))}
    task_set, report = import_folder(_folder(tmp_path / "costed", costed, problems), tmp_path / "o1", name="ferry-c")
    assert sorted(report.kept) == ["p0", "p1"] and report.left_out == {}
    verdicts = validate_batch([(task_set.domain_pddl, t.problem, list(t.reference_plan)) for t in task_set])
    assert all(v.valid for v in verdicts), [v.reason for v in verdicts]

    fuel = (costed.replace(":action-costs)", ":action-costs :numeric-fluents)")
            .replace("(total-cost) - number)", "(total-cost) - number (fuel) - number)")
            .replace("(increase (total-cost) 1)))", "(increase (total-cost) 1) (decrease (fuel) 1)))"))
    src = _folder(tmp_path / "fuel", fuel, problems)
    with pytest.raises(PDDLReadError, match=r"fuel/domain.pddl.*numeric fluents \(fuel"):
        import_folder(src, tmp_path / "o2", name="ferry-f")
    assert not (tmp_path / "o2").exists()


def test_more_bad_input_is_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    """No problems folder, an empty one, a problem naming an undeclared predicate or object: each refused
    with the file named, before Fast Downward runs and before OUT is made."""
    def no_planning(*args, **kwargs):
        raise AssertionError("Fast Downward ran before the input was checked")

    monkeypatch.setattr(importer_module, "run_fast_downward", no_planning)
    ferry = domain_pddl("ferry")
    good = generate_tasks("ferry", 1, seed=13, size=(2, 2))[0].problem
    (tmp_path / "noproblems").mkdir()
    (tmp_path / "noproblems" / "domain.pddl").write_text(ferry)
    with pytest.raises(TaskSetError, match=r"noproblems/problems holds no \*.pddl problem files"):
        import_folder(tmp_path / "noproblems", tmp_path / "o1")
    with pytest.raises(TaskSetError, match=r"empty/problems holds no"):
        import_folder(_folder(tmp_path / "empty", ferry, {}), tmp_path / "o2")
    cases = {"predicate": (good.replace("(empty-ferry)", "(empty-boat)"), "unknown predicate 'empty-boat'"),
             "object": (good.replace("(at-ferry ", "(at-ferry harbour) (at-ferry ", 1), "'harbour'")}
    for kind, (bad, message) in cases.items():
        assert bad != good, kind
        src = _folder(tmp_path / kind, ferry, {"p0": good, "p1": bad})
        with pytest.raises(PDDLReadError) as err:
            import_folder(src, tmp_path / "o3")
        assert f"{kind}/problems/p1.pddl" in str(err.value) and message in str(err.value), str(err.value)
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_run_check_takes_an_imported_set_of_a_domain_that_is_not_built_in(tmp_path: Path, capsys) -> None:
    """A ferry renamed 'boats' (so no built-in domain matches) with its plans given: `run --check` reports
    the auto base model for it and the task set, and passes (it used to fail looking 'boats' up among the
    built-in domains for the tokenizer)."""
    tasks = generate_tasks("ferry", 3, seed=14, size=(1, 2))
    boats = domain_pddl("ferry").replace("(domain ferry)", "(domain boats)")
    src = _folder(tmp_path / "src", boats, {t.id: t.problem.replace("(:domain ferry)", "(:domain boats)")
                                             for t in tasks}, {t.id: "\n".join(t.reference_plan) for t in tasks})
    assert main(["tasks", "--from", str(src), "--out", str(tmp_path / "set")]) == 0
    cfg = tmp_path / "boats.json"
    cfg.write_text(json.dumps({"name": "boats-check", "domain": "boats", "generations": 1, "seeds": [0],
                               "tasks": {"dir": str(tmp_path / "set"), "n": 2, "heldout": 1},
                               "model": {"cache_dir": str(tmp_path / "cache")}}))
    capsys.readouterr()
    assert main(["run", "--config", str(cfg), "--check"]) == 0
    out = capsys.readouterr().out
    assert "boats base model" in out and "-taskset" in out, out
    assert f"task set: {tmp_path / 'set'}, 3 tasks" in out and "check passed" in out, out
    assert not (tmp_path / "cache").exists()
