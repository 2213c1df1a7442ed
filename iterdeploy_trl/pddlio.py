"""The one PDDL reader: the maintained ``pddl`` library, fed case-normalised text.

PDDL names are case-insensitive (VAL and planners read ``(:INIT`` and ``(AND`` as ``(:init`` and
``(and``); the ``pddl`` library's grammar is not, so every text is lower-cased before it is parsed. The
validator's pre-checks (``validate.py``), the simulator (``sim.py``), the small model's tokenizer
(``models.py``) and the task-set importer (``tasks/importer.py``) all read domains and problems here.

``read_domain`` and ``read_problem`` return plain frozen data: names, types, objects, and actions as
lists of ground-able literals. Errors are :class:`PDDLReadError`, whose message names the file (or
``domain`` / ``problem`` when a text was given) and, where it can be told, the line.

What the simulator can run is STRIPS with typing and negative preconditions (action costs are read
and ignored); :attr:`DomainInfo.unsupported` names every other feature a domain uses (conditional
effects, derived predicates, numeric fluents, ...), with its line. The validator does not need to run
a domain, so it accepts them (VAL judges such plans); the simulator and the importer refuse them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

Atom = tuple[str, ...]

# Requirements of STRIPS + typing + negative preconditions (+ action costs, read and ignored).
STRIPS_REQUIREMENTS = frozenset({"strips", "typing", "negative-preconditions", "action-costs"})
_COST_EFFECTS = {"Increase"}  # (increase (total-cost) k): an action cost
_NUMERIC = {"Increase", "Decrease", "Assign", "ScaleUp", "ScaleDown"}
_COMPARISONS = {"EqualTo", "LesserThan", "LesserEqualThan", "GreaterThan", "GreaterEqualThan"}


class PDDLReadError(ValueError):
    """A domain or problem that cannot be read; ``label`` is the file (or ``domain``/``problem``)."""

    def __init__(self, label: str, message: str, line: int | None = None) -> None:
        where = f"{label}, line {line}" if line else label
        super().__init__(f"{where}: {message}")
        self.label = label
        self.line = line
        self.message = message


@dataclass(frozen=True)
class ActionSchema:
    """A lifted action: parameters (``?x``) with their allowed types, and literals over parameters or
    constants. Parts outside STRIPS are not in the lists (see :attr:`DomainInfo.unsupported`)."""

    name: str
    params: tuple[str, ...]
    param_types: tuple[tuple[str, ...], ...]  # each parameter's allowed types (several for ``either``)
    pre_pos: tuple[Atom, ...]
    pre_neg: tuple[Atom, ...]
    add: tuple[Atom, ...]
    delete: tuple[Atom, ...]


@dataclass(frozen=True)
class DomainInfo:
    """What a domain file declares (every name lower-cased)."""

    name: str
    requirements: frozenset[str]
    types: Mapping[str, str]  # type -> its parent ("object" at the root)
    constants: Mapping[str, tuple[str, ...]]
    predicates: Mapping[str, int]  # name -> arity
    functions: frozenset[str]
    actions: Mapping[str, ActionSchema]
    unsupported: tuple[str, ...]  # features outside STRIPS + typing + negative preconditions, with lines
    typed: bool

    def symbols(self) -> list[str]:
        """Every name the domain declares (its own name, types, constants, predicates, functions, actions),
        sorted: the words a ground atom or action of this domain can use besides object names."""
        words = {self.name, *self.types, *(p for p in self.types.values() if p != "object"), *self.constants}
        words |= set(self.predicates) | set(self.functions) | set(self.actions)
        return sorted(words)

    def ancestors(self, type_name: str) -> list[str]:
        """``type_name`` and its supertypes, nearest first, ending with ``object``."""
        out = [type_name]
        while out[-1] in self.types and self.types[out[-1]] not in out:
            out.append(self.types[out[-1]])
        if "object" not in out:
            out.append("object")
        return out

    def is_a(self, types: tuple[str, ...], wanted: tuple[str, ...]) -> bool:
        """Whether an object of (any of) ``types`` may fill a parameter of (any of) ``wanted``."""
        if not self.typed or "object" in wanted:
            return True
        return any(t in wanted for own in types for t in self.ancestors(own))


@dataclass(frozen=True)
class ProblemInfo:
    """What a problem file declares, checked against its domain (names lower-cased)."""

    name: str
    domain_name: str
    objects: Mapping[str, tuple[str, ...]]  # the problem's objects and the domain's constants
    init: frozenset[Atom]  # numeric facts such as (= (total-cost) 0) left out
    goal_pos: frozenset[Atom]
    goal_neg: frozenset[Atom]
    unsupported: tuple[str, ...]  # goal parts that are not a conjunction of literals


def normalise(text: str) -> str:
    """PDDL text as the reader parses it: lower-cased (names are case-insensitive), lines kept."""
    return text.lower()


def line_of(text: str, pattern: str) -> int | None:
    """1-based line of the first match of regex ``pattern`` in ``text`` (lower-cased), if any."""
    match = re.search(pattern, normalise(text))
    return text.count("\n", 0, match.start()) + 1 if match else None


def _parse(kind: str, text: str, label: str):
    from lark.exceptions import UnexpectedInput
    from pddl.parser.domain import DomainParser

    if not re.match(rf"\s*(;[^\n]*\n\s*)*\(\s*define\s*\(\s*{kind}\s", normalise(text)):
        raise PDDLReadError(label, f"malformed PDDL {kind}: expected (define ({kind} NAME) ...)",
                            line_of(text, r"\(\s*define\b"))
    parser = DomainParser() if kind == "domain" else _problem_parser()
    source = normalise(text)
    if kind == "domain":
        source = _typing_declared(source)
    try:
        return parser(source)
    except UnexpectedInput as exc:
        near = text.splitlines()[exc.line - 1].strip()[:60] if 0 < exc.line <= text.count("\n") + 1 else ""
        expected = sorted(getattr(exc, "expected", None) or getattr(exc, "allowed", None) or ())
        hint = f" (expected {', '.join(expected[:6])})" if expected else ""
        token = getattr(exc, "token", None)
        if token is not None and token.type == "$END":
            opened = text.count("(") - text.count(")")
            raise PDDLReadError(label, f"malformed PDDL {kind}: unbalanced parentheses: the text ends with "
                                f"{opened} '(' never closed", exc.line if exc.line > 0 else None) from None
        raise PDDLReadError(label, f"malformed PDDL {kind}: unexpected {str(token or '')[:30]!r} near "
                            f"{near!r}{hint}", exc.line if exc.line > 0 else None) from None
    except Exception as exc:  # the library's own checks (e.g. types used without :typing)
        raise PDDLReadError(label, f"malformed PDDL {kind}: {exc}") from None


def _typing_declared(source: str) -> str:
    """``source`` with ``:typing`` added to its requirements when it declares ``(:types`` without it (the
    IPC-2023 track's miconic does; VAL and planners accept it, the ``pddl`` library refuses it). Added on
    the requirements' own line, so line numbers stay those of the file."""
    if re.search(r"\(\s*:types\b", source) and not re.search(r":typing\b", source):
        return re.sub(r"\(\s*:requirements\b", "(:requirements :typing", source, count=1)
    return source


_local = threading.local()


def _problem_parser():
    """This thread's problem parser: building its grammar costs ~60 ms, parsing a problem with it ~6 ms,
    and one parser is not safe to share between threads (``validate_batch`` reads problems in several)."""
    parser = getattr(_local, "problem_parser", None)
    if parser is None:
        from pddl.parser.problem import ProblemParser

        parser = _local.problem_parser = ProblemParser()
    return parser


def _name(term) -> str:
    return ("?" + term.name if type(term).__name__ == "Variable" else term.name).lower()


def _types(term) -> tuple[str, ...]:
    tags = sorted(str(t).lower() for t in getattr(term, "type_tags", ()) or ())
    return tuple(tags) or ("object",)


def _atom(pred) -> Atom:
    return (pred.name.lower(), *(_name(t) for t in pred.terms))


class _Literals:
    """Positive and negative atoms of a conjunction, and the features that are not one."""

    def __init__(self, text: str) -> None:
        self.pos: list[Atom] = []
        self.neg: list[Atom] = []
        self.unsupported: list[str] = []
        self._text = text

    def _flag(self, feature: str, pattern: str) -> None:
        line = line_of(self._text, pattern)
        self.unsupported.append(f"{feature} (line {line})" if line else feature)

    def read(self, formula, where: str) -> _Literals:
        kind = type(formula).__name__
        if formula is None:
            return self
        if kind == "And":
            for part in formula.operands:
                self.read(part, where)
        elif kind == "Predicate":
            self.pos.append(_atom(formula))
        elif kind == "Not" and type(formula.argument).__name__ == "Predicate":
            self.neg.append(_atom(formula.argument))
        elif kind == "Not" and type(formula.argument).__name__ == "EqualTo" or kind == "EqualTo":
            self._flag(f"equality in {where}", r"\(\s*=\s*\?")
        elif kind in ("Or", "Imply") or kind == "Not":
            self._flag(f"disjunctive or negated compound formulas in {where}", r"\(\s*(or|imply|not\s*\(\s*and)\b")
        elif kind in ("ExistsCondition", "ForallCondition", "Forall"):
            self._flag(f"quantifiers (forall/exists) in {where}", r"\(\s*(forall|exists)\b")
        elif kind == "When":
            self._flag("conditional effects (when)", r"\(\s*when\b")
        elif kind in _COST_EFFECTS and _is_total_cost(formula):
            pass  # an action cost: read, never decides applicability
        elif kind in _NUMERIC or kind in _COMPARISONS:
            self._flag(f"numeric fluents in {where}", r"\(\s*(increase|decrease|assign|scale-up|scale-down|[<>]=?)\s")
        else:
            self._flag(f"{kind} in {where}", re.escape("(" + str(formula).split()[0].strip("(")))
        return self


def _is_total_cost(formula) -> bool:
    target = formula.operands[0] if formula.operands else None
    return type(target).__name__ == "NumericFunction" and target.name.lower() == "total-cost" and not target.terms


@lru_cache(maxsize=64)
def read_domain(text: str, label: str = "domain") -> DomainInfo:
    """Read a domain (``PDDLReadError`` naming ``label`` and the line on a malformed one)."""
    dom = _parse("domain", text, label)
    types = {str(t).lower(): (str(p).lower() if p else "object") for t, p in dom.types.items()}
    actions: dict[str, ActionSchema] = {}
    unsupported: list[str] = []
    for act in sorted(dom.actions, key=lambda a: a.name):
        name = act.name.lower()
        pre = _Literals(text).read(act.precondition, f"the precondition of {name}")
        eff = _Literals(text).read(act.effect, f"the effect of {name}")
        unsupported += pre.unsupported + eff.unsupported
        actions[name] = ActionSchema(
            name=name,
            params=tuple(_name(v) for v in act.parameters),
            param_types=tuple(_types(v) for v in act.parameters),
            pre_pos=tuple(pre.pos),
            pre_neg=tuple(pre.neg),
            add=tuple(eff.pos),
            delete=tuple(eff.neg),
        )
    if not actions:
        raise PDDLReadError(label, "malformed PDDL domain: no (:action ...) defined")
    if dom.derived_predicates:
        line = line_of(text, r"\(\s*:derived\b")
        unsupported.append(f"derived predicates (:derived, line {line})" if line else "derived predicates")
    functions = frozenset(f.name.lower() for f in dom.functions)
    if functions - {"total-cost"}:
        line = line_of(text, r"\(\s*:functions\b")
        unsupported.append(f"numeric fluents ({', '.join(sorted(functions - {'total-cost'}))}"
                           + (f", line {line})" if line else ")"))
    requirements = frozenset(str(r).lstrip(":").lower() for r in dom.requirements)
    predicates = {p.name.lower(): len(p.terms) for p in dom.predicates}
    constants = {c.name.lower(): _types(c) for c in dom.constants}
    return DomainInfo(
        name=dom.name.lower(),
        requirements=requirements,
        types=types,
        constants=constants,
        predicates=predicates,
        functions=functions,
        actions=actions,
        unsupported=tuple(dict.fromkeys(unsupported)),
        typed=bool(types) or "typing" in requirements,
    )


@lru_cache(maxsize=4096)
def read_problem(domain_text: str, problem_text: str, label: str = "problem") -> ProblemInfo:
    """Read a problem and check it against its domain: every atom names a declared predicate with the
    right number of arguments and declared objects, every object a declared type. (VAL crashes or errs
    on such problems, and a problem without a goal would make it call every plan valid.)"""
    domain = read_domain(domain_text)
    for section in ("init", "goal"):
        if line_of(problem_text, rf"\(\s*:{section}\b") is None:
            raise PDDLReadError(label, f"malformed PDDL problem: no (:{section} ...) section")
    prob = _parse("problem", problem_text, label)
    if prob.domain_name and prob.domain_name.lower() != domain.name:
        raise PDDLReadError(label, f"the problem is for domain {prob.domain_name.lower()!r}, the domain file "
                            f"defines {domain.name!r}", line_of(problem_text, r"\(\s*:domain\b"))
    objects = dict(domain.constants)
    objects.update({o.name.lower(): _types(o) for o in prob.objects})
    declared = set(domain.types) | set(domain.types.values()) | {"object"}
    for obj, types in objects.items():
        for t in types:
            if domain.typed and t not in declared:
                raise PDDLReadError(label, f"object {obj} has type {t}, which the domain does not declare",
                                    line_of(problem_text, rf"(?<![\w-]){re.escape(t)}(?![\w-])"))
    init = frozenset(_atom(p) for p in prob.init if type(p).__name__ == "Predicate")
    goal = _Literals(problem_text).read(prob.goal, "the goal")
    for section, atoms in (("init", init), ("goal", [*goal.pos, *goal.neg])):
        for atom in atoms:
            _check_atom(atom, section, domain, objects, problem_text, label)
    return ProblemInfo(
        name=prob.name.lower(),
        domain_name=(prob.domain_name or "").lower(),
        objects=objects,
        init=init,
        goal_pos=frozenset(goal.pos),
        goal_neg=frozenset(goal.neg),
        unsupported=tuple(dict.fromkeys(goal.unsupported)),
    )


def _check_atom(atom: Atom, section: str, domain: DomainInfo, objects: Mapping, text: str, label: str) -> None:
    head, args = atom[0], atom[1:]
    line = line_of(text, rf"\(\s*{re.escape(head)}(?![\w-])")
    if head not in domain.predicates:
        raise PDDLReadError(label, f":{section}: unknown predicate {head!r} (not in the domain's :predicates)", line)
    if len(args) != domain.predicates[head]:
        raise PDDLReadError(label, f":{section}: ({head} ...) takes {domain.predicates[head]} arguments, "
                            f"got {len(args)}", line)
    for arg in args:
        if arg not in objects:
            raise PDDLReadError(label, f":{section}: object {arg!r} in ({head} ...) is not declared in :objects",
                                line_of(text, rf"\(\s*{re.escape(head)}[^()]*(?<![\w-]){re.escape(arg)}(?![\w-])"))


def strips_problems(domain: DomainInfo, label: str = "domain") -> None:
    """Raise :class:`PDDLReadError` naming every feature of ``domain`` beyond STRIPS + typing + negative
    preconditions (action costs allowed), if it uses any."""
    if domain.unsupported:
        raise PDDLReadError(label, "uses features beyond STRIPS with typing and negative preconditions: "
                            + "; ".join(domain.unsupported))
