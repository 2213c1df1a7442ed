"""Ferry tasks: cars at random locations, each to be carried to another one.

Size = number of cars (1..100). Locations: 2..min(50, 2 + cars // 2), drawn per task. Every car's
goal location differs from its start. The ferry starts empty at a random location.

Reference plan (greedy, one car aboard at a time, as the domain allows): while some car is not at its
goal, board one waiting at the ferry's location if there is one, else sail to the location of the
lowest-numbered misplaced car and board it; sail to its goal and debark. Each car costs 3 actions
(board, sail, debark) plus a sail whenever no misplaced car waits where the ferry is.
"""

from __future__ import annotations

import random

from iterdeploy_trl.domains._problem import check_size, problem_text
from iterdeploy_trl.domains.common import Generated

GENERATOR_VERSION = 1
SIZE_PARAMETER = "number of cars"
SIZES = {"cpu": (1, 4), "full": (1, 50)}
SIZE_LIMITS = (1, 100)
MAX_LOCATIONS = 50

# Every object name a task can use (the small model's word vocabulary is built from these).
OBJECT_NAMES: tuple[str, ...] = tuple(f"car{i}" for i in range(1, SIZE_LIMITS[1] + 1)) + tuple(
    f"loc{i}" for i in range(1, MAX_LOCATIONS + 1)
)


def _plan(ferry: int, start: list[int], goal: list[int]) -> list[str]:
    at = list(start)
    plan: list[str] = []
    while True:
        misplaced = [c for c in range(len(at)) if at[c] != goal[c]]
        if not misplaced:
            return plan
        here = [c for c in misplaced if at[c] == ferry]
        car = here[0] if here else misplaced[0]
        if not here:
            plan.append(f"(sail loc{ferry} loc{at[car]})")
            ferry = at[car]
        plan.append(f"(board car{car + 1} loc{ferry})")
        plan.append(f"(sail loc{ferry} loc{goal[car]})")
        ferry = goal[car]
        plan.append(f"(debark car{car + 1} loc{ferry})")
        at[car] = ferry


def generate(rng: random.Random, size: int, name: str) -> Generated:
    """A ferry task with ``size`` cars."""
    check_size("ferry", size, SIZE_LIMITS, SIZE_PARAMETER)
    n_loc = rng.randint(2, min(MAX_LOCATIONS, 2 + size // 2))
    start = [rng.randint(1, n_loc) for _ in range(size)]
    goal = [rng.choice([loc for loc in range(1, n_loc + 1) if loc != s]) for s in start]
    ferry = rng.randint(1, n_loc)
    init = ["(empty-ferry)", f"(at-ferry loc{ferry})"]
    init += [f"(at car{c + 1} loc{start[c]})" for c in range(size)]
    problem = problem_text(
        name,
        "ferry",
        [
            ([f"car{c}" for c in range(1, size + 1)], "car"),
            ([f"loc{i}" for i in range(1, n_loc + 1)], "location"),
        ],
        init,
        [f"(at car{c + 1} loc{goal[c]})" for c in range(size)],
    )
    plan = _plan(ferry, start, goal)
    return Generated(problem, tuple(plan), {"size": size, "cars": size, "locations": n_loc})
