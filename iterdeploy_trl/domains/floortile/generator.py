"""Floortile tasks: robots paint a grid in a checkerboard of white and black.

Size = number of rows to paint, R (1..10). The grid has rows 0..R (row 0 is never painted, as in the
IPC instances) and C columns, C drawn from max(1, R - 1)..R + 1; tiles are ``tile_<row>_<column>``
(columns from 1). Robots: 1..min(C, 1 + R * C // 12, 5), in distinct columns at random rows, each
holding a random colour; both colours are available. Goal: every tile of rows 1..R painted, white
where row + column is even, black where it is odd.

Reference plan (solvable by construction): the columns are split into one block a robot, each block
running from its robot's column to the next robot's (the first also takes the columns left of it), so
robots never meet. A robot walks (shortest path inside its block) to row R - 1 at the end of its block
nearest to it, then sweeps: along row r - 1 painting row r above it (changing colour when needed),
one row down, back along the row painting the row above, ..., down to row 0. A painted tile is never
stepped on again, since the robot only moves within and below the row it paints.
"""

from __future__ import annotations

import random
from collections import deque
from itertools import pairwise

from iterdeploy_trl.domains._problem import check_size, problem_text
from iterdeploy_trl.domains.common import Generated

GENERATOR_VERSION = 1
SIZE_PARAMETER = "number of rows to paint"
SIZES = {"cpu": (1, 3), "full": (1, 8)}
SIZE_LIMITS = (1, 10)
MAX_ROBOTS = 5
COLORS = ("white", "black")
MAX_COLUMNS = SIZE_LIMITS[1] + 1

# Every object name a task can use (the small model's word vocabulary is built from these).
OBJECT_NAMES: tuple[str, ...] = (
    tuple(f"tile_{r}_{c}" for r in range(SIZE_LIMITS[1] + 1) for c in range(1, MAX_COLUMNS + 1))
    + tuple(f"robot{i}" for i in range(1, MAX_ROBOTS + 1))
    + COLORS
)


def _tile(r: int, c: int) -> str:
    return f"tile_{r}_{c}"


def _colour(r: int, c: int) -> str:
    return COLORS[(r + c) % 2]


def _walk(start: tuple[int, int], goal: tuple[int, int], rows: int, cols: range) -> list[tuple[int, int]]:
    """Shortest path on the grid inside the columns ``cols`` (BFS; nothing is painted yet)."""
    prev = {start: start}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        if (r, c) == goal:
            break
        for nxt in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nxt[0] <= rows and nxt[1] in cols and nxt not in prev:
                prev[nxt] = (r, c)
                queue.append(nxt)
    path = [goal]
    while path[-1] != start:
        path.append(prev[path[-1]])
    return path[::-1]


# the IPC-2023 track's action names (IPC-2011's were up, down, right, left)
_MOVES = {(1, 0): "move_up", (-1, 0): "move_down", (0, 1): "move_right", (0, -1): "move_left"}


def _move(robot: str, a: tuple[int, int], b: tuple[int, int]) -> str:
    direction = _MOVES[(b[0] - a[0], b[1] - a[1])]
    return f"({direction} {robot} {_tile(*a)} {_tile(*b)})"


def _sweep(robot: str, pos: tuple[int, int], colour: str, rows: int, cols: range) -> list[str]:
    """The plan of one robot painting rows 1..rows of the columns ``cols``."""
    lo, hi = cols[0], cols[-1]
    end = min((rows - 1, lo), (rows - 1, hi), key=lambda t: (abs(t[0] - pos[0]) + abs(t[1] - pos[1]), t[1]))
    path = _walk(pos, end, rows, cols)
    plan = [_move(robot, a, b) for a, b in pairwise(path)]
    row, col = end
    step = 1 if col == lo else -1
    while True:
        for _ in range(len(cols)):
            want = _colour(row + 1, col)
            if colour != want:
                plan.append(f"(change_color {robot} {colour} {want})")
                colour = want
            plan.append(f"(paint_up {robot} {_tile(row + 1, col)} {_tile(row, col)} {colour})")
            if lo <= col + step <= hi:
                plan.append(_move(robot, (row, col), (row, col + step)))
                col += step
        if row == 0:
            return plan
        plan.append(_move(robot, (row, col), (row - 1, col)))
        row -= 1
        step = -step


def generate(rng: random.Random, size: int, name: str) -> Generated:
    """A floortile task with ``size`` rows to paint."""
    check_size("floortile", size, SIZE_LIMITS, SIZE_PARAMETER)
    rows = size
    cols = rng.randint(max(1, rows - 1), rows + 1)
    n_robots = rng.randint(1, min(cols, 1 + rows * cols // 12, MAX_ROBOTS))
    robot_cols = sorted(rng.sample(range(1, cols + 1), n_robots))
    robot_pos = [(rng.randint(0, rows), c) for c in robot_cols]
    robot_colour = [rng.choice(COLORS) for _ in range(n_robots)]

    tiles = [_tile(r, c) for r in range(rows + 1) for c in range(1, cols + 1)]
    occupied = set(robot_pos)
    init = [f"(robot-at robot{k + 1} {_tile(*robot_pos[k])})" for k in range(n_robots)]
    init += [f"(robot-has robot{k + 1} {robot_colour[k]})" for k in range(n_robots)]
    init += [f"(available-color {c})" for c in COLORS]
    init += [
        f"(clear {_tile(r, c)})"
        for r in range(rows + 1)
        for c in range(1, cols + 1)
        if (r, c) not in occupied
    ]
    for r in range(rows):
        for c in range(1, cols + 1):
            init.append(f"(up {_tile(r + 1, c)} {_tile(r, c)})")
            init.append(f"(down {_tile(r, c)} {_tile(r + 1, c)})")
    for r in range(rows + 1):
        for c in range(1, cols):
            init.append(f"(right {_tile(r, c + 1)} {_tile(r, c)})")
            init.append(f"(left {_tile(r, c)} {_tile(r, c + 1)})")
    goal = [
        f"(painted {_tile(r, c)} {_colour(r, c)})" for r in range(1, rows + 1) for c in range(1, cols + 1)
    ]
    problem = problem_text(
        name,
        "floortile",
        [(tiles, "tile"), ([f"robot{k}" for k in range(1, n_robots + 1)], "robot"), (list(COLORS), "color")],
        init,
        goal,
    )

    bounds = [1] + robot_cols[1:] + [cols + 1]
    plan: list[str] = []
    for k in range(n_robots):
        block = range(bounds[k], bounds[k + 1])
        plan += _sweep(f"robot{k + 1}", robot_pos[k], robot_colour[k], rows, block)
    params = {"size": size, "rows": rows, "columns": cols, "robots": n_robots, "tiles_to_paint": rows * cols}
    return Generated(problem, tuple(plan), params)
