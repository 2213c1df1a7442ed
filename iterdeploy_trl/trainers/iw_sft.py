"""Importance-weighted SFT: valid traces sampled by an earlier policy β, reweighted to the current π.

SFT on β's valid traces is REINFORCE with the reward r·β(y|x)/π(y|x) (Prop. 2); weighting each trace by
w = π(y|x)/β(y|x), with no gradient through w, recovers the on-policy gradient. Sequence-level ratios
explode, so truncation, self-normalisation and a per-token (geometric-mean) ratio are options.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset, IterableDataset

from iterdeploy_trl.trainers import losses
from iterdeploy_trl.trainers.sft import ValidTraceSFTConfig, ValidTraceSFTTrainer, _column_names

logger = logging.getLogger(__name__)

BEHAVIOUR_LOGPROB = "behaviour_logprob"


@dataclass
class ImportanceWeightedSFTConfig(ValidTraceSFTConfig):
    r"""
    Configuration for [`ImportanceWeightedSFTTrainer`]: [`ValidTraceSFTConfig`] plus the fields below.

    Parameters:
        iw_truncate (`float` or `None`, *optional*, defaults to `None`):
            Cap c on the weights, w ← min(w, c), applied before self-normalisation. `None` keeps the unbiased
            (and high-variance) ratio.
        iw_self_normalize (`bool`, *optional*, defaults to `False`):
            Divide the weights by their mean over the micro-batch (w_i / mean_j w_j): biased, much lower
            variance. With `per_device_train_batch_size=1` every weight becomes 1, i.e. plain SFT.
        iw_per_token (`bool`, *optional*, defaults to `False`):
            Use the per-token geometric mean of the ratio, exp((log π − log β)/T_i), instead of the sequence
            ratio exp(log π − log β). Biased, but does not explode with the trace length.
    """

    iw_truncate: float | None = field(
        default=None,
        metadata={
            "help": "Cap c on the importance weights, min(w, c), applied before self-normalisation; None keeps "
            "the unbiased ratio."
        },
    )
    iw_self_normalize: bool = field(
        default=False,
        metadata={
            "help": "Divide the weights by their mean over the micro-batch (biased, lower variance). A no-op "
            "that leaves plain SFT with per_device_train_batch_size=1."
        },
    )
    iw_per_token: bool = field(
        default=False,
        metadata={
            "help": "Per-token geometric-mean ratio exp((log π − log β)/T_i) instead of the sequence ratio "
            "exp(log π − log β)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iw_truncate is not None and not self.iw_truncate > 0:
            raise ValueError(f"iw_truncate must be a positive weight cap or None, got {self.iw_truncate}")
        if self.iw_self_normalize and self.per_device_train_batch_size == 1:
            logger.warning(
                "iw_self_normalize=True with per_device_train_batch_size=1 makes every weight 1: this is plain "
                "valid-trace SFT. Use a larger batch to self-normalise."
            )


class ImportanceWeightedSFTTrainer(ValidTraceSFTTrainer):
    """[`ValidTraceSFTTrainer`] with each trace weighted by w = π(y|x)/β(y|x) (detached).

    Dataset: columns `prompt`, `completion` and `behaviour_logprob`, the float log β(y|x) summed over the
    completion's tokens under the distribution actually sampled from (temperature and top-p included), over
    the same tokens the loss covers: the completion as the tokenizer encodes it, plus the EOS token that
    `SFTTrainer` appends when the completion does not end with it.

    The weight comes from the training forward itself (log π(y|x) summed over the completion tokens, no
    second forward) and carries no gradient. That forward runs in training mode: with dropout (LoRA
    dropout, say) log π, hence w, carries the dropout noise; set dropout to 0 for exact weights. Logged:
    `iw/weight_min`, `iw/weight_max` (over the steps since the last log), `iw/weight_mean`, `iw/ess`
    (effective sample size (Σw)²/Σw² of a micro-batch) and `iw/truncated_fraction` (averaged).
    """

    config_class = ImportanceWeightedSFTConfig
    _tag_names = ["trl", "sft", "iterdeploy", "importance-weighted"]
    _name = "ImportanceWeightedSFT"
    _extra_columns = (BEHAVIOUR_LOGPROB,)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """`ValidTraceSFTTrainer`'s arguments (`args` an `ImportanceWeightedSFTConfig`)."""
        super().__init__(*args, **kwargs)
        # TRL's collators build model inputs only: carry behaviour_logprob through beside them
        self.data_collator = KeepFloatColumns(self.data_collator, (BEHAVIOUR_LOGPROB,))

    def _check_datasets(self, train_dataset: Dataset | IterableDataset | None, eval_dataset: Any) -> None:
        _check_behaviour_logprobs(train_dataset, "train")
        for name, dataset in _named(eval_dataset):
            _check_behaviour_logprobs(dataset, name)
        super()._check_datasets(train_dataset, eval_dataset)

    def _set_signature_columns_if_needed(self) -> None:
        # `remove_unused_columns` would drop the behaviour log-prob before the collator sees it
        super()._set_signature_columns_if_needed()
        if BEHAVIOUR_LOGPROB not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, BEHAVIOUR_LOGPROB]

    def _sequence_weights(
        self, token_logps: torch.Tensor, mask: torch.Tensor, inputs: dict[str, Any], mode: str
    ) -> torch.Tensor:
        """w_i from the forward's own log π(y_i|x_i), detached; statistics into the trainer's metrics."""
        if BEHAVIOUR_LOGPROB not in inputs:
            raise KeyError(
                f"the batch has no '{BEHAVIOUR_LOGPROB}': pass a data collator that keeps it "
                f"(see iterdeploy_trl.trainers.iw_sft.KeepFloatColumns)"
            )
        args = self.args
        lengths = mask.sum(-1)
        weights, stats = losses.importance_weights(
            losses.sequence_logprobs(token_logps, mask),
            inputs[BEHAVIOUR_LOGPROB],
            truncate=args.iw_truncate,
            self_normalize=args.iw_self_normalize,
            per_token=args.iw_per_token,
            lengths=lengths,
        )
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        # min and max are kept as running extremes (the log averages each list), the others averaged
        low, high = gather(stats["weight_min"]).min().item(), gather(stats["weight_max"]).max().item()
        metrics["iw/weight_min"] = (
            [min(metrics["iw/weight_min"][0], low)] if metrics["iw/weight_min"] else [low]
        )
        metrics["iw/weight_max"] = (
            [max(metrics["iw/weight_max"][0], high)] if metrics["iw/weight_max"] else [high]
        )
        metrics["iw/weight_mean"].append(gather(stats["weight_mean"]).mean().item())
        metrics["iw/ess"].append(gather(stats["ess"]).mean().item())
        metrics["iw/truncated_fraction"].append(gather(stats["truncated_fraction"]).mean().item())
        return weights


class KeepFloatColumns:
    """Wrap a TRL collator so that float dataset columns (e.g. `behaviour_logprob`) reach the batch as
    float64 tensors. A missing, `None` or non-finite value is an error naming the column."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]], columns: tuple[str, ...]):
        self.collator = collator
        self.columns = columns

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        kept = {}
        for column in self.columns:
            values = [example.get(column) for example in examples]
            bad = [v for v in values if not _is_finite_number(v)]
            if bad:
                raise ValueError(
                    f"a batch has {len(bad)} row(s) without a usable '{column}' (got {bad[0]!r}): every training "
                    f"row needs it as a finite float"
                )
            kept[column] = torch.tensor(values, dtype=torch.float64)
        batch = self.collator([{k: v for k, v in ex.items() if k not in self.columns} for ex in examples])
        batch.update(kept)
        return batch


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _named(eval_dataset: Any) -> list[tuple[str, Any]]:
    if eval_dataset is None:
        return []
    if isinstance(eval_dataset, dict):
        return [(f"eval ({key})", dataset) for key, dataset in eval_dataset.items()]
    return [("eval", eval_dataset)]


def _check_behaviour_logprobs(dataset: Dataset | IterableDataset | None, name: str) -> None:
    """Every row carries a finite behaviour log-prob; otherwise an error naming the first bad row."""
    if dataset is None or (isinstance(dataset, Dataset) and len(dataset) == 0):
        return  # the empty set gets its own error
    columns = _column_names(dataset)
    hint = (
        "Record the log-prob of each completion under the distribution it was sampled from (summed over its "
        "tokens) when generating, or train on these traces with ValidTraceSFTTrainer."
    )
    if BEHAVIOUR_LOGPROB not in columns:
        raise ValueError(
            f"the {name} dataset has no '{BEHAVIOUR_LOGPROB}' column (columns: {columns}). {hint}"
        )
    if not isinstance(dataset, Dataset):
        return  # streamed rows are checked by the collator
    for row, value in enumerate(dataset[BEHAVIOUR_LOGPROB]):
        if not _is_finite_number(value):
            raise ValueError(f"row {row} of the {name} dataset has {BEHAVIOUR_LOGPROB}={value!r}. {hint}")
