"""The trace record: one row per sampled completion, written by the loop and read by curation, training,
the comparison and the figures. This module is its one definition (:class:`TraceRecord`) and its one
reader and writer (:func:`write_traces`, :func:`read_traces`): JSONL, one record a line, written whole
(atomically) per deployment chunk.

Files written before a field existed still read: ``completion_ids``, ``stop_token_id`` and
``prompt_ids`` are ``None`` there (training then re-tokenises the text, as it did when they were made).
A line with a field this module does not know, or a field of the wrong type, is refused with the file,
the line and the field named.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iterdeploy_trl.runio import atomic_write_text


class TraceFormatError(ValueError):
    """A trace file that is not made of trace records; the message names the file, line and field."""


@dataclass(frozen=True)
class Asked:
    """What was asked: the task (``task_id`` of the ``split``, ``domain``, its ``reference_length``) and the
    prompt given to the backend (``prompt``; ``prompt_ids``: its tokens as fed to the model)."""

    task_id: str
    split: str
    domain: str
    prompt: str
    reference_length: int | None
    prompt_ids: list[int] | None = None


@dataclass(frozen=True)
class Sampled:
    """What was sampled: sample ``sample_index`` of the K of the task, its text and tokens exactly as sampled
    (``completion_ids``, the stop token included; ``stop_token_id`` ``None`` when ``truncated``), their counts,
    log β(y|x) (``behaviour_logprob``) and the sampler's settings (``sampling``)."""

    sample_index: int
    completion: str
    reasoning_tokens: int
    completion_tokens: int
    truncated: bool
    behaviour_logprob: float
    sampling: dict[str, Any]
    completion_ids: list[int] | None = None
    stop_token_id: int | None = None


@dataclass(frozen=True)
class TraceVerdict:
    """The verdict: the extracted ``plan``, VAL's ``valid``/``reason``/``plan_length``, the ``validator`` that
    judged it, and with a blind spot the exact verdict (``exact_valid``, ``validators``)."""

    plan: str
    plan_length: int
    valid: bool
    reason: str
    validator: dict[str, Any]
    exact_valid: bool | None = None
    validators: dict[str, Any] | None = None


@dataclass(frozen=True)
class Provenance:
    """Where it came from: the ``run``, its ``method``, the ``generation`` and run ``seed``, and the ``model``
    deployed."""

    run: str
    method: str
    generation: int
    seed: int
    model: str


# The record's four groups, each a record of its own (TraceRecord.asked, .sampled, .verdict, .provenance); every
# field of the file is in exactly one of them (tests/test_traces.py).
GROUPS: dict[str, type] = {"asked": Asked, "sampled": Sampled, "verdict": TraceVerdict, "provenance": Provenance}


@dataclass(frozen=True)
class TraceRecord:
    """One sampled completion, its verdict and where it came from: one line of a trace file, its fields
    the file's keys in the file's order. Grouped: :attr:`asked`, :attr:`sampled`, :attr:`verdict`,
    :attr:`provenance` (:data:`GROUPS`); :meth:`of` builds a record from the four groups.

    Identity: ``run`` (the run's name), ``method`` (valid-sft, iw-sft, uncurated-sft, reinforce, or
    ``evaluate``), ``generation`` (0: the base model), ``seed`` (the run seed), ``split`` (``pool`` or
    ``heldout``), ``task_id``, ``sample_index`` (k of the K samples of the task), ``domain``.

    Sample: ``prompt`` (the text given to the backend), ``completion`` (the sampled text; a final
    end-of-sequence token is not in it), ``prompt_ids`` (the prompt tokens the backend fed the model,
    special tokens included), ``completion_ids`` (the sampled tokens exactly as sampled, the
    end-of-sequence token that ended the sample included), ``stop_token_id`` (that ending token;
    ``None`` when ``max_new_tokens`` cut the sample), ``truncated`` (cut by ``max_new_tokens``),
    ``completion_tokens`` (tokens sampled, EOS included), ``reasoning_tokens`` (of them, the ones
    before ``</think>``; 0 for a model that does not think), ``behaviour_logprob`` (log β(y|x): the sum
    over ``completion_ids`` of each token's log-prob under the distribution it was sampled from,
    temperature and top-p applied; ``-inf`` if a token had probability 0 there).

    Verdict: ``plan`` (the extracted actions, one a line), ``plan_length`` (actions VAL read),
    ``valid`` (VAL accepts the plan), ``reason`` (``valid`` or why not), ``reference_length`` (the
    task's reference plan length).

    Provenance: ``model`` (the model deployed: the base's path or the generation's model directory
    relative to the run), ``sampling`` (temperature, top_p, max_new_tokens, samples_per_task, backend),
    ``validator`` (VAL's version and binary sha256).
    """

    run: str
    method: str
    generation: int
    seed: int
    split: str
    task_id: str
    sample_index: int
    domain: str
    prompt: str
    completion: str
    plan: str
    plan_length: int
    valid: bool
    reason: str
    reasoning_tokens: int
    completion_tokens: int
    truncated: bool
    behaviour_logprob: float
    reference_length: int | None
    model: str
    sampling: dict[str, Any]
    validator: dict[str, Any]
    completion_ids: list[int] | None = None
    stop_token_id: int | None = None
    prompt_ids: list[int] | None = None
    # A run whose validator has a declared blind spot (validator.blind_spot) records both verdicts: ``valid``
    # is the training validator's, ``exact_valid`` the exact one's; ``validators`` holds both verdicts.
    exact_valid: bool | None = None
    validators: dict[str, Any] | None = None

    @classmethod
    def of(cls, asked: Asked, sampled: Sampled, verdict: TraceVerdict, provenance: Provenance) -> TraceRecord:
        """The record of a sample from its four groups."""
        return cls(**_fields_of(asked), **_fields_of(sampled), **_fields_of(verdict), **_fields_of(provenance))

    @property
    def asked(self) -> Asked:
        """What was asked: task and prompt."""
        return self._group(Asked)

    @property
    def sampled(self) -> Sampled:
        """What was sampled: the completion, its tokens and behaviour log-prob, the sampler's settings."""
        return self._group(Sampled)

    @property
    def verdict(self) -> TraceVerdict:
        """The validator's verdict on the completion's plan."""
        return self._group(TraceVerdict)

    @property
    def provenance(self) -> Provenance:
        """Run, method, generation, seed and model of the sample."""
        return self._group(Provenance)

    def _group(self, group: type) -> Any:
        return group(**{f.name: getattr(self, f.name) for f in dataclasses.fields(group)})

    def judged(self, verdict: TraceVerdict) -> TraceRecord:
        """This sample with another verdict (judged again), the rest kept."""
        return dataclasses.replace(self, **_fields_of(verdict))

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready mapping (the file's field names)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "trace record") -> TraceRecord:
        """A record from a mapping, checked field by field; ``where`` prefixes the error message."""
        unknown = sorted(set(data) - _FIELDS.keys())
        if unknown:
            raise TraceFormatError(f"{where}: unknown field {unknown[0]!r}; a trace record has "
                                   f"{', '.join(_FIELDS)}")
        missing = [name for name in _REQUIRED if name not in data]
        if missing:
            raise TraceFormatError(f"{where}: field {missing[0]!r} is missing")
        for name, value in data.items():
            if not _is(value, _FIELDS[name]):
                raise TraceFormatError(f"{where}: field {name!r} is {value!r}, expected {_FIELDS[name]}")
        return cls(**data)


def _fields_of(group: Any) -> dict[str, Any]:
    """A group's fields by name (a shallow mapping: the values themselves, not copies)."""
    return {f.name: getattr(group, f.name) for f in dataclasses.fields(group)}


_HINTS = typing.get_type_hints(TraceRecord)
_FIELDS = {f.name: _HINTS[f.name] for f in dataclasses.fields(TraceRecord)}
_REQUIRED = [f.name for f in dataclasses.fields(TraceRecord) if f.default is dataclasses.MISSING]


def _is(value: Any, tp: Any) -> bool:
    """Whether a JSON value fits field type ``tp`` (an int is a float; a bool is not an int)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (inner,) = typing.get_args(tp)
        return isinstance(value, list) and all(_is(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def write_traces(path: str | Path, records: Iterable[TraceRecord]) -> None:
    """Write ``records`` to ``path`` as JSONL, all or nothing (a temporary file and a rename)."""
    lines = []
    for r in records:
        if not isinstance(r, TraceRecord):
            raise TypeError(f"write_traces({path}): expected TraceRecord, got {type(r).__name__}")
        lines.append(json.dumps(r.to_dict()) + "\n")
    atomic_write_text(Path(path), "".join(lines))


def read_traces(path: str | Path) -> list[TraceRecord]:
    """The records of a trace file (old files without the token-id fields read with them ``None``)."""
    path = Path(path)
    records = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceFormatError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
            if not isinstance(data, dict):
                raise TraceFormatError(f"{path}:{lineno}: expected a JSON object, got {type(data).__name__}")
            records.append(TraceRecord.from_dict(data, where=f"{path}:{lineno}"))
    return records



# The fields that name a record within a run's seed: one record of each per chunk, never two.
KEY_FIELDS = ("generation", "split", "task_id", "sample_index")


def chunk_problem(path: str | Path, expected: Collection[tuple[Any, ...]] | int) -> str | None:
    """Why the trace chunk at ``path`` is not one record of each key in ``expected`` (tuples of
    :data:`KEY_FIELDS`; or only how many records, where the keys are not known): an empty file, a line
    cut short or not JSON, a record missing, doubled or of another chunk. None when it is whole. Only the
    keys are read; :func:`read_traces` checks the fields."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as exc:
        return f"not a text file ({exc.reason} at byte {exc.start})"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    keys = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            return f"line {lineno} is {'cut short' if lineno == len(lines) else 'not valid JSON'}"
        if not isinstance(data, dict):
            return f"line {lineno} is not a trace record"
        keys.append(tuple(data.get(f) for f in KEY_FIELDS))
    want = expected if isinstance(expected, int) else len(set(expected))
    if not keys:
        return f"empty (0 of its {want} records)"
    doubled = [k for k, n in Counter(keys).items() if n > 1]
    if doubled:
        return f"holds the record of task {doubled[0][2]} sample {doubled[0][3]} more than once"
    if isinstance(expected, int):
        return None if len(keys) == want else f"holds {len(keys)} records, not {want}"
    missing = sorted(set(expected) - set(keys), key=str)
    if missing:
        return f"lacks {len(missing)} of its {want} records (task {missing[0][2]} sample {missing[0][3]} first)"
    other = sorted(set(keys) - set(expected), key=str)
    if other:
        return f"holds {len(other)} records of another chunk (generation {other[0][0]} {other[0][1]} task {other[0][2]})"
    return None


# ------------------------------------------------------------------ training rows back to their traces


def trace_key(rec: dict[str, Any]) -> tuple[str, str]:
    """What identifies a training row with the trace it came from: task and completion text."""
    return (str(rec.get("task_id")), str(rec.get("completion")))


def match_training_rows(rows: Sequence[dict[str, Any]], history: Sequence[dict[str, Any]]
                        ) -> tuple[list[dict[str, Any]], int]:
    """The trace of each training row (earliest generation first among equal texts), and how many rows
    matched no trace of the history."""
    pool: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in sorted(history, key=lambda t: (t.get("generation", 0), t.get("sample_index", 0))):
        if t.get("split", "pool") == "pool":
            pool.setdefault(trace_key(t), []).append(t)
    matched, missing = [], 0
    for r in rows:
        cands = pool.get(trace_key(r))
        if cands:
            matched.append(cands.pop(0))
        else:
            missing += 1
    return matched, missing
