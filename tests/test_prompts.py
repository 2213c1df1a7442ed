"""Prompt building: the compact prompt of the small model and the study's prompt."""

from __future__ import annotations

from itertools import pairwise

import pytest

from iterdeploy_trl.domains import domain_pddl, example
from iterdeploy_trl.models import build_tokenizer
from iterdeploy_trl.prompts import build_messages, build_prompt, domain_name

BLOCKS = """(define (problem bw-3) (:domain blocksworld)
  (:objects b1 b2 b10)
  (:init (handempty) (on b1 b2) (ontable b2) (ontable b10) (clear b1) (clear b10))
  (:goal (and (on b2 b10) (on b10 b1))))"""

SOKOBAN = """(define (problem sok-line) (:domain sokoban-sequential)
  (:objects dir-down dir-left dir-right dir-up - direction player-01 - player
            pos-01-01 pos-02-01 pos-03-01 - location stone-01 - stone)
  (:init (IS-GOAL pos-03-01) (IS-NONGOAL pos-01-01) (IS-NONGOAL pos-02-01)
    (MOVE-DIR pos-01-01 pos-02-01 dir-right) (MOVE-DIR pos-02-01 pos-01-01 dir-left)
    (MOVE-DIR pos-02-01 pos-03-01 dir-right) (MOVE-DIR pos-03-01 pos-02-01 dir-left)
    (at player-01 pos-01-01) (at stone-01 pos-02-01) (clear pos-03-01) (= (total-cost) 0))
  (:goal (and (at-goal stone-01)))
  (:metric minimize (total-cost)))"""


def test_compact_prompt_lists_init_and_goal_sorted() -> None:
    prompt = build_prompt(domain_pddl("blocksworld"), BLOCKS)
    assert prompt == (
        "init: (clear b1) (clear b10) (handempty) (on b1 b2) (ontable b2) (ontable b10)\n"
        "goal: (on b2 b10) (on b10 b1)\n"
        "plan:\n"
    )
    assert build_prompt(domain_pddl("blocksworld"), BLOCKS, "compact", domain="blocksworld") == prompt


def test_compact_sokoban_prompt_draws_the_map() -> None:
    prompt = build_prompt(domain_pddl("sokoban"), SOKOBAN)
    assert prompt == (
        "init: (at player-01 pos-01-01) (at stone-01 pos-02-01) (is-goal pos-03-01)\n"
        "map:\n"
        "row: pos-01-01 pos-02-01 pos-03-01\n"
        "goal: (at-goal stone-01)\n"
        "plan:\n"
    )


def test_sokoban_map_has_a_line_for_each_run_of_neighbouring_cells() -> None:
    from iterdeploy_trl.prompts import sokoban_map
    from iterdeploy_trl.sim import Simulator
    from iterdeploy_trl.tasks import generate_tasks

    # An L-shaped floor with a wall cell (03-02) inside its bounding box:
    #   01-01 02-01 03-01
    #   01-02 02-02   #
    init = [("at", "player-01", "pos-01-01"), ("at", "stone-01", "pos-02-02")]
    init += [("clear", c) for c in ("pos-02-01", "pos-03-01", "pos-01-02")]
    assert sokoban_map(init) == (
        "map:\nrow: pos-01-01 pos-02-01 pos-03-01\nrow: pos-01-02 pos-02-02\n"
        "col: pos-01-01 pos-01-02\ncol: pos-02-01 pos-02-02\n"
    )
    with pytest.raises(ValueError, match="pos-XX-YY"):
        sokoban_map([("clear", "cell-7")])
    # The map's neighbours are exactly the task's move-dir facts, on generated levels.
    for task in generate_tasks("sokoban", 20, 4, size=(1, 6)):
        sim = Simulator(domain_pddl("sokoban"), task.problem)
        pairs = set()
        for line in sokoban_map(sim.init_state).splitlines()[1:]:
            cells = line.split()[1:]
            pairs |= {p for a, b in pairwise(cells) for p in ((a, b), (b, a))}
        assert pairs == {(a[1], a[2]) for a in sim.init_state if a[0] == "move-dir"}


@pytest.mark.parametrize(("domain", "problem"), [("blocksworld", BLOCKS), ("sokoban", SOKOBAN)])
def test_compact_prompt_is_in_the_small_vocabulary(domain: str, problem: str) -> None:
    tok = build_tokenizer(domain)
    prompt = build_prompt(domain_pddl(domain), problem)
    ids = tok(prompt)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == prompt


def test_paper_prompt_has_task_examples_and_format() -> None:
    prompt = build_prompt(domain_pddl("blocksworld"), BLOCKS, "paper")
    assert domain_pddl("blocksworld").strip() in prompt and BLOCKS.strip() in prompt
    for name in ("gripper", "logistics"):
        dom, prob, plan = example(name)
        assert dom.strip() in prompt and prob.strip() in prompt and plan.strip() in prompt
    assert "```plan" in prompt and "one action a line" in prompt
    # The task comes after both examples.
    assert prompt.index(BLOCKS.strip()) > prompt.index(example("logistics")[2].strip())


def test_messages_wrap_the_paper_prompt() -> None:
    messages = build_messages(domain_pddl("sokoban"), SOKOBAN, domain="sokoban")
    assert messages == [{"role": "user", "content": build_prompt(domain_pddl("sokoban"), SOKOBAN, "paper")}]
    assert build_messages(domain_pddl("sokoban"), SOKOBAN, system=True)[0]["role"] == "system"


def test_domain_name_and_unknown_style() -> None:
    assert [domain_name(domain_pddl(d)) for d in ("blocksworld", "rovers", "sokoban")] == [
        "blocksworld",
        "rovers",
        "sokoban",
    ]
    with pytest.raises(ValueError, match="unknown prompt style"):
        build_prompt(domain_pddl("blocksworld"), BLOCKS, "verbose")


def test_rovers_note_describes_the_rovers_waypoint() -> None:
    from iterdeploy_trl.prompts import state_note

    state = {
        ("at", "rover0", "waypoint1"), ("at_soil_sample", "waypoint1"), ("at_rock_sample", "waypoint2"),
        ("visible_from", "objective0", "waypoint1"), ("visible_from", "objective1", "waypoint2"),
        ("can_traverse", "rover0", "waypoint1", "waypoint2"), ("visible", "waypoint1", "waypoint2"),
        ("can_traverse", "rover0", "waypoint1", "waypoint3"),  # not visible: navigate is illegal
        ("at_lander", "general", "waypoint0"), ("visible", "waypoint1", "waypoint0"),
        ("store_of", "rover0store", "rover0"), ("empty", "rover0store"),
    }
    assert state_note("rovers", state) == "; rover0 waypoint1 at_soil_sample objective0 waypoint2 general"
    full = (state - {("empty", "rover0store")}) | {("full", "rover0store"), ("calibrated", "camera0", "rover0")}
    assert state_note("rovers", full).endswith(" general full calibrated")
    assert state_note("blocksworld", {("clear", "b1")}) is None


def test_sokoban_note_lists_neighbours_and_open_pushes() -> None:
    from iterdeploy_trl.prompts import state_note

    row = ["pos-02-02", "pos-03-02", "pos-04-02", "pos-05-02"]
    moves = {("move-dir", a, b, "dir-right") for a, b in pairwise(row)}
    moves |= {("move-dir", b, a, "dir-left") for a, b in pairwise(row)}
    state = moves | {("at", "player-01", "pos-02-02"), ("at", "stone-01", "pos-03-02"), ("is-goal", "pos-04-02"),
                     ("clear", "pos-04-02"), ("clear", "pos-05-02")}
    # The only neighbour holds a stone that can be pushed onto a goal.
    assert state_note("sokoban", state) == (
        "; player-01 pos-02-02 stone-01 pos-03-02 dir-right pos-03-02 stone-01 pos-04-02 is-goal"
    )
    # A second stone beyond the first: the push is blocked, so no cell follows the stone.
    blocked = (state - {("clear", "pos-04-02")}) | {("at", "stone-02", "pos-04-02")}
    assert state_note("sokoban", blocked).endswith("dir-right pos-03-02 stone-01")
