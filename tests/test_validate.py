"""VAL runs: verdicts, pre-checks, failure modes of the validator, the ``iterdeploy validate`` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from iterdeploy_trl import domains
from iterdeploy_trl.cli import main as cli_main
from iterdeploy_trl.validate import (
    ENV_VAR,
    PDDLError,
    PlanTooLong,
    ValidatorFailed,
    ValidatorInfo,
    ValidatorNotFound,
    Verdict,
    find_validate,
    validate_batch,
    validate_completion,
    validate_file_text,
    validate_plan,
    validator_info,
)

BW = domains.domain_pddl("blocksworld")
# b2 on b1, b3 alone; goal: the tower b1 on b2 on b3.
PROBLEM = """(define (problem bw-3) (:domain blocksworld)
  (:objects b1 b2 b3)
  (:init (ontable b1) (on b2 b1) (clear b2) (ontable b3) (clear b3) (handempty))
  (:goal (and (on b1 b2) (on b2 b3))))
"""
PLAN = ["(unstack b2 b1)", "(stack b2 b3)", "(pick-up b1)", "(stack b1 b2)"]


def check(plan, **kwargs) -> Verdict:
    return validate_plan(BW, PROBLEM, plan, **kwargs)


def fake_validator(tmp_path: Path, body: str, name: str = "fake-validate") -> str:
    """A tests-only stand-in for VAL's Validate: a shell script answering -h and then doing ``body``."""
    script = tmp_path / name
    script.write_text(f'#!/bin/sh\nif [ "$1" = "-h" ]; then echo "Version 0-fake"; exit 0; fi\n{body}\n')
    script.chmod(0o755)
    return str(script)


# --- verdicts --------------------------------------------------------------------------------------


def test_valid_plan_as_list_text_and_paths(tmp_path):
    verdict = check(PLAN)
    assert verdict.valid and verdict.reason == "valid" and verdict.plan_length == 4
    assert verdict.failed_step is None and "Plan valid" in verdict.raw_output
    assert check("\n".join(PLAN)).valid
    (tmp_path / "p.pddl").write_text(PROBLEM)
    assert validate_plan(domains.domain_path("blocksworld"), tmp_path / "p.pddl", PLAN).valid


def test_goal_not_satisfied():
    verdict = check(PLAN[:2])
    assert not verdict.valid and verdict.reason == "goal not satisfied"
    assert "(on b1 b2)" in verdict.detail


def test_precondition_failed_names_the_step():
    verdict = check(["(unstack b2 b1)", "(stack b2 b3)", "(stack b1 b2)"])
    assert not verdict.valid
    assert verdict.reason == "precondition failed at step 3" and verdict.failed_step == 3
    assert "(holding b1)" in verdict.detail


def test_unknown_action():
    verdict = check(["(unstack b2 b1)", "(fly b2 b3)"])
    assert (verdict.valid, verdict.reason, verdict.failed_step) == (False, "unknown action fly", 2)


def test_wrong_arity_is_rejected_although_raw_val_accepts_it(tmp_path):
    bad = ["(unstack b2 b1 b3)"] + PLAN[1:]
    verdict = check(bad)
    assert not verdict.valid and verdict.reason == "wrong arity for unstack: expected 2, got 3"
    assert verdict.failed_step == 1
    # Why the pre-check exists: VAL itself ignores the extra argument.
    for name, text in [("d.pddl", BW), ("p.pddl", PROBLEM), ("bad.plan", "\n".join(bad) + "\n")]:
        (tmp_path / name).write_text(text)
    raw = subprocess.run(
        [find_validate(), "d.pddl", "p.pddl", "bad.plan"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Plan valid" in raw.stdout


def test_unknown_object():
    verdict = check(["(unstack b2 b1)", "(stack b2 b9)"])
    assert (verdict.valid, verdict.reason, verdict.failed_step) == (False, "unknown object b9", 2)


def test_wrong_type_in_a_typed_domain():
    domain, problem, _ = domains.example("gripper")
    verdict = validate_plan(domain, problem, ["(move ball1 roomb)"])
    assert not verdict.valid and verdict.reason == "wrong type for move: ball1 is not a room"


def test_upper_case_is_accepted():
    assert check([a.upper() for a in PLAN]).valid


def test_numbered_timed_and_commented_plans():
    numbered = "\n".join(f"{i}. {a}" for i, a in enumerate(PLAN, 1))
    timed = "\n".join(f"{i}.000: {a} [1.000]" for i, a in enumerate(PLAN))
    commented = "; found by hand\n" + "\n\n".join(f"{a} ; step" for a in PLAN) + "\n; cost = 4\n"
    for text in (numbered, timed, commented):
        assert check(text).valid, text


def test_an_unreadable_line_is_a_parse_error_not_a_shorter_plan():
    # VAL would stop at "Plan:" and validate the first two actions only.
    verdict = check("\n".join(PLAN[:2] + ["Plan:"] + PLAN[2:]))
    assert not verdict.valid and verdict.reason == "parse error" and "line 3" in verdict.detail


def test_shipped_examples_are_valid():
    for name in domains.EXAMPLE_DOMAINS:
        domain, problem, plan = domains.example(name)
        verdict = validate_plan(domain, problem, plan)
        assert verdict.valid, (name, verdict.reason)
        assert verdict.plan_length == len(plan.strip().splitlines())


def test_verdict_to_dict_is_json():
    data = json.loads(json.dumps(check(PLAN[:2]).to_dict()))
    assert data["valid"] is False and data["reason"] == "goal not satisfied"
    assert data["validator"].startswith("VAL ") and "raw_output" in data


def test_validator_info():
    info = validator_info()
    assert isinstance(info, ValidatorInfo) and info.version == "4" and len(info.sha256) == 64
    assert info is validator_info()  # cached
    assert check(PLAN).validator == info


# --- completions -----------------------------------------------------------------------------------


def test_completion_with_reasoning_full_of_wrong_actions():
    reasoning = "\n".join(
        ["Maybe (pick-up b2) first?", "(pick-up b2)", "(stack b2 b1)", "No: b2 is on b1."] * 200
    )
    completion = f"{reasoning}\n</think>\n\nFinal plan:\n```pddl\n" + "\n".join(PLAN) + "\n```"
    verdict = validate_completion(BW, PROBLEM, completion)
    assert verdict.valid and verdict.plan_length == 4


def test_completion_without_plan():
    truncated = validate_completion(BW, PROBLEM, "<think>First (unstack b2 b1), then (stack b2 b3)")
    assert not truncated.valid and truncated.reason.startswith("no plan found in completion: ")
    prose = validate_completion(BW, PROBLEM, "</think>There is no plan.")
    assert not prose.valid and prose.reason.startswith("no plan found in completion")
    assert prose.plan_length == 0


def test_completion_with_a_broken_action_line():
    verdict = validate_completion(BW, PROBLEM, "```\n(unstack b2 b1)\n(stack b2\n```")
    assert not verdict.valid and verdict.reason == "parse error"


def test_completion_as_non_utf8_bytes():
    data = b"\xff\xfe<think>\x80 (pick-up b3)</think>\n" + "\n".join(PLAN).encode()
    assert validate_completion(BW, PROBLEM, data).valid


# --- malformed PDDL --------------------------------------------------------------------------------


def test_malformed_domain_or_problem_raises_pddl_error_naming_it(tmp_path):
    with pytest.raises(PDDLError, match=r"^domain, line \d+: .*unbalanced"):
        validate_plan(BW[:-3], PROBLEM, PLAN)
    with pytest.raises(PDDLError, match=r"^problem, line 1: .*define \(problem"):
        validate_plan(BW, PROBLEM.replace("(problem", "(domain"), PLAN)
    broken = tmp_path / "broken.pddl"
    broken.write_text(PROBLEM.replace("(ontable b1)", "(ontable b1"))  # VAL segfaults on this one
    with pytest.raises(PDDLError, match="broken.pddl"):
        validate_plan(BW, broken, PLAN)
    with pytest.raises(PDDLError, match="missing.pddl: no such domain file"):
        validate_plan(tmp_path / "missing.pddl", PROBLEM, PLAN)
    with pytest.raises(PDDLError, match="no \\(:goal"):  # VAL would call every plan valid
        validate_plan(BW, PROBLEM.replace("(:goal (and (on b1 b2) (on b2 b3)))", ""), PLAN)
    with pytest.raises(PDDLError, match="unknown predicate 'onn'"):
        validate_plan(BW, PROBLEM.replace("(on b1 b2)", "(onn b1 b2)"), PLAN)
    with pytest.raises(PDDLError, match="pass a pathlib.Path"):
        validate_plan("blocksworld.pddl", PROBLEM, PLAN)


# --- the validator misbehaving -----------------------------------------------------------------------


def test_val_missing(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere" / "Validate"))
    with pytest.raises(ValidatorNotFound, match=ENV_VAR):
        check(PLAN)
    with pytest.raises(ValidatorNotFound):
        find_validate()


def test_val_crashing_is_a_failure_not_a_verdict(monkeypatch, tmp_path):
    script = fake_validator(tmp_path, "echo '#@!garbage Plan'; exit 139")
    monkeypatch.setenv(ENV_VAR, script)
    with pytest.raises(ValidatorFailed) as failed:
        check(PLAN)
    message = str(failed.value)
    assert f"{ENV_VAR}={script}" in message and "validator crashed (exit code 139)" in message
    assert "3 of 3 runs" in message and "garbage" in message and "\n" not in message


def test_val_crashing_after_saying_valid_is_not_valid(monkeypatch, tmp_path):
    monkeypatch.setenv(
        ENV_VAR, fake_validator(tmp_path, "echo 'Plan size: 4'; echo 'Plan valid'; kill -SEGV $$")
    )
    with pytest.raises(ValidatorFailed, match=r"exit code 139\) \(killed by SIGSEGV"):
        check(PLAN)


def test_val_saying_valid_without_reading_the_plan_is_not_valid(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, fake_validator(tmp_path, "echo 'Plan valid'; exit 0"))
    with pytest.raises(ValidatorFailed, match="no verdict from validator"):
        check(PLAN)
    monkeypatch.setenv(
        ENV_VAR, fake_validator(tmp_path, "echo 'Plan size: 2'; echo 'Plan valid'; exit 0", "v2")
    )
    verdict = check(PLAN)
    assert not verdict.valid and verdict.reason == "parse error" and "read 2 of the 4" in verdict.detail


def test_val_hanging_is_killed_at_the_timeout(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, fake_validator(tmp_path, "sleep 60"))
    start = time.perf_counter()
    with pytest.raises(ValidatorFailed, match="timeout after 1s") as failed:
        check(PLAN, timeout=1.0)
    assert time.perf_counter() - start < 8.0  # three runs of a second each
    assert "validation_timeout" in str(failed.value)  # what to do when VAL is only slow


def test_val_silent_with_exit_0_is_a_failure(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, fake_validator(tmp_path, "exit 0"))
    with pytest.raises(ValidatorFailed, match=r"no verdict from validator \(exit code 0\)"):
        check(PLAN)


def test_a_failure_that_does_not_come_back_is_retried(monkeypatch, tmp_path):
    """A validator that crashes on one run in the batch: that plan is validated again and judged."""
    real, once = find_validate(), tmp_path / "crashed-once"
    monkeypatch.setenv(ENV_VAR, fake_validator(
        tmp_path, f'if mkdir {once} 2>/dev/null; then kill -SEGV $$; fi\nexec {real} "$@"'))
    verdicts = validate_batch([(BW, PROBLEM, PLAN), (BW, PROBLEM, PLAN[:2])] * 3, workers=2)
    assert once.exists()
    assert [v.reason for v in verdicts] == ["valid", "goal not satisfied"] * 3


def test_a_broken_validator_stops_a_batch_at_once(monkeypatch, tmp_path):
    """Hanging on every plan: the batch stops after two failed runs (more than the tolerated 2%),
    without waiting for 3 runs of each of the 40 plans (a minute at 1 s each on 2 workers)."""
    log = tmp_path / "runs.log"
    script = fake_validator(tmp_path, f"echo run >> {log}; sleep 60")
    monkeypatch.setenv(ENV_VAR, script)
    start = time.perf_counter()
    with pytest.raises(ValidatorFailed, match=f"the validator {ENV_VAR}={script} .* failed 2 of 2 runs"):
        validate_batch([(BW, PROBLEM, PLAN)] * 40, workers=2, timeout=1.0)
    assert time.perf_counter() - start < 8.0
    assert len(log.read_text().splitlines()) <= 4


def test_timeouts_that_are_not_a_number_of_seconds_are_refused():
    for bad in (float("nan"), float("inf"), 0, -1.0):
        with pytest.raises(ValueError, match="finite number of seconds"):
            check(PLAN, timeout=bad)
    assert check(PLAN, timeout=1e300).valid  # finite: no overflow in the wait


def test_temp_files_are_cleaned_up(monkeypatch, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    check(PLAN)
    validate_batch([(BW, PROBLEM, PLAN)] * 3, workers=2)
    with pytest.raises(PDDLError):
        validate_batch([(BW, PROBLEM, PLAN), (BW, "(define (problem x)", PLAN)], workers=2)
    monkeypatch.setenv(ENV_VAR, fake_validator(tmp_path, "sleep 60"))
    with pytest.raises(ValidatorFailed):
        check(PLAN, timeout=0.5)
    assert os.listdir(scratch) == []


def test_workspaces_of_a_killed_process_are_swept(monkeypatch, tmp_path):
    """SIGKILL during validation leaves the workspace behind; the next process to validate removes it
    (and leaves the workspace of a live process alone)."""
    scratch, pidfile = tmp_path / "scratch", tmp_path / "val.pid"
    scratch.mkdir()
    hang = fake_validator(tmp_path, f"echo $$ > {pidfile}; sleep 60")
    code = f"from iterdeploy_trl.validate import validate_plan; validate_plan({BW!r}, {PROBLEM!r}, {PLAN!r})"
    env = {**os.environ, ENV_VAR: hang, "TMPDIR": str(scratch)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pidfile.exists(), "the validator never started"
        left = os.listdir(scratch)
        assert len(left) == 1 and left[0].startswith("iterdeploy-val-")
    finally:
        child.kill()
        child.wait()
        if pidfile.exists():
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    live = scratch / f"iterdeploy-val-{left[0].split('-')[2]}-1-keep"  # pid 1 is alive
    live.mkdir()
    assert len(os.listdir(scratch)) == 2
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert check(PLAN).valid
    assert os.listdir(scratch) == [live.name]


# --- batches ---------------------------------------------------------------------------------------


def test_batch_preserves_order():
    gripper = domains.example("gripper")
    jobs = [(BW, PROBLEM, PLAN), (BW, PROBLEM, PLAN[:2]), gripper, (BW, PROBLEM, ["(fly b1)"])] * 3
    verdicts = validate_batch(jobs, workers=2, progress=True)
    assert [v.reason for v in verdicts] == ["valid", "goal not satisfied", "valid", "unknown action fly"] * 3
    assert validate_batch([]) == []


def test_batch_writes_each_domain_once_and_names_the_bad_job(monkeypatch, tmp_path):
    log = tmp_path / "calls.log"
    monkeypatch.setenv(ENV_VAR, fake_validator(
        tmp_path, f'echo "$2 $3" >> {log}; echo "Plan size: 4"; echo "Plan valid"; exit 0'))
    validate_batch([(BW, PROBLEM, PLAN)] * 6, workers=2)
    calls = log.read_text().split("\n")[:-1]
    assert len(calls) == 6 and len(set(calls)) == 1  # one domain file, one problem file
    with pytest.raises(PDDLError, match="^job 1: problem"):
        validate_batch([(BW, PROBLEM, PLAN), (BW, "(define (problem x)", PLAN)], workers=1)


# --- the command -----------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    (tmp_path / "p.pddl").write_text(PROBLEM)
    (tmp_path / "good.plan").write_text("\n".join(PLAN) + "\n")
    (tmp_path / "short.plan").write_text("\n".join(PLAN[:2]) + "\n")
    (tmp_path / "completion.txt").write_bytes(
        b"\xff<think>(pick-up b2)</think>```\n" + "\n".join(PLAN).encode() + b"\n```"
    )
    (tmp_path / "broken.pddl").write_text(PROBLEM[:-5])
    return tmp_path


def test_cli_exit_codes(files, capsys):
    assert cli_main(["validate", "blocksworld", str(files / "p.pddl"), str(files / "good.plan")]) == 0
    assert capsys.readouterr().out.startswith("valid")
    domain = str(domains.domain_path("blocksworld"))
    assert cli_main(["validate", domain, str(files / "p.pddl"), str(files / "short.plan")]) == 1
    assert "goal not satisfied" in capsys.readouterr().out
    assert cli_main(["validate", "blocksworld", str(files / "p.pddl"), str(files / "completion.txt")]) == 0
    capsys.readouterr()


def test_cli_json(files, capsys):
    assert (
        cli_main(["validate", "blocksworld", str(files / "p.pddl"), str(files / "short.plan"), "--json"]) == 1
    )
    out = capsys.readouterr().out
    assert json.loads(out) == {"valid": False, "plan_length": 2, "reason": "goal not satisfied"}
    assert out.count("\n") == 1


def test_cli_bad_input(files, capsys, monkeypatch):
    args = ["validate", "blocksworld", str(files / "broken.pddl"), str(files / "good.plan"), "--json"]
    assert cli_main(args) == 2
    captured = capsys.readouterr()
    assert "broken.pddl" in captured.err and captured.out == ""
    assert cli_main(["validate", "blocksworld", str(files / "p.pddl"), str(files / "nope.plan")]) == 2
    assert "nope.plan" in capsys.readouterr().err
    assert (
        cli_main(["validate", str(files / "nodomain.pddl"), str(files / "p.pddl"), str(files / "good.plan")])
        == 2
    )
    assert "nodomain.pddl" in capsys.readouterr().err
    monkeypatch.setenv(ENV_VAR, str(files / "no-val"))
    assert cli_main(["validate", "blocksworld", str(files / "p.pddl"), str(files / "good.plan")]) == 2
    assert ENV_VAR in capsys.readouterr().err


def test_cli_validates_a_long_plain_plan_file_whole(files, capsys):
    """The extraction caps (2000 actions) are for model completions: a plain plan file of 2101 actions that
    VAL accepts is valid; the same actions inside a completion give the cap and the reason."""
    long_plan = ["(pick-up b3)", "(put-down b3)"] * 1050 + ["(unstack b2 b1)"]
    tail = ["(stack b2 b3)", "(pick-up b1)", "(stack b1 b2)"]
    (files / "long.plan").write_text("; a planner's plan\n" + "\n".join(long_plan + tail) + "\n")
    assert len(long_plan + tail) > 2000
    assert cli_main(["validate", "blocksworld", str(files / "p.pddl"), str(files / "long.plan")]) == 0
    assert capsys.readouterr().out.startswith(f"valid ({len(long_plan + tail)} actions")
    (files / "long.txt").write_text("<think>ok</think>\n```plan\n" + "\n".join(long_plan + tail) + "\n```\n")
    assert cli_main(["validate", "blocksworld", str(files / "p.pddl"), str(files / "long.txt")]) == 1
    out = capsys.readouterr().out
    assert "too many actions (2104 > 2000)" in out and "plain plan file" in out and "is validated whole" in out


def test_cli_resolves_a_domain_name_unless_it_is_a_file(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    (files / "blocksworld").mkdir()  # a directory named like the domain does not hide the shipped one
    assert cli_main(["validate", "blocksworld", "p.pddl", "good.plan"]) == 0
    assert capsys.readouterr().out.startswith("valid")
    (files / "rovers").write_text(BW)  # a file of that name is read as the domain file
    assert cli_main(["validate", "rovers", "p.pddl", "good.plan"]) == 0
    assert capsys.readouterr().out.startswith("valid")


def test_a_domain_using_types_without_the_typing_requirement_reads():
    """The IPC-2023 track's miconic declares only :strips and uses :types: VAL accepts it, and so do our
    pre-checks (the pddl library alone refuses it)."""
    from iterdeploy_trl.tasks import generate_tasks

    domain = domains.domain_pddl("miconic").replace(":strips :typing", ":strips")
    assert domain != domains.domain_pddl("miconic")
    task = generate_tasks("miconic", 1, seed=0, size=(2, 2))[0]
    assert validate_plan(domain, task.problem, list(task.reference_plan)).valid


def test_cli_exit_code_of_a_failed_validator_is_its_own(files, capsys, monkeypatch, tmp_path):
    """0 valid, 1 invalid, 4 the validator failed (crash, hang, no verdict): never 1."""
    args = ["validate", "blocksworld", str(files / "p.pddl"), str(files / "good.plan"), "--timeout", "1"]
    for name, body in [("segv", "kill -SEGV $$"), ("hang", "sleep 60"), ("garbage", "echo '%$#@ !!'")]:
        script = fake_validator(tmp_path, body, name)
        monkeypatch.setenv(ENV_VAR, script)
        assert cli_main(args) == 4, name
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and script in captured.err
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert cli_main(args[:-2]) == 0


def test_cli_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli_main(["validate", "--help"])
    text = capsys.readouterr().out
    assert "4  the validator failed" in text and "1  invalid" in text


@pytest.mark.parametrize("value", ["nan", "inf", "1e300", "-1", "0"])
def test_cli_refuses_a_timeout_that_is_not_a_number_of_seconds(files, capsys, value):
    args = ["validate", "blocksworld", str(files / "p.pddl"), str(files / "good.plan"), f"--timeout={value}"]
    assert cli_main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "--timeout" in captured.err


def test_a_plan_longer_than_val_reads_is_refused_naming_the_limit(files, capsys):
    """VAL says 'Bad plan description!' from about 9 990 actions on (9 994 read, 9 995 do not): a valid
    plan of 20 000 actions is refused naming VAL's limit, never judged invalid; 9 994 actions are valid."""
    head = ["(unstack b2 b1)", "(stack b2 b3)"]
    loop = ["(unstack b2 b3)", "(stack b2 b3)"]
    tail = ["(pick-up b1)", "(stack b1 b2)"]
    for n, code in [(9_994, 0), (20_000, 2)]:
        plan = head + loop * ((n - 4) // 2) + tail
        assert len(plan) == n
        (files / f"{n}.plan").write_text("\n".join(plan) + "\n")
        assert cli_main(["validate", "blocksworld", str(files / "p.pddl"), str(files / f"{n}.plan")]) == code
        captured = capsys.readouterr()
        if code == 0:
            assert captured.out.startswith(f"valid ({n} actions")
        else:
            assert captured.out == "" and captured.err.count("\n") == 1
            assert "20000 actions" in captured.err and "about 9 990 actions" in captured.err
    with pytest.raises(PlanTooLong, match="^job 0: the plan has 20000 actions"):
        validate_batch([(BW, PROBLEM, (files / "20000.plan").read_text())])


def test_a_garbage_line_inside_a_plan_file_is_an_error_naming_it(files, capsys):
    """Read as a completion, the run of actions after the bad line would be judged: another plan."""
    text = "\n".join(PLAN[:1] + ["this is not an action"] + PLAN[1:]) + "\n"
    (files / "garbage.plan").write_text(text)
    verdict = validate_file_text(BW, PROBLEM, text)
    assert not verdict.valid and verdict.reason == "parse error"
    assert verdict.detail == "line 2 is not an action: 'this is not an action'"
    assert cli_main(["validate", "blocksworld", str(files / "p.pddl"), str(files / "garbage.plan")]) == 1
    assert "line 2 is not an action" in capsys.readouterr().out
    # prose around a plan (before its first action, after its last) is a completion, judged as before
    assert validate_file_text(BW, PROBLEM, "Here is my plan:\n" + "\n".join(PLAN) + "\nDone.").valid
