"""One VAL run on one plan (``_validate_in``): the plan is read (``extract.parse_plan``) and each action's name,
arity, objects and argument types checked against the domain and problem before VAL (which silently
validates only the prefix before a line it cannot read, and ignores extra arguments); then ``Validate -v``
runs in its own process group (``_run_val``), killed at the timeout or on the workspace's abort flag, and its
text is read into a ``Verdict``. A plan longer than VAL's parser reads raises ``PlanTooLong``."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from iterdeploy_trl.extract import parse_plan
from iterdeploy_trl.pddlio import DomainInfo, PDDLReadError, read_domain, read_problem
from iterdeploy_trl.val_binary import ValidatorInfo, ValidatorNotFound
from iterdeploy_trl.val_verdict import PDDLError, Verdict, _failed, _interpret
from iterdeploy_trl.val_workspace import PDDLSource, _Workspace

LONG_PLAN = 9_000  # VAL's "Bad plan description!" on a plan this long that we read is its parser's limit
VAL_PLAN_LIMIT = "about 9 990 actions, a few fewer for actions of many arguments"  # measured: validate.py's docstring

Plan = str | Sequence[str]


class PlanTooLong(ValueError):
    """A plan longer than VAL's parser can read; the message gives its length and VAL's limit."""


def _precheck(
    domain: DomainInfo, objects: Mapping, actions: Sequence[str], validator: ValidatorInfo | str
) -> Verdict | None:
    """Name, arity, objects and types of each action, checked before VAL (which ignores extra args)."""
    for step, action in enumerate(actions, start=1):
        name, *args = action[1:-1].split()
        schema = domain.actions.get(name)
        signature = schema.param_types if schema is not None else None
        if signature is None:
            return _failed(len(actions), f"unknown action {name}", validator, step, action)
        if len(args) != len(signature):
            return _failed(
                len(actions),
                f"wrong arity for {name}: expected {len(signature)}, got {len(args)}",
                validator,
                step,
                action,
            )
        for arg, wanted in zip(args, signature, strict=True):
            if arg not in objects:
                return _failed(len(actions), f"unknown object {arg}", validator, step, action)
            if not domain.is_a(objects[arg], wanted):
                return _failed(
                    len(actions),
                    f"wrong type for {name}: {arg} is not a {' or '.join(wanted)}",
                    validator,
                    step,
                    action,
                )
    return None


def _check_pddl(
    domain_text: str, domain_label: str, problem_text: str, problem_label: str
) -> tuple[DomainInfo, Mapping[str, tuple[str, ...]]]:
    """The domain and the problem's objects, read by ``pddlio`` (the one PDDL reader)."""
    try:
        domain = read_domain(domain_text, domain_label)
        problem = read_problem(domain_text, problem_text, problem_label)
    except PDDLReadError as exc:
        raise PDDLError(str(exc)) from None
    return domain, problem.objects


def _validate_in(
    ws: _Workspace,
    exe: str,
    info: ValidatorInfo,
    domain: PDDLSource,
    problem: PDDLSource,
    plan: Plan,
    timeout: float,
) -> Verdict:
    domain_text, domain_label = ws.load(domain, "domain")
    problem_text, problem_label = ws.load(problem, "problem")
    parsed_domain, objects = _check_pddl(domain_text, domain_label, problem_text, problem_label)
    actions, error = parse_plan(plan)
    if error is not None:
        return _failed(len(actions), "parse error", info, len(actions) + 1, error)
    early = _precheck(parsed_domain, objects, actions, info)
    if early is not None:
        return early
    plan_path = ws.dir / f"{ws.new_name()}.plan"
    plan_path.write_text("".join(a + "\n" for a in actions))
    try:
        code, output = _run_val(
            exe,
            ws.file_for(domain_text, "domain"),
            ws.file_for(problem_text, "problem"),
            plan_path,
            ws.dir,
            timeout,
            ws.abort,
        )
    finally:
        plan_path.unlink(missing_ok=True)
    verdict = _interpret(output, code, len(actions), timeout, info, domain_label, problem_label)
    if len(actions) >= LONG_PLAN and "Bad plan description!" in output.splitlines():
        # every line was read by parse_plan and passed the pre-checks: VAL's parser ran out of stack
        raise PlanTooLong(
            f"the plan has {len(actions)} actions, more than VAL's plan parser reads ({VAL_PLAN_LIMIT}; it "
            "says 'Bad plan description!'): it cannot be judged with VAL; validate a plan of fewer actions"
        )
    return verdict


def _run_val(
    exe: str,
    domain: Path,
    problem: Path,
    plan: Path,
    cwd: Path,
    timeout: float,
    abort: threading.Event | None = None,
) -> tuple[int | None, str]:
    """Run ``Validate -v`` (argument list, no shell); ``(exit code or None on timeout, output)``.

    ``abort`` set while VAL runs: it is killed and the run counts as a timeout."""
    try:
        proc = subprocess.Popen(
            [exe, "-v", str(domain), str(problem), str(plan)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,  # its own process group, so that a timeout kills all of it
        )
    except OSError as exc:
        raise ValidatorNotFound(f"cannot run {exe}: {exc.strerror}") from None
    deadline = time.monotonic() + timeout
    code: int | None = None
    try:
        while True:
            # communicate() wakes up when VAL closes its output; waking every half second is for the
            # deadline (no wait on a huge timeout overflows) and the abort flag.
            left = deadline - time.monotonic()
            try:
                out, _ = proc.communicate(timeout=max(0.0, min(left, 0.5)))
                code = proc.returncode
                break
            except subprocess.TimeoutExpired:
                if left <= 0.5 or (abort is not None and abort.is_set()):
                    out = _kill_group(proc)
                    break
    except BaseException:
        _kill_group(proc)
        raise
    return code, out.decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen) -> bytes:
    """Kill VAL and anything it started; return what it printed."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        out, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # a process that left the group still holds the pipe
        proc.kill()
        proc.wait()
        out = b""
    return out or b""
