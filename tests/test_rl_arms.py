"""The RL arms as practitioners run them (issue 24, item 1), on CPU with the tiny local model: REINFORCE with
several prompts per optimizer step and baselines none / mean / leave-one-out (RLOO), TRL's own GRPO with its
defaults as a reference arm, and the callback that counts how often ``max_grad_norm`` clips."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import trainer_steps
from datasets import Dataset
from trl import GRPOConfig

from iterdeploy_trl.trainers import (
    GradClipCallback,
    ImportanceWeightedSFTConfig,
    ImportanceWeightedSFTTrainer,
    ReferenceGRPOTrainer,
    ReinforceConfig,
    ReinforceTrainer,
    ValidTraceSFTConfig,
    ValidTraceSFTTrainer,
    grpo_reference_config,
    grpo_settings_record,
    losses,
    reinforce_settings_record,
    reinforce_step_batch,
)
from iterdeploy_trl.trainers.callbacks import grad_clip_summary
from iterdeploy_trl.trainers.defaults import IW_PER_TOKEN, IW_SELF_NORMALIZE, IW_TRUNCATE

torch.set_num_threads(1)
CPU, STEP, LR = trainer_steps.CPU, trainer_steps.STEP, trainer_steps.LR


@pytest.fixture(scope="module")
def tok():
    return trainer_steps.tokenizer()


class GroupRecordingReward:
    """A test reward (not VAL: the trainer's batching and arithmetic are under test) that gives 1, 0, 0, 1,
    1, 0, ... by position in each call and records each call's prompts, completion ids and rewards."""

    __name__ = "recording"

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    def __call__(self, prompts: list, completions: list, completion_ids: list, **kwargs: Any) -> list[float]:
        rewards = [float(i % 4 in (0, 3)) for i in range(len(completions))]
        self.calls.append([{"prompt": p, "completion_ids": list(c), "reward": r}
                           for p, c, r in zip(prompts, completion_ids, rewards, strict=True)])
        return rewards


# --- baselines by hand -------------------------------------------------------------------------------------


def test_baselines_by_hand() -> None:
    """Two prompts × K = 4 samples: mean subtracts the group's mean, leave-one-out the mean of the other
    three; none is the raw reward. No std scaling anywhere."""
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert losses.reinforce_advantages(r, "none", 4).tolist() == r.tolist()
    mean = [0.5, -0.5, -0.5, 0.5, -0.25, -0.25, -0.25, 0.75]
    assert losses.reinforce_advantages(r, "mean", 4).tolist() == pytest.approx(mean)
    rloo = [1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3, -1 / 3, -1 / 3, -1 / 3, 1.0]
    assert losses.reinforce_advantages(r, "leave_one_out", 4).tolist() == pytest.approx(rloo)
    assert losses.reinforce_advantages(r, "rloo", 4).tolist() == pytest.approx(rloo)
    # RLOO = K/(K−1) × the mean-baseline advantage
    assert (losses.reinforce_advantages(r, "rloo", 4) * 3 / 4).tolist() == pytest.approx(mean)
    grouped, scored = r.view(2, 4), torch.ones(2, 4, dtype=torch.float64)
    assert losses.mean_baseline(grouped, scored).tolist() == [[0.5] * 4, [0.25] * 4]
    assert losses.leave_one_out_baseline(grouped, scored)[0].tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1 / 3])
    assert ReinforceConfig("out", num_generations=4, **CPU, baseline="rloo").baseline == "leave_one_out"
    with pytest.raises(ValueError, match="'median'.*none, mean, leave_one_out"):
        ReinforceConfig("out", num_generations=4, **CPU, baseline="median")


# --- prompts per step --------------------------------------------------------------------------------------


def test_reinforce_step_batch_makes_the_layout_or_says_why_not() -> None:
    assert reinforce_step_batch(4, 8) == {"per_device_train_batch_size": 32, "gradient_accumulation_steps": 1}
    assert reinforce_step_batch(4, 8, micro_batch=8) == {"per_device_train_batch_size": 8,
                                                         "gradient_accumulation_steps": 4}
    assert reinforce_step_batch(4, 8, world_size=2, micro_batch=4) == {"per_device_train_batch_size": 4,
                                                                       "gradient_accumulation_steps": 4}
    with pytest.raises(ValueError, match="micro_batch=5 does not divide the 32"):
        reinforce_step_batch(4, 8, micro_batch=5)
    with pytest.raises(ValueError, match="do not split over 2 processes"):
        reinforce_step_batch(3, 3, world_size=2)
    # a layout that is not P·K per step, or that would generate for a step in several batches, is refused
    with pytest.raises(ValueError, match="prompts_per_step=4 with num_generations=2 needs 8 completions"):
        ReinforceConfig("out", prompts_per_step=4, num_generations=2, per_device_train_batch_size=4, **CPU)
    with pytest.raises(ValueError, match="steps_per_generation=1"):
        ReinforceConfig("out", prompts_per_step=4, num_generations=2, per_device_train_batch_size=4,
                        gradient_accumulation_steps=2, steps_per_generation=1, **CPU)


def _reinforce(tok, out: Path, reward, *, prompts: int, k: int, micro: int | None, steps: int, **extra: Any):
    m = trainer_steps.model(tok)
    before = trainer_steps.flat(m)
    args = ReinforceConfig(str(out), prompts_per_step=prompts, num_generations=k,
                           max_completion_length=trainer_steps.MAX_COMPLETION,
                           **reinforce_step_batch(prompts, k, micro_batch=micro), **CPU, **{**STEP, "max_steps": steps},
                           **extra)
    trainer = ReinforceTrainer(m, reward_funcs=[reward], args=args, train_dataset=trainer_steps.rl_rows(),
                               processing_class=tok)
    trainer.train()
    return trainer, trainer_steps.flat(trainer.model) - before


@pytest.mark.parametrize("micro", [None, 2], ids=["one-micro-batch", "accumulated-3x2"])
def test_each_optimizer_step_scores_prompts_per_step_times_k_completions(tok, tmp_path: Path, micro) -> None:
    """prompts_per_step = 3, K = 2: each of 2 optimizer steps generates and scores exactly 6 completions, K of
    each of 3 distinct prompts, in one or in 3 accumulated micro-batches; the record says so."""
    reward = GroupRecordingReward()
    trainer, _ = _reinforce(tok, tmp_path, reward, prompts=3, k=2, micro=micro, steps=2)
    assert trainer.state.global_step == 2
    assert [len(call) for call in reward.calls] == [6, 6]
    for call in reward.calls:
        prompts = [s["prompt"] for s in call]
        assert len(set(prompts)) == 3
        assert all(prompts[i] == prompts[i + 1] for i in range(0, 6, 2))  # K consecutive samples per prompt
    record = reinforce_settings_record(trainer.args)
    assert (record["prompts_per_step"], record["completions_per_step"], record["num_generations"]) == (3, 6, 2)
    assert record["gradient_accumulation_steps"] == (1 if micro is None else 3)


def test_reinforce_refuses_fewer_prompts_than_a_step_takes(tok, tmp_path: Path) -> None:
    args = ReinforceConfig(str(tmp_path), prompts_per_step=20, num_generations=2, **reinforce_step_batch(20, 2),
                           **CPU)
    with pytest.raises(ValueError, match="16 prompts, fewer than prompts_per_step=20"):
        ReinforceTrainer(trainer_steps.model(tok), reward_funcs=[GroupRecordingReward()], args=args,
                         train_dataset=trainer_steps.rl_rows(), processing_class=tok)


def test_rloo_step_is_the_hand_computed_loss(tok, tmp_path: Path) -> None:
    """2 prompts × K = 3, baseline "rloo", accumulated over 2 micro-batches: the SGD update is −lr ∇L at the
    initial weights for L = −(1/6) Σ_i A_i Σ_t log π(y_i,t), A_i = r_i − (sum of the group's other rewards)/2
    computed here by hand from the rewards the reward function returned, log π from a plain forward."""
    reward = GroupRecordingReward()
    trainer, update = _reinforce(tok, tmp_path, reward, prompts=2, k=3, micro=3, steps=1, baseline="rloo")
    (scored,) = reward.calls
    r = [s["reward"] for s in scored]
    advantages = []
    for g in range(0, 6, 3):
        group = r[g : g + 3]
        advantages += [ri - (sum(group) - ri) / 2 for ri in group]
    assert any(a != 0 for a in advantages) and any(a != r_ for a, r_ in zip(advantages, r, strict=True))
    m = trainer_steps.model(tok)
    logps, mask = trainer_steps.per_trace_logps(m, [(tok(s["prompt"])["input_ids"], s["completion_ids"])
                                                    for s in scored])
    loss = -sum(a * (lp * mk).sum() for a, lp, mk in zip(advantages, logps, mask, strict=True)) / 6
    expected = -LR * torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(m.parameters()))])
    cos, ratio = trainer_steps.compare(update, expected)
    assert cos >= 0.9999 and abs(ratio - 1) <= 1e-3, (cos, ratio)


# --- TRL's GRPO as the reference arm -----------------------------------------------------------------------


def test_grpo_reference_keeps_and_records_trls_defaults(tmp_path: Path) -> None:
    """Every objective setting of the reference arm is TRL's default, read off a plain GRPOConfig; the record
    says what TRL switched on (std scaling, ratio clipping at 0.2, and, with vLLM, its importance-sampling
    correction); an override of the objective is refused."""
    plain = GRPOConfig(str(tmp_path / "plain"), **CPU)
    config = grpo_reference_config(str(tmp_path / "ref"), num_generations=4, per_device_train_batch_size=8, **CPU)
    record = grpo_settings_record(config)
    trl_fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    assert set(record["objective"]) <= trl_fields
    for name, value in record["objective"].items():
        assert value == getattr(plain, name), name
    assert record["not_at_trl_defaults"] == []
    assert record["std_scaling"] == plain.scale_rewards == "group"
    assert record["ratio_clip_range"] == pytest.approx([1 - plain.epsilon, 1 + plain.epsilon])
    assert record["max_grad_norm"] == plain.max_grad_norm
    assert (record["prompts_per_step"], record["completions_per_step"]) == (2, 8)
    assert record["importance_sampling"]["vllm_importance_sampling_correction"] is False  # no vLLM: not applied
    with_vllm = grpo_settings_record(grpo_reference_config(str(tmp_path / "v"), num_generations=4, use_vllm=True,
                                                           **CPU))["importance_sampling"]
    assert (with_vllm["vllm_importance_sampling_correction"], with_vllm["vllm_importance_sampling_mode"],
            with_vllm["vllm_importance_sampling_clip_max"]) == (True, plain.vllm_importance_sampling_mode,
                                                                plain.vllm_importance_sampling_clip_max)
    with pytest.raises(ValueError, match="loss_type='grpo'.*TRL's defaults"):
        grpo_reference_config(str(tmp_path / "x"), num_generations=4, loss_type="grpo", **CPU)
    # REINFORCE's record states the plain estimator: none of GRPO's reweighting, scaling or clipping
    rf = reinforce_settings_record(ReinforceConfig(str(tmp_path / "rf"), num_generations=4, use_vllm=True, **CPU))
    assert (rf["std_scaling"], rf["ratio_clipping"], rf["importance_sampling"]["vllm_importance_sampling_correction"]
            ) == (False, False, False)


def _grpo(tok, out: Path, clip: GradClipCallback, reward_funcs: Any = None) -> ReferenceGRPOTrainer:
    """One SGD step of the reference arm on 2 prompts × 2 samples, max_grad_norm tiny, the callback on."""
    args = grpo_reference_config(str(out), num_generations=2, max_completion_length=8,
                                 **reinforce_step_batch(2, 2), **CPU, **{**STEP, "max_grad_norm": 1e-9})
    trainer = ReferenceGRPOTrainer(trainer_steps.model(tok), reward_funcs=reward_funcs, args=args,
                                   train_dataset=trainer_steps.rl_rows(), processing_class=tok, callbacks=[clip])
    trainer.train()
    return trainer


def test_grpo_reference_trains_with_the_val_reward_and_counts_clipping(tok, tmp_path: Path) -> None:
    """TRL's GRPO with VAL's reward by default; with a reward that differs within each group (GRPO's group
    baseline gives a nonzero gradient) the clip callback counts the step as clipped."""
    clip = GradClipCallback()
    trainer = _grpo(tok, tmp_path / "val", clip)
    assert trainer.state.global_step == 1
    assert "rewards/valid_plan/mean" in trainer.state.log_history[0]  # VAL scored the samples
    assert clip.summary()["optimizer_steps"] == 1
    clip, reward = GradClipCallback(), GroupRecordingReward()
    _grpo(tok, tmp_path / "mixed", clip, [reward])
    assert [len(call) for call in reward.calls] == [4]
    assert clip.grad_norm_mean > 1e-9 and clip.clip_fraction == 1.0


# --- how often max_grad_norm clips -------------------------------------------------------------------------


def test_grad_clip_summary_formula() -> None:
    s = grad_clip_summary([0.5, 2.0, 3.0, float("nan")], 1.0)
    assert (s["optimizer_steps"], s["clipped_steps"], s["clip_fraction"], s["nonfinite_steps"]) == (4, 2, 0.5, 1)
    assert (s["grad_norm_mean"], s["grad_norm_max"]) == (pytest.approx(11 / 6), 3.0)
    assert grad_clip_summary([5.0], 0.0)["clip_fraction"] == 0.0  # max_grad_norm 0: no clipping
    assert grad_clip_summary([], 1.0)["clip_fraction"] is None


def _trainer(kind: str, tok, out: Path, max_grad_norm: float, clip: GradClipCallback):
    """A 1-step SGD trainer of the package (logging_steps 50: the callback must not need a log every step),
    and the update formula of its step (−lr ∇L at the initial weights, from trainer_steps)."""
    common = {**CPU, **STEP, "max_grad_norm": max_grad_norm, "logging_steps": 50}
    m = trainer_steps.model(tok)
    if kind == "reinforce":
        reward = trainer_steps.AlternatingReward()
        args = ReinforceConfig(str(out), num_generations=2, max_completion_length=trainer_steps.MAX_COMPLETION,
                               per_device_train_batch_size=4, **common)
        trainer = ReinforceTrainer(m, reward_funcs=[reward], args=args, train_dataset=trainer_steps.rl_rows(),
                                   processing_class=tok, callbacks=[clip])
        return trainer, lambda: trainer_steps.expected_reinforce_update(tok, reward.scored, "none", "sequence_sum")
    if kind == "iw-sft":
        rows = trainer_steps.iw_rows(tok)
        args = ImportanceWeightedSFTConfig(str(out), per_device_train_batch_size=4, **common)
        trainer = ImportanceWeightedSFTTrainer(m, args=args, train_dataset=Dataset.from_list(rows),
                                               processing_class=tok, callbacks=[clip])
        # the trainer at its defaults (trainers.defaults, the run config's): truncated and self-normalised
        defaults = {"truncate": IW_TRUNCATE, "self_normalize": IW_SELF_NORMALIZE, "per_token": IW_PER_TOKEN}
        return trainer, lambda: trainer_steps.expected_sft_update(tok, rows, "sequence_sum", iw=defaults)
    rows = trainer_steps.sft_rows()
    args = ValidTraceSFTConfig(str(out), per_device_train_batch_size=4, **common)
    trainer = ValidTraceSFTTrainer(m, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                                   callbacks=[clip])
    return trainer, lambda: trainer_steps.expected_sft_update(tok, rows, "sequence_sum")


@pytest.mark.parametrize("kind", ["sft", "iw-sft", "reinforce"])
def test_clip_callback_counts_clipped_steps(tok, tmp_path: Path, kind) -> None:
    """max_grad_norm tiny: the step is clipped (clip_fraction 1.0); huge: it is not (0.0). Either way the norm
    counted is the PRE-clip norm of the step's gradient, ‖∇L‖ of the loss formula at the initial weights."""
    for max_grad_norm, fraction in ((1e-6, 1.0), (1e9, 0.0)):
        clip = GradClipCallback()
        trainer, expected = _trainer(kind, tok, tmp_path / str(max_grad_norm), max_grad_norm, clip)
        trainer.train()
        assert clip.clip_fraction == fraction
        assert clip.summary()["optimizer_steps"] == 1
        assert clip.grad_norm_mean == pytest.approx(float(expected().norm()) / LR, rel=1e-3)
