"""A STRIPS successor generator for the planning domains: legal actions, their effects, goal tests.

Used to make the base model's pretraining data (random legal walks) and to measure how legal a
model's plans are. VAL stays the judge of validity (``validate.py``); this module is cross-checked
against it in the tests.

Parsing uses the ``pddl`` package. Numeric parts (sokoban's ``(increase (total-cost) 1)`` effects and
``(= (total-cost) 0)`` init) parse fine with pddl 0.5.1 and are ignored here: action costs never
decide whether an action is applicable. States are frozensets of lower-cased ground atoms such as
``("on", "b1", "b2")``."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from pddl.logic.base import And, Not
from pddl.logic.predicates import Predicate
from pddl.parser.domain import DomainParser
from pddl.parser.problem import ProblemParser

Atom = tuple[str, ...]
State = frozenset[Atom]


class IllegalAction(ValueError):
    """An action that cannot be applied in a state; ``reason`` says why in words."""

    def __init__(self, action: str, reason: str) -> None:
        super().__init__(f"{action}: {reason}")
        self.action = action
        self.reason = reason


@dataclass(frozen=True)
class Schema:
    """A lifted action: parameters with their types, and atoms over parameter names (``?x``) or
    constants."""

    name: str
    params: tuple[str, ...]
    param_types: tuple[str, ...]
    pre_pos: tuple[Atom, ...]
    pre_neg: tuple[Atom, ...]
    add: tuple[Atom, ...]
    delete: tuple[Atom, ...]


def _literals(formula) -> tuple[list[Atom], list[Atom]]:
    """Positive and negative atoms of a conjunction of literals; numeric parts are skipped."""
    if formula is None:
        return [], []
    parts = formula.operands if isinstance(formula, And) else (formula,)
    pos: list[Atom] = []
    neg: list[Atom] = []
    for part in parts:
        if isinstance(part, Predicate):
            pos.append(_atom(part))
        elif isinstance(part, Not) and isinstance(part.argument, Predicate):
            neg.append(_atom(part.argument))
        elif type(part).__name__ in {"Increase", "Decrease", "Assign", "EqualTo"}:
            continue  # action costs: irrelevant to applicability
        else:
            raise ValueError(f"unsupported PDDL construct {part} (only conjunctions of literals)")
    return pos, neg


def _atom(pred: Predicate) -> Atom:
    terms = tuple(("?" + t.name if type(t).__name__ == "Variable" else t.name).lower() for t in pred.terms)
    return (pred.name.lower(), *terms)


def _type_of(term) -> str:
    tags = sorted(term.type_tags)
    return tags[0].lower() if tags else "object"


@dataclass(frozen=True)
class _Domain:
    schemas: dict[str, Schema]
    parents: dict[str, str]  # type -> parent type
    constants: dict[str, str]  # constant -> type


@lru_cache(maxsize=1)
def _problem_parser() -> ProblemParser:
    # Building the parser (its grammar) costs ~60 ms; parsing a problem with it ~6 ms.
    return ProblemParser()


@lru_cache(maxsize=16)
def _parse_domain(domain_pddl: str) -> _Domain:
    dom = DomainParser()(domain_pddl)
    parents = {str(t).lower(): (str(p).lower() if p else "object") for t, p in dom.types.items()}
    schemas = {}
    for act in dom.actions:
        pre_pos, pre_neg = _literals(act.precondition)
        add, delete = _literals(act.effect)
        schemas[act.name.lower()] = Schema(
            name=act.name.lower(),
            params=tuple("?" + v.name.lower() for v in act.parameters),
            param_types=tuple(_type_of(v) for v in act.parameters),
            pre_pos=tuple(pre_pos),
            pre_neg=tuple(pre_neg),
            add=tuple(add),
            delete=tuple(delete),
        )
    constants = {c.name.lower(): _type_of(c) for c in dom.constants}
    return _Domain(schemas, parents, constants)


def parse_action(action: str) -> tuple[str, ...]:
    """``"(Unstack b1 b2)"`` -> ``("unstack", "b1", "b2")``."""
    return tuple(action.strip().strip("()").lower().split())


def format_action(name: str, args: Iterable[str]) -> str:
    """``("unstack", ["b1", "b2"])`` -> ``"(unstack b1 b2)"``."""
    return "(" + " ".join([name, *args]) + ")"


def format_atom(atom: Atom) -> str:
    """``("on", "b1", "b2")`` -> ``"(on b1 b2)"``."""
    return "(" + " ".join(atom) + ")"


class Simulator:
    """Successor generator of one task: ``Simulator(domain_pddl, problem_pddl)``."""

    def __init__(self, domain_pddl: str, problem_pddl: str) -> None:
        self._dom = _parse_domain(domain_pddl)
        prob = _problem_parser()(problem_pddl)
        self.objects: dict[str, str] = dict(self._dom.constants)
        self.objects.update({o.name.lower(): _type_of(o) for o in prob.objects})
        init = [p for p in prob.init if isinstance(p, Predicate)]  # drops (= (total-cost) 0)
        self.init_state: State = frozenset(_atom(p) for p in init)
        goal_pos, goal_neg = _literals(prob.goal)
        self.goal: frozenset[Atom] = frozenset(goal_pos)
        self.goal_neg: frozenset[Atom] = frozenset(goal_neg)
        self.schemas = self._dom.schemas
        # Objects of each type, subtypes included, for parameters no precondition binds.
        self._by_type: dict[str, list[str]] = defaultdict(list)
        self._types_of: dict[str, frozenset[str]] = {}
        for obj in sorted(self.objects):
            self._types_of[obj] = frozenset(self._ancestors(self.objects[obj]))
            for t in self._types_of[obj]:
                self._by_type[t].append(obj)

    def _ancestors(self, t: str) -> list[str]:
        out = [t]
        while t in self._dom.parents and self._dom.parents[t] not in out:
            t = self._dom.parents[t]
            out.append(t)
        if "object" not in out:
            out.append("object")
        return out

    def _is_a(self, obj: str, t: str) -> bool:
        return t in self._types_of.get(obj, ())

    # -- successor generation ------------------------------------------------------------------

    def applicable(self, state: State) -> list[str]:
        """Every ground action applicable in ``state``, sorted, as ``"(name a b)"`` strings.

        Grounds by backtracking over the precondition atoms matched against the state's facts (looked
        up by an argument already bound), so the cost follows the facts that hold, not the cross
        product of objects."""
        index: dict[tuple, list[Atom]] = defaultdict(list)
        for fact in state:
            index[fact[0]].append(fact)
            for i, value in enumerate(fact[1:], start=1):
                index[(fact[0], i, value)].append(fact)
        out: list[str] = []
        for schema in self.schemas.values():
            order = self._order(schema, index)
            types = dict(zip(schema.params, schema.param_types, strict=True))
            for binding in self._match(order, 0, {}, index, state, types):
                out.extend(format_action(schema.name, a) for a in self._complete(schema, binding, state))
        return sorted(set(out))

    @staticmethod
    def _order(schema: Schema, index) -> list[Atom]:
        """Precondition atoms in matching order: at each step the atom with the most terms already
        bound, then the rarest predicate, so that lookups by a bound argument prune early."""
        left = list(schema.pre_pos)
        bound: set[str] = set()
        order: list[Atom] = []
        while left:
            best = min(
                left,
                key=lambda a: (
                    -sum(1 for t in a[1:] if not t.startswith("?") or t in bound),
                    len(index.get(a[0], ())),
                ),
            )
            left.remove(best)
            order.append(best)
            bound.update(t for t in best[1:] if t.startswith("?"))
        return order

    def _match(self, atoms: list[Atom], i: int, binding: dict[str, str], index, state, types):
        if i == len(atoms):
            yield binding
            return
        atom = atoms[i]
        ground = [binding.get(t, t) if t.startswith("?") else t for t in atom[1:]]
        if not any(t.startswith("?") for t in ground):
            if (atom[0], *ground) in state:
                yield from self._match(atoms, i + 1, binding, index, state, types)
            return
        # Candidates: facts sharing the most selective bound argument (or all facts of the predicate).
        candidates = index.get(atom[0], ())
        for k, t in enumerate(ground, start=1):
            if not t.startswith("?"):
                by_arg = index.get((atom[0], k, t), ())
                if len(by_arg) < len(candidates):
                    candidates = by_arg
        for fact in candidates:
            if len(fact) != len(atom):
                continue
            new = dict(binding)
            for term, value in zip(ground, fact[1:], strict=True):
                if term.startswith("?"):
                    bound = new.get(term)
                    if bound is None:
                        if not self._is_a(value, types[term]):
                            break
                        new[term] = value
                    elif bound != value:
                        break
                elif term != value:
                    break
            else:
                yield from self._match(atoms, i + 1, new, index, state, types)

    def _complete(self, schema: Schema, binding: dict[str, str], state: State) -> list[tuple[str, ...]]:
        """Argument tuples of ``schema`` extending ``binding``: types and negative preconditions
        checked, parameters no positive precondition mentions enumerated from their type."""
        free = [(p, t) for p, t in zip(schema.params, schema.param_types, strict=True) if p not in binding]
        results: list[tuple[str, ...]] = []

        def extend(k: int, full: dict[str, str]) -> None:
            if k == len(free):
                if all(
                    self._is_a(full[p], t) for p, t in zip(schema.params, schema.param_types, strict=True)
                ):
                    if not any(_ground(a, full) in state for a in schema.pre_neg):
                        results.append(tuple(full[p] for p in schema.params))
                return
            p, t = free[k]
            for obj in self._by_type.get(t, ()):
                extend(k + 1, {**full, p: obj})

        extend(0, binding)
        return results

    def check(self, state: State, action: str) -> tuple[Schema, dict[str, str]]:
        """The schema and binding of ``action`` if it is applicable in ``state``; else raise
        :class:`IllegalAction` naming the first reason (unknown name, arity, object, type, or the
        precondition that does not hold)."""
        name, *args = parse_action(action) or ("",)
        schema = self.schemas.get(name)
        if schema is None:
            raise IllegalAction(action, f"unknown action {name!r}")
        if len(args) != len(schema.params):
            raise IllegalAction(action, f"{name} takes {len(schema.params)} arguments, got {len(args)}")
        for arg, t in zip(args, schema.param_types, strict=True):
            if arg not in self.objects:
                raise IllegalAction(action, f"unknown object {arg!r}")
            if not self._is_a(arg, t):
                raise IllegalAction(action, f"{arg} is a {self.objects[arg]}, not a {t}")
        binding = dict(zip(schema.params, args, strict=True))
        for atom in schema.pre_pos:
            if _ground(atom, binding) not in state:
                raise IllegalAction(
                    action, f"precondition {format_atom(_ground(atom, binding))} does not hold"
                )
        for atom in schema.pre_neg:
            if _ground(atom, binding) in state:
                raise IllegalAction(
                    action, f"precondition (not {format_atom(_ground(atom, binding))}) does not hold"
                )
        return schema, binding

    def apply(self, state: State, action: str) -> State:
        """Successor of ``state`` under ``action`` (deletes first, then adds, as PDDL prescribes).
        Raises :class:`IllegalAction` if it is not applicable."""
        schema, binding = self.check(state, action)
        deleted = {_ground(a, binding) for a in schema.delete}
        added = {_ground(a, binding) for a in schema.add}
        return frozenset((state - deleted) | added)

    def is_applicable(self, state: State, action: str) -> bool:
        """Whether ``action`` can be applied in ``state``."""
        try:
            self.check(state, action)
        except IllegalAction:
            return False
        return True

    def is_goal(self, state: State) -> bool:
        """Whether ``state`` satisfies the goal."""
        return self.goal <= state and not (self.goal_neg & state)

    # -- plans -----------------------------------------------------------------------------------

    def run(self, plan: Sequence[str], state: State | None = None) -> tuple[State, int]:
        """Apply the plan's actions in turn from ``state`` (default: the initial state) until one is
        illegal; return the state reached and the number of actions applied."""
        state = self.init_state if state is None else state
        for i, action in enumerate(plan):
            try:
                state = self.apply(state, action)
            except IllegalAction:
                return state, i
        return state, len(plan)

    def legal_prefix(self, plan: Sequence[str]) -> int:
        """Number of leading actions of ``plan`` that apply in turn from the initial state."""
        return self.run(plan)[1]

    def solves(self, plan: Sequence[str]) -> bool:
        """Whether every action applies in turn and the last state satisfies the goal."""
        state, n = self.run(plan)
        return n == len(plan) and self.is_goal(state)

    def random_walk(self, rng: random.Random, length: int, state: State | None = None) -> list[str]:
        """Up to ``length`` uniformly random legal actions from ``state`` (default: the initial
        state); shorter if a dead end is reached."""
        return self.random_walk_states(rng, length, state)[0]

    def random_walk_states(
        self, rng: random.Random, length: int, state: State | None = None
    ) -> tuple[list[str], list[State]]:
        """:meth:`random_walk` (the same draws from ``rng``) and the states it passes: the start state,
        then each action's successor."""
        states = [self.init_state if state is None else state]
        walk: list[str] = []
        for _ in range(length):
            options = self.applicable(states[-1])
            if not options:
                break
            action = rng.choice(options)
            walk.append(action)
            states.append(self.apply(states[-1], action))
        return walk, states


def _ground(atom: Atom, binding: dict[str, str]) -> Atom:
    return tuple(binding.get(t, t) for t in atom)


def parse_plan(text: str) -> list[str]:
    """Actions of a plan file: one ``(name args)`` a line; ``;`` comments and blank lines skipped."""
    return [m.group(0).lower() for m in re.finditer(r"\([^()]*\)", re.sub(r";[^\n]*", "", text))]
