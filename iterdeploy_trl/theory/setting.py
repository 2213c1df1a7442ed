"""What the enumeration checks run on: ``TheoryConfig``, the warm-up of π, the choice of β (``build_setting``)."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from iterdeploy_trl.theory.actual_update import UpdateConfig
from iterdeploy_trl.theory.errors import TheoryError
from iterdeploy_trl.theory.gradients import ParamSet, trainable_parameters
from iterdeploy_trl.theory.pipeline import PipelineConfig
from iterdeploy_trl.theory.policies import (
    Policy,
    canonical_completion,
    check_same_tokenizer,
    completion_logprobs,
    encode_completion,
    sequence_logprobs,
    to_precision,
)
from iterdeploy_trl.theory.tasks import PlanningPrompt, planning_prompts
from iterdeploy_trl.trainers import losses


@dataclass
class TheoryConfig:
    """Settings of ``run_checks``; the defaults run every check on 2 CPU cores in a few minutes."""

    domain: str = "blocksworld"
    model_path: str | None = None  # a local HF causal LM; None: a fresh small model (``model_size``)
    beta_model_path: str | None = (
        None  # β from a local HF causal LM (same tokenizer); None: a warm-up checkpoint
    )
    model_size: str = "tiny"
    device: str = "cpu"
    dtype: str = "float64"  # exactness: cosines of 1 to ~1e-15
    seed: int = 0
    # on_policy_same_samples
    on_policy_blocks: tuple[int, ...] = (2, 3)
    on_policy_prompts_per_size: int = 2
    on_policy_samples: int = 32  # per prompt
    on_policy_max_new_tokens: int = 64
    # exact_gradient / off_policy / mixture
    exact_blocks: int = 2
    exact_prompts: int = 3
    max_actions: int = 6  # L: valid plans of at most L actions are enumerated
    sample_sizes: tuple[int, ...] = (4, 16, 64, 256)  # N, samples per prompt
    repeats: int = 10
    truncate: float = 2.0  # weight cap c of truncated importance weights
    lambdas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    mixture_lambda: float = 0.5  # the Monte-Carlo mixture
    # warm-up: a few SFT steps on canonical valid plans, until the exact valid mass reaches the targets
    warmup_max_actions: int = 4  # train on the enumerated valid plans of at most this many actions
    warmup_max_steps: int = 600
    warmup_lr: float = 1e-2
    beta_mass: float = 0.05  # β = the first checkpoint whose valid mass reaches this on every prompt
    pi_mass: float = 0.5  # π = the first checkpoint whose mean valid mass reaches this
    beta_temperature: float = 1.5  # β = π at this temperature when no earlier checkpoint exists
    # the pipeline checks (their own models; see ``pipeline.PipelineConfig``, ``actual_update.UpdateConfig``)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)


@dataclass
class Setting:
    """What the checks run on: π, β, parameters, prompts."""

    pi: Policy
    beta: Policy
    params: ParamSet
    exact_prompts: list[PlanningPrompt]
    on_policy_prompts: list[PlanningPrompt]
    domain_pddl: str
    info: dict[str, Any]


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TheoryError(f"unknown dtype {name!r}: use float64 (exact) or float32")
    return dtype


def tolerance(dtype: torch.dtype) -> float:
    """1 − cosine allowed for vectors that theory says are parallel."""
    return 1e-9 if dtype == torch.float64 else 1e-4


def valid_mass(policy: Policy, prompts: Sequence[PlanningPrompt]) -> list[float]:
    """Σ_{valid y} policy(y|x) per prompt (canonical completions of ≤ L actions), exactly."""
    return [float(sequence_logprobs(policy, p.prompt_ids, p.valid_ids).exp().sum()) for p in prompts]


def warm_up(
    model: torch.nn.Module,
    tokenizer: Any,
    train: Sequence[tuple[Sequence[int], Sequence[int]]],
    eval_prompts: Sequence[PlanningPrompt],
    *,
    beta_mass: float,
    pi_mass: float,
    max_steps: int,
    lr: float,
    check_every: int = 5,
    log: Callable[[str], None] | None = None,
) -> tuple[torch.nn.Module | None, torch.nn.Module, dict[str, Any]]:
    """A few full-batch Adam steps (gradient norm clipped at 1) of SFT (``losses.sft_loss``, sequence_sum)
    on (prompt, completion) pairs, until the MEAN exact valid mass over ``eval_prompts`` reaches ``pi_mass``
    (or ``max_steps``), checked every ``check_every`` steps.

    Returns (β, π, log). π is the model when training stopped. β is a copy of the model at the first
    check where EVERY prompt's valid mass reached ``beta_mass`` (so that β's valid samples cover every
    prompt) while the mean was still below ``pi_mass``; failing that, the last checkpoint before π; None if
    training took no step (the caller then uses π at a higher temperature)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr) if trainable and max_steps > 0 else None
    by_prompt: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for prompt_ids, completion in train:
        by_prompt.setdefault(tuple(prompt_ids), []).append(tuple(completion))
    history: list[dict[str, Any]] = []
    beta: torch.nn.Module | None = None
    previous: tuple[int, torch.nn.Module] | None = None
    beta_step: int | None = None
    step = 0

    def masses() -> list[float]:
        model.eval()
        value = valid_mass(Policy(model, tokenizer), eval_prompts)
        history.append({"step": step, "valid_mass": [round(v, 6) for v in value]})
        return value

    current = masses()
    while optimizer is not None and statistics.fmean(current) < pi_mass and step < max_steps:
        previous = (step, copy.deepcopy(model))
        if beta is None and min(current) >= beta_mass:
            beta, beta_step = previous[1], step
        model.train()
        for _ in range(check_every):
            tls, masks = [], []
            for prompt_ids, completions in by_prompt.items():
                tl, m = completion_logprobs(Policy(model, tokenizer), prompt_ids, completions)
                tls.append(tl)
                masks.append(m)
            loss = losses.sft_loss(_pad_cat(tls), _pad_cat(masks), "sequence_sum")
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)  # Adam at this rate spikes without it
            optimizer.step()
            step += 1
        current = masses()
        if log:
            log(
                f"  warm-up step {step}: loss {loss.item():.2f}, valid mass per prompt "
                + " ".join(f"{m:.3f}" for m in current)
            )
    model.eval()
    if beta is None and previous is not None:
        beta_step, beta = previous
    info = {
        "steps": step,
        "lr": lr,
        "beta_step": beta_step,
        "beta_mass_target": beta_mass,
        "pi_mass_target": pi_mass,
        "history": history,
        "train_pairs": len(train),
    }
    return beta, model, info


def _pad_cat(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate (n_i, T_i) tensors along dim 0, right-padding with zeros to the longest T."""
    t_max = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, t_max - t.shape[1])) for t in tensors])


def build_setting(config: TheoryConfig, log: Callable[[str], None] | None = None) -> Setting:
    """Load or make π, warm it up on canonical valid plans, pick β, enumerate the valid plans."""
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.models import build_tokenizer, load_model_and_tokenizer, make_small_model

    dtype = _dtype(config.dtype)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise TheoryError(
            f"--device {config.device}: CUDA is not available on this machine; use --device cpu"
        )
    if config.repeats < 1 or not config.sample_sizes or min(config.sample_sizes) < 1:
        raise TheoryError("repeats and sample sizes must be positive")
    if config.model_path:
        try:
            model, tokenizer = load_model_and_tokenizer(config.model_path, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise TheoryError(str(exc)) from exc
        model_name = str(config.model_path)
    else:
        tokenizer = build_tokenizer(config.domain)
        model = make_small_model(tokenizer, config.model_size, seed=config.seed)
        model_name = f"make_small_model(size={config.model_size!r}, seed={config.seed}) (fresh)"
    trainable_parameters(model)  # fails early on a frozen model
    model.to(config.device)
    dom = domain_pddl(config.domain)
    exact = planning_prompts(
        tokenizer,
        config.domain,
        config.exact_blocks,
        config.exact_prompts,
        config.seed,
        max_actions=config.max_actions,
    )
    if not exact:
        raise TheoryError(
            f"no {config.exact_blocks}-block task has a plan of at most {config.max_actions} actions"
        )
    on_policy: list[PlanningPrompt] = []
    for blocks in config.on_policy_blocks:
        on_policy += planning_prompts(
            tokenizer, config.domain, blocks, config.on_policy_prompts_per_size, config.seed + 1
        )
    # Warm-up data: the short canonical valid plans of the exact prompts, the reference plans of the others.
    train = [
        (p.prompt_ids, ids)
        for p in exact
        for plan, ids in zip(p.valid_plans, p.valid_ids, strict=True)
        if len(plan) <= config.warmup_max_actions
    ]
    train += [
        (p.prompt_ids, encode_completion(tokenizer, p.prompt, canonical_completion(p.reference_plan)))
        for p in on_policy
        if p.prompt not in {e.prompt for e in exact}
    ]
    torch.manual_seed(config.seed)
    beta_model, pi_model, warm = warm_up(
        model,
        tokenizer,
        train,
        exact,
        beta_mass=config.beta_mass,
        pi_mass=config.pi_mass,
        max_steps=config.warmup_max_steps,
        lr=config.warmup_lr,
        log=log,
    )
    to_precision(pi_model, dtype)
    pi = Policy(pi_model, tokenizer, 1.0, "π")
    if config.beta_model_path:
        beta = _load_beta(config, tokenizer, dtype)
        warm["beta"] = f"loaded from {config.beta_model_path}"
    elif beta_model is None:
        beta = Policy(
            pi_model, tokenizer, config.beta_temperature, f"β = π at temperature {config.beta_temperature}"
        )
        warm["beta"] = (
            f"π at temperature {config.beta_temperature} (no earlier checkpoint reached the β mass)"
        )
    else:
        to_precision(beta_model, dtype).eval()
        for p in beta_model.parameters():
            p.requires_grad_(False)
        beta = Policy(beta_model, tokenizer, 1.0, f"β = π after {warm['beta_step']} warm-up steps")
        warm["beta"] = f"checkpoint after {warm['beta_step']} warm-up steps"
    params = trainable_parameters(pi_model)
    pi_mass, beta_mass = valid_mass(pi, exact), valid_mass(beta, exact)
    info = {
        "model": model_name,
        "parameters": params.size,
        "dtype": config.dtype,
        "device": config.device,
        "seed": config.seed,
        "repeats": config.repeats,
        "sample_sizes": list(config.sample_sizes),
        "max_actions": config.max_actions,
        "warmup": warm,
        "pi": pi.name,
        "beta": beta.name,
        "module_groups": list(params.groups),
        "tasks": {
            "on_policy": [{"id": p.task_id, "blocks": p.blocks, "prompt": p.prompt} for p in on_policy],
            "exact": [
                {
                    "id": p.task_id,
                    "blocks": p.blocks,
                    "prompt": p.prompt,
                    "valid_plans": len(p.valid_plans),
                    "valid_plan_lengths": sorted({len(v) for v in p.valid_plans}),
                    "valid_mass_pi": round(m_pi, 6),
                    "valid_mass_beta": round(m_b, 6),
                }
                for p, m_pi, m_b in zip(exact, pi_mass, beta_mass, strict=True)
            ],
        },
    }
    return Setting(pi, beta, params, exact, on_policy, dom, info)


def _load_beta(config: TheoryConfig, tokenizer: Any, dtype: torch.dtype) -> Policy:
    """β from ``config.beta_model_path``; its tokenizer must be π's."""
    from iterdeploy_trl.models import load_model_and_tokenizer

    try:
        model, beta_tokenizer = load_model_and_tokenizer(config.beta_model_path, device=config.device)
    except (OSError, ValueError) as exc:
        raise TheoryError(str(exc)) from exc
    check_same_tokenizer(tokenizer, beta_tokenizer)
    to_precision(model, dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Policy(model, tokenizer, 1.0, f"β = {config.beta_model_path}")
