"""A verdict of VAL and how it is read from VAL's text: ``Verdict`` (valid, or why not, at which step), and
``_interpret``, which turns VAL's output (and, only for crashes, its exit code) into one, never trusting the
exit code alone. A ``Verdict`` whose reason is one of ``FAILURE_REASONS`` stands for a failure of the
validator, never a verdict returned to a caller (``validate.py`` repeats the run)."""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from iterdeploy_trl.val_binary import ValidatorInfo

RAW_OUTPUT_CAP = 20_000  # characters of VAL's output kept in a Verdict
# The reasons of the Verdicts that stand for a failure of the validator (never returned to a caller)
FAILURE_REASONS = ("validator crashed", "timeout after", "no verdict from validator")


class PDDLError(ValueError):
    """A domain or problem is missing or malformed; the message names the file (or ``domain``/``problem``)."""


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


def _failed(
    length: int,
    reason: str,
    validator: ValidatorInfo | str,
    step: int | None = None,
    detail: str = "",
    raw: str = "",
) -> Verdict:
    return Verdict(False, length, reason, step, raw, validator, detail)


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
