"""Transport tasks: vehicles with a few slots carry packages along a road network.

Size = number of packages (1..60). Locations: 2..min(60, 2 + packages), joined by a random spanning
tree plus random extra roads (all two-way); vehicles: 1..min(10, 1 + packages // 4), each at a random
location with 1..4 free slots (sizes ``c0`` … ``c4``, ``(capacity-predecessor ci ci+1)``). Every
package's goal location differs from its start.

Reference plan: each package goes to the vehicle nearest (in road steps) to its start; each vehicle
then serves its packages with a nearest-stop tour: from where it is, drive (shortest path, BFS) to the
nearest location where it can drop a carried package or pick up one of its waiting packages (the
latter only with a free slot); there drop everything bound for it, then pick up what waits there while
slots last. Vehicles work one after another.
"""

from __future__ import annotations

import random
from collections import deque
from itertools import pairwise

from iterdeploy_trl.domains._problem import check_size, problem_text
from iterdeploy_trl.domains.common import Generated

GENERATOR_VERSION = 1
SIZE_PARAMETER = "number of packages"
SIZES = {"cpu": (1, 4), "full": (1, 40)}
SIZE_LIMITS = (1, 60)
MAX_LOCATIONS = 60
MAX_VEHICLES = 10
MAX_CAPACITY = 4

# Every object name a task can use (the small model's word vocabulary is built from these).
OBJECT_NAMES: tuple[str, ...] = (
    tuple(f"v{i}" for i in range(1, MAX_VEHICLES + 1))
    + tuple(f"p{i}" for i in range(1, SIZE_LIMITS[1] + 1))
    + tuple(f"l{i}" for i in range(1, MAX_LOCATIONS + 1))
    + tuple(f"c{i}" for i in range(MAX_CAPACITY + 1))
)


def _roads(rng: random.Random, n: int) -> list[set[int]]:
    """A connected two-way road graph over locations ``0..n-1``: random tree plus up to n/2 extras."""
    adj: list[set[int]] = [set() for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    for i in range(1, n):
        a, b = order[i], order[rng.randrange(i)]
        adj[a].add(b)
        adj[b].add(a)
    for _ in range(rng.randint(0, n // 2)):
        a, b = rng.randrange(n), rng.randrange(n)
        if a != b:
            adj[a].add(b)
            adj[b].add(a)
    return adj


def _bfs(adj: list[set[int]], src: int) -> list[int]:
    """Predecessor of each location on a shortest path from ``src`` (``src`` maps to itself)."""
    prev = [-1] * len(adj)
    prev[src] = src
    queue = deque([src])
    while queue:
        a = queue.popleft()
        for b in sorted(adj[a]):
            if prev[b] < 0:
                prev[b] = a
                queue.append(b)
    return prev


class _Paths:
    def __init__(self, adj: list[set[int]]) -> None:
        self.adj = adj
        self._prev: dict[int, list[int]] = {}

    def route(self, a: int, b: int) -> list[int]:
        """Locations from ``a`` to ``b``, both included."""
        if b not in self._prev:
            self._prev[b] = _bfs(self.adj, b)
        prev, out = self._prev[b], [a]
        while out[-1] != b:
            out.append(prev[out[-1]])
        return out

    def dist(self, a: int, b: int) -> int:
        return len(self.route(a, b)) - 1


def _plan(adj, v_at, v_cap, p_at, p_goal) -> list[str]:
    paths = _Paths(adj)
    owner = [
        min(range(len(v_at)), key=lambda v, p=p: (paths.dist(v_at[v], p_at[p]), v)) for p in range(len(p_at))
    ]
    plan: list[str] = []
    for v in range(len(v_at)):
        here, free = v_at[v], v_cap[v]
        waiting = {p for p in range(len(p_at)) if owner[p] == v}
        carried: set[int] = set()
        while waiting or carried:
            stops = {p_goal[p] for p in carried}
            if free:
                stops |= {p_at[p] for p in waiting}
            target = min(stops, key=lambda loc: (paths.dist(here, loc), loc))
            route = paths.route(here, target)
            plan += [f"(drive v{v + 1} l{a + 1} l{b + 1})" for a, b in pairwise(route)]
            here = target
            for p in sorted(carried):
                if p_goal[p] == here:
                    plan.append(f"(drop v{v + 1} l{here + 1} p{p + 1} c{free} c{free + 1})")
                    free += 1
                    carried.discard(p)
            for p in sorted(waiting):
                if p_at[p] == here and free:
                    plan.append(f"(pick-up v{v + 1} l{here + 1} p{p + 1} c{free - 1} c{free})")
                    free -= 1
                    waiting.discard(p)
                    carried.add(p)
    return plan


def generate(rng: random.Random, size: int, name: str) -> Generated:
    """A transport task with ``size`` packages."""
    check_size("transport", size, SIZE_LIMITS, SIZE_PARAMETER)
    n_loc = rng.randint(2, min(MAX_LOCATIONS, 2 + size))
    n_veh = rng.randint(1, min(MAX_VEHICLES, 1 + size // 4))
    adj = _roads(rng, n_loc)
    v_at = [rng.randrange(n_loc) for _ in range(n_veh)]
    v_cap = [rng.randint(1, MAX_CAPACITY) for _ in range(n_veh)]
    p_at = [rng.randrange(n_loc) for _ in range(size)]
    p_goal = [rng.choice([loc for loc in range(n_loc) if loc != s]) for s in p_at]
    init = [f"(capacity v{v + 1} c{v_cap[v]})" for v in range(n_veh)]
    init += [f"(capacity-predecessor c{k} c{k + 1})" for k in range(MAX_CAPACITY)]
    init += [f"(at p{p + 1} l{p_at[p] + 1})" for p in range(size)]
    init += [f"(at v{v + 1} l{v_at[v] + 1})" for v in range(n_veh)]
    init += [f"(road l{a + 1} l{b + 1})" for a in range(n_loc) for b in sorted(adj[a])]
    problem = problem_text(
        name,
        "transport",
        [
            ([f"v{v}" for v in range(1, n_veh + 1)], "vehicle"),
            ([f"p{p}" for p in range(1, size + 1)], "package"),
            ([f"l{i}" for i in range(1, n_loc + 1)], "location"),
            ([f"c{k}" for k in range(MAX_CAPACITY + 1)], "size"),
        ],
        init,
        [f"(at p{p + 1} l{p_goal[p] + 1})" for p in range(size)],
    )
    plan = _plan(adj, v_at, v_cap, p_at, p_goal)
    params = {
        "size": size,
        "packages": size,
        "vehicles": n_veh,
        "locations": n_loc,
        "roads": sum(map(len, adj)) // 2,
    }
    return Generated(problem, tuple(plan), params)
