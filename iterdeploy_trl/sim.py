"""A STRIPS successor generator for the planning domains: legal actions, their effects, goal tests.

Used to make the base model's pretraining data (random legal walks) and to measure how legal a
model's plans are. VAL stays the judge of validity (``validate.py``); this module is cross-checked
against it in the tests.

Domains and problems are read by ``pddlio`` (the ``pddl`` library on lower-cased text, so
``(:INIT`` and ``(AND`` read as VAL reads them). A domain using anything beyond STRIPS with typing and
negative preconditions is refused with the feature and its line; action costs (sokoban's
``(increase (total-cost) 1)``) are read and ignored: they never decide whether an action applies.
States are frozensets of lower-cased ground atoms such as ``("on", "b1", "b2")``."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence

from iterdeploy_trl.pddlio import ActionSchema, PDDLReadError, read_domain, read_problem, strips_problems

Atom = tuple[str, ...]
State = frozenset[Atom]
Schema = ActionSchema  # a lifted action: parameters, their allowed types, and its literals


class IllegalAction(ValueError):
    """An action that cannot be applied in a state; ``reason`` says why in words."""

    def __init__(self, action: str, reason: str) -> None:
        super().__init__(f"{action}: {reason}")
        self.action = action
        self.reason = reason


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

    def __init__(self, domain_pddl: str, problem_pddl: str, *, domain_label: str = "domain",
                 problem_label: str = "problem") -> None:
        """Raises :class:`pddlio.PDDLReadError` (a ``ValueError`` naming the label, the line and the
        feature) for a malformed domain or problem, or one beyond STRIPS + typing + negative
        preconditions; the labels are the file names to use in those messages."""
        self._dom = read_domain(domain_pddl, domain_label)
        strips_problems(self._dom, domain_label)
        prob = read_problem(domain_pddl, problem_pddl, problem_label)
        if prob.unsupported:
            raise PDDLReadError(problem_label, "the goal is not a conjunction of literals: "
                                + "; ".join(prob.unsupported))
        self.objects: dict[str, str] = {o: types[0] for o, types in prob.objects.items()}
        self.init_state: State = prob.init
        self.goal: frozenset[Atom] = prob.goal_pos
        self.goal_neg: frozenset[Atom] = prob.goal_neg
        self.schemas = dict(self._dom.actions)
        # Objects of each type, subtypes included, for parameters no precondition binds.
        self._by_type: dict[str, list[str]] = defaultdict(list)
        self._types_of: dict[str, frozenset[str]] = {}
        for obj in sorted(prob.objects):
            self._types_of[obj] = frozenset(t for own in prob.objects[obj] for t in self._dom.ancestors(own))
            for t in self._types_of[obj]:
                self._by_type[t].append(obj)

    def _is_a(self, obj: str, types: tuple[str, ...]) -> bool:
        return any(t in self._types_of.get(obj, ()) for t in types)

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
            p, types = free[k]
            for obj in sorted({o for t in types for o in self._by_type.get(t, ())}) if len(types) > 1 else \
                    self._by_type.get(types[0], ()):
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
                raise IllegalAction(action, f"{arg} is a {self.objects[arg]}, not a {' or '.join(t)}")
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
