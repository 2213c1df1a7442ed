"""One SGD step of each trainer on fixed data, and the update the loss formula says that step makes.

``test_trainers.py`` runs the steps in-process under several micro-batchings; launched under two processes
(``python -m accelerate.commands.launch --multi_gpu --num_processes 2 tests/trainer_steps.py OUT``) this
file runs ``TWO_PROCESS_STEPS`` and writes each step's update (and what the reward function scored on each
process) under OUT, for ``test_trainers.test_two_processes_make_the_same_step``.

A step's update is compared with ``expected_update``: −lr ∇L at the initial weights, L computed by the
``losses`` formulas on per-trace log-probs from a separate, plain forward of each trace on its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from iterdeploy_trl.domains import domain_pddl
from iterdeploy_trl.models import build_tokenizer, make_small_model
from iterdeploy_trl.prompts import build_prompt
from iterdeploy_trl.tasks import generate_tasks
from iterdeploy_trl.trainers import (
    ImportanceWeightedSFTConfig,
    ImportanceWeightedSFTTrainer,
    ReinforceConfig,
    ReinforceTrainer,
    ValidTraceSFTConfig,
    ValidTraceSFTTrainer,
    losses,
)

DOMAIN = domain_pddl("blocksworld")
CPU = {
    "report_to": [],
    "bf16": False,
    "use_cpu": True,
    "save_strategy": "no",
    "activation_checkpointing": False,
    "disable_tqdm": True,
    "logging_steps": 1,
}
LR = 1.0  # a large SGD step: the update stands far above float32 rounding of the weights
STEP = {
    "max_steps": 1,
    "optim": "sgd",
    "learning_rate": LR,
    "max_grad_norm": 0.0,
    "weight_decay": 0.0,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "seed": 0,
    "data_seed": 0,
}
GLOBAL_BATCH = 4  # traces (SFT) or samples (REINFORCE) per optimizer step
OFFSETS = (-1.5, 0.4, 2.0, -0.3)  # log β − log π of the four IW traces: weights e^{-offset}, all different
NUM_GENERATIONS = 2
MAX_COMPLETION = 8


def tokenizer() -> Any:
    return build_tokenizer("blocksworld")


def model(tok: Any) -> torch.nn.Module:
    return make_small_model(tok, "tiny", seed=0)


def flat(m: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double() for p in m.parameters()])


def sft_rows() -> list[dict[str, str]]:
    """Four valid traces of different lengths (3-6 blocks: reference plans of 2-10 actions)."""
    tasks = generate_tasks("blocksworld", GLOBAL_BATCH, 3, size=(3, 6))
    return [
        {"prompt": build_prompt(DOMAIN, t.problem), "completion": "\n".join(t.reference_plan) + "\n"}
        for t in tasks
    ]


def trace_tensors(tok: Any, rows: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of each text row as TRL tokenises it (completion + EOS)."""
    out = []
    for r in rows:
        prompt = tok(r["prompt"])["input_ids"]
        full = tok(r["prompt"] + r["completion"] + tok.eos_token)["input_ids"]
        assert full[: len(prompt)] == prompt
        out.append((prompt, full[len(prompt) :]))
    return out


def per_trace_logps(
    m: torch.nn.Module, traces: list[tuple[list[int], list[int]]]
) -> tuple[torch.Tensor, ...]:
    """Per-token log π of each completion, one plain forward per trace: (N, T) log-probs and mask."""
    rows = []
    for prompt, completion in traces:
        ids = torch.tensor([prompt + completion])
        logits = m(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        rows.append(torch.log_softmax(logits.double(), -1).gather(-1, ids[0, len(prompt) :, None])[:, 0])
    width = max(len(r) for r in rows)
    logps = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])
    mask = torch.tensor([[1.0] * len(c) + [0.0] * (width - len(c)) for _, c in traces], dtype=torch.float64)
    return logps, mask


def iw_rows(tok: Any) -> list[dict[str, Any]]:
    """The SFT traces with log β = log π₀ + offset (π₀ the initial model), so that w = e^{−offset}."""
    rows = sft_rows()
    with torch.no_grad():
        logps, mask = per_trace_logps(model(tok), trace_tensors(tok, rows))
    seq = losses.sequence_logprobs(logps, mask)
    return [{**r, "behaviour_logprob": float(s) + o} for r, s, o in zip(rows, seq, OFFSETS, strict=True)]


def expected_sft_update(tok: Any, rows: list[dict[str, Any]], normalization: str, iw: dict | None = None):
    """−lr ∇L at the initial weights, L = losses.iw_sft_loss (weights from losses.importance_weights on
    log π₀ and the rows' log β with the options ``iw``) or losses.sft_loss."""
    m = model(tok)
    logps, mask = per_trace_logps(m, trace_tensors(tok, rows))
    if iw is None:
        loss = losses.sft_loss(logps, mask, normalization)
    else:
        beta = torch.tensor([r["behaviour_logprob"] for r in rows], dtype=torch.float64)
        weights = losses.importance_weights(
            losses.sequence_logprobs(logps, mask).detach(), beta, lengths=mask.sum(-1), **iw
        ).weights
        loss = losses.iw_sft_loss(logps, mask, weights, normalization)
    grads = torch.autograd.grad(loss, list(m.parameters()))
    return -LR * torch.cat([g.flatten() for g in grads])


def sft_step(tok: Any, out: Path, batch: int, accumulation: int, normalization: str, iw: dict | None = None):
    """The update of one ValidTraceSFTTrainer (or, with ``iw`` options, ImportanceWeightedSFTTrainer) step."""
    m = model(tok)
    before = flat(m)
    common = {
        **CPU,
        **STEP,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": accumulation,
    }
    if iw is None:
        args = ValidTraceSFTConfig(str(out), loss_normalization=normalization, **common)
        trainer = ValidTraceSFTTrainer(
            m, args=args, train_dataset=Dataset.from_list(sft_rows()), processing_class=tok
        )
    else:
        # the options not in ``iw`` at losses.importance_weights' defaults, as expected_sft_update computes them
        # (the trainer's own defaults are the run config's: truncated at 10, self-normalised)
        options = {"iw_truncate": None, "iw_self_normalize": False, "iw_per_token": False,
                   **{f"iw_{k}": v for k, v in iw.items()}}
        args = ImportanceWeightedSFTConfig(str(out), loss_normalization=normalization, **options, **common)
        trainer = ImportanceWeightedSFTTrainer(
            m, args=args, train_dataset=Dataset.from_list(iw_rows(tok)), processing_class=tok
        )
    trainer.train()
    return flat(trainer.model) - before


class AlternatingReward:
    """A test reward that gives 1, 0, 0, 1, 1, 0, 0, 1, ... by position in each call (mixed in every group of
    two and between groups), recording what it scored. Not VAL: the trainer's arithmetic is under test."""

    __name__ = "alternating"

    def __init__(self) -> None:
        self.scored: list[dict[str, Any]] = []

    def __call__(self, prompts: list, completions: list, completion_ids: list, **kwargs: Any) -> list[float]:
        rewards = [float(i % 4 in (0, 3)) for i in range(len(completions))]
        for prompt, ids, r in zip(prompts, completion_ids, rewards, strict=True):
            self.scored.append({"prompt": prompt, "completion_ids": list(ids), "reward": r})
        return rewards


def rl_rows() -> Dataset:
    """16 prompts of distinct 3-4 block tasks (each step samples 2 of them, 2 completions each)."""
    tasks = {t.problem: t for t in generate_tasks("blocksworld", 32, 0, size=(3, 4))}
    return Dataset.from_list(
        [
            {"prompt": build_prompt(DOMAIN, p), "domain_pddl": DOMAIN, "problem_pddl": p}
            for p in list(tasks)[:16]
        ]
    )


def reinforce_step(
    tok: Any,
    out: Path,
    batch: int,
    accumulation: int,
    baseline: str,
    normalization: str,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The update of one ReinforceTrainer step (SGD) and the samples it scored, in order."""
    m = model(tok)
    before = flat(m)
    reward = AlternatingReward()
    args = ReinforceConfig(
        str(out),
        baseline=baseline,
        loss_normalization=normalization,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        num_generations=NUM_GENERATIONS,
        max_completion_length=MAX_COMPLETION,
        temperature=temperature,
        top_p=top_p,
        **CPU,
        **STEP,
    )
    trainer = ReinforceTrainer(
        m, reward_funcs=[reward], args=args, train_dataset=rl_rows(), processing_class=tok
    )
    trainer.train()
    return flat(trainer.model) - before, reward.scored


def sampler_logps(
    m: torch.nn.Module, traces: list[tuple[list[int], list[int]]], temperature: float, top_p: float
) -> tuple[torch.Tensor, ...]:
    """Per-token log q of each completion under the sampler transformers' generate() draws from with this
    temperature and top-p (its own TemperatureLogitsWarper and TopPLogitsWarper, not the package's code),
    one plain forward per trace: (N, T) log-probs and mask."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
    rows = []
    for prompt, completion in traces:
        ids = torch.tensor([prompt + completion])
        scores = m(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        for warper in warpers:
            scores = warper(ids, scores)
        row = torch.log_softmax(scores, -1).gather(-1, ids[0, len(prompt) :, None])[:, 0]
        assert torch.isfinite(row).all(), "a sampled token is outside the nucleus of the initial model"
        rows.append(row.double())
    width = max(len(r) for r in rows)
    logps = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])
    mask = torch.tensor([[1.0] * len(c) + [0.0] * (width - len(c)) for _, c in traces], dtype=torch.float64)
    return logps, mask


def expected_reinforce_update(
    tok: Any,
    scored: list[dict[str, Any]],
    baseline: str,
    normalization: str,
    temperature: float = 1.0,
    top_p: float = 1.0,
):
    """−lr ∇L at the initial weights, L = losses.policy_gradient_loss with losses.reinforce_advantages of the
    scored rewards (groups of NUM_GENERATIONS consecutive samples of one prompt); at a temperature or top-p
    other than 1, log π is the sampler's log q (``sampler_logps``)."""
    prompts = [s["prompt"] for s in scored]
    for g in range(0, len(prompts), NUM_GENERATIONS):
        assert len(set(prompts[g : g + NUM_GENERATIONS])) == 1, "a group mixes prompts"
    m = model(tok)
    traces = [(tok(s["prompt"])["input_ids"], s["completion_ids"]) for s in scored]
    if (temperature, top_p) == (1.0, 1.0):
        logps, mask = per_trace_logps(m, traces)
    else:
        logps, mask = sampler_logps(m, traces, temperature, top_p)
    rewards = torch.tensor([s["reward"] for s in scored], dtype=torch.float64)
    advantages = losses.reinforce_advantages(rewards, baseline, NUM_GENERATIONS)
    loss = losses.policy_gradient_loss(logps, mask, advantages, normalization)
    grads = torch.autograd.grad(loss, list(m.parameters()))
    return -LR * torch.cat([g.flatten() for g in grads])


def compare(update: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(cosine, norm ratio) of an update against the expected one."""
    cos = float(torch.nn.functional.cosine_similarity(update.double(), expected.double(), dim=0))
    return cos, float(update.norm() / expected.norm())


# --- two processes -----------------------------------------------------------------------------------------

# name: (kind, options); every step has GLOBAL_BATCH traces/samples: 2 per process, no accumulation
TWO_PROCESS_STEPS: dict[str, tuple[str, dict[str, Any]]] = {
    "sft-sequence_sum": ("sft", {"normalization": "sequence_sum"}),
    "sft-batch_tokens": ("sft", {"normalization": "batch_tokens"}),
    "iw-self_normalize": ("sft", {"normalization": "sequence_sum", "iw": {"self_normalize": True}}),
    "iw-truncate": ("sft", {"normalization": "batch_tokens", "iw": {"truncate": 1.5}}),
    "sft-sequence_mean": ("sft", {"normalization": "sequence_mean"}),
    **{
        f"reinforce-{baseline}-{normalization}": (
            "reinforce",
            {"baseline": baseline, "normalization": normalization},
        )
        for baseline in losses.BASELINES
        for normalization in losses.NORMALIZATIONS
    },
}


def main(out: Path) -> None:
    from accelerate import PartialState

    state = PartialState()
    torch.set_num_threads(1)
    tok = tokenizer()
    for name, (kind, options) in TWO_PROCESS_STEPS.items():
        work = out / name
        per_process = GLOBAL_BATCH // state.num_processes
        if kind == "sft":
            update = sft_step(
                tok, work / "trainer", per_process, 1, options["normalization"], options.get("iw")
            )
        else:
            update, scored = reinforce_step(
                tok, work / "trainer", per_process, 1, options["baseline"], options["normalization"]
            )
            work.mkdir(parents=True, exist_ok=True)
            (work / f"scored-{state.process_index}.json").write_text(json.dumps(scored))
        if state.is_main_process:
            work.mkdir(parents=True, exist_ok=True)
            torch.save(update, work / "update.pt")
        state.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
