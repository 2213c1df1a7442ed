"""Binary VAL reward as a TRL reward function: r(x, y) = 1[VAL accepts the plan in y]."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iterdeploy_trl.extract import Extraction, extract_plan
from iterdeploy_trl.validate import Verdict, validate_batch, verdict_without_plan


def check_completions(domains: Sequence[str], problems: Sequence[str], texts: Sequence[str | bytes], *,
                      timeout: float, workers: int | None) -> tuple[list[Extraction], list[Verdict]]:
    """Extract the plan of each completion text and validate the found plans with VAL in parallel; a text
    without a plan gets its verdict from the extraction. Returns (extractions, verdicts), aligned."""
    extractions = [extract_plan(t) for t in texts]
    todo = [i for i, e in enumerate(extractions) if e.reason is None]
    checked = validate_batch([(domains[i], problems[i], list(extractions[i].actions)) for i in todo],
                             workers=workers, timeout=timeout)
    verdicts: list[Verdict | None] = [None] * len(texts)
    for i, v in zip(todo, checked, strict=True):
        verdicts[i] = v
    return extractions, [v if v is not None else verdict_without_plan(e) for v, e in zip(verdicts, extractions,
                                                                                           strict=True)]


def completion_text(completion: Any) -> str | bytes:
    """Text of a completion: a string, or a conversational list of messages (assistant turns joined).

    Message content may be a string or a list of ``{"type": "text", "text": ...}`` parts.
    """
    if isinstance(completion, str | bytes):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    parts: list[str] = []
    for message in completion:
        if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content", "")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(str(content or ""))
    return "\n".join(parts)


# Keyword arguments TRL's GRPOTrainer passes a reward function beside the dataset's columns.
_TRL_KWARGS = frozenset({"trainer_state", "log_extra", "log_metric", "completion_ids", "completions", "prompts"})


class ValidPlanReward:
    """TRL reward function (``GRPOTrainer(reward_funcs=[ValidPlanReward()])``): 1.0 for a valid plan, else 0.0.

    Reads the dataset columns ``domain_pddl`` and ``problem_pddl`` (TRL passes them as keyword
    arguments aligned with ``completions``); ``check_columns`` checks a dataset's columns before any
    generation (``ReinforceTrainer`` calls it when it is built). The verdicts of the last call are kept in
    ``last_verdicts`` for logging; when TRL passes ``log_extra``, VAL's reasons go into its completions
    table as the column ``val_reason``.
    """

    def __init__(self, timeout: float = 30.0, workers: int | None = None) -> None:
        self.timeout = timeout
        self.workers = workers
        self.last_verdicts: list[Verdict] = []
        self.__name__ = "valid_plan"  # TRL names the reward's metrics after it: rewards/valid_plan/mean

    required_columns: tuple[str, ...] = ("domain_pddl", "problem_pddl")

    def check_columns(self, columns: Sequence[str], where: str = "the dataset") -> None:
        """A ``KeyError`` naming the missing columns and the ones ``where`` has, if it lacks one of
        ``required_columns``."""
        missing = [c for c in self.required_columns if c not in columns]
        if missing:
            raise KeyError(
                f"ValidPlanReward needs the dataset columns {' and '.join(self.required_columns)} (the PDDL "
                f"texts VAL checks each plan against); {where} lacks {', '.join(missing)} (its columns: "
                f"{', '.join(columns) or 'none'}). Add them to each row."
            )

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        # the dataset's columns as TRL passes them: the prompt, and the others as keyword arguments
        self.check_columns(["prompt", *sorted(k for k in kwargs if k not in _TRL_KWARGS)])
        domains, problems = kwargs["domain_pddl"], kwargs["problem_pddl"]
        if not len(domains) == len(problems) == len(completions):
            raise ValueError(
                f"ValidPlanReward: {len(completions)} completions but {len(domains)} domain_pddl and "
                f"{len(problems)} problem_pddl values"
            )
        _, self.last_verdicts = check_completions(domains, problems, [completion_text(c) for c in completions],
                                                  timeout=self.timeout, workers=self.workers)
        log_extra = kwargs.get("log_extra")
        if callable(log_extra):
            log_extra("val_reason", [v.reason for v in self.last_verdicts])
        return [1.0 if v.valid else 0.0 for v in self.last_verdicts]
