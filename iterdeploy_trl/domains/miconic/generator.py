"""Miconic tasks: passengers waiting at floors of a building, each bound for another floor.

Size = number of passengers (1..100). Floors: 2..min(50, 2 + passengers), drawn per task;
``(above fi fj)`` for every i < j (the lift reaches any floor in one move). Each passenger's
destination differs from their origin; the lift starts at a random floor.

Reference plan (greedy stops): at each floor, board everyone waiting there and let out every boarded
passenger bound for it; then move to the floor where the most passengers can board or leave (ties:
the nearest, then the lowest), until everyone is served. Every stop serves at least one passenger's
board or depart, so the plan has at most 4 actions a passenger.
"""

from __future__ import annotations

import random

from iterdeploy_trl.domains._problem import check_size, problem_text
from iterdeploy_trl.domains.common import Generated

GENERATOR_VERSION = 1
SIZE_PARAMETER = "number of passengers"
SIZES = {"cpu": (1, 5), "full": (1, 60)}
SIZE_LIMITS = (1, 100)
MAX_FLOORS = 50

# Every object name a task can use (the small model's word vocabulary is built from these).
OBJECT_NAMES: tuple[str, ...] = tuple(f"p{i}" for i in range(1, SIZE_LIMITS[1] + 1)) + tuple(
    f"f{i}" for i in range(1, MAX_FLOORS + 1)
)


def _plan(lift: int, origin: list[int], destin: list[int]) -> list[str]:
    waiting = set(range(len(origin)))
    boarded: set[int] = set()
    plan: list[str] = []
    while waiting or boarded:
        for p in sorted(waiting):
            if origin[p] == lift:
                plan.append(f"(board f{lift} p{p + 1})")
                waiting.discard(p)
                boarded.add(p)
        for p in sorted(boarded):
            if destin[p] == lift:
                plan.append(f"(depart f{lift} p{p + 1})")
                boarded.discard(p)
        if not (waiting or boarded):
            break
        work: dict[int, int] = {}
        for p in waiting:
            work[origin[p]] = work.get(origin[p], 0) + 1
        for p in boarded:
            work[destin[p]] = work.get(destin[p], 0) + 1
        target = min(work, key=lambda f: (-work[f], abs(f - lift), f))
        plan.append(f"({'up' if target > lift else 'down'} f{lift} f{target})")
        lift = target
    return plan


def generate(rng: random.Random, size: int, name: str) -> Generated:
    """A miconic task with ``size`` passengers."""
    check_size("miconic", size, SIZE_LIMITS, SIZE_PARAMETER)
    n_floors = rng.randint(2, min(MAX_FLOORS, 2 + size))
    origin = [rng.randint(1, n_floors) for _ in range(size)]
    destin = [rng.choice([f for f in range(1, n_floors + 1) if f != o]) for o in origin]
    lift = rng.randint(1, n_floors)
    init = [f"(lift-at f{lift})"]
    for p in range(size):
        init += [f"(origin p{p + 1} f{origin[p]})", f"(destin p{p + 1} f{destin[p]})"]
    init += [f"(above f{i} f{j})" for i in range(1, n_floors + 1) for j in range(i + 1, n_floors + 1)]
    problem = problem_text(
        name,
        "miconic",
        [
            ([f"p{p}" for p in range(1, size + 1)], "passenger"),
            ([f"f{f}" for f in range(1, n_floors + 1)], "floor"),
        ],
        init,
        [f"(served p{p})" for p in range(1, size + 1)],
    )
    plan = _plan(lift, origin, destin)
    return Generated(problem, tuple(plan), {"size": size, "passengers": size, "floors": n_floors})
