"""Seeded, deterministic task generation for the registered planning domains (``domains/<name>/``)."""

from __future__ import annotations

import random
import re
from pathlib import Path

from iterdeploy_trl.domains import domain_pddl, get, view
from iterdeploy_trl.tasks.taskset import Task, TaskSet, write_task_set

# Per-domain views over the registry (domains/<name>/generator.py), read on access.
# GENERATOR_VERSION is bumped when a generator's output for the same seed changes (sokoban 2: the player
# starts at a random reachable cell). Cached base models pretrained on walks from an older generator's
# tasks are not reused (loop.auto_base_model_path), and a run on an older pool is not resumed.
GENERATOR_VERSION = view(lambda d: d.generator_version)
# Range of the size parameter drawn uniformly per task when none is given (the "full" range).
DEFAULT_SIZES = view(lambda d: d.sizes["full"])
# The size ranges of the CPU configs (experiments/cpu_<domain>.yaml).
CPU_SIZES = view(lambda d: d.sizes["cpu"])
SIZE_LIMITS = view(lambda d: d.size_limits)
_PROBLEM_NAME = re.compile(r"\(\s*problem\s+[^\s()]+\s*\)")


def task_id(domain: str, seed: int, index: int) -> str:
    """``<domain>-<seed>-<index:05d>``."""
    return f"{domain}-{seed}-{index:05d}"


def _check(domain: str, size: tuple[int, int] | None) -> tuple[int, int]:
    get(domain)  # DomainError (a ValueError) naming the registered domains if it is not one
    lo, hi = DEFAULT_SIZES[domain] if size is None else (int(size[0]), int(size[1]))
    lim_lo, lim_hi = SIZE_LIMITS[domain]
    if not lim_lo <= lo <= hi <= lim_hi:
        raise ValueError(f"{domain} size range must satisfy {lim_lo} <= LO <= HI <= {lim_hi}, got {lo} {hi}")
    return lo, hi


def generate_task(domain: str, seed: int, index: int, size: tuple[int, int] | None = None) -> Task:
    """Task number ``index`` of the pool ``(domain, seed, size)``; it does not depend on the pool size.

    Its random stream is seeded from ``(domain, seed, index)`` alone (a string seed, hashed with
    SHA-512 by :class:`random.Random`, so it is the same in every process).
    """
    lo, hi = _check(domain, size)
    rng = random.Random(f"iterdeploy-tasks/{domain}/{seed}/{index}")
    name = task_id(domain, seed, index)
    g = get(domain).generate(rng, rng.randint(lo, hi), name)
    return Task(id=name, domain=domain, problem=g.problem, reference_plan=g.plan, params=g.params, seed=seed)


def generate_tasks(domain: str, n: int, seed: int, size: tuple[int, int] | None = None, *,
                   distinct: bool = False) -> list[Task]:
    """``n`` tasks of ``domain``: same arguments, same tasks (byte for byte); sizes uniform over ``size``.

    ``size`` is the (inclusive) range of the main difficulty parameter: blocks for blocksworld, the
    size level for rovers and sokoban (see ``DEFAULT_SIZES`` and ``SIZE_LIMITS``).
    ``distinct``: no problem twice (:func:`draw_distinct`); otherwise task ``i`` is ``generate_task(.., i, ..)``
    and small sizes repeat problems.
    """
    _check(domain, size)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not distinct:
        return [generate_task(domain, seed, i, size) for i in range(n)]
    return draw_distinct(domain, n, seed, size)


def problem_key(text: str) -> str:
    """A task's problem with its name removed and whitespace collapsed: two tasks with the same key are the
    same problem whatever their ids."""
    return " ".join(_PROBLEM_NAME.sub("", text.lower()).split())


DISTINCT_DRAW_FACTOR = 50  # a distinct draw tries at most this many indices per task asked for


def draw_distinct(domain: str, n: int, seed: int, size: tuple[int, int] | None = None,
                  skip: set[str] | frozenset[str] = frozenset()) -> list[Task]:
    """``n`` tasks with pairwise different problems, none of whose ``problem_key`` is in ``skip``: indices
    0, 1, 2, ... of the pool ``(domain, seed, size)`` in order, a repeat skipped (so a held-out split drawn
    after the pool never repeats a pool problem). Small sizes hold few problems, so the sizes of a distinct
    draw lean to the larger ones. A ``ValueError`` when ``n * DISTINCT_DRAW_FACTOR`` indices do not give ``n``."""
    seen, keep = set(skip), []
    for index in range(max(n, 1) * DISTINCT_DRAW_FACTOR):
        if len(keep) == n:
            break
        task = generate_task(domain, seed, index, size)
        key = problem_key(task.problem)
        if key not in seen:
            seen.add(key)
            keep.append(task)
    if len(keep) < n:
        raise ValueError(f"{domain}: only {len(keep)} distinct problems of sizes {size} among "
                         f"{max(n, 1) * DISTINCT_DRAW_FACTOR} drawn from seed {seed}, {n} asked for: "
                         "widen the size range or ask for fewer tasks")
    return keep


def build_task_set(
    domain: str, n: int, seed: int, size: tuple[int, int] | None = None, out: Path | str | None = None
) -> TaskSet:
    """Generate an ``n``-task pool as a :class:`TaskSet`, written to ``out`` when given."""
    tasks = tuple(generate_tasks(domain, n, seed, size))
    root = write_task_set(tasks, out) if out is not None else None
    return TaskSet(domain, domain_pddl(domain), tasks, root)
