"""Find the plan in a model completion.

A completion is ``<think>reasoning</think>answer``; the plan is read from the answer only, never from
actions the model mentioned while thinking. In the answer, the last fenced code block that holds
actions wins; without one, the last run of consecutive action lines. Every action comes out
normalised as ``(name arg1 arg2)`` in lower case, the format VAL reads and ``ARCHITECTURE.md`` fixes.

The scan goes line by line with simple, linear patterns, so a megabyte of garbage costs milliseconds
and never raises: ``Extraction.reason`` says why no plan was found.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# A PDDL name: letters, digits, '-', '_' (objects such as ``pos-01-02``, actions such as ``take_image``).
_NAME = re.compile(r"[a-z_][a-z0-9_\-]*\Z")
# Leading list markers a model puts before an action: "- ", "* ", "1.", "1)", "Step 1:", "0.000:".
_MARKER = re.compile(r"(?:[-*\u2022]\s*)?(?:(?:step\s*)?\d{1,6}(?:\.\d{1,6})?\s*[.):]\s*)?", re.IGNORECASE)
_PAREN_GROUP = re.compile(r"\(([^()]*)\)")
_DURATION = re.compile(r"\[[^\[\]]*\]")
_FENCE = "```"
_DEFINE = re.compile(r"\s*\(\s*define\b", re.IGNORECASE)


@dataclass(frozen=True)
class Extraction:
    """The plan found in a completion.

    ``actions`` are normalised ``(name a b)`` strings; ``reason`` is None when a plan was found, else why
    not (or, starting with ``malformed``, why the plan found cannot be read). ``answer`` is the text after
    the reasoning, ``reasoning_chars`` the length of the reasoning, and ``truncated`` tells that a
    ``<think>`` was opened and never closed.
    """

    actions: tuple[str, ...]
    reason: str | None
    answer: str
    reasoning_chars: int = 0
    truncated: bool = False

    @property
    def found(self) -> bool:
        """True when a well-formed plan was found."""
        return self.reason is None

    @property
    def malformed(self) -> bool:
        """True when the plan found has a line that looks like an action but cannot be read."""
        return self.reason is not None and self.reason.startswith("malformed")


def split_reasoning(text: str) -> tuple[str, str]:
    """Split a completion into ``(reasoning, answer)``.

    - ``<think>R</think>A`` gives ``(R, A)``; text before ``<think>`` counts as reasoning too.
    - Only ``</think>`` (chat templates that put ``<think>`` in the prompt, as Qwen3-Thinking does):
      everything before it is reasoning.
    - ``<think>`` never closed (generation truncated while thinking): the answer is empty.
    - No tags: the whole text is the answer.
    """
    reasoning, answer, _ = _split(text)
    return reasoning, answer


def _split(text: str) -> tuple[str, str, bool]:
    """``(reasoning, answer, truncated)``; see ``split_reasoning``."""
    close = text.rfind(THINK_CLOSE)
    open_after = text.find(THINK_OPEN, close + len(THINK_CLOSE) if close >= 0 else 0)
    if close < 0:
        if open_after < 0:
            return "", text, False
        return text[open_after + len(THINK_OPEN) :], "", True
    reasoning = text[:close]
    first_open = reasoning.find(THINK_OPEN)
    if first_open >= 0:
        reasoning = reasoning[:first_open] + reasoning[first_open + len(THINK_OPEN) :]
    answer = text[close + len(THINK_CLOSE) :]
    if open_after >= 0:  # a second <think> after the last </think>, cut off: its tail is not answer
        cut = open_after - (close + len(THINK_CLOSE))
        return reasoning, answer[:cut], True
    return reasoning, answer, False


# Line kinds returned by ``parse_action_line``.
BLANK, ACTIONS, MALFORMED, OTHER = "blank", "actions", "malformed", "other"


def parse_action_line(line: str) -> tuple[str, tuple[str, ...]]:
    """Classify one line of a plan: ``(kind, actions)``.

    ``kind`` is ``"blank"`` (empty or a ``;`` comment), ``"actions"`` (one or more actions, with
    numbering, timing ``0.000: (a b) [1.000]``, comments, backticks and case tolerated), ``"malformed"``
    (it starts like an action but its parentheses do not close or are empty or nested) or ``"other"``
    (prose, headers, anything else).
    """
    text = line.split(";", 1)[0].strip().strip("`").strip()
    if not text:
        return BLANK, ()
    lowered = text.lower()
    marker = _MARKER.match(lowered)
    body = lowered[marker.end() :].strip("`").strip() if marker else lowered
    if not body.startswith("("):
        return OTHER, ()
    actions: list[str] = []
    pos = 0
    for match in _PAREN_GROUP.finditer(body):
        between = body[pos : match.start()]
        if between.strip(" \t,"):
            return (MALFORMED, ()) if "(" in between or ")" in between else (OTHER, ())
        tokens = match.group(1).split()
        if not tokens:
            return MALFORMED, ()
        if not all(_NAME.match(tok) for tok in tokens):
            return OTHER, ()
        actions.append("(" + " ".join(tokens) + ")")
        pos = match.end()
    rest = _DURATION.sub("", body[pos:], count=1).strip(" \t,.")
    if rest:
        return (MALFORMED, ()) if "(" in rest or ")" in rest else (OTHER, ())
    if not actions:
        return MALFORMED, ()
    return ACTIONS, tuple(actions)


def normalise_action(action: str) -> str | None:
    """Normalise one action, ``"(Unstack B1 B2)"`` or bare ``"unstack b1 b2"``, to ``"(unstack b1 b2)"``.

    Returns None when the string is not exactly one action.
    """
    text = action.strip()
    if text and not text.startswith("(") and not text[:1].isdigit():
        text = "(" + text + ")"
    kind, actions = parse_action_line(text)
    return actions[0] if kind == ACTIONS and len(actions) == 1 else None


def parse_plan(plan: str | Sequence[str]) -> tuple[tuple[str, ...], str | None]:
    """Read a plan strictly: ``(actions, error)``; ``error`` is None when every line was read.

    ``plan`` is plan text (one action a line; blank lines, ``;`` comments, numbering and timing are
    fine, anything else is an error: VAL would silently validate only the prefix before it) or a list of
    action strings (``"(a b)"`` or bare ``"a b"``).
    """
    actions: list[str] = []
    if isinstance(plan, str):
        for number, line in enumerate(plan.splitlines(), start=1):
            kind, found = parse_action_line(line)
            if kind == ACTIONS:
                actions.extend(found)
            elif kind != BLANK:
                return tuple(actions), f"line {number} is not an action: {_clip(line)!r}"
        return tuple(actions), None
    for number, item in enumerate(plan, start=1):
        if not isinstance(item, str):
            return tuple(actions), f"action {number} is not a string: {_clip(repr(item))}"
        action = normalise_action(item)
        if action is None:
            return tuple(actions), f"action {number} is not a single action: {_clip(item)!r}"
        actions.append(action)
    return tuple(actions), None


def interior_non_action(text: str) -> str | None:
    """For a text that reads as a plan file, the first line between its first and last action that is
    not an action, a comment or blank, as ``"line N is not an action: '...'"``; else None.

    A text with ``<think>`` tags or a code fence is a model completion, never a plan file; so is one
    whose lines that are not actions all come before its first action or after its last (prose around a
    plan). A bad line *between* actions is a broken plan file: read as a completion, only the actions
    after it would be judged.
    """
    if THINK_OPEN in text or THINK_CLOSE in text or _FENCE in text:
        return None
    lines = text.splitlines()
    kinds = [parse_action_line(line)[0] for line in lines]
    at = [i for i, kind in enumerate(kinds) if kind == ACTIONS]
    if len(at) < 2:
        return None
    for i in range(at[0] + 1, at[-1]):
        if kinds[i] in (OTHER, MALFORMED):
            return f"line {i + 1} is not an action: {_clip(lines[i])!r}"
    return None


def extract_plan(
    completion: str | bytes, *, max_chars: int = 200_000, max_actions: int = 2_000
) -> Extraction:
    """Extract the plan from a model completion (see the module docstring for the rules).

    Bytes are decoded as UTF-8 with replacement characters. An answer longer than ``max_chars`` or a
    plan longer than ``max_actions`` actions gives no plan, with the reason.
    """
    if isinstance(completion, bytes | bytearray):
        completion = bytes(completion).decode("utf-8", errors="replace")
    if not isinstance(completion, str):
        return Extraction((), f"completion is a {type(completion).__name__}, not text", "")
    reasoning, answer, truncated = _split(completion)
    base = {"answer": answer, "reasoning_chars": len(reasoning), "truncated": truncated}
    if not answer.strip():
        why = "answer is empty (<think> never closed: truncated?)" if truncated else "answer is empty"
        return Extraction((), why, **base)
    if len(answer) > max_chars:
        base["answer"] = answer[:max_chars]
        return Extraction((), f"answer too long ({len(answer)} characters > {max_chars})", **base)
    lines = answer.splitlines()
    plan = _last_fenced_plan(lines)
    if plan is None:
        plan = _last_run(lines)
    if plan is None:
        return Extraction((), "no action lines in the answer", **base)
    actions, malformed = plan
    if malformed is not None:
        return Extraction(actions, f"malformed action line: {_clip(malformed)!r}", **base)
    if len(actions) > max_actions:
        return Extraction((), f"too many actions ({len(actions)} > {max_actions})", **base)
    return Extraction(actions, None, **base)


_Plan = tuple[tuple[str, ...], str | None]  # (actions, first malformed line or None)


def _fenced_blocks(lines: Sequence[str]) -> Iterable[list[str]]:
    """Contents of the ``` fenced blocks; a block left open runs to the end (truncated output)."""
    block: list[str] | None = None
    for line in lines:
        if line.lstrip().startswith(_FENCE):
            if block is None:
                block = []
            else:
                yield block
                block = None
        elif block is not None:
            block.append(line)
    if block is not None:
        yield block


def _last_fenced_plan(lines: Sequence[str]) -> _Plan | None:
    """All actions of the last fenced block that has any; prose lines in the block are skipped.

    Blocks holding a ``(define ...)`` are PDDL echoed from the prompt, whose ground atoms
    (``(on b1 b2)`` one a line) would otherwise read as actions.
    """
    best: _Plan | None = None
    for block in _fenced_blocks(lines):
        if any(_DEFINE.match(line) for line in block):
            continue
        actions: list[str] = []
        malformed: str | None = None
        for line in block:
            kind, found = parse_action_line(line)
            if kind == ACTIONS:
                actions.extend(found)
            elif kind == MALFORMED and malformed is None:
                malformed = line
        if actions:
            best = (tuple(actions), malformed)
    return best


def _last_run(lines: Sequence[str]) -> _Plan | None:
    """The last run of action lines (blank lines and comments allowed inside) outside code fences.

    A malformed action line inside the run (say, cut off mid-action) spoils the run rather than
    being dropped, so that a different plan from the one written is never validated.
    """
    best: _Plan | None = None
    actions: list[str] = []
    malformed: str | None = None

    def close() -> None:
        nonlocal best, actions, malformed
        if actions:
            best = (tuple(actions), malformed)
        actions, malformed = [], None

    for line in lines:
        kind, found = parse_action_line(line)
        if kind == ACTIONS:
            actions.extend(found)
        elif kind == MALFORMED:
            if malformed is None:
                malformed = line
        elif kind == OTHER:
            close()
    close()
    return best


def _clip(text: str, limit: int = 80) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
