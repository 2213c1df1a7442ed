"""The one place that builds prompts.

Two styles:

- ``"paper"`` (real LLMs): the study's prompt. The domain PDDL, the task PDDL, two worked examples from
  unrelated domains (Gripper and Logistics) and the answer format: reason first, then the plan, one
  action a line in parentheses, in a fenced ``plan`` block. ``build_messages`` wraps it as chat
  messages for a tokenizer's chat template.
- ``"compact"`` (the small local model): ``init: (atom) ... \\n goal: (atom) ... \\n plan:\\n``, every
  word in the small model's vocabulary (``models.build_tokenizer``). Atoms are lower-cased and sorted
  (numbers in names compared as numbers) so that the same task always gives the same prompt.

Sokoban's compact prompt leaves out ``move-dir`` and ``is-nongoal`` facts: they are implied by the
other facts (the floor is every cell named in ``clear``/``at`` facts, ``move-dir`` links floor cells
that are grid neighbours by their ``pos-XX-YY`` names, ``is-nongoal`` is every floor cell not
``is-goal``), and keeping them would make a level-10 prompt ~1700 tokens instead of ~300.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from iterdeploy_trl.domains import example

STYLES: tuple[str, ...] = ("compact", "paper")

# Static facts left out of compact prompts, per domain, because other facts imply them (see above).
COMPACT_OMIT: dict[str, frozenset[str]] = {
    "sokoban": frozenset({"move-dir", "is-nongoal"}),
}

_DOMAIN_NAMES = {"blocksworld": "blocksworld", "rover": "rovers", "sokoban-sequential": "sokoban"}

SYSTEM_PROMPT = "You are an expert in classical planning. You solve PDDL planning tasks exactly."

ANSWER_FORMAT = (
    "Think step by step about the task first. Then give the final plan: a single fenced code block "
    "marked `plan` that holds the plan's actions in order, one action a line, each written as in PDDL "
    "with its name and its objects in parentheses, for example `(pick ball1 rooma left)`. The plan "
    "must be executable from the initial state and must reach the goal."
)


def build_prompt(
    domain_pddl: str, problem_pddl: str, style: str = "compact", *, domain: str | None = None
) -> str:
    """The prompt of a task in ``style`` ("compact" or "paper"); ``domain`` (e.g. "sokoban") picks
    the facts a compact prompt leaves out and is read from the domain PDDL when not given."""
    if style == "compact":
        return compact_prompt(domain_pddl, problem_pddl, domain=domain)
    if style == "paper":
        return paper_prompt(domain_pddl, problem_pddl)
    raise ValueError(f"unknown prompt style {style!r}: choose one of {', '.join(STYLES)}")


def paper_answer(actions: Iterable[str], reasoning: str = "I look for a plan.") -> str:
    """A completion in the paper prompt's answer format, as a thinking model writes it after a generation
    prompt that opened ``<think>``: the reasoning, ``</think>``, then the plan in a fenced ``plan`` block."""
    plan = "".join(a + "\n" for a in actions)
    return f"{reasoning}\n</think>\n\n```plan\n{plan}```"


def build_messages(
    domain_pddl: str, problem_pddl: str, *, domain: str | None = None, system: bool = False
) -> list[dict[str, str]]:
    """The paper prompt as chat messages (one user turn; a system turn if ``system``)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    messages.append({"role": "user", "content": paper_prompt(domain_pddl, problem_pddl)})
    return messages


# ----------------------------------------------------------------------------------------- compact


def compact_prompt(
    domain_pddl: str,
    problem_pddl: str,
    *,
    domain: str | None = None,
    goal_atoms: Iterable[tuple[str, ...]] | None = None,
) -> str:
    """``init: (a) (b)\ngoal: (c)\nplan:\n``. ``goal_atoms`` replaces the task's goal (base-model
    pretraining pairs an initial state with an unrelated goal)."""
    from iterdeploy_trl.sim import Simulator  # lazy: parses PDDL, not needed for "paper"

    sim = Simulator(domain_pddl, problem_pddl)
    goal = sim.goal if goal_atoms is None else goal_atoms
    return format_compact(sim.init_state, goal, domain or domain_name(domain_pddl))


def format_compact(
    init: Iterable[tuple[str, ...]], goal: Iterable[tuple[str, ...]], domain: str | None = None
) -> str:
    """The compact prompt of a state and a goal given as atoms such as ``("on", "b1", "b2")``."""
    from iterdeploy_trl.sim import format_atom

    omit = COMPACT_OMIT.get(domain or "", frozenset())
    init_text = " ".join(format_atom(a) for a in sorted((a for a in init if a[0] not in omit), key=natural_key))
    goal_text = " ".join(format_atom(a) for a in sorted(goal, key=natural_key))
    return f"init: {init_text}\ngoal: {goal_text}\nplan:\n"


def natural_key(atom: tuple[str, ...]) -> tuple:
    """Sort key putting ``(on b2 b10)`` before ``(on b10 b2)`` (numbers compared as numbers)."""
    return tuple(tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", w)) for w in atom)


def domain_name(domain_pddl: str) -> str | None:
    """Our name of a shipped domain ("rovers" for ``(domain rover)``), from its ``define`` line."""
    match = re.search(r"\(\s*domain\s+([^\s()]+)", domain_pddl, flags=re.IGNORECASE)
    if not match:
        return None
    return _DOMAIN_NAMES.get(match.group(1).lower(), match.group(1).lower())


# ------------------------------------------------------------------------------------------- paper


def _example_block(title: str, name: str) -> str:
    dom, prob, plan = example(name)
    return (
        f"## {title}\n\n### Domain\n```pddl\n{dom.strip()}\n```\n\n### Task\n```pddl\n{prob.strip()}\n```\n\n"
        f"### Plan\n```plan\n{plan.strip()}\n```\n"
    )


def paper_prompt(domain_pddl: str, problem_pddl: str) -> str:
    """The study's prompt: the task's domain and problem, two solved examples, the answer format."""
    return (
        "You are given a classical planning task written in PDDL: a domain and a task (problem) of "
        "that domain. Find a plan that solves the task.\n\n"
        "Here are two examples of tasks from other domains with plans that solve them.\n\n"
        + _example_block("Example 1: Gripper", "gripper")
        + "\n"
        + _example_block("Example 2: Logistics", "logistics")
        + "\n## Your task\n\n### Domain\n```pddl\n"
        + domain_pddl.strip()
        + "\n```\n\n### Task\n```pddl\n"
        + problem_pddl.strip()
        + "\n```\n\n"
        + ANSWER_FORMAT
        + "\n"
    )
