"""Spanner tasks: a man walks a one-way corridor from the shed to the gate, where loose nuts wait.

Size = number of nuts (1..60). Spanners: nuts + 0..nuts//2 extra (at most 90), each at a random
corridor location; corridor locations: 1..min(100, 2 * nuts + 2) (``location1`` … between ``shed`` and
``gate``, linked one way in order). Every nut is at the gate; ``bob`` starts at the shed.

Reference plan (optimal): walk the corridor once, picking up the first ``nuts`` spanners met (in
location order), then tighten each nut at the gate with its own spanner: corridor + 1 walks, and one
pick-up and one tighten a nut.
"""

from __future__ import annotations

import random
from itertools import pairwise

from iterdeploy_trl.domains._problem import check_size, problem_text
from iterdeploy_trl.domains.common import Generated

GENERATOR_VERSION = 1
SIZE_PARAMETER = "number of nuts"
SIZES = {"cpu": (1, 4), "full": (1, 50)}
SIZE_LIMITS = (1, 60)
MAX_LOCATIONS = 100
MAX_SPANNERS = 90

# Every object name a task can use (the small model's word vocabulary is built from these).
OBJECT_NAMES: tuple[str, ...] = (
    ("bob", "shed", "gate")
    + tuple(f"location{i}" for i in range(1, MAX_LOCATIONS + 1))
    + tuple(f"spanner{i}" for i in range(1, MAX_SPANNERS + 1))
    + tuple(f"nut{i}" for i in range(1, SIZE_LIMITS[1] + 1))
)


def generate(rng: random.Random, size: int, name: str) -> Generated:
    """A spanner task with ``size`` nuts."""
    check_size("spanner", size, SIZE_LIMITS, SIZE_PARAMETER)
    n_loc = rng.randint(1, min(MAX_LOCATIONS, 2 * size + 2))
    n_spanners = min(MAX_SPANNERS, size + rng.randint(0, size // 2))
    where = [rng.randint(1, n_loc) for _ in range(n_spanners)]
    corridor = ["shed"] + [f"location{i}" for i in range(1, n_loc + 1)] + ["gate"]
    init = ["(at bob shed)"]
    for s in range(n_spanners):
        init += [f"(at spanner{s + 1} location{where[s]})", f"(usable spanner{s + 1})"]
    for n in range(1, size + 1):
        init += [f"(at nut{n} gate)", f"(loose nut{n})"]
    init += [f"(link {a} {b})" for a, b in pairwise(corridor)]
    problem = problem_text(
        name,
        "spanner",
        [
            (["bob"], "man"),
            ([f"spanner{s}" for s in range(1, n_spanners + 1)], "spanner"),
            ([f"nut{n}" for n in range(1, size + 1)], "nut"),
            (corridor, "location"),
        ],
        init,
        [f"(tightened nut{n})" for n in range(1, size + 1)],
    )
    carried: list[int] = []
    plan: list[str] = []
    for i in range(1, n_loc + 1):
        plan.append(f"(walk {corridor[i - 1]} location{i} bob)")
        for s in range(n_spanners):
            if where[s] == i and len(carried) < size:
                plan.append(f"(pickup_spanner location{i} spanner{s + 1} bob)")
                carried.append(s + 1)
    plan.append(f"(walk location{n_loc} gate bob)")
    plan += [f"(tighten_nut gate spanner{s} bob nut{n})" for n, s in enumerate(carried, start=1)]
    params = {"size": size, "nuts": size, "spanners": n_spanners, "locations": n_loc}
    return Generated(problem, tuple(plan), params)
