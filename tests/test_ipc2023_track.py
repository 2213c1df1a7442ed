"""The IPC 2023 learning track's own instances, imported the way a user would: for each of its ten domains,
the track's domain file and the first testing/easy problems become an IPC-layout folder without plans;
``import_folder`` computes every plan with Fast Downward and VAL checks it; this test checks every plan
again with VAL, and for the seven domains built in here also against our own domain file.

The track's files carry no licence statement, so they are not in this repository and nothing is
downloaded: the tests run when ``ITERDEPLOY_IPC2023_DIR`` names a local copy, and otherwise conftest.py
leaves this file out and says so in one line at the end of the session. Either layout works:

- a checkout of the track's benchmark repository: ``DIR/<domain>/domain.pddl`` (or
  ``DIR/<domain>/testing/easy/domain.pddl``) and ``DIR/<domain>/testing/easy/pNN.pddl``;
- IPC-layout folders: ``DIR/<domain>/domain.pddl`` and ``DIR/<domain>/problems/*.pddl`` (all used; a
  problem whose name starts with ``medium`` or ``hard`` may be left out for Fast Downward's time limit, an
  easy one may not).

``ITERDEPLOY_IPC2023_EASY`` (default 5) is how many testing/easy problems of a checkout are used,
``ITERDEPLOY_IPC2023_TIME_LIMIT`` (default 60) Fast Downward's limit per task in seconds. About 5 s a
domain on a 2-core machine with the default sample (docs/domains.md has the measured table).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from iterdeploy_trl.domains import domain_pddl
from iterdeploy_trl.tasks.importer import import_folder
from iterdeploy_trl.validate import validate_batch

ENV = "ITERDEPLOY_IPC2023_DIR"
TRACK_DOMAINS = ("blocksworld", "childsnack", "ferry", "floortile", "miconic", "rovers", "satellite", "sokoban",
                 "spanner", "transport")
# the seven whose domain files here were written from the track's (same predicates and action signatures)
BUILT_IN_EQUIVALENT = ("childsnack", "ferry", "floortile", "miconic", "satellite", "spanner", "transport")


def _track_folder(root: Path, domain: str, dest: Path) -> tuple[Path, list[str]]:
    """An IPC-layout folder at ``dest`` (domain.pddl, problems/, no plans) from the track's files."""
    src = root / domain
    domain_file = next((p for p in (src / "domain.pddl", src / "testing" / "easy" / "domain.pddl") if p.is_file()),
                       None)
    assert domain_file is not None, f"{src}: no domain.pddl (looked in {src} and {src / 'testing' / 'easy'})"
    if (src / "problems").is_dir():
        problems = sorted((src / "problems").glob("*.pddl"))
    else:
        easy = int(os.environ.get("ITERDEPLOY_IPC2023_EASY", "5"))
        problems = sorted(p for p in (src / "testing" / "easy").glob("p*.pddl"))[:easy]
    assert problems, f"{src}: no problems found (problems/*.pddl or testing/easy/p*.pddl)"
    (dest / "problems").mkdir(parents=True)
    shutil.copyfile(domain_file, dest / "domain.pddl")
    for path in problems:
        shutil.copyfile(path, dest / "problems" / path.name)
    return dest, [p.stem for p in problems]


@pytest.mark.parametrize("domain", TRACK_DOMAINS)
def test_the_tracks_instances_import_with_fast_downward_plans_valid_under_val(domain: str, tmp_path: Path) -> None:
    root = Path(os.environ[ENV]).expanduser()
    src, ids = _track_folder(root, domain, tmp_path / "src")
    limit = float(os.environ.get("ITERDEPLOY_IPC2023_TIME_LIMIT", "60"))
    # our own name for the set: the track's blocksworld and sokoban differ from the built-in ones
    task_set, report = import_folder(src, tmp_path / "set", name=f"{domain}-track", time_limit=limit)

    # testing/easy instances must all be solved; a larger one may be left out, but only for the time limit
    easy = [i for i in ids if not i.startswith(("medium", "hard"))]
    assert not set(easy) & set(report.left_out), report.left_out
    assert all("time limit reached" in why for why in report.left_out.values()), report.left_out
    assert sorted([*report.kept, *report.left_out]) == sorted(ids)
    assert set(report.kept.values()) == {"fast-downward lama-first"}  # no plans given: every one planned
    out = task_set.root  # the files as written, read back by VAL
    _all_valid(task_set, [(out / "domain.pddl", out / "problems" / f"{t.id}.pddl", list(t.reference_plan))
                          for t in task_set])
    if domain in BUILT_IN_EQUIVALENT:  # the track's instances and the planner's plans, under our domain file
        _all_valid(task_set, [(domain_pddl(domain), t.problem, list(t.reference_plan)) for t in task_set])


def _all_valid(task_set, checks: list) -> None:
    verdicts = validate_batch(checks)
    assert [(t.id, v.reason) for t, v in zip(task_set, verdicts, strict=True) if not v.valid] == []
    assert len(verdicts) == len(task_set.tasks) > 0
