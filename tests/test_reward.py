"""ValidPlanReward called the way TRL's GRPOTrainer calls reward functions."""

from __future__ import annotations

import pytest

from iterdeploy_trl import domains
from iterdeploy_trl.reward import ValidPlanReward, completion_text

BW = domains.domain_pddl("blocksworld")
PROBLEM = """(define (problem bw-3) (:domain blocksworld)
  (:objects b1 b2 b3)
  (:init (ontable b1) (on b2 b1) (clear b2) (ontable b3) (clear b3) (handempty))
  (:goal (and (on b1 b2) (on b2 b3))))
"""
GOOD = "<think>b2 is on b1, so (pick-up b1) fails.</think>\n(unstack b2 b1)\n(stack b2 b3)\n(pick-up b1)\n(stack b1 b2)"
SHORT = "</think>\n(unstack b2 b1)\n(stack b2 b3)"


def grpo_kwargs(n: int, logged: dict) -> dict:
    """The keyword arguments GRPOTrainer._calculate_rewards passes besides prompts and completions."""
    return {
        "completion_ids": [[1, 2, 3]] * n,
        "domain_pddl": [BW] * n,
        "problem_pddl": [PROBLEM] * n,
        "task_id": [f"blocksworld-0-{i:05d}" for i in range(n)],
        "trainer_state": object(),
        "log_extra": lambda column, values: logged.setdefault(column, []).extend(values),
        "log_metric": lambda name, value: None,
    }


def test_string_completions():
    reward, logged = ValidPlanReward(timeout=10, workers=2), {}
    prompts = ["Solve it."] * 4
    completions = [GOOD, SHORT, "<think>never finished", "no plan, sorry"]
    assert reward(prompts=prompts, completions=completions, **grpo_kwargs(4, logged)) == [1.0, 0.0, 0.0, 0.0]
    reasons = [v.reason for v in reward.last_verdicts]
    assert reasons[:2] == ["valid", "goal not satisfied"]
    assert all(r.startswith("no plan found in completion") for r in reasons[2:])
    assert logged["val_reason"] == reasons


def test_conversational_completions():
    reward = ValidPlanReward()
    prompts = [[{"role": "user", "content": "Solve it."}]] * 2
    completions = [
        [{"role": "assistant", "content": SHORT}],
        [{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}],
    ]
    assert reward(prompts=prompts, completions=completions, **grpo_kwargs(2, {})) == [0.0, 1.0]
    assert len(reward.last_verdicts) == 2


def test_trl_metric_name():
    from trl.trainer.utils import get_callable_name

    assert ValidPlanReward().__name__ == "valid_plan"
    assert get_callable_name(ValidPlanReward()) == "valid_plan"


def test_missing_columns_are_named():
    with pytest.raises(KeyError, match="problem_pddl"):
        ValidPlanReward()(prompts=["x"], completions=[GOOD], domain_pddl=[BW])


def test_completion_text():
    assert completion_text("abc") == "abc"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "tool", "content": "b"}]) == "a"


@pytest.mark.slow
def test_one_grpo_step_with_a_tiny_model(tmp_path):
    """The reward plugged into a real GRPOTrainer (tiny random model, one step on CPU)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from iterdeploy_trl.models import build_tokenizer, make_small_model

    tokenizer = build_tokenizer("blocksworld")
    rows = [{"prompt": "(unstack b2 b1)\n", "domain_pddl": BW, "problem_pddl": PROBLEM}] * 4
    reward = ValidPlanReward(timeout=10, workers=2)
    args = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        report_to=[],
        logging_steps=1,
        use_cpu=True,
        save_strategy="no",
    )
    trainer = GRPOTrainer(
        model=make_small_model(tokenizer, "tiny"),
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    assert len(reward.last_verdicts) == 4
    assert any("rewards/valid_plan/mean" in entry for entry in trainer.state.log_history)


def test_missing_columns_name_the_datasets_columns_not_trls_arguments():
    """TRL passes completion_ids, trainer_state, ... beside the dataset's columns: the message lists the
    dataset's (prompt and the others), not TRL's arguments."""
    with pytest.raises(KeyError, match=r"lacks domain_pddl, problem_pddl \(its columns: prompt, task\)") as err:
        ValidPlanReward()(prompts=["x"], completions=[GOOD], completion_ids=[[1]], trainer_state=None, task=["t"])
    assert "completion_ids" not in str(err.value)
