"""Planning prompts, every valid plan of at most L actions by enumeration, and VAL rewards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from iterdeploy_trl.theory.policies import canonical_completion, encode_completion, encode_prompt


@dataclass(frozen=True)
class PlanningPrompt:
    """A task as the model sees it, with its canonical valid completions (for the exact checks)."""

    task_id: str
    problem: str
    prompt: str
    prompt_ids: tuple[int, ...]
    blocks: int
    reference_plan: tuple[str, ...]
    valid_plans: tuple[tuple[str, ...], ...] = ()
    valid_ids: tuple[tuple[int, ...], ...] = ()  # canonical completion of each valid plan


def enumerate_valid_plans(domain_pddl: str, problem: str, max_actions: int) -> list[tuple[str, ...]]:
    """Every plan of 1..``max_actions`` actions, each applicable in turn, whose last state is a goal state
    (what VAL calls valid), by depth-first search with the simulator; sorted by length, then text."""
    from iterdeploy_trl.sim import Simulator

    sim = Simulator(domain_pddl, problem)
    found: list[tuple[str, ...]] = []

    def extend(state: Any, plan: list[str]) -> None:
        if plan and sim.is_goal(state):
            found.append(tuple(plan))
        if len(plan) == max_actions:
            return
        for action in sim.applicable(state):
            extend(sim.apply(state, action), [*plan, action])

    extend(sim.init_state, [])
    return sorted(found, key=lambda p: (len(p), p))


def planning_prompts(
    tokenizer: Any,
    domain: str,
    blocks: int,
    count: int,
    seed: int,
    *,
    max_actions: int | None = None,
    domain_pddl: str | None = None,
) -> list[PlanningPrompt]:
    """``count`` blocksworld-style tasks of ``blocks`` blocks with distinct prompts (compact style), from
    ``tasks.generate_tasks(domain, ·, seed, size=(blocks, blocks))``; with ``max_actions``, each with
    every valid plan of at most that many actions in canonical completion format."""
    from iterdeploy_trl.domains import domain_pddl as shipped_domain
    from iterdeploy_trl.prompts import build_prompt
    from iterdeploy_trl.tasks import generate_task

    dom = domain_pddl or shipped_domain(domain)
    seen: dict[str, PlanningPrompt] = {}
    for index in range(200):
        task = generate_task(domain, seed, index, (blocks, blocks))
        prompt = build_prompt(dom, task.problem, "compact", domain=domain)
        if prompt in seen:
            continue
        plans: tuple[tuple[str, ...], ...] = ()
        ids: tuple[tuple[int, ...], ...] = ()
        if max_actions is not None:
            plans = tuple(enumerate_valid_plans(dom, task.problem, max_actions))
            if not plans:
                continue  # no plan within the bound: useless for the exact checks
            ids = tuple(encode_completion(tokenizer, prompt, canonical_completion(p)) for p in plans)
        seen[prompt] = PlanningPrompt(
            task.id,
            task.problem,
            prompt,
            tuple(encode_prompt(tokenizer, prompt)),
            blocks,
            tuple(task.reference_plan),
            plans,
            ids,
        )
        if len(seen) == count:
            break
    return list(seen.values())


def val_rewards(domain_pddl: str, problems: Sequence[str], texts: Sequence[str]) -> Tensor:
    """Binary rewards r = 1[VAL accepts the plan extracted from the completion], one per text (float64).

    Each distinct (problem, plan) is validated once (``extract.extract_plan`` then
    ``validate.validate_batch``); a completion without a readable plan scores 0."""
    from iterdeploy_trl.extract import extract_plan
    from iterdeploy_trl.validate import validate_batch

    keys: list[tuple[str, tuple[str, ...]] | None] = []
    for problem, text in zip(problems, texts, strict=True):
        extraction = extract_plan(text)
        keys.append((problem, extraction.actions) if extraction.found and extraction.actions else None)
    distinct = sorted({k for k in keys if k is not None})
    verdicts = validate_batch([(domain_pddl, p, list(a)) for p, a in distinct])
    valid = {k: v.valid for k, v in zip(distinct, verdicts, strict=True)}
    return torch.tensor(
        [float(valid.get(k, False)) if k is not None else 0.0 for k in keys], dtype=torch.float64
    )
