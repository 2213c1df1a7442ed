"""Satellite tasks: satellites with instruments to point, power, calibrate and take images with.

Size = number of image goals (1..60). Satellites: 1..min(10, 1 + goals // 4), each with 1..3
instruments; modes: 1..min(5, 1 + goals // 3); directions: goals..goals + 5 (at most 70). Each
instrument supports a random non-empty set of modes and has a random calibration target; each
satellite points at a random direction with its power free. Goals: ``size`` distinct
``(have_image direction mode)`` pairs in modes some instrument supports, and for each satellite with
probability 0.3 a final ``(pointing satellite direction)``.

Reference plan: instruments are chosen by greedy weighted set cover (most remaining images it can
take per set-up action: switching on, calibrating and a turn unless its satellite already points at
the calibration target); each satellite then works through its chosen instruments: switch off the one on,
switch on the next, turn to its calibration target, calibrate, turn to each of its directions and
take its images there, and at the end turn to its pointing goal.
"""

from __future__ import annotations

import random

from iterdeploy_trl.domains._problem import check_size, problem_text
from iterdeploy_trl.domains.common import Generated

GENERATOR_VERSION = 1
SIZE_PARAMETER = "number of image goals"
SIZES = {"cpu": (1, 4), "full": (1, 40)}
SIZE_LIMITS = (1, 60)
MAX_SATELLITES = 10
MAX_INSTRUMENTS_EACH = 3
MAX_MODES = 5
MAX_DIRECTIONS = 70

# Every object name a task can use (the small model's word vocabulary is built from these).
OBJECT_NAMES: tuple[str, ...] = (
    tuple(f"sat{i}" for i in range(1, MAX_SATELLITES + 1))
    + tuple(f"ins{i}" for i in range(1, MAX_SATELLITES * MAX_INSTRUMENTS_EACH + 1))
    + tuple(f"mod{i}" for i in range(1, MAX_MODES + 1))
    + tuple(f"dir{i}" for i in range(1, MAX_DIRECTIONS + 1))
)


def _plan(n_sat, sat_of, modes_of, target_of, pointing, images, point_goal) -> list[str]:
    """``images``: (direction, mode) goals; ``point_goal``: satellite -> direction or absent."""
    todo = set(images)
    chosen: dict[int, list[tuple[int, int]]] = {}
    while todo:

        def cover(i: int, todo: set = todo) -> int:
            return sum(m in modes_of[i] for _, m in todo)

        def setup(i: int) -> int:  # switch on, calibrate, and a turn unless already aimed at the target
            return 2 + (target_of[i] != pointing[sat_of[i]])

        best = max(range(len(sat_of)), key=lambda i: (cover(i) / setup(i), cover(i), -i))
        chosen[best] = sorted(g for g in todo if g[1] in modes_of[best])
        todo -= set(chosen[best])
    plan: list[str] = []
    for s in range(n_sat):
        mine = [i for i in sorted(chosen) if sat_of[i] == s]
        on: int | None = None
        for i in mine:
            if on is not None:
                plan.append(f"(switch_off ins{on + 1} sat{s + 1})")
            plan.append(f"(switch_on ins{i + 1} sat{s + 1})")
            on = i
            if pointing[s] != target_of[i]:
                plan.append(f"(turn_to sat{s + 1} dir{target_of[i] + 1} dir{pointing[s] + 1})")
                pointing[s] = target_of[i]
            plan.append(f"(calibrate sat{s + 1} ins{i + 1} dir{target_of[i] + 1})")
            dirs = sorted(
                {d for d, _ in chosen[i]}, key=lambda d: (d != pointing[s], d == point_goal.get(s), d)
            )
            for d in dirs:
                if pointing[s] != d:
                    plan.append(f"(turn_to sat{s + 1} dir{d + 1} dir{pointing[s] + 1})")
                    pointing[s] = d
                plan += [
                    f"(take_image sat{s + 1} dir{d + 1} ins{i + 1} mod{m + 1})"
                    for dd, m in chosen[i]
                    if dd == d
                ]
        if s in point_goal and pointing[s] != point_goal[s]:
            plan.append(f"(turn_to sat{s + 1} dir{point_goal[s] + 1} dir{pointing[s] + 1})")
            pointing[s] = point_goal[s]
    return plan


def generate(rng: random.Random, size: int, name: str) -> Generated:
    """A satellite task with ``size`` image goals."""
    check_size("satellite", size, SIZE_LIMITS, SIZE_PARAMETER)
    n_sat = rng.randint(1, min(MAX_SATELLITES, 1 + size // 4))
    n_modes = rng.randint(1, min(MAX_MODES, 1 + size // 3))
    n_dir = min(MAX_DIRECTIONS, size + rng.randint(0, 5))
    sat_of: list[int] = []
    for s in range(n_sat):
        sat_of += [s] * rng.randint(1, MAX_INSTRUMENTS_EACH)
    modes_of = []
    for _ in sat_of:
        modes = {m for m in range(n_modes) if rng.random() < 0.5} or {rng.randrange(n_modes)}
        modes_of.append(modes)
    target_of = [rng.randrange(n_dir) for _ in sat_of]
    pointing = [rng.randrange(n_dir) for _ in range(n_sat)]
    supported = sorted(set().union(*modes_of))
    images = sorted(rng.sample([(d, m) for d in range(n_dir) for m in supported], size))
    point_goal = {s: rng.randrange(n_dir) for s in range(n_sat) if rng.random() < 0.3}

    init = []
    for s in range(n_sat):
        init += [f"(pointing sat{s + 1} dir{pointing[s] + 1})", f"(power_avail sat{s + 1})"]
    for i, s in enumerate(sat_of):
        init.append(f"(calibration_target ins{i + 1} dir{target_of[i] + 1})")
        init.append(f"(on_board ins{i + 1} sat{s + 1})")
        init += [f"(supports ins{i + 1} mod{m + 1})" for m in sorted(modes_of[i])]
    goal = [f"(pointing sat{s + 1} dir{d + 1})" for s, d in sorted(point_goal.items())]
    goal += [f"(have_image dir{d + 1} mod{m + 1})" for d, m in images]
    problem = problem_text(
        name,
        "satellite",
        [
            ([f"sat{s}" for s in range(1, n_sat + 1)], "satellite"),
            ([f"ins{i}" for i in range(1, len(sat_of) + 1)], "instrument"),
            ([f"mod{m}" for m in range(1, n_modes + 1)], "mode"),
            ([f"dir{d}" for d in range(1, n_dir + 1)], "direction"),
        ],
        init,
        goal,
    )
    plan = _plan(n_sat, sat_of, modes_of, target_of, list(pointing), images, point_goal)
    params = {
        "size": size,
        "images": size,
        "satellites": n_sat,
        "instruments": len(sat_of),
        "modes": n_modes,
        "directions": n_dir,
        "pointing_goals": len(point_goal),
    }
    return Generated(problem, tuple(plan), params)
