"""Rovers tasks (IPC-2002 STRIPS), after the ``rovgen`` recipe, with a routed reference plan.

Waypoints get a random connected, symmetric visibility graph (never ``visible(w, w)``); each rover's
``can_traverse`` is a random BFS tree over visible edges from its start, in both directions; one
lander (``general``); cameras on imaging rovers with calibration targets and supported modes; soil
and rock samples on random waypoints; objectives visible from random waypoints. Goals are drawn only
among achievable ones. The plan serves goals one at a time with the rover (and camera) that gets
there in the fewest steps.

Size level L (1..15) scales everything linearly, from 1 rover, 4 waypoints, 1 objective, 1 camera
and 1 goal (L=1) to 8 rovers, 40 waypoints, 12 objectives, 12 cameras and 28 goals (L=10), capped at
the fixed vocabulary (10 rovers, 60 waypoints, 15 objectives, 15 cameras).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise

from iterdeploy_trl.domains.common import Generated

MAX_LEVEL = 15
MODES = ("colour", "high_res", "low_res")
LANDER = "general"

GENERATOR_VERSION = 1
SIZE_PARAMETER = "level"
SIZES = {"cpu": (1, 1), "full": (1, 10)}
SIZE_LIMITS = (1, MAX_LEVEL)
OBJECT_NAMES = (
    tuple(f"rover{i}" for i in range(10))
    + tuple(f"rover{i}store" for i in range(10))
    + tuple(f"waypoint{i}" for i in range(60))
    + tuple(f"camera{i}" for i in range(15))
    + tuple(f"objective{i}" for i in range(15))
    + (*MODES, LANDER)
)


def level_counts(level: int) -> dict[str, int]:
    """Object and goal counts of a size level."""

    def scale(lo: int, hi: int, cap: int) -> int:
        return min(cap, lo + round((hi - lo) * (level - 1) / 9))

    return {
        "rovers": scale(1, 8, 10),
        "waypoints": scale(4, 40, 60),
        "objectives": scale(1, 12, 15),
        "cameras": scale(1, 12, 15),
        "goals": scale(1, 28, 10_000),
    }


@dataclass
class _World:
    """One random instance (indices: waypoints, rovers, objectives, cameras)."""

    visible: list[set[int]]
    lander: int
    start: list[int]
    soil_rovers: set[int]
    rock_rovers: set[int]
    imaging_rovers: set[int]
    tree: list[list[set[int]]]  # tree[r][w]: neighbours of w in rover r's can_traverse
    camera_rover: list[int]
    camera_target: list[int]
    camera_modes: list[tuple[str, ...]]
    soil: set[int]
    rock: set[int]
    visible_from: list[list[int]]  # per objective, sorted waypoints
    goals: list[tuple] = field(default_factory=list)  # ("soil", w) / ("rock", w) / ("image", o, m)


def _visibility(rng: random.Random, n: int) -> list[set[int]]:
    """A connected symmetric graph: a random spanning tree plus random extra edges (mean degree ~3-4)."""
    adj: list[set[int]] = [set() for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    for i in range(1, n):
        a, b = order[i], order[rng.randrange(i)]
        adj[a].add(b)
        adj[b].add(a)
    extra = rng.randint(0, n)
    for _ in range(extra):
        a, b = rng.randrange(n), rng.randrange(n)
        if a != b:
            adj[a].add(b)
            adj[b].add(a)
    return adj


def _bfs_tree(rng: random.Random, adj: list[set[int]], root: int) -> list[set[int]]:
    """A random BFS spanning tree of ``adj`` from ``root`` (neighbours visited in random order)."""
    tree: list[set[int]] = [set() for _ in adj]
    seen = {root}
    queue = deque([root])
    while queue:
        w = queue.popleft()
        nbrs = sorted(adj[w])
        rng.shuffle(nbrs)
        for v in nbrs:
            if v not in seen:
                seen.add(v)
                tree[w].add(v)
                tree[v].add(w)
                queue.append(v)
    return tree


def _world(rng: random.Random, counts: dict[str, int]) -> _World:
    nw, nr, no, nc = counts["waypoints"], counts["rovers"], counts["objectives"], counts["cameras"]
    visible = _visibility(rng, nw)
    start = [rng.randrange(nw) for _ in range(nr)]
    equip: list[set[int]] = [set(), set(), set()]  # soil, rock, imaging
    for r in range(nr):
        kinds = [k for k in range(3) if rng.random() < 0.5] or [rng.randrange(3)]
        for k in kinds:
            equip[k].add(r)
    if nc and not equip[2]:
        equip[2].add(rng.randrange(nr))
    imagers = sorted(equip[2])
    camera_rover = [rng.choice(imagers) for _ in range(nc)]
    camera_modes = [tuple(m for m in MODES if rng.random() < 0.5) or (rng.choice(MODES),) for _ in range(nc)]
    share = rng.uniform(0.2, 0.5)
    return _World(
        visible=visible,
        lander=rng.randrange(nw),
        start=start,
        soil_rovers=equip[0],
        rock_rovers=equip[1],
        imaging_rovers=equip[2],
        tree=[_bfs_tree(rng, visible, s) for s in start],
        camera_rover=camera_rover,
        camera_target=[rng.randrange(no) for _ in range(nc)],
        camera_modes=camera_modes,
        soil={w for w in range(nw) if rng.random() < share},
        rock={w for w in range(nw) if rng.random() < share},
        visible_from=[sorted(rng.sample(range(nw), rng.randint(1, max(1, nw // 3)))) for _ in range(no)],
    )


def _achievable_goals(world: _World, n_objectives: int) -> list[tuple]:
    """Goals some equipped rover can reach (every rover's tree spans the connected map)."""
    goals: list[tuple] = []
    if world.soil_rovers:
        goals += [("soil", w) for w in sorted(world.soil)]
    if world.rock_rovers:
        goals += [("rock", w) for w in sorted(world.rock)]
    modes = sorted({m for ms in world.camera_modes for m in ms})
    goals += [("image", o, m) for o in range(n_objectives) for m in modes]
    return goals


class _Router:
    """Shortest paths in each rover's traversal tree, one BFS per (rover, destination), cached."""

    def __init__(self, world: _World) -> None:
        self.world = world
        self._bfs_cache: dict[tuple[int, int], tuple[dict[int, int], dict[int, int]]] = {}

    def _bfs(self, r: int, dest: int) -> tuple[dict[int, int], dict[int, int]]:
        """(next waypoint towards ``dest``, distance to ``dest``) for every waypoint."""
        key = (r, dest)
        if key not in self._bfs_cache:
            step: dict[int, int] = {}
            depth = {dest: 0}
            queue = deque([dest])
            while queue:
                w = queue.popleft()
                for v in sorted(self.world.tree[r][w]):
                    if v not in depth:
                        step[v], depth[v] = w, depth[w] + 1
                        queue.append(v)
            self._bfs_cache[key] = (step, depth)
        return self._bfs_cache[key]

    def path(self, r: int, a: int, b: int) -> list[int]:
        """Waypoints from ``a`` to ``b`` (both included) for rover ``r``."""
        step = self._bfs(r, b)[0]
        out = [a]
        while out[-1] != b:
            out.append(step[out[-1]])
        return out

    def dist(self, r: int, a: int, b: int) -> int:
        """Navigate steps from ``a`` to ``b`` for rover ``r``."""
        return self._bfs(r, b)[1][a]

    def nearest(self, r: int, a: int, targets: list[int]) -> int:
        """The target closest to ``a`` for rover ``r`` (ties: lowest index)."""
        return min(targets, key=lambda t: (self.dist(r, a, t), t))


def _plan(world: _World) -> list[str]:
    """Serve each goal in turn with the rover (and camera) needing the fewest navigate steps."""
    router = _Router(world)
    comm = sorted(world.visible[world.lander])  # waypoints the lander can hear
    at = list(world.start)
    full = [False] * len(at)
    lw = f"waypoint{world.lander}"
    plan: list[str] = []

    def go(r: int, dest: int) -> None:
        route = router.path(r, at[r], dest)
        plan.extend(f"(navigate rover{r} waypoint{a} waypoint{b})" for a, b in pairwise(route))
        at[r] = dest

    for goal in world.goals:
        if goal[0] in ("soil", "rock"):
            kind, w = goal
            rovers = world.soil_rovers if kind == "soil" else world.rock_rovers

            def cost(r: int, w: int = w) -> tuple[int, int]:
                x = router.nearest(r, w, comm)
                return (router.dist(r, at[r], w) + router.dist(r, w, x) + full[r], r)

            r = min(rovers, key=cost)
            go(r, w)
            if full[r]:
                plan.append(f"(drop rover{r} rover{r}store)")
            plan.append(f"(sample_{kind} rover{r} rover{r}store waypoint{w})")
            full[r] = True
            x = router.nearest(r, w, comm)
            go(r, x)
            plan.append(f"(communicate_{kind}_data rover{r} {LANDER} waypoint{w} waypoint{x} {lw})")
        else:
            _, o, m = goal
            best: tuple | None = None
            for c, r in enumerate(world.camera_rover):
                if m not in world.camera_modes[c]:
                    continue
                for p in world.visible_from[o]:
                    cal = min(
                        world.visible_from[world.camera_target[c]],
                        key=lambda wc, r=r, p=p: (router.dist(r, at[r], wc) + router.dist(r, wc, p), wc),
                    )
                    x = router.nearest(r, p, comm)
                    steps = router.dist(r, at[r], cal) + router.dist(r, cal, p) + router.dist(r, p, x)
                    if best is None or (steps, r, c, p) < best[:4]:
                        best = (steps, r, c, p, cal, x)
            assert best is not None, "image goals are drawn only where a camera supports the mode"
            _, r, c, p, cal, x = best
            go(r, cal)
            t = world.camera_target[c]
            plan.append(f"(calibrate rover{r} camera{c} objective{t} waypoint{cal})")
            go(r, p)
            plan.append(f"(take_image rover{r} waypoint{p} objective{o} camera{c} {m})")
            go(r, x)
            plan.append(f"(communicate_image_data rover{r} {LANDER} objective{o} {m} waypoint{x} {lw})")
    return plan


def _goal_atom(goal: tuple) -> str:
    if goal[0] == "image":
        return f"(communicated_image_data objective{goal[1]} {goal[2]})"
    return f"(communicated_{goal[0]}_data waypoint{goal[1]})"


def _problem(name: str, world: _World, counts: dict[str, int]) -> str:
    nw, nr, no, nc = counts["waypoints"], counts["rovers"], counts["objectives"], counts["cameras"]
    objects = [
        f"{LANDER} - lander",
        f"{' '.join(MODES)} - mode",
        " ".join(f"rover{r}" for r in range(nr)) + " - rover",
        " ".join(f"rover{r}store" for r in range(nr)) + " - store",
        " ".join(f"waypoint{w}" for w in range(nw)) + " - waypoint",
    ]
    if nc:
        objects.append(" ".join(f"camera{c}" for c in range(nc)) + " - camera")
    objects.append(" ".join(f"objective{o}" for o in range(no)) + " - objective")
    facts = [f"(visible waypoint{a} waypoint{b})" for a in range(nw) for b in sorted(world.visible[a])]
    facts += [f"(at_soil_sample waypoint{w})" for w in sorted(world.soil)]
    facts += [f"(at_rock_sample waypoint{w})" for w in sorted(world.rock)]
    facts += [f"(at_lander {LANDER} waypoint{world.lander})", f"(channel_free {LANDER})"]
    for r in range(nr):
        facts += [
            f"(at rover{r} waypoint{world.start[r]})",
            f"(available rover{r})",
            f"(store_of rover{r}store rover{r})",
            f"(empty rover{r}store)",
        ]
        for equipment, rovers in (
            ("soil_analysis", world.soil_rovers),
            ("rock_analysis", world.rock_rovers),
            ("imaging", world.imaging_rovers),
        ):
            if r in rovers:
                facts.append(f"(equipped_for_{equipment} rover{r})")
        facts += [
            f"(can_traverse rover{r} waypoint{a} waypoint{b})"
            for a in range(nw)
            for b in sorted(world.tree[r][a])
        ]
    for c in range(nc):
        facts.append(f"(on_board camera{c} rover{world.camera_rover[c]})")
        facts.append(f"(calibration_target camera{c} objective{world.camera_target[c]})")
        facts += [f"(supports camera{c} {m})" for m in world.camera_modes[c]]
    for o in range(no):
        facts += [f"(visible_from objective{o} waypoint{w})" for w in world.visible_from[o]]
    init = "\n    ".join(facts)
    goal = "\n    ".join(_goal_atom(g) for g in world.goals)
    return (
        f"(define (problem {name})\n"
        "  (:domain rover)\n"
        "  (:objects\n    " + "\n    ".join(objects) + ")\n"
        f"  (:init\n    {init})\n"
        f"  (:goal (and\n    {goal})))\n"
    )


def generate(rng: random.Random, size: int, name: str) -> Generated:
    """A task at size level ``size`` (1..15); redraws worlds with no achievable goal."""
    if not 1 <= size <= MAX_LEVEL:
        raise ValueError(f"rovers size (level) must be in 1..{MAX_LEVEL}, got {size}")
    counts = level_counts(size)
    while True:
        world = _world(rng, counts)
        candidates = _achievable_goals(world, counts["objectives"])
        if candidates:
            break
    world.goals = rng.sample(candidates, min(counts["goals"], len(candidates)))
    plan = _plan(world)
    params = dict(counts, size=size, goals=len(world.goals))
    params["goal_kinds"] = {k: sum(g[0] == k for g in world.goals) for k in ("soil", "rock", "image")}
    return Generated(_problem(name, world, counts), tuple(plan), params)
