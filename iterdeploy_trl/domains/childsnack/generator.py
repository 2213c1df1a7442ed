"""Child-snack tasks: children waiting at tables, some allergic to gluten, to be served sandwiches.

Size = number of children (1..60). As in the IPC generator: one bread and one content portion a
child, exactly as many of each gluten-free as there are allergic children (each child allergic with
a probability drawn per task from 0.2..0.6); sandwiches: children + 0..children//5 (at most 72), none
made yet; trays: 1..min(4, 1 + children // 8), all in the kitchen; 1..3 tables, each child waiting at
a random one.

Reference plan (optimal, 3 actions a child plus one move a table with children): make each allergic
child's sandwich from gluten-free bread and content and every other from the remaining portions, put
them all on ``tray1``, then carry the tray from table to table and serve each child there.
"""

from __future__ import annotations

import random

from iterdeploy_trl.domains._problem import check_size, problem_text
from iterdeploy_trl.domains.common import Generated

GENERATOR_VERSION = 1
SIZE_PARAMETER = "number of children"
SIZES = {"cpu": (1, 4), "full": (1, 40)}
SIZE_LIMITS = (1, 60)
MAX_SANDWICHES = 72
MAX_TRAYS = 4
MAX_TABLES = 3

# Every object name a task can use (the small model's word vocabulary is built from these); the
# domain's constant ``kitchen`` is listed too.
OBJECT_NAMES: tuple[str, ...] = (
    ("kitchen",)
    + tuple(f"child{i}" for i in range(1, SIZE_LIMITS[1] + 1))
    + tuple(f"bread{i}" for i in range(1, SIZE_LIMITS[1] + 1))
    + tuple(f"content{i}" for i in range(1, SIZE_LIMITS[1] + 1))
    + tuple(f"sandw{i}" for i in range(1, MAX_SANDWICHES + 1))
    + tuple(f"tray{i}" for i in range(1, MAX_TRAYS + 1))
    + tuple(f"table{i}" for i in range(1, MAX_TABLES + 1))
)


def generate(rng: random.Random, size: int, name: str) -> Generated:
    """A child-snack task with ``size`` children."""
    check_size("childsnack", size, SIZE_LIMITS, SIZE_PARAMETER)
    n = size
    p_allergic = rng.uniform(0.2, 0.6)
    allergic = [rng.random() < p_allergic for _ in range(n)]
    n_gf = sum(allergic)
    gf_bread = sorted(rng.sample(range(1, n + 1), n_gf))
    gf_content = sorted(rng.sample(range(1, n + 1), n_gf))
    n_sandw = min(MAX_SANDWICHES, n + rng.randint(0, n // 5))
    n_trays = rng.randint(1, min(MAX_TRAYS, 1 + n // 8))
    n_tables = rng.randint(1, MAX_TABLES)
    table = [rng.randint(1, n_tables) for _ in range(n)]

    init = [f"(at tray{t} kitchen)" for t in range(1, n_trays + 1)]
    init += [f"(at_kitchen_bread bread{b})" for b in range(1, n + 1)]
    init += [f"(at_kitchen_content content{c})" for c in range(1, n + 1)]
    init += [f"(no_gluten_bread bread{b})" for b in gf_bread]
    init += [f"(no_gluten_content content{c})" for c in gf_content]
    for c in range(n):
        init.append(f"({'allergic_gluten' if allergic[c] else 'not_allergic_gluten'} child{c + 1})")
        init.append(f"(waiting child{c + 1} table{table[c]})")
    init += [f"(notexist sandw{s})" for s in range(1, n_sandw + 1)]
    problem = problem_text(
        name,
        "childsnack",
        [
            ([f"child{c}" for c in range(1, n + 1)], "child"),
            ([f"tray{t}" for t in range(1, n_trays + 1)], "tray"),
            ([f"sandw{s}" for s in range(1, n_sandw + 1)], "sandwich"),
            ([f"bread{b}" for b in range(1, n + 1)], "bread-portion"),
            ([f"content{c}" for c in range(1, n + 1)], "content-portion"),
            ([f"table{t}" for t in range(1, n_tables + 1)], "place"),
        ],
        init,
        [f"(served child{c})" for c in range(1, n + 1)],
    )

    plain_bread = [b for b in range(1, n + 1) if b not in set(gf_bread)]
    plain_content = [c for c in range(1, n + 1) if c not in set(gf_content)]
    sandwich: dict[int, int] = {}  # child index -> sandwich number
    plan: list[str] = []
    gf = iter(zip(gf_bread, gf_content, strict=True))
    plain = iter(zip(plain_bread, plain_content, strict=True))
    for c in range(n):
        s = len(sandwich) + 1
        sandwich[c] = s
        if allergic[c]:
            b, k = next(gf)
            plan.append(f"(make_sandwich_no_gluten sandw{s} bread{b} content{k})")
        else:
            b, k = next(plain)
            plan.append(f"(make_sandwich sandw{s} bread{b} content{k})")
    plan += [f"(put_on_tray sandw{sandwich[c]} tray1)" for c in range(n)]
    where = "kitchen"
    for t in sorted(set(table)):
        plan.append(f"(move_tray tray1 {where} table{t})")
        where = f"table{t}"
        for c in range(n):
            if table[c] == t:
                action = "serve_sandwich_no_gluten" if allergic[c] else "serve_sandwich"
                plan.append(f"({action} sandw{sandwich[c]} child{c + 1} tray1 table{t})")
    params = {
        "size": n,
        "children": n,
        "allergic": n_gf,
        "sandwiches": n_sandw,
        "trays": n_trays,
        "tables": n_tables,
    }
    return Generated(problem, tuple(plan), params)
