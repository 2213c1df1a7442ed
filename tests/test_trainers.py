"""The three trainers on CPU with the tiny local model and real blocksworld tasks (reference plans that VAL
accepts): losses as ``losses`` defines them, gradients as the theory says, bad input as clear errors."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import trainer_steps
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from iterdeploy_trl.domains import domain_pddl
from iterdeploy_trl.models import build_tokenizer, make_small_model
from iterdeploy_trl.prompts import build_prompt
from iterdeploy_trl.reward import ValidPlanReward
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

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

DOMAIN = domain_pddl("blocksworld")
CPU = trainer_steps.CPU  # plain CPU training arguments (no bf16, no saving, a log every step)
# The 2-block task whose shortest plan is "(pick-up b2) (stack b2 b1)".
TWO_BLOCKS = generate_tasks("blocksworld", 3, 0, size=(2, 2))[2]
VALID = "(pick-up b2)\n(stack b2 b1)\n"
INVALID = ["(pick-up b1)\n(stack b1 b2)\n", "(pick-up b2)\n(put-down b2)\n"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("blocksworld")


def _model(tokenizer) -> torch.nn.Module:
    return make_small_model(tokenizer, "tiny", seed=0)


def _traces(n: int = 8) -> list[dict[str, str]]:
    """Valid blocksworld traces: compact prompts and their reference plans (VAL-valid by construction)."""
    tasks = generate_tasks("blocksworld", n, 0, size=(2, 4))
    return [
        {"prompt": build_prompt(DOMAIN, t.problem), "completion": "\n".join(t.reference_plan) + "\n"}
        for t in tasks
    ]


def _batch(trainer: Any, rows: int | None = None) -> dict[str, Any]:
    dataset = trainer.train_dataset
    examples = [dataset[i] for i in range(len(dataset) if rows is None else rows)]
    return trainer._prepare_inputs(trainer.data_collator(examples))


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


# --- valid-trace SFT ------------------------------------------------------------------------------------


def test_sft_loss_decreases_on_valid_traces(tokenizer, tmp_path: Path) -> None:
    args = ValidTraceSFTConfig(
        tmp_path, per_device_train_batch_size=4, max_steps=20, learning_rate=3e-3, max_length=256, **CPU
    )
    trainer = ValidTraceSFTTrainer(
        _model(tokenizer), args=args, train_dataset=Dataset.from_list(_traces()), processing_class=tokenizer
    )
    trainer.train()
    curve = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(curve) == 20
    assert sum(curve[-4:]) / 4 < 0.7 * sum(curve[:4]) / 4
    assert {"entropy", "mean_token_accuracy", "num_tokens"} <= set(trainer.state.log_history[0])


@pytest.mark.parametrize("normalization", losses.NORMALIZATIONS)
def test_sft_trainer_loss_is_the_formula_on_the_models_logits(
    tokenizer, tmp_path: Path, normalization
) -> None:
    """compute_loss (TRL's fused LM head) = losses.sft_loss on log-probs taken from the full logits."""
    args = ValidTraceSFTConfig(tmp_path, loss_normalization=normalization, **CPU)
    trainer = ValidTraceSFTTrainer(
        _model(tokenizer), args=args, train_dataset=Dataset.from_list(_traces(4)), processing_class=tokenizer
    )
    batch = _batch(trainer)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    token_logps = losses.token_logprobs(logits[:, :-1], labels, labels != -100)
    expected = losses.sft_loss(token_logps, labels != -100, normalization)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_batch_tokens_is_trls_loss_and_sequence_sum_a_constant_times_it(tokenizer, tmp_path: Path) -> None:
    rows = Dataset.from_list(_traces(4))
    trl_trainer = SFTTrainer(
        _model(tokenizer),
        args=SFTConfig(tmp_path / "trl", **CPU),
        train_dataset=rows,
        processing_class=tokenizer,
    )
    batch = _batch(trl_trainer)
    trl_loss = trl_trainer.compute_loss(trl_trainer.model, dict(batch))
    ours = {}
    for normalization in ("batch_tokens", "sequence_sum"):
        args = ValidTraceSFTConfig(tmp_path / normalization, loss_normalization=normalization, **CPU)
        trainer = ValidTraceSFTTrainer(
            _model(tokenizer), args=args, train_dataset=rows, processing_class=tokenizer
        )
        ours[normalization] = trainer.compute_loss(trainer.model, dict(batch))
    assert ours["batch_tokens"].item() == pytest.approx(trl_loss.item(), rel=1e-6)
    tokens, traces = (batch["labels"][:, 1:] != -100).sum().item(), batch["labels"].shape[0]
    assert ours["sequence_sum"].item() == pytest.approx(trl_loss.item() * tokens / traces, rel=1e-5)


@pytest.mark.parametrize("normalization", losses.NORMALIZATIONS)
def test_gradient_accumulation_gives_the_full_batch_step(tokenizer, tmp_path: Path, normalization) -> None:
    """One optimizer step on 3 traces = the same step as 2 accumulated micro-batches of 2 and 1 traces
    (unequal micro-batches: a per-micro-batch normalisation would weight the lone trace twice)."""
    rows = Dataset.from_list(_traces(3))
    params = []
    for batch_size, accumulation in ((3, 1), (2, 2)):
        args = ValidTraceSFTConfig(
            tmp_path / f"{batch_size}",
            loss_normalization=normalization,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            optim="sgd",
            learning_rate=0.1,
            max_grad_norm=0.0,
            lr_scheduler_type="constant",
            **CPU,
        )
        trainer = ValidTraceSFTTrainer(
            _model(tokenizer), args=args, train_dataset=rows, processing_class=tokenizer
        )
        trainer.train()
        params.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    assert torch.allclose(params[0], params[1], atol=1e-6)


@pytest.mark.parametrize(
    ("trainer_class", "config_class"),
    [
        (ValidTraceSFTTrainer, ValidTraceSFTConfig),
        (ImportanceWeightedSFTTrainer, ImportanceWeightedSFTConfig),
    ],
)
def test_empty_training_set_is_a_clear_error(tokenizer, tmp_path: Path, trainer_class, config_class) -> None:
    empty = Dataset.from_dict({"prompt": [], "completion": [], "behaviour_logprob": []})
    with pytest.raises(ValueError, match="no valid traces yet: nothing to train on"):
        trainer_class(
            _model(tokenizer),
            args=config_class(tmp_path, **CPU),
            train_dataset=empty,
            processing_class=tokenizer,
        )


def test_training_rows_need_prompt_and_completion(tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'prompt' and 'completion'"):
        ValidTraceSFTTrainer(
            _model(tokenizer),
            args=ValidTraceSFTConfig(tmp_path, **CPU),
            train_dataset=Dataset.from_list([{"text": "init: goal: plan:\n(pick-up b1)\n"}]),
            processing_class=tokenizer,
        )


def test_overlong_rows_are_skipped_with_a_count_or_raise(tokenizer, tmp_path: Path, caplog) -> None:
    rows = _traces(6)
    lengths = [len(tokenizer(r["prompt"] + r["completion"])["input_ids"]) + 1 for r in rows]  # + EOS
    longest = max(range(len(rows)), key=lengths.__getitem__)
    max_length = lengths[longest] - 1
    too_long = sum(n > max_length for n in lengths)
    with caplog.at_level(logging.WARNING, logger="iterdeploy_trl.trainers.sft"):
        trainer = ValidTraceSFTTrainer(
            _model(tokenizer),
            args=ValidTraceSFTConfig(tmp_path / "skip", max_length=max_length, **CPU),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    assert trainer.num_overlong_skipped == {"train": too_long}
    assert len(trainer.train_dataset) == len(rows) - too_long
    assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) <= max_length
    assert f"skipped {too_long} of {len(rows)} rows" in caplog.text
    with pytest.raises(ValueError, match=f"row {longest} \\({lengths[longest]} tokens\\)"):
        ValidTraceSFTTrainer(
            _model(tokenizer),
            args=ValidTraceSFTConfig(
                tmp_path / "raise", max_length=max_length, overlong_policy="raise", **CPU
            ),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )


def test_sft_config_rejects_settings_that_break_the_loss(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loss_normalization"):
        ValidTraceSFTConfig(tmp_path, loss_normalization="token_mean", **CPU)
    with pytest.raises(ValueError, match="completion_only_loss"):
        ValidTraceSFTConfig(tmp_path, completion_only_loss=False, **CPU)
    with pytest.raises(ValueError, match="packing"):
        ValidTraceSFTConfig(tmp_path, packing=True, **CPU)


# --- importance-weighted SFT ----------------------------------------------------------------------------


def _trace_logprobs(tokenizer, rows: list[dict[str, Any]], tmp_path: Path) -> list[float]:
    """log π(y|x) of each row under the tiny model, one row at a time (the behaviour policy β = π)."""
    args = ValidTraceSFTConfig(tmp_path, **CPU)
    trainer = ValidTraceSFTTrainer(
        _model(tokenizer), args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.model.eval()
    out = []
    with torch.no_grad():
        for i in range(len(rows)):
            batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i]]))
            out.append(-trainer.compute_loss(trainer.model, batch).item())  # sequence_sum over one trace
    return out


def test_iw_sft_with_beta_equal_pi_is_valid_trace_sft(tokenizer, tmp_path: Path) -> None:
    rows = _traces(4)
    behaviour = _trace_logprobs(
        tokenizer, [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows], tmp_path / "b"
    )
    iw_rows = Dataset.from_list([{**r, "behaviour_logprob": b} for r, b in zip(rows, behaviour, strict=True)])
    iw = ImportanceWeightedSFTTrainer(
        _model(tokenizer),
        args=ImportanceWeightedSFTConfig(tmp_path / "iw", **CPU),
        train_dataset=iw_rows,
        processing_class=tokenizer,
    )
    sft = ValidTraceSFTTrainer(
        _model(tokenizer),
        args=ValidTraceSFTConfig(tmp_path / "sft", **CPU),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    iw_batch = _batch(iw)
    assert iw_batch["behaviour_logprob"].dtype == torch.float64
    sft_batch = {k: v for k, v in iw_batch.items() if k != "behaviour_logprob"}
    g_iw = _grads(iw.model, iw.compute_loss(iw.model, dict(iw_batch)))
    g_sft = _grads(sft.model, sft.compute_loss(sft.model, dict(sft_batch)))
    assert torch.allclose(g_iw, g_sft, rtol=1e-4, atol=1e-6)
    metrics = iw._metrics["train"]
    assert metrics["iw/weight_min"][0] == pytest.approx(1.0, abs=1e-4)
    assert metrics["iw/weight_max"][0] == pytest.approx(1.0, abs=1e-4)
    assert metrics["iw/ess"][0] == pytest.approx(4.0, abs=1e-3)


def test_iw_sft_trains_and_logs_its_weights(tokenizer, tmp_path: Path) -> None:
    rows = [{**r, "behaviour_logprob": -60.0 - 5 * i} for i, r in enumerate(_traces(8))]
    args = ImportanceWeightedSFTConfig(
        tmp_path, per_device_train_batch_size=4, max_steps=4, iw_truncate=10.0, iw_self_normalize=True, **CPU
    )
    trainer = ImportanceWeightedSFTTrainer(
        _model(tokenizer), args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4
    for log in logs:
        assert log["iw/weight_mean"] == pytest.approx(1.0, rel=1e-5)  # self-normalised
        assert 0 < log["iw/weight_min"] <= 1.0 <= log["iw/weight_max"]
        assert 1.0 <= log["iw/ess"] <= 4.0
        assert math.isfinite(log["loss"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "row 2 .* behaviour_logprob=None"),
        (float("nan"), "row 2 .* behaviour_logprob=nan"),
        (0.5, "row 2 .* behaviour_logprob=0.5, above 0"),
    ],
)
def test_iw_sft_names_the_row_without_a_behaviour_logprob(tokenizer, tmp_path: Path, value, message) -> None:
    rows = [{**r, "behaviour_logprob": -10.0} for r in _traces(4)]
    rows[2]["behaviour_logprob"] = value
    with pytest.raises(ValueError, match=message):
        ImportanceWeightedSFTTrainer(
            _model(tokenizer),
            args=ImportanceWeightedSFTConfig(tmp_path, **CPU),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )


def test_iw_sft_trainer_defaults_are_the_run_configs(tmp_path: Path) -> None:
    """A TRL user of ImportanceWeightedSFTConfig gets what the runs used: the run config's ``iw_sft`` section
    (IWSFTSettings) and the trainer config take each default from trainers.defaults, the one definition."""
    import dataclasses

    from iterdeploy_trl.methods.iw_sft import IWSFTSettings
    from iterdeploy_trl.trainers import defaults

    shared = {"truncate": ("iw_truncate", defaults.IW_TRUNCATE),
              "self_normalize": ("iw_self_normalize", defaults.IW_SELF_NORMALIZE),
              "per_token": ("iw_per_token", defaults.IW_PER_TOKEN)}
    assert {f.name for f in dataclasses.fields(IWSFTSettings)} == set(shared)  # a new setting joins this test
    run, trainer = IWSFTSettings(), ImportanceWeightedSFTConfig(tmp_path, **CPU)
    for setting, (field_name, default) in shared.items():
        assert getattr(run, setting) is default, setting
        assert getattr(trainer, field_name) is default, field_name


def test_iw_sft_needs_the_behaviour_logprob_column(tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no 'behaviour_logprob' column"):
        ImportanceWeightedSFTTrainer(
            _model(tokenizer),
            args=ImportanceWeightedSFTConfig(tmp_path, **CPU),
            train_dataset=Dataset.from_list(_traces(2)),
            processing_class=tokenizer,
        )


# --- REINFORCE ------------------------------------------------------------------------------------------


def _rl_rows(n: int) -> Dataset:
    prompt = build_prompt(DOMAIN, TWO_BLOCKS.problem)
    return Dataset.from_list(
        [{"prompt": prompt, "domain_pddl": DOMAIN, "problem_pddl": TWO_BLOCKS.problem}] * n
    )


def _rl_inputs(tokenizer, completions: list[str], advantages: list[float]) -> dict[str, torch.Tensor]:
    """A generation batch as GRPO's `_generate_and_score_completions` returns it (one prompt, no padding)."""
    prompt = build_prompt(DOMAIN, TWO_BLOCKS.problem)
    prompt_ids = torch.tensor([tokenizer(prompt)["input_ids"]] * len(completions))
    ids = [
        tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in completions
    ]
    width = max(map(len, ids))
    completion_ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids])
    completion_mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor(advantages),
        "num_items_in_batch": completion_mask.sum(),
    }


def test_reinforce_gradient_is_grpo_at_ratio_one_and_valid_trace_sft_times_valid_fraction(
    tokenizer, tmp_path: Path
) -> None:
    """Binary rewards, no baseline, one on-policy step: ∇L_REINFORCE = ∇L_GRPO (ratio 1, sequence-sum
    'luspo' aggregation, no KL) = (N⁺/N) ∇L_SFT on the valid traces (sequence_sum)."""
    completions = [VALID, INVALID[0], VALID, INVALID[1], INVALID[0] + "(pick-up b2)\n"]
    rewards = [1.0, 0.0, 1.0, 0.0, 0.0]
    inputs = _rl_inputs(tokenizer, completions, rewards)
    common = {"per_device_train_batch_size": 5, "num_generations": 5, **CPU}
    rl = ReinforceTrainer(
        _model(tokenizer),
        reward_funcs=ValidPlanReward(),
        args=ReinforceConfig(tmp_path / "rl", **common),
        train_dataset=_rl_rows(5),
        processing_class=tokenizer,
    )
    grpo = GRPOTrainer(
        _model(tokenizer),
        reward_funcs=ValidPlanReward(),
        args=GRPOConfig(tmp_path / "grpo", loss_type="luspo", scale_rewards="none", **common),
        train_dataset=_rl_rows(5),
        processing_class=tokenizer,
    )
    for trainer in (rl, grpo):
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
    loss = rl._compute_loss(rl.model, dict(inputs))
    g_rl = _grads(rl.model, loss)
    g_grpo = _grads(grpo.model, grpo._compute_loss(grpo.model, dict(inputs)))
    assert torch.allclose(g_rl, g_grpo, rtol=1e-5, atol=1e-7)

    prompt = build_prompt(DOMAIN, TWO_BLOCKS.problem)
    valid_rows = [{"prompt": prompt, "completion": c} for c, r in zip(completions, rewards, strict=True) if r]
    sft = ValidTraceSFTTrainer(
        _model(tokenizer),
        args=ValidTraceSFTConfig(tmp_path / "sft", **CPU),
        train_dataset=Dataset.from_list(valid_rows),
        processing_class=tokenizer,
    )
    g_sft = _grads(sft.model, sft.compute_loss(sft.model, _batch(sft)))
    assert _cos(g_rl, g_sft) == pytest.approx(1.0, abs=1e-6)
    assert (g_rl.norm() / g_sft.norm()).item() == pytest.approx(2 / 5, rel=1e-5)
    # the loss value is the REINFORCE surrogate −(1/N) Σ_i r_i log π(y_i|x_i)
    assert loss.item() == pytest.approx(2 / 5 * sft.compute_loss(sft.model, _batch(sft)).item(), rel=1e-5)


@pytest.mark.parametrize("normalization", losses.NORMALIZATIONS)
def test_reinforce_trainer_loss_is_the_formula(tokenizer, tmp_path: Path, normalization) -> None:
    """_compute_loss = losses.policy_gradient_loss on log-probs taken from the model's full logits."""
    completions = [VALID, INVALID[0] + INVALID[1], INVALID[1]]
    advantages = [1.0, -0.5, 0.25]
    inputs = _rl_inputs(tokenizer, completions, advantages)
    args = ReinforceConfig(
        tmp_path, loss_normalization=normalization, per_device_train_batch_size=3, num_generations=3, **CPU
    )
    trainer = ReinforceTrainer(
        _model(tokenizer), args=args, train_dataset=_rl_rows(3), processing_class=tokenizer
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, dict(inputs))
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    logits = trainer.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    width = inputs["completion_ids"].shape[1]
    mask = inputs["completion_mask"]
    token_logps = losses.token_logprobs(logits[:, -width - 1 : -1], inputs["completion_ids"], mask)
    expected = losses.policy_gradient_loss(token_logps, mask, inputs["advantages"], normalization)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_reinforce_with_the_val_reward_raises_the_valid_fraction(tokenizer, tmp_path: Path) -> None:
    """A 2-block task. The tiny model is first fitted (SFT) to three answers of which one is valid, so it
    starts at a small success rate; a few REINFORCE steps with the real VAL reward then move probability
    onto the valid plan."""
    model = _model(tokenizer)
    prompt = build_prompt(DOMAIN, TWO_BLOCKS.problem)
    warm = [{"prompt": prompt, "completion": c} for c in (VALID, *INVALID)]
    ValidTraceSFTTrainer(
        model,
        args=ValidTraceSFTConfig(
            tmp_path / "warm", per_device_train_batch_size=3, max_steps=80, learning_rate=1e-2, **CPU
        ),
        train_dataset=Dataset.from_list(warm),
        processing_class=tokenizer,
    ).train()

    def logp_valid() -> float:
        inputs = _rl_inputs(tokenizer, [VALID], [1.0])
        with torch.no_grad():
            return -trainer._compute_loss(trainer.model, inputs).item()  # −(1/1)·1·log π(valid)

    args = ReinforceConfig(
        tmp_path / "rl",
        per_device_train_batch_size=16,
        num_generations=16,
        max_completion_length=16,
        max_steps=10,
        learning_rate=3e-4,
        **CPU,
    )
    trainer = ReinforceTrainer(model, args=args, train_dataset=_rl_rows(160), processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1
    before = logp_valid()
    trainer.train()
    after = logp_valid()
    valid = [h["reward/valid_fraction"] for h in trainer.state.log_history if "reward/valid_fraction" in h]
    assert len(valid) == 10
    assert valid == [h["reward"] for h in trainer.state.log_history if "reward/valid_fraction" in h]
    assert after > before + 0.5
    assert sum(valid[-3:]) / 3 > valid[0] + 0.3


def test_reinforce_advantages_replace_grpos(tokenizer, tmp_path: Path) -> None:
    """The advantages trained on are losses.reinforce_advantages of the rewards: raw rewards by default."""
    for baseline in ("none", "leave_one_out"):
        args = ReinforceConfig(
            tmp_path / baseline,
            baseline=baseline,
            per_device_train_batch_size=4,
            num_generations=4,
            max_completion_length=12,
            **CPU,
        )
        trainer = ReinforceTrainer(
            _model(tokenizer), args=args, train_dataset=_rl_rows(4), processing_class=tokenizer
        )
        trainer.model.train()
        out = trainer._generate_and_score_completions([trainer.train_dataset[i] for i in range(4)])
        rewards = trainer._rewards_per_func[:, 0]
        expected = losses.reinforce_advantages(rewards, baseline, 4)
        assert torch.equal(out["advantages"], expected)
        assert list(trainer._logs["advantages"]) == expected.tolist()


def test_reinforce_config_rejects_off_objective_settings(tmp_path: Path) -> None:
    common = {"per_device_train_batch_size": 4, "num_generations": 4, **CPU}
    for bad in ({"beta": 0.1}, {"num_iterations": 2}, {"entropy_coef": 0.01}, {"baseline": "std"}):
        with pytest.raises(ValueError):
            ReinforceConfig(tmp_path, **common, **bad)
    with pytest.raises(ValueError, match="off-policy"):
        ReinforceConfig(tmp_path, steps_per_generation=2, gradient_accumulation_steps=1, **common)
    config = ReinforceConfig(tmp_path, **common)
    assert (config.baseline, config.loss_normalization, config.beta, config.scale_rewards) == (
        "none",
        "sequence_sum",
        0.0,
        "none",
    )


# --- token-id rows ----------------------------------------------------------------------------------------


def test_token_id_rows_are_trained_on_exactly_as_given(tokenizer, tmp_path: Path) -> None:
    """prompt_ids + completion_ids are the training sequence: no re-tokenisation, no EOS appended (the first
    row ends on its own stop token, the second is a truncated sample without one)."""
    prompt = tokenizer(build_prompt(DOMAIN, TWO_BLOCKS.problem))["input_ids"]
    plan = tokenizer(VALID, add_special_tokens=False)["input_ids"]
    rows = [
        {"prompt_ids": prompt, "completion_ids": [*plan, tokenizer.eos_token_id]},
        {"prompt_ids": prompt, "completion_ids": plan[:3]},  # cut by max_new_tokens: no EOS
    ]
    trainer = ValidTraceSFTTrainer(
        _model(tokenizer),
        args=ValidTraceSFTConfig(tmp_path, max_length=256, **CPU),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    data = trainer.train_dataset
    assert data["input_ids"] == [r["prompt_ids"] + r["completion_ids"] for r in rows]
    for row, labels in zip(rows, data["labels"], strict=True):
        assert labels == [-100] * len(row["prompt_ids"]) + row["completion_ids"]
    batch = _batch(trainer)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    expected = losses.sft_loss(losses.token_logprobs(logits[:, :-1], labels, labels != -100), labels != -100)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert (labels != -100).sum(-1).tolist() == [len(plan) + 1, 3]


def test_token_id_rows_with_missing_ids_are_a_clear_error(tokenizer, tmp_path: Path) -> None:
    ids = tokenizer(VALID)["input_ids"]
    bad = [{"prompt_ids": ids, "completion_ids": ids}, {"prompt_ids": ids, "completion_ids": None}]
    with pytest.raises(ValueError, match="row 1 of the train dataset has prompt_ids=.* completion_ids=None"):
        ValidTraceSFTTrainer(
            _model(tokenizer),
            args=ValidTraceSFTConfig(tmp_path, **CPU),
            train_dataset=Dataset.from_list(bad),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="give both 'prompt_ids' and 'completion_ids'"):
        ValidTraceSFTTrainer(
            _model(tokenizer),
            args=ValidTraceSFTConfig(tmp_path, **CPU),
            train_dataset=Dataset.from_list([{"prompt": "x", "completion": "y", "completion_ids": ids}]),
            processing_class=tokenizer,
        )


# --- importance weights under the sampler's distribution --------------------------------------------------


def _sampled_rows(model, tok, prompts: list[str], temperature: float, top_p: float, max_new_tokens: int):
    """Samples of the package's TransformersBackend as training rows, as the loop makes them: the prompt
    tokens as the backend feeds them, the completion's tokens as sampled (``Completion.token_ids``: the stop
    token included, none when cut by max_new_tokens), the backend's behaviour log-prob."""
    from iterdeploy_trl.deploy import TransformersBackend

    samples = TransformersBackend(model, tok, batch_size=64).generate(
        prompts, num_samples=4, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=0
    )
    rows = []
    for prompt, row in zip(prompts, samples, strict=True):
        for c in row:
            assert len(c.token_ids) == c.completion_tokens and (c.stop_token_id is None) == c.truncated
            rows.append(
                {
                    "prompt": prompt,
                    "completion": c.text,
                    "prompt_ids": tok(prompt)["input_ids"],
                    "completion_ids": list(c.token_ids),
                    "behaviour_logprob": c.behaviour_logprob,
                    "truncated": c.truncated,
                }
            )
    return rows


def _weights_at_beta_equal_pi(model, tok, rows, tmp_path: Path, **config) -> list[float]:
    """The importance weights one IW-SFT optimizer step (all rows, learning rate 0) computes, read from the
    trainer's own log (every weight lies in [iw/weight_min, iw/weight_max]). Everything else is
    ImportanceWeightedSFTConfig's default (bf16=True among them)."""
    data = Dataset.from_list([{k: v for k, v in r.items() if k != "truncated"} for r in rows])
    args = ImportanceWeightedSFTConfig(
        tmp_path,
        report_to=[],
        per_device_train_batch_size=len(rows),
        max_steps=1,
        learning_rate=0.0,
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        use_cpu=not torch.cuda.is_available(),
        **config,
    )
    trainer = ImportanceWeightedSFTTrainer(model, args=args, train_dataset=data, processing_class=tok)
    assert len(trainer.train_dataset) == len(rows)  # no row skipped
    trainer.train()
    log = next(h for h in trainer.state.log_history if "iw/weight_min" in h)
    return [log["iw/weight_min"], log["iw/weight_max"]]


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.6, 1.0), (0.6, 0.95)])
def test_weights_are_one_when_beta_is_pi_on_the_small_model(tiny_base_model, tmp_path, temperature, top_p):
    """β = π (the model that sampled is the one trained) ⇒ every w = 1 to 1e-3, at the sampler's temperature
    and top-p, under the config's defaults (bf16 autocast on), truncated samples included."""
    from iterdeploy_trl.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_base_model)
    prompts = [build_prompt(DOMAIN, t.problem) for t in generate_tasks("blocksworld", 6, 1, size=(2, 4))]
    rows = _sampled_rows(model, tok, prompts, temperature, top_p, max_new_tokens=24)
    assert {r["truncated"] for r in rows} == {True, False}
    low, high = _weights_at_beta_equal_pi(
        model, tok, rows, tmp_path, sampling_temperature=temperature, sampling_top_p=top_p
    )
    assert 1 - 1e-3 < low <= high < 1 + 1e-3, (low, high)


def test_weights_at_a_temperature_come_from_the_training_forward(tiny_base_model, tmp_path):
    """With bf16=False and no dropout, the weights at T = 0.6 / top-p 0.95 take the training forward's hidden
    states through the LM head again (no second forward: one backbone call a step), and β = π still gives every
    w = 1 to 1e-3."""
    from iterdeploy_trl.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_base_model)
    prompts = [build_prompt(DOMAIN, t.problem) for t in generate_tasks("blocksworld", 6, 1, size=(2, 4))]
    rows = _sampled_rows(model, tok, prompts, 0.6, 0.95, max_new_tokens=24)
    calls = []
    handle = model.base_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        low, high = _weights_at_beta_equal_pi(
            model, tok, rows, tmp_path, sampling_temperature=0.6, sampling_top_p=0.95, bf16=False
        )
    finally:
        handle.remove()
    assert len(calls) == 1, f"{len(calls)} backbone forwards for one optimizer step of one micro-batch"
    assert 1 - 1e-3 < low <= high < 1 + 1e-3, (low, high)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.6, 0.95)])
def test_weights_are_one_when_beta_is_pi_on_the_bpe_chat_model(chat_model, tmp_path, temperature, top_p):
    """The byte-level BPE chat model, where decoded text re-tokenises to other tokens: trained on the sampled
    ids, no row is skipped and every w = 1 to 1e-3."""
    from conftest import paper_run_config

    from iterdeploy_trl.config import config_from_dict
    from iterdeploy_trl.deployment import prompt_for
    from iterdeploy_trl.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(chat_model, dtype="float32")
    cfg = config_from_dict(paper_run_config(chat_model))
    prompts = [prompt_for(cfg, DOMAIN, t, tok) for t in generate_tasks("blocksworld", 4, 0, size=(2, 3))]
    rows = _sampled_rows(model, tok, prompts, temperature, top_p, max_new_tokens=48)
    low, high = _weights_at_beta_equal_pi(
        model, tok, rows, tmp_path, sampling_temperature=temperature, sampling_top_p=top_p, max_length=4096
    )
    assert 1 - 1e-3 < low <= high < 1 + 1e-3, (low, high)


# --- the same optimizer step however the batch is split ---------------------------------------------------

SPLITS = [(4, 1), (2, 2), (1, 4)]  # (per-device batch, accumulation steps): 4 traces an optimizer step


def _close_to(update: torch.Tensor, expected: torch.Tensor) -> None:
    cos, ratio = trainer_steps.compare(update, expected)
    assert cos >= 0.9999 and abs(ratio - 1) <= 1e-3, (cos, ratio)


@pytest.mark.parametrize("normalization", losses.NORMALIZATIONS)
def test_sft_step_is_the_formulas_under_any_micro_batching(tokenizer, tmp_path: Path, normalization) -> None:
    """One SGD step on 4 traces of different lengths, as 4×1, 2×2 and 1×4 micro-batches: each update is
    −lr ∇ losses.sft_loss over the whole batch (cosine ≥ 0.9999, norm within 1e-3)."""
    expected = trainer_steps.expected_sft_update(tokenizer, trainer_steps.sft_rows(), normalization)
    for batch, accumulation in SPLITS:
        update = trainer_steps.sft_step(tokenizer, tmp_path / f"{batch}", batch, accumulation, normalization)
        _close_to(update, expected)


@pytest.mark.parametrize(
    ("iw", "normalization"),
    [
        ({"self_normalize": True}, "sequence_sum"),
        ({"truncate": 1.5}, "sequence_sum"),
        ({"per_token": True, "truncate": 1.2}, "batch_tokens"),
        ({"self_normalize": True, "truncate": 1.5}, "sequence_mean"),
    ],
    ids=["self_normalize", "truncate", "per_token+truncate", "self_normalize+truncate"],
)
def test_iw_sft_step_is_the_formulas_under_any_micro_batching(tokenizer, tmp_path: Path, iw, normalization):
    """IW-SFT on 4 traces whose weights differ (log β = log π₀ + offsets): each update, 4×1, 2×2 or 1×4, is
    −lr ∇ losses.iw_sft_loss with losses.importance_weights over the whole optimizer batch, so each option
    reaches the weights and self-normalisation divides by the mean of all 4 weights, not a micro-batch's."""
    rows = trainer_steps.iw_rows(tokenizer)
    expected = trainer_steps.expected_sft_update(tokenizer, rows, normalization, iw)
    plain = trainer_steps.expected_sft_update(tokenizer, rows, normalization, {})
    cos, ratio = trainer_steps.compare(plain, expected)
    assert cos < 0.9999 or abs(ratio - 1) > 1e-2  # the options change the step
    for batch, accumulation in SPLITS:
        update = trainer_steps.sft_step(
            tokenizer, tmp_path / f"{batch}", batch, accumulation, normalization, iw
        )
        _close_to(update, expected)


REINFORCE_STEPS = [
    (baseline, normalization, split)
    for baseline in losses.BASELINES
    for normalization in losses.NORMALIZATIONS
    for split in SPLITS
]


@pytest.mark.parametrize(
    ("baseline", "normalization", "split"),
    REINFORCE_STEPS,
    ids=[f"{b}-{n}-{s[0]}x{s[1]}" for b, n, s in REINFORCE_STEPS],
)
def test_reinforce_step_is_the_policy_gradient_of_its_samples(
    tokenizer, tmp_path: Path, baseline, normalization, split
) -> None:
    """One REINFORCE step (4 samples, 2 prompts × 2 generations, rewards 1, 0, 0, 1): the update is −lr ∇ of
    losses.policy_gradient_loss with losses.reinforce_advantages of the rewards the reward function returned,
    recomputed from the sampled tokens, whatever the micro-batching."""
    batch, accumulation = split
    update, scored = trainer_steps.reinforce_step(
        tokenizer, tmp_path, batch, accumulation, baseline, normalization
    )
    assert [s["reward"] for s in scored] == [1.0, 0.0, 0.0, 1.0]
    assert len({s["prompt"] for s in scored}) == 2  # two groups: the baselines are per prompt
    _close_to(update, trainer_steps.expected_reinforce_update(tokenizer, scored, baseline, normalization))


@pytest.mark.parametrize(("temperature", "top_p"), [(0.6, 1.0), (0.6, 0.8), (1.0, 0.5)])
def test_reinforce_step_is_the_gradient_of_the_sampled_distribution(
    tokenizer, tmp_path: Path, temperature, top_p
) -> None:
    """At a temperature or top-p below 1 the REINFORCE step is −lr ∇ of the policy-gradient loss on log q, the
    log-prob under the distribution the samples were drawn from (logits / T, renormalised over the top-p
    nucleus, as transformers' warpers define it), under 2×2 micro-batching; not the step on log softmax(z/T)
    (which is what GRPO's loss takes whatever top-p)."""
    update, scored = trainer_steps.reinforce_step(
        tokenizer, tmp_path, 2, 2, "none", "sequence_sum", temperature=temperature, top_p=top_p
    )
    assert [s["reward"] for s in scored] == [1.0, 0.0, 0.0, 1.0]
    expected = trainer_steps.expected_reinforce_update(
        tokenizer, scored, "none", "sequence_sum", temperature=temperature, top_p=top_p
    )
    _close_to(update, expected)
    if top_p < 1:  # the nucleus matters at this setting: the temperature-only step is measurably other
        other = trainer_steps.expected_reinforce_update(
            tokenizer, scored, "none", "sequence_sum", temperature=temperature, top_p=1.0
        )
        cos, ratio = trainer_steps.compare(other, expected)
        assert cos < 0.9999 or abs(ratio - 1) > 1e-2


def test_reinforce_config_refuses_sampler_settings_its_loss_does_not_model(tmp_path: Path) -> None:
    from iterdeploy_trl.trainers import ReinforceConfig

    for bad, name in (
        ({"top_k": 5}, "top_k"),
        ({"min_p": 0.1}, "min_p"),
        ({"repetition_penalty": 1.2}, "repetition_penalty"),
        ({"generation_kwargs": {"typical_p": 0.9}}, "typical_p"),
    ):
        with pytest.raises(ValueError, match=name):
            ReinforceConfig(str(tmp_path), **trainer_steps.CPU, **bad)


@pytest.mark.slow
def test_two_processes_make_the_same_step(tokenizer, tmp_path: Path) -> None:
    """Two CPU processes (accelerate, gloo), 2 traces each: SFT, IW-SFT (self-normalised; truncated) and
    REINFORCE make the step of one process on all 4 (SFT) or the formula's step on the samples both processes
    drew (REINFORCE): cosine ≥ 0.9999, norm within 1e-3. Without ×num_processes (DDP averages gradients) or
    with per-process self-normalisation the updates differ."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        str(Path(trainer_steps.__file__)),
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name, (kind, options) in trainer_steps.TWO_PROCESS_STEPS.items():
        work = tmp_path / "out" / name
        update = torch.load(work / "update.pt")
        if kind == "sft":
            iw = options.get("iw")
            rows = trainer_steps.iw_rows(tokenizer) if iw else trainer_steps.sft_rows()
            single = trainer_steps.sft_step(tokenizer, tmp_path / name, 4, 1, options["normalization"], iw)
            _close_to(update, single)
            _close_to(
                update, trainer_steps.expected_sft_update(tokenizer, rows, options["normalization"], iw)
            )
        else:
            scored = [s for rank in (0, 1) for s in json.loads((work / f"scored-{rank}.json").read_text())]
            assert len(scored) == 4 and len({s["prompt"] for s in scored}) == 2
            expected = trainer_steps.expected_reinforce_update(
                tokenizer, scored, options["baseline"], options["normalization"]
            )
            _close_to(update, expected)


# --- evaluation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalization", losses.NORMALIZATIONS)
def test_eval_loss_is_the_formula_on_the_eval_set(tokenizer, tmp_path: Path, normalization) -> None:
    """The eval loss is losses.sft_loss over the eval batch with the eval batch's own denominators, after a
    training step whose optimizer batch has a different number of traces and tokens."""
    rows = _traces(8)
    train, held_out = rows[:5], rows[5:]
    args = ValidTraceSFTConfig(
        tmp_path,
        loss_normalization=normalization,
        per_device_train_batch_size=5,
        per_device_eval_batch_size=3,
        max_steps=1,
        learning_rate=0.0,
        **CPU,
    )
    trainer = ValidTraceSFTTrainer(
        _model(tokenizer),
        args=args,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(held_out),
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer._batch_counts["traces"].item() == 5
    eval_loss = trainer.evaluate()["eval_loss"]
    examples = [trainer.eval_dataset[i] for i in range(3)]
    batch = trainer._prepare_inputs(trainer.data_collator(examples))
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    expected = losses.sft_loss(
        losses.token_logprobs(logits[:, :-1], labels, labels != -100), labels != -100, normalization
    )
    assert eval_loss == pytest.approx(expected.item(), rel=1e-5)


# --- the Python API as a TRL user meets it (issue 22) ---------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU default is what is tested")
@pytest.mark.parametrize("config_class", [ValidTraceSFTConfig, ImportanceWeightedSFTConfig, ReinforceConfig])
def test_configs_work_on_a_cpu_as_written(tmp_path: Path, config_class) -> None:
    """The README's `ReinforceConfig(output_dir=..., ...)` with nothing about precision: TRL's bf16=True
    default fails without an accelerator; ours is bf16 only where it runs (use_cpu=True keeps TRL's)."""
    extra = {"num_generations": 4} if config_class is ReinforceConfig else {}
    assert config_class(output_dir=str(tmp_path), **extra).bf16 is False
    assert config_class(output_dir=str(tmp_path), use_cpu=True, **extra).bf16 is True


def test_reinforce_config_refuses_grpo_loss_settings(tmp_path: Path) -> None:
    common = {"per_device_train_batch_size": 4, "num_generations": 4, **CPU}
    for bad in (
        {"loss_type": "dapo"},
        {"loss_type": "grpo"},
        {"epsilon": 0.3},
        {"epsilon_high": 0.28},
        {"delta": 2.0},
        {"importance_sampling_level": "sequence"},
        {"sapo_temperature_neg": 2.0},
        {"multi_objective_aggregation": "normalize_then_sum"},
    ):
        key = next(iter(bad))
        with pytest.raises(ValueError, match=f"{key}=.*does not read"):
            ReinforceConfig(tmp_path, **common, **bad)
    assert ReinforceConfig(tmp_path, **common).loss_type == "reinforce"


def test_reinforce_loss_is_not_changed_by_trls_vllm_importance_sampling_default(tokenizer, tmp_path) -> None:
    """TRL's GRPOConfig turns on a vLLM importance-sampling correction (sequence_mask, clip 3) that rescales or
    drops samples; ReinforceConfig turns it off, so a ratio in the batch (as GRPO's vLLM path puts one there)
    leaves the plain estimator's loss as it is, and the record says which setting was used."""
    trl_default = GRPOConfig(tmp_path / "grpo", **CPU)
    assert trl_default.vllm_importance_sampling_correction is True
    assert (trl_default.vllm_importance_sampling_mode, trl_default.vllm_importance_sampling_clip_max) == (
        "sequence_mask",
        3.0,
    )
    from iterdeploy_trl.trainers.reinforce import importance_sampling_record

    inputs = _rl_inputs(tokenizer, [VALID, INVALID[0], INVALID[1]], [1.0, -0.5, 0.25])
    # GRPO's sequence_mask ratio: the second sample's ratio fell outside the clip range and is masked to 0
    ratio = torch.ones(inputs["completion_ids"].shape)
    ratio[1] = 0.0
    ratio[2] = 2.5
    losses_by_setting = {}
    for correction in (False, True):
        extra = {"vllm_importance_sampling_correction": True} if correction else {}
        args = ReinforceConfig(tmp_path / str(correction), per_device_train_batch_size=3, num_generations=3,
                               **CPU, **extra)
        trainer = ReinforceTrainer(_model(tokenizer), args=args, train_dataset=_rl_rows(3), processing_class=tokenizer)
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        with_ratio = trainer._compute_loss(trainer.model, {**inputs, "importance_sampling_ratio": ratio}).item()
        plain = trainer._compute_loss(trainer.model, dict(inputs)).item()
        losses_by_setting[correction] = (with_ratio, plain)
    assert losses_by_setting[False][0] == losses_by_setting[False][1]  # the default: the formula, unchanged
    assert losses_by_setting[True][0] != pytest.approx(losses_by_setting[True][1], rel=1e-3)  # opted in: applied

    off = importance_sampling_record(ReinforceConfig(tmp_path, num_generations=4, use_vllm=True, **CPU))
    assert off == {"use_vllm": True, "vllm_importance_sampling_correction": False,
                   "vllm_importance_sampling_mode": None, "vllm_importance_sampling_clip_min": None,
                   "vllm_importance_sampling_clip_max": None}
    on = importance_sampling_record(
        ReinforceConfig(tmp_path, num_generations=4, use_vllm=True, vllm_importance_sampling_correction=True, **CPU)
    )
    assert (on["vllm_importance_sampling_correction"], on["vllm_importance_sampling_mode"],
            on["vllm_importance_sampling_clip_max"]) == (True, "sequence_mask", 3.0)


def test_reinforce_trainer_names_missing_reward_columns_when_built(tokenizer, tmp_path: Path) -> None:
    """Before any generation, naming what is missing and the columns the dataset has."""
    rows = Dataset.from_list([{"prompt": "(pick-up b2)", "domain_pddl": DOMAIN}] * 4)
    args = ReinforceConfig(tmp_path, per_device_train_batch_size=4, num_generations=4, **CPU)
    with pytest.raises(KeyError, match=r"train dataset lacks problem_pddl \(its columns: prompt, domain_pddl\)"):
        ReinforceTrainer(_model(tokenizer), reward_funcs=[ValidPlanReward()], args=args, train_dataset=rows,
                         processing_class=tokenizer)


def test_iw_sft_refuses_rows_sampled_at_other_settings(tokenizer, tmp_path: Path) -> None:
    """Rows (or trace records' `sampling`) that say how they were sampled must match the config."""
    rows = [{**r, "behaviour_logprob": -10.0, "sampling_temperature": 0.6} for r in _traces(3)]

    def build(data: list[dict[str, Any]], **config: Any) -> ImportanceWeightedSFTTrainer:
        return ImportanceWeightedSFTTrainer(
            _model(tokenizer), args=ImportanceWeightedSFTConfig(tmp_path, **CPU, **config),
            train_dataset=Dataset.from_list(data), processing_class=tokenizer,
        )

    with pytest.raises(ValueError, match=r"row 0 of the train dataset was sampled with sampling_temperature=0\.6, "
                                         r"but ImportanceWeightedSFTConfig\.sampling_temperature=1\.0"):
        build(rows)
    trainer = build(rows, sampling_temperature=0.6)
    assert "sampling_temperature" not in trainer.train_dataset.column_names
    assert _batch(trainer)["behaviour_logprob"].shape == (3,)
    records = [{**r, "behaviour_logprob": -10.0, "sampling": {"temperature": 0.6, "top_p": 0.95}} for r in _traces(3)]
    records[2]["sampling"] = {"temperature": 0.6, "top_p": 1.0}
    with pytest.raises(ValueError, match=r"row 2 .* sampling\['top_p'\]=1\.0, but .*sampling_top_p=0\.95"):
        build(records, sampling_temperature=0.6, sampling_top_p=0.95)


def test_iw_sft_skips_batches_whose_weights_are_all_zero_with_a_count(tokenizer, tmp_path: Path, caplog) -> None:
    """At a top-p so small that every trace has a token outside π's nucleus, every log w = −∞: with
    self-normalisation that was NaN. The batch is skipped (weights 0, finite loss), warned about and counted."""
    rows = [{**r, "behaviour_logprob": -20.0} for r in _traces(4)]
    args = ImportanceWeightedSFTConfig(
        tmp_path, per_device_train_batch_size=2, max_steps=2, iw_self_normalize=True, sampling_top_p=1e-6, **CPU
    )
    trainer = ImportanceWeightedSFTTrainer(
        _model(tokenizer), args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    with caplog.at_level(logging.WARNING, logger="iterdeploy_trl.trainers.iw_sft"):
        trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [math.isfinite(h["loss"]) for h in logs] == [True, True]
    assert trainer.zero_weight_batches == 2
    assert logs[-1]["iw/zero_weight_batches"] == 2
    assert "every importance weight is 0" in caplog.text and "2 such batch(es) so far" in caplog.text


def test_a_model_object_reused_across_deploy_and_training_samples_as_before(tmp_path: Path) -> None:
    """Generate with TransformersBackend at T 0.6, train IW-SFT on the samples at learning rate 0 (bf16 on, the
    CPU default with use_cpu), generate again with the same seed: the same samples with the same behaviour
    log-probs (the trainer used to leave accelerate's autocast wrapper on the model's forward, so the second
    deployment ran in bf16), and the second round's β = π weights are 1."""
    from iterdeploy_trl.deploy import TransformersBackend

    tok = build_tokenizer("blocksworld")
    model = make_small_model(tok, "tiny", seed=0)
    prompts = [build_prompt(DOMAIN, t.problem) for t in generate_tasks("blocksworld", 3, 1, size=(2, 3))]

    def deploy() -> list[Any]:
        samples = TransformersBackend(model, tok).generate(
            prompts, num_samples=2, temperature=0.6, top_p=1.0, max_new_tokens=12, seed=0
        )
        return [c for row in samples for c in row]

    def train(samples: list[Any], name: str) -> list[float]:
        rows = [
            {"prompt": p, "completion": c.text, "prompt_ids": tok(p)["input_ids"],
             "completion_ids": list(c.token_ids), "behaviour_logprob": c.behaviour_logprob}
            for p, c in zip([p for p in prompts for _ in range(2)], samples, strict=True)
        ]
        return _weights_at_beta_equal_pi(model, tok, rows, tmp_path / name, sampling_temperature=0.6)

    model.eval()
    first = deploy()
    assert train(first, "one") == pytest.approx([1.0, 1.0], abs=1e-5)
    second = deploy()
    assert [c.token_ids for c in second] == [c.token_ids for c in first]
    assert [c.behaviour_logprob for c in second] == [c.behaviour_logprob for c in first]
    assert train(second, "two") == pytest.approx([1.0, 1.0], abs=1e-5)
    assert not model.training and not model.is_activation_checkpointing and model.config.use_cache
