"""The one place that builds prompts.

Two styles:

- ``"paper"`` (real LLMs): the study's prompt. The domain PDDL, the task PDDL, two worked examples from
  unrelated domains (Gripper and Logistics) and the answer format: reason first, then the plan, one
  action a line in parentheses, in a fenced ``plan`` block. ``build_messages`` wraps it as chat
  messages for a tokenizer's chat template.
- ``"compact"`` (the small local model): ``init: (atom) ... \\n goal: (atom) ... \\n plan:\\n``, every
  word in the small model's vocabulary (``models.build_tokenizer``). Atoms are lower-cased and sorted
  (numbers in names compared as numbers) so that the same task always gives the same prompt.

Sokoban's compact prompt draws the level instead of listing ``clear``, ``move-dir`` and ``is-nongoal``
facts: a ``map:`` section with one ``row:`` line for each horizontal run of two or more floor cells and
one ``col:`` line for each vertical run, cells in order. It holds the same information (the floor is
every cell on the map; ``move-dir`` links cells next to each other on a line, rightwards/downwards or
back; ``clear`` is every floor cell no ``at`` fact occupies; ``is-nongoal`` every floor cell not
``is-goal``) in fewer tokens than the clear facts alone, and a neighbour of a cell is the word next to
it on a line, which a small model finds by matching the cell's name (where listing ``move-dir`` facts
would make a level-10 prompt ~1700 tokens instead of ~300). Level 1 (3x3 room)::

    init: (at player-01 pos-02-02) (at stone-01 pos-02-03) (is-goal pos-02-04)
    map:
    row: pos-02-02 pos-03-02 pos-04-02
    row: pos-02-03 pos-03-03
    col: pos-02-02 pos-02-03 pos-02-04
    col: pos-03-02 pos-03-03
    goal: (at-goal stone-01)
    plan:

**State notes** (rovers and sokoban, ``model.base_notes``). The small model may write a ``;`` comment
before its first action and after each action, saying what the state it is in holds that decides which
actions are legal next (``state_note``): a rover's waypoint, the samples there, the objectives it sees,
the waypoints it can drive to and the landers it can talk to; the player's and stones' cells, the player's
neighbours and the pushes open to it. VAL and ``extract.py`` skip comments, so the plan is unchanged; the
notes play the part of the study's reasoning, turning "which facts hold where I am now" from a lookup over
the prompt and every earlier action into a copy from the line above. Pretraining walks carry the notes the
simulator computes; nothing in them refers to the goal::

    ; rover0 waypoint0 at_soil_sample waypoint1 waypoint3 general
    (navigate rover0 waypoint0 waypoint3) ; rover0 waypoint3 at_rock_sample objective0 waypoint0 general
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from iterdeploy_trl.domains import example, get, is_registered, view
from iterdeploy_trl.domains.common import NOTE, natural_key  # noqa: F401  (re-exported: prompts.NOTE, prompts.natural_key)

STYLES: tuple[str, ...] = ("compact", "paper")

# Per-domain views over the registry (domains/<name>/prompt.py), read on access: facts left out of compact
# prompts because the map or other facts imply them; words of the compact prompt beyond init:/goal:/plan:
# (models.vocabulary adds them); the compact prompt's version (bumped when it changes: cached base models
# were pretrained on the old one).
COMPACT_OMIT = view(lambda d: d.compact_omit)
COMPACT_KEYWORDS = view(lambda d: d.compact_keywords)
COMPACT_PROMPT_VERSION = view(lambda d: d.compact_prompt_version)

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

    init = list(init)
    spec = get(domain) if is_registered(domain) else None
    omit = spec.compact_omit if spec else frozenset()
    init_text = " ".join(format_atom(a) for a in sorted((a for a in init if a[0] not in omit), key=natural_key))
    goal_text = " ".join(format_atom(a) for a in sorted(goal, key=natural_key))
    extra = spec.compact_map(init) if spec and spec.compact_map else ""
    return f"init: {init_text}\n{extra}goal: {goal_text}\nplan:\n"


def sokoban_map(init: Iterable[tuple[str, ...]]) -> str:
    """The ``map:`` section of a sokoban state (``domains/sokoban/prompt.py``)."""
    from iterdeploy_trl.domains.sokoban.prompt import compact_map

    return compact_map(init)


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


# ----------------------------------------------------------------------------------------- notes

def state_note(domain: str, state: Iterable[tuple[str, ...]]) -> str | None:
    """A ``; ...`` comment describing the facts of ``state`` that the next action's legality turns on
    (the domain's ``prompt.state_note``), or None for a domain without notes:

    - rovers: for each rover, its waypoint, then what is there (``at_soil_sample``, ``at_rock_sample``),
      the objectives visible from it, the waypoints it can drive to, the landers it can talk to, and
      ``full`` / ``calibrated`` when its store is full / a camera of its is calibrated;
    - sokoban: where the player and each stone are now, then for each direction with a floor cell next to
      the player: the direction and the cell, and when a stone is on it, the stone and, if the cell beyond
      is clear, that cell (and ``is-goal`` when it is a goal): the pushes open to the player.
    """
    note = get(domain).state_note if is_registered(domain) else None
    if note is None:
        return None
    return note(state if isinstance(state, set | frozenset) else set(state))


def annotated_plan(domain: str, states: list, actions: Iterable[str]) -> str:
    """A plan one action a line, each followed by the note of the state it leads to, after a first line
    with the note of the initial state; ``states`` are the initial state and each action's successor.
    Without notes for ``domain``, the plain plan."""
    notes = [state_note(domain, s) for s in states]
    if notes[0] is None:
        return "".join(a + "\n" for a in actions)
    return notes[0] + "\n" + "".join(f"{a} {n}\n" for a, n in zip(actions, notes[1:], strict=True))
