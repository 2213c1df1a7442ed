"""Importing an IPC-layout folder: plans computed by Fast Downward and checked by VAL, unsolved tasks left
out, bad input refused before any work; the small model's tokenizer, prompt and walks on the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iterdeploy_trl.cli import main
from iterdeploy_trl.domains import domain_pddl
from iterdeploy_trl.pddlio import PDDLReadError
from iterdeploy_trl.tasks import TaskSetError, generate_tasks, load_task_set
from iterdeploy_trl.tasks import importer as importer_module
from iterdeploy_trl.tasks.importer import import_folder
from iterdeploy_trl.validate import validate_batch


def _folder(root: Path, domain: str, problems: dict[str, str], plans: dict[str, str] | None = None) -> Path:
    (root / "problems").mkdir(parents=True)
    (root / "domain.pddl").write_text(domain)
    for name, text in problems.items():
        (root / "problems" / f"{name}.pddl").write_text(text)
    if plans:
        (root / "plans").mkdir()
        for name, text in plans.items():
            (root / "plans" / f"{name}.plan").write_text(text)
    return root


def test_import_without_plans_computes_them_with_fast_downward_and_val(tmp_path: Path, capsys) -> None:
    """Ferry (typing, a negative precondition) in upper case, as IPC files may be: three problems without
    plans, one with a valid plan, one with a plan VAL rejects (it is planned instead)."""
    tasks = generate_tasks("ferry", 5, seed=7, size=(1, 3))
    problems = {f"p{i:02d}": t.problem.upper() for i, t in enumerate(tasks)}
    plans = {"p03": "\n".join(tasks[3].reference_plan) + "\n", "p04": tasks[4].reference_plan[0] + "\n"}
    src = _folder(tmp_path / "ferry-ipc", domain_pddl("ferry").upper(), problems, plans)
    out = tmp_path / "out"
    assert main(["tasks", "--from", str(src), "--out", str(out), "--name", "ferry-ipc", "--time-limit", "60"]) == 0
    assert "imported 5 ferry-ipc tasks" in capsys.readouterr().out
    task_set = load_task_set(out)
    report = json.loads((out / "import_report.json").read_text())
    assert report["kept"] == {"p00": "fast-downward lama-first", "p01": "fast-downward lama-first",
                              "p02": "fast-downward lama-first", "p03": "given", "p04": "fast-downward lama-first"}
    assert "rejected by VAL" in report["notes"]["p04"] and report["left_out"] == {}
    assert task_set.domain == "ferry-ipc" and [t.id for t in task_set] == sorted(problems)
    verdicts = validate_batch([(out / "domain.pddl", out / "problems" / f"{t.id}.pddl", list(t.reference_plan))
                               for t in task_set])
    assert all(v.valid for v in verdicts), [v.reason for v in verdicts]
    assert all(t.reference_length >= 1 for t in task_set)


def test_the_small_model_reads_an_imported_domain(tmp_path: Path) -> None:
    """Tokenizer from the domain's own symbols and the task set's objects, the plain compact prompt, random
    legal walks from its tasks: no <unk> anywhere."""
    from iterdeploy_trl.models import tokenizer_for_task_set, walk_examples
    from iterdeploy_trl.prompts import build_prompt

    tasks = generate_tasks("ferry", 3, seed=8, size=(2, 3))
    src = _folder(tmp_path / "src", domain_pddl("ferry"), {t.id: t.problem for t in tasks},
                  {t.id: "\n".join(t.reference_plan) for t in tasks})
    task_set, _ = import_folder(src, tmp_path / "out", name="ferry-copy")
    tok = tokenizer_for_task_set(task_set)
    for task in task_set:
        text = build_prompt(task_set.domain_pddl, task.problem, "compact", domain=task_set.domain)
        ids = tok(text + "".join(a + "\n" for a in task.reference_plan))["input_ids"]
        assert tok.unk_token_id not in ids, text
    walks = walk_examples(task_set.domain, 12, task_set=task_set, walks_per_task=2)
    assert len(walks) == 12
    for prompt, completion in walks:
        assert tok.unk_token_id not in tok(prompt + completion)["input_ids"]


def test_an_unsolvable_task_is_reported_and_left_out(tmp_path: Path) -> None:
    good = generate_tasks("blocksworld", 1, seed=1, size=(3, 3))[0].problem
    impossible = good.replace("(:goal (and", "(:goal (and (on b1 b1)")  # a block on itself: never
    src = _folder(tmp_path / "src", domain_pddl("blocksworld"), {"good": good, "impossible": impossible})
    task_set, report = import_folder(src, tmp_path / "out", time_limit=20)
    assert [t.id for t in task_set] == ["good"]
    assert "impossible" in report.left_out and "no plan" in report.left_out["impossible"]
    assert not (tmp_path / "out" / "problems" / "impossible.pddl").exists()


def test_bad_input_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_planning(*args, **kwargs):
        raise AssertionError("Fast Downward ran before the input was checked")

    monkeypatch.setattr(importer_module, "run_fast_downward", no_planning)
    bw = domain_pddl("blocksworld")
    problem = generate_tasks("blocksworld", 1, seed=1, size=(3, 3))[0].problem
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskSetError, match=r"empty/domain.pddl is missing"):
        import_folder(tmp_path / "empty", tmp_path / "o1")
    cases = {
        "conditional effects": bw.replace(":effect (and (holding ?x)", ":effect (and (when (clear ?x) (holding ?x))", 1),
        "derived predicates": bw.replace("(:action pick-up", "(:derived (above ?x ?y) (on ?x ?y))\n  (:action pick-up", 1)
        .replace("(:predicates", "(:predicates (above ?x ?y)", 1).replace(":strips", ":strips :derived-predicates"),
        "numeric fluents": bw.replace("(:action pick-up", "(:functions (weight ?x))\n  (:action pick-up", 1)
        .replace(":strips", ":strips :numeric-fluents"),
    }
    for feature, domain in cases.items():
        assert domain != bw, feature
        src = _folder(tmp_path / feature.replace(" ", "-"), domain, {"p1": problem})
        with pytest.raises(PDDLReadError) as err:
            import_folder(src, tmp_path / "o2")
        assert f"{src}/domain.pddl" in str(err.value) and feature in str(err.value), str(err.value)
    other = problem.replace("(:domain blocksworld)", "(:domain logistics)")
    src = _folder(tmp_path / "other", bw, {"p1": problem, "p2": other})
    with pytest.raises(PDDLReadError, match=r"problems/p2.pddl, line 2: the problem is for domain 'logistics'"):
        import_folder(src, tmp_path / "o3")
    src = _folder(tmp_path / "clash", domain_pddl("rovers").replace("(:action drop", "(:action dump", 1),
                  {"p1": generate_tasks("rovers", 1, 0, (1, 1))[0].problem.replace("drop", "dump")})
    with pytest.raises(TaskSetError, match="like the built-in one.*--name"):  # the rovers file says (domain rover)
        import_folder(src, tmp_path / "o4", name="rovers")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3", "o4"))


def test_a_run_config_takes_an_imported_task_set(tmp_path: Path) -> None:
    from iterdeploy_trl.basemodel import auto_base_model_path
    from iterdeploy_trl.config import config_from_dict, config_hash
    from iterdeploy_trl.runtasks import prepare_tasks

    tasks = generate_tasks("ferry", 4, seed=9, size=(1, 2))
    src = _folder(tmp_path / "src", domain_pddl("ferry"), {t.id: t.problem for t in tasks},
                  {t.id: "\n".join(t.reference_plan) for t in tasks})
    import_folder(src, tmp_path / "set", name="myferry")
    cfg = config_from_dict({"domain": "myferry", "tasks": {"dir": str(tmp_path / "set"), "n": 3, "heldout": 1}})
    task_set, pool, heldout = prepare_tasks(cfg, tmp_path / "run")
    assert task_set.domain == "myferry" and len(pool) == 3 and len(heldout) == 1
    assert "-taskset" in auto_base_model_path(cfg).name and config_hash(cfg)
    with pytest.raises(ValueError, match="name the domain of the task set given as tasks.dir"):
        config_from_dict({"domain": "myferry"})
