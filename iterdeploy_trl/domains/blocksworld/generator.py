"""Blocksworld tasks: Slaney & Thiébaux uniform random states, and a correct (not optimal) plan.

A state maps each block to its support (``"table"`` or another block). The initial state and the
goal state are two independent uniform draws; the goal lists only the ``on`` atoms of the second.
"""

from __future__ import annotations

import random
from functools import cache
from itertools import pairwise

from iterdeploy_trl.domains.common import Generated

TABLE = "table"
MAX_BLOCKS = 30  # the fixed vocabulary names blocks b1 ... b30

GENERATOR_VERSION = 1
SIZE_PARAMETER = "number of blocks"
SIZES = {"cpu": (2, 5), "full": (2, 25)}
SIZE_LIMITS = (2, MAX_BLOCKS)
# Every object name a task can use (the small model's tokenizer has one word each).
OBJECT_NAMES = tuple(f"b{i}" for i in range(1, MAX_BLOCKS + 1))

State = dict[str, str]  # block -> what it stands on


@cache
def count_states(n: int, k: int = 0) -> int:
    """g(n, k): ways to complete a partial state with ``n`` unplaced segments and ``k`` grounded towers.

    g(0, k) = 1 and g(n+1, k) = g(n, k)·(n+k) + g(n, k+1); g(n, 0) is the number of states of n
    blocks (1, 3, 13, 73, 501, 4051, ...).
    """
    if n == 0:
        return 1
    return count_states(n - 1, k) * (n - 1 + k) + count_states(n - 1, k + 1)


def random_state(blocks: list[str], rng: random.Random) -> State:
    """A state drawn uniformly from all states of ``blocks`` (Slaney & Thiébaux's sampler).

    Blocks start as one-block unplaced segments. The first unplaced segment is, with probability
    g(n-1, k+1)/g(n, k), grounded as a new tower on the table; otherwise it goes on top of one of
    the other n-1 segments or k towers, each with probability g(n-1, k)/g(n, k). Every sequence of
    choices gives a different state, so with exact integer counts all states are equally likely.
    """
    support: State = {}
    segments = [[b] for b in blocks]  # each bottom -> top
    towers: list[list[str]] = []
    while segments:
        n, k = len(segments), len(towers)
        seg = segments.pop(0)
        r = rng.randrange(count_states(n, k))
        new_tower = count_states(n - 1, k + 1)
        if r < new_tower:
            support[seg[0]] = TABLE
            towers.append(seg)
            continue
        target = (r - new_tower) // count_states(n - 1, k)  # 0 .. n-2+k
        dest = segments[target] if target < n - 1 else towers[target - (n - 1)]
        support[seg[0]] = dest[-1]
        dest.extend(seg)
    return support


def towers_of(state: State) -> list[list[str]]:
    """The towers of ``state``, each listed bottom -> top, in a fixed order (by bottom block)."""
    above = {s: b for b, s in state.items() if s != TABLE}
    out = []
    for bottom in sorted((b for b, s in state.items() if s == TABLE), key=_block_key):
        tower = [bottom]
        while tower[-1] in above:
            tower.append(above[tower[-1]])
        out.append(tower)
    return out


def _block_key(name: str) -> int:
    return int(name[1:])


def _on_atoms(state: State) -> set[tuple[str, str]]:
    return {(b, s) for b, s in state.items() if s != TABLE}


def reference_plan(init: State, goal: State) -> list[str]:
    """Move every misplaced block to the table, then build the goal towers bottom-up.

    A block is well placed when it stands on its goal support and that support is well placed (the
    table always is); well-placed blocks never move. At most 4(n-1) actions.
    """
    well: dict[str, bool] = {}

    def well_placed(b: str) -> bool:
        if b not in well:
            s = init[b]
            well[b] = s == goal[b] and (s == TABLE or well_placed(s))
        return well[b]

    plan: list[str] = []
    for tower in towers_of(init):
        keep = 0
        while keep < len(tower) and well_placed(tower[keep]):
            keep += 1
        # everything above the well-placed prefix goes to the table, top first (the bottom of a
        # tower is already on the table)
        for i in range(len(tower) - 1, max(keep, 1) - 1, -1):
            plan += [f"(unstack {tower[i]} {tower[i - 1]})", f"(put-down {tower[i]})"]
    for tower in towers_of(goal):
        for below, b in pairwise(tower):
            if not well_placed(b):
                plan += [f"(pick-up {b})", f"(stack {b} {below})"]
    return plan


def _problem(name: str, blocks: list[str], init: State, goal: State) -> str:
    clear = set(blocks) - set(init.values())
    facts = ["(handempty)"]
    for b in blocks:
        facts.append(f"(ontable {b})" if init[b] == TABLE else f"(on {b} {init[b]})")
    facts += [f"(clear {b})" for b in blocks if b in clear]
    goals = [f"(on {b} {s})" for b, s in sorted(_on_atoms(goal), key=lambda a: _block_key(a[0]))]
    return (
        f"(define (problem {name})\n"
        "  (:domain blocksworld)\n"
        f"  (:objects {' '.join(blocks)})\n"
        f"  (:init {' '.join(facts)})\n"
        f"  (:goal (and {' '.join(goals)})))\n"
    )


def generate(rng: random.Random, size: int, name: str) -> Generated:
    """A task over ``size`` blocks: uniform random initial and goal states, goal not yet holding."""
    if not 2 <= size <= MAX_BLOCKS:
        raise ValueError(f"blocksworld size (blocks) must be in 2..{MAX_BLOCKS}, got {size}")
    blocks = [f"b{i}" for i in range(1, size + 1)]
    init = random_state(blocks, rng)
    while True:
        # a goal needs at least one on atom, and one the initial state does not already satisfy
        goal = random_state(blocks, rng)
        if not _on_atoms(goal) <= _on_atoms(init):
            break
    plan = reference_plan(init, goal)
    params = {"size": size, "blocks": size, "goal_atoms": len(_on_atoms(goal))}
    return Generated(_problem(name, blocks, init, goal), tuple(plan), params)
