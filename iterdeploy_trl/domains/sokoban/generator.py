"""Sokoban tasks, solvable by construction.

A walled room gets some interior walls, goal cells, a stone on every goal and the player. A reverse
random walk then *pulls* stones away from their goals (the player steps back and drags the stone
along), and the player finally walks off to a random cell it can reach. Read backwards, the walk is a
forward plan of ``move`` / ``push-to-nongoal`` / ``push-to-goal`` actions from the scrambled state to
one with every stone on a goal.

Size level L (1..10): the room is about (L+2)x(L+2) inside its walls (at most 12x12, i.e. 14x14 with
walls), with 1 + 5(L-1)//9 stones, each pulled 1..L times (at least once: a room that leaves a stone no
pull is redrawn; a pull that would wall the player in away from the stones still to be pulled is not
taken). Level 1 is one stone one push away, after
the player's walk to it.
"""

from __future__ import annotations

import random
from collections import deque
from itertools import pairwise

from iterdeploy_trl.domains.common import Generated

MAX_LEVEL = 10
MAX_STONES = 12

# 2: the player starts at a random reachable cell, no longer beside the stone it pulled last.
# 3: no pull walls the player in while other stones wait for theirs, and every stone is pulled at least once
#    (levels 7-10 had 3-4% tasks of at most 2 actions, a stone or more never moved off its goal).
GENERATOR_VERSION = 3
SIZE_PARAMETER = "level"
SIZES = {"cpu": (1, 4), "full": (1, 10)}
SIZE_LIMITS = (1, MAX_LEVEL)
OBJECT_NAMES = (
    tuple(f"pos-{x:02d}-{y:02d}" for x in range(1, 15) for y in range(1, 15))
    + ("dir-up", "dir-down", "dir-left", "dir-right", "player-01")
    + tuple(f"stone-{i:02d}" for i in range(1, MAX_STONES + 1))
)

Cell = tuple[int, int]  # (column, row), 1-based; the walls are column/row 1 and the last ones
DIRS: dict[str, Cell] = {"dir-up": (0, -1), "dir-down": (0, 1), "dir-left": (-1, 0), "dir-right": (1, 0)}
NAME_OF: dict[Cell, str] = {v: k for k, v in DIRS.items()}


def _add(a: Cell, b: Cell) -> Cell:
    return (a[0] + b[0], a[1] + b[1])


def _neg(d: Cell) -> Cell:
    return (-d[0], -d[1])


def pos(c: Cell) -> str:
    """PDDL name of a cell: ``pos-XX-YY`` with XX the column and YY the row."""
    return f"pos-{c[0]:02d}-{c[1]:02d}"


def _component(floor: set[Cell], start: Cell) -> set[Cell]:
    seen = {start}
    todo = [start]
    while todo:
        c = todo.pop()
        for d in DIRS.values():
            n = _add(c, d)
            if n in floor and n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def _room(rng: random.Random, width: int, height: int) -> set[Cell]:
    """Floor cells of a ``width`` x ``height`` interior with random interior walls, all connected."""
    inner = [(x, y) for y in range(2, height + 2) for x in range(2, width + 2)]
    wall_share = rng.uniform(0.0, 0.2)
    floor = {c for c in inner if rng.random() >= wall_share}
    if not floor:
        return set()
    parts: list[set[Cell]] = []
    left = set(floor)
    while left:
        part = _component(left, min(left))
        parts.append(part)
        left -= part
    return max(parts, key=lambda p: (len(p), min(p)))


Neighbours = dict[Cell, tuple[Cell, ...]]  # floor cell -> its floor neighbours, in DIRS order


def _neighbours(floor: set[Cell]) -> Neighbours:
    return {c: tuple(n for d in DIRS.values() if (n := _add(c, d)) in floor) for c in floor}


def _path(floor: Neighbours, blocked: set[Cell], start: Cell) -> dict[Cell, Cell | None]:
    """BFS parents over free floor from ``start`` (its keys are the cells the player can reach)."""
    parent: dict[Cell, Cell | None] = {start: None}
    queue = deque([start])
    while queue:
        c = queue.popleft()
        for n in floor[c]:
            if n not in blocked and n not in parent:
                parent[n] = c
                queue.append(n)
    return parent


def _walk_to(parent: dict[Cell, Cell | None], goal: Cell) -> list[Cell]:
    cells = [goal]
    while parent[cells[-1]] is not None:
        cells.append(parent[cells[-1]])  # type: ignore[arg-type]
    return cells[::-1]


def _scramble(
    rng: random.Random, floor: Neighbours, stones: list[Cell], player: Cell, pulls: list[int]
) -> tuple[list[tuple], Cell, list[int]]:
    """Pull stone i up to ``pulls[i]`` times (stones in random order); return the reverse events, where
    the player ends, and how often each stone was pulled.

    Events are ``("move", a, b)`` (player a -> b) and ``("pull", stone, s, c, c2)`` (stone from s to
    c, player from c to c2 = c + (c - s)), in the order they happen in reverse time. A pull after which
    the player could no longer reach a side of every stone still waiting for its pulls is not taken (it
    would wall the player in a pocket, and the walk would silently stop scrambling the other stones).
    """
    events: list[tuple] = []
    order = list(range(len(stones)))
    rng.shuffle(order)
    done = [0] * len(stones)
    for k, i in enumerate(order):
        waiting = order[k + 1 :]
        previous: Cell | None = None  # where stone i was before its last pull: do not undo it
        for _ in range(pulls[i]):
            s = stones[i]
            parent = _path(floor, set(stones), player)
            options = []
            for d in DIRS.values():
                c, c2 = _add(s, d), _add(_add(s, d), d)
                if c in parent and c2 in floor and c2 not in stones:
                    options.append((c, c2))
            fresh = [o for o in options if o[0] != previous]
            options = [o for o in fresh or options if _keeps_reach(floor, stones, i, o, waiting)]
            if not options:
                break
            c, c2 = rng.choice(options)
            route = _walk_to(parent, c)
            events += [("move", a, b) for a, b in pairwise(route)]
            events.append(("pull", i, s, c, c2))
            previous, stones[i], player = s, c, c2
            done[i] += 1
    return events, player, done


def _keeps_reach(floor: Neighbours, stones: list[Cell], i: int, pull: tuple[Cell, Cell], waiting: list[int]) -> bool:
    """Whether, after pulling stone i to ``pull[0]`` (the player stepping back to ``pull[1]``), the player
    can still reach a cell next to each stone in ``waiting``."""
    if not waiting:
        return True
    moved = list(stones)
    moved[i] = pull[0]
    reach = _path(floor, set(moved), pull[1])
    return all(any(_add(moved[j], d) in reach for d in DIRS.values()) for j in waiting)


def _forward_plan(events: list[tuple], goals: set[Cell]) -> list[str]:
    """The reverse walk read backwards; the player's moves before the first pull are dropped (they
    only bring the player from where it was placed to the first stone)."""
    first_pull = next(k for k, e in enumerate(events) if e[0] == "pull")
    plan = []
    for e in reversed(events[first_pull:]):
        if e[0] == "move":
            _, a, b = e  # reverse: a -> b, so forward: b -> a
            d = NAME_OF[(a[0] - b[0], a[1] - b[1])]
            plan.append(f"(move player-01 {pos(b)} {pos(a)} {d})")
        else:
            _, i, s, c, c2 = e  # forward: player at c2 pushes the stone from c to s
            d = NAME_OF[(s[0] - c[0], s[1] - c[1])]
            kind = "push-to-goal" if s in goals else "push-to-nongoal"
            plan.append(f"({kind} player-01 stone-{i + 1:02d} {pos(c2)} {pos(c)} {pos(s)} {d})")
    return plan


def _problem(name: str, floor: set[Cell], goals: set[Cell], stones: list[Cell], player: Cell) -> str:
    cells = sorted(floor, key=lambda c: (c[1], c[0]))
    names = [f"stone-{i + 1:02d}" for i in range(len(stones))]
    facts = [f"(at player-01 {pos(player)})"]
    facts += [f"(at {n} {pos(s)})" for n, s in zip(names, stones, strict=True)]
    facts += [f"(at-goal {n})" for n, s in zip(names, stones, strict=True) if s in goals]
    occupied = set(stones) | {player}
    facts += [f"(clear {pos(c)})" for c in cells if c not in occupied]
    facts += [f"({'IS-GOAL' if c in goals else 'IS-NONGOAL'} {pos(c)})" for c in cells]
    for c in cells:
        for dname, d in DIRS.items():
            n = _add(c, d)
            if n in floor:
                facts.append(f"(MOVE-DIR {pos(c)} {pos(n)} {dname})")
    facts.append("(= (total-cost) 0)")
    init = "\n    ".join(facts)
    goal = " ".join(f"(at-goal {n})" for n in names)
    return (
        f"(define (problem {name})\n"
        "  (:domain sokoban-sequential)\n"
        "  (:objects dir-down dir-left dir-right dir-up - direction\n"
        "            player-01 - player\n"
        f"            {' '.join(pos(c) for c in cells)} - location\n"
        f"            {' '.join(names)} - stone)\n"
        f"  (:init\n    {init})\n"
        f"  (:goal (and {goal}))\n"
        "  (:metric minimize (total-cost)))\n"
    )


def generate(rng: random.Random, size: int, name: str) -> Generated:
    """A task at size level ``size`` (1..10); redraws until some stone starts off its goal."""
    if not 1 <= size <= MAX_LEVEL:
        raise ValueError(f"sokoban size (level) must be in 1..{MAX_LEVEL}, got {size}")
    n_stones = min(MAX_STONES, 1 + 5 * (size - 1) // 9)
    while True:
        side = size + 2
        width = max(3, side - rng.randint(0, size // 3))
        height = max(3, side - rng.randint(0, size // 3))
        floor = _room(rng, width, height)
        if len(floor) < 2 * n_stones + 3:
            continue
        cells = sorted(floor)
        picked = rng.sample(cells, n_stones + 1)
        goals, player = set(picked[:-1]), picked[-1]
        stones = sorted(goals)
        pulls = [1 if size == 1 else rng.randint(1, size) for _ in stones]
        nbrs = _neighbours(floor)
        events, start, done = _scramble(rng, nbrs, stones, player, pulls)
        if not all(done) or all(s in goals for s in stones):
            continue  # a stone never pulled (the room left it no pull), or nothing to do
        # The player walks off to a random cell it can reach: it does not start next to the stone it
        # pulled last, poised to push it back (a random first push would then often solve the task).
        parent = _path(nbrs, set(stones), start)
        route = _walk_to(parent, rng.choice(sorted(parent)))
        events += [("move", a, b) for a, b in pairwise(route)]
        start = route[-1]
        plan = _forward_plan(events, goals)
        params = {
            "size": size,
            "width": width,
            "height": height,
            "floor_cells": len(floor),
            "stones": n_stones,
            "pushes": sum(1 for a in plan if a.startswith("(push")),
        }
        return Generated(_problem(name, floor, goals, stones, start), tuple(plan), params)
