"""Floortile as the IPC-2023 learning track names its actions (change_color, paint_up, paint_down, move_up,
move_down, move_right, move_left; IPC-2011's were change-color, paint-up, ..., up, down, right, left): the
built-in domain is the track's, so the track's planner plans validate and the track's folder imports under
the name floortile. The track's files are not in this repository (no licence statement); the problem below
is written here in the track's layout (rows 0..R, ``tile_<row>_<column>``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iterdeploy_trl.cli import main as cli_main
from iterdeploy_trl.domains import domain_pddl
from iterdeploy_trl.models import build_tokenizer
from iterdeploy_trl.pddlio import read_domain
from iterdeploy_trl.tasks.importer import read_folder

TRACK_ACTIONS = {"change_color", "paint_up", "paint_down", "move_up", "move_down", "move_right", "move_left"}

# Two columns, rows 0..2; the robot stands on tile_2_2 holding white (as the track's testing/easy/p01).
PROBLEM = """(define (problem floortile-small)
 (:domain floortile)
 (:objects tile_0_1 tile_0_2 tile_1_1 tile_1_2 tile_2_1 tile_2_2 - tile robot1 - robot white black - color)
 (:init (robot-at robot1 tile_2_2) (robot-has robot1 white) (available-color white) (available-color black)
  (clear tile_0_1) (clear tile_0_2) (clear tile_1_1) (clear tile_1_2) (clear tile_2_1)
  (up tile_1_1 tile_0_1) (up tile_1_2 tile_0_2) (up tile_2_1 tile_1_1) (up tile_2_2 tile_1_2)
  (down tile_0_1 tile_1_1) (down tile_0_2 tile_1_2) (down tile_1_1 tile_2_1) (down tile_1_2 tile_2_2)
  (left tile_0_1 tile_0_2) (left tile_1_1 tile_1_2) (left tile_2_1 tile_2_2)
  (right tile_0_2 tile_0_1) (right tile_1_2 tile_1_1) (right tile_2_2 tile_2_1))
 (:goal (and (painted tile_2_1 black) (painted tile_1_1 white))))
"""
# a plan as the track's planners write it
TRACK_PLAN = """(move_down robot1 tile_2_2 tile_1_2)
(move_left robot1 tile_1_2 tile_1_1)
(change_color robot1 white black)
(paint_up robot1 tile_2_1 tile_1_1 black)
(move_down robot1 tile_1_1 tile_0_1)
(change_color robot1 black white)
(paint_up robot1 tile_1_1 tile_0_1 white)
"""


def test_the_built_in_floortile_has_the_tracks_actions() -> None:
    actions = set(read_domain(domain_pddl("floortile")).actions)
    assert actions == TRACK_ACTIONS
    vocabulary = build_tokenizer("floortile").get_vocab()
    # up, down, right, left stay words: they are the track's predicates too
    assert TRACK_ACTIONS <= set(vocabulary) and not {"change-color", "paint-up", "paint-down"} & set(vocabulary)


@pytest.mark.parametrize(("plan", "code"), [(TRACK_PLAN, 0), (TRACK_PLAN.replace("move_down", "down"), 1)])
def test_validate_floortile_accepts_the_tracks_plans(tmp_path: Path, plan: str, code: int) -> None:
    (tmp_path / "p.pddl").write_text(PROBLEM)
    (tmp_path / "p.plan").write_text(plan)
    assert cli_main(["validate", "floortile", str(tmp_path / "p.pddl"), str(tmp_path / "p.plan")]) == code


def test_a_folder_with_the_tracks_domain_imports_as_floortile(tmp_path: Path) -> None:
    """The track's folder layout (domain.pddl, problems/); its domain declares the same symbols as ours."""
    (tmp_path / "problems").mkdir()
    (tmp_path / "domain.pddl").write_text(domain_pddl("floortile"))
    (tmp_path / "problems" / "p01.pddl").write_text(PROBLEM)
    name, _, tasks = read_folder(tmp_path)
    assert (name, [t[0] for t in tasks]) == ("floortile", ["p01"])
