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
from accelerate.utils import gather_object
from datasets import Dataset, IterableDataset

from iterdeploy_trl.trainers import losses
from iterdeploy_trl.trainers.defaults import IW_PER_TOKEN, IW_SELF_NORMALIZE, IW_TRUNCATE
from iterdeploy_trl.trainers.sft import ValidTraceSFTConfig, ValidTraceSFTTrainer, _column_names

logger = logging.getLogger(__name__)

BEHAVIOUR_LOGPROB = "behaviour_logprob"
IW_WEIGHT = "iw_weight"  # the optimizer batch's weights, attached to each micro-batch before training on it
# Optional row columns saying how a trace was sampled; where present they must match the config. A trace
# record's ``sampling`` mapping (``temperature``, ``top_p``) is read the same way.
SAMPLING_COLUMNS = {"sampling_temperature": "temperature", "sampling_top_p": "top_p"}


@dataclass
class ImportanceWeightedSFTConfig(ValidTraceSFTConfig):
    r"""
    Configuration for [`ImportanceWeightedSFTTrainer`]: [`ValidTraceSFTConfig`] plus the fields below.

    Parameters:
        sampling_temperature (`float`, *optional*, defaults to `1.0`):
            Temperature of the sampler that produced the traces (and their `behaviour_logprob`). π(y|x) in the
            weight is taken under the same transformation of the current model's logits, so that β = π gives
            w = 1 exactly. Where the rows say how they were sampled (columns `sampling_temperature` /
            `sampling_top_p`, or a trace record's `sampling` mapping with `temperature` / `top_p`), a row
            that disagrees with the config is refused, naming the row.
        sampling_top_p (`float`, *optional*, defaults to `1.0`):
            Top-p of that sampler. With p < 1, π(y|x) in the weight is the nucleus-truncated probability (the
            current model's nucleus at each token, renormalised); a trace token outside π's nucleus gives w = 0.
        iw_truncate (`float` or `None`, *optional*, defaults to `10.0`):
            Cap c on the weights, w ← min(w, c), applied before self-normalisation. `None` keeps the unbiased
            (and high-variance) ratio.
        iw_self_normalize (`bool`, *optional*, defaults to `True`):
            Divide the weights by their mean over the optimizer batch (all micro-batches of a gradient
            accumulation step, all processes): w_i / mean_j w_j. Biased, much lower variance; the same
            estimator whatever the micro-batch size, accumulation or number of processes. An optimizer batch of
            one trace makes every weight 1, i.e. plain SFT.
        iw_per_token (`bool`, *optional*, defaults to `False`):
            Use the per-token geometric mean of the ratio, exp((log π − log β)/T_i), instead of the sequence
            ratio exp(log π − log β). Biased, but does not explode with the trace length.

    The three `iw_*` defaults are the run config's (`iw_sft:` section), defined once in
    `iterdeploy_trl.trainers.defaults`: truncated at 10 and self-normalised, as the study's runs trained. (In
    release 0.1.0 the trainer's own were `None` / `False`, the unbiased ratio: pass `iw_truncate=None,
    iw_self_normalize=False` for it; CHANGELOG.md.)
    """

    sampling_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Temperature the traces were sampled at; π(y|x) in the weight is taken at the same temperature."
        },
    )
    sampling_top_p: float = field(
        default=1.0,
        metadata={
            "help": "Top-p the traces were sampled with; π(y|x) in the weight is the nucleus-truncated probability."
        },
    )
    iw_truncate: float | None = field(
        default=IW_TRUNCATE,
        metadata={
            "help": "Cap c on the importance weights, min(w, c), applied before self-normalisation; None keeps "
            "the unbiased ratio."
        },
    )
    iw_self_normalize: bool = field(
        default=IW_SELF_NORMALIZE,
        metadata={
            "help": "Divide the weights by their mean over the optimizer batch (all micro-batches and processes; "
            "biased, lower variance)."
        },
    )
    iw_per_token: bool = field(
        default=IW_PER_TOKEN,
        metadata={
            "help": "Per-token geometric-mean ratio exp((log π − log β)/T_i) instead of the sequence ratio "
            "exp(log π − log β)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sampling_temperature > 0:
            raise ValueError(f"sampling_temperature must be positive, got {self.sampling_temperature}")
        if not 0 < self.sampling_top_p <= 1:
            raise ValueError(f"sampling_top_p must be in (0, 1], got {self.sampling_top_p}")
        if self.iw_truncate is not None and not self.iw_truncate > 0:
            raise ValueError(f"iw_truncate must be a positive weight cap or None, got {self.iw_truncate}")
        if (
            self.iw_self_normalize
            and self.per_device_train_batch_size * self.gradient_accumulation_steps == 1
        ):
            logger.warning(
                "iw_self_normalize=True with one trace per optimizer step on each process: on one process every "
                "weight is 1, i.e. plain valid-trace SFT. Use a larger batch (or accumulation) to self-normalise."
            )


class ImportanceWeightedSFTTrainer(ValidTraceSFTTrainer):
    """[`ValidTraceSFTTrainer`] with each trace weighted by w = π(y|x)/β(y|x) (detached).

    Dataset: `ValidTraceSFTTrainer`'s rows plus `behaviour_logprob`, the float log β(y|x) summed over the
    completion's tokens under the distribution actually sampled from: finite and at most 0 (a log-probability;
    a positive value is refused, naming the row). Optional `sampling_temperature` / `sampling_top_p` columns
    (or a trace record's `sampling` mapping) must match the config's. It must cover the tokens the loss
    covers: with `prompt_ids`/`completion_ids` rows exactly `completion_ids` (the sampled tokens, the stop
    token if one ended the sample; a truncated completion is trained on without an EOS and its weight covers
    no EOS either); with text rows the completion as the tokenizer encodes it plus the EOS `SFTTrainer`
    appends.

    π(y|x) in the weight is the current model's probability under the sampler's transformation
    (`sampling_temperature`, `sampling_top_p`: temperature, then the nucleus renormalised, as the deployment
    backend samples), so β = π gives w = 1. It is computed, with no gradient, by a separate forward of each
    optimizer batch before its first micro-batch is trained on: in eval mode (no dropout), outside autocast
    (the model's own dtype: float32 weights give float32 log-probs whatever `bf16`/`fp16` say, bf16 weights
    the bf16 computation the backend ran), logits in float32. No second forward is run when the training
    forward computes the same numbers: no mixed precision (neither `bf16`/`fp16` nor an autocast around the
    call), no active dropout, and no self-normalisation across micro-batches or processes. Then at
    temperature 1, top-p 1 the weight takes the training forward's own log π; otherwise the training
    forward's last hidden states (detached) go through the LM head once more, with no gradient, under the
    sampler's transformation: the cost of one LM-head projection of the completion positions, not of a forward.

    Estimators (w_i detached; N the traces of the optimizer batch; the loss normalisation as in
    `ValidTraceSFTTrainer`, shown here for `"sequence_sum"`):
    - plain (`iw_truncate=None`, `iw_self_normalize=False`): −(1/N) Σ_i w_i log π(y_i|x_i),
      w_i = π(y_i|x_i)/β(y_i|x_i). Unbiased for the on-policy
      gradient of the sampler-transformed π (Prop. 2), provided β(y|x) > 0 wherever π(y|x) r(y) > 0 and each
      trace's `behaviour_logprob` is exact. Variance grows exponentially with the trace length.
    - `iw_truncate` = c (default 10): w_i ← min(w_i, c). Biased towards β's traces where π/β > c; variance bounded by c².
    - `iw_self_normalize` (default on): w_i ← w_i / ((1/N) Σ_j w_j) over the optimizer batch (after truncation). Consistent
      as N grows, biased for small N; it removes the scale of the ratios, so it also tolerates a β known only
      up to a constant factor per batch. An optimizer batch of one trace gives plain SFT.
    - `iw_per_token`: w_i = exp((log π − log β)/T_i), the geometric mean of the per-token ratios. Biased
      (not a density ratio of any trace distribution), but bounded for long traces.
    Note the gradient is of log π at temperature 1 (the model as trained), weighted by the ratio of the
    sampler-transformed distributions: REINFORCE's direction for the deployed sampler only at T = 1, p = 1.

    A batch whose weights are all 0 (each trace has a token outside π's top-p nucleus, so log w = −∞, or every
    ratio underflows) is skipped: its weights are 0, never NaN (`losses.importance_weights`), so it contributes
    a zero gradient (the optimizer still steps: AdamW's momentum from earlier batches moves the weights). Each
    such batch is logged as a warning with the running count, counted in `zero_weight_batches`, and logged
    as the metric `iw/zero_weight_batches` (the count so far).

    Logged: `iw/weight_min`, `iw/weight_max` (over the steps since the last log), `iw/weight_mean`, `iw/ess`
    (effective sample size (Σw)²/Σw² of an optimizer batch, or of a micro-batch on the training-forward path),
    `iw/truncated_fraction` (averaged) and `iw/zero_weight_batches`.
    """

    config_class = ImportanceWeightedSFTConfig
    _tag_names = ["trl", "sft", "iterdeploy", "importance-weighted"]
    _name = "ImportanceWeightedSFT"
    _extra_columns = (BEHAVIOUR_LOGPROB, IW_WEIGHT)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """`ValidTraceSFTTrainer`'s arguments (`args` an `ImportanceWeightedSFTConfig`)."""
        self.zero_weight_batches = 0  # batches whose weights were all 0 (skipped: no gradient), see the class doc
        super().__init__(*args, **kwargs)
        # TRL's collators build model inputs only: carry behaviour_logprob through beside them
        self.data_collator = KeepFloatColumns(self.data_collator, (BEHAVIOUR_LOGPROB,))

    def _check_datasets(self, train_dataset: Dataset | IterableDataset | None, eval_dataset: Any) -> None:
        for name, dataset in [("train", train_dataset), *_named(eval_dataset)]:
            _check_behaviour_logprobs(dataset, name)
            _check_sampling_settings(dataset, name, self._pending_args)
        super()._check_datasets(train_dataset, eval_dataset)

    def _prepare_dataset(self, dataset: Dataset | IterableDataset, *args: Any, **kwargs: Any) -> Any:
        """The sampling-setting columns, checked already, are dropped before TRL's preparation."""
        drop = [c for c in (*SAMPLING_COLUMNS, "sampling") if c in (_column_names(dataset) or [])]
        if drop:
            dataset = dataset.remove_columns(drop)
        return super()._prepare_dataset(dataset, *args, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        # `remove_unused_columns` would drop the behaviour log-prob before the collator sees it
        super()._set_signature_columns_if_needed()
        if BEHAVIOUR_LOGPROB not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, BEHAVIOUR_LOGPROB]

    # --- weights ------------------------------------------------------------------------------------------

    def _training_forward_gives_weights(self, optimizer_batch: bool) -> bool:
        """Whether the training forward's log π is the weight's log π (no separate forward needed).

        ``optimizer_batch``: the weights are for the micro-batches of a whole optimizer step (self-normalised
        over all of them) rather than for one batch on its own."""
        args = self.args
        if args.bf16 or args.fp16 or torch.is_autocast_enabled(self.accelerator.device.type):
            return False
        if (
            args.iw_self_normalize
            and optimizer_batch
            and (self.current_gradient_accumulation_steps > 1 or self.accelerator.num_processes > 1)
        ):
            return False
        return not _has_active_dropout(self.model)

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, Any]:
        """`ValidTraceSFTTrainer`'s, then (unless the training forward gives them) the weights of the whole
        optimizer batch, self-normalised over all its micro-batches and processes, attached to each
        micro-batch as `iw_weight`."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.current_gradient_accumulation_steps = len(batch_samples)
        if batch_samples and not self._training_forward_gives_weights(optimizer_batch=True):
            self._attach_weights(batch_samples)
        return batch_samples, num_items_in_batch

    def _attach_weights(self, batch_samples: list[dict[str, Any]]) -> None:
        """`iw_weight` of each micro-batch: one `_weights` call on the whole optimizer batch (every process's
        micro-batches, in rank order), so self-normalisation divides by the mean over all of them."""
        local = []  # (log π(y|x), log β(y|x), T) of each trace of this process's micro-batches
        sizes = []
        for batch in batch_samples:
            if BEHAVIOUR_LOGPROB not in batch:
                raise KeyError(_NO_BEHAVIOUR)
            seq_logp_pi, lengths = self._sampling_logprobs(batch)
            local += zip(
                seq_logp_pi.tolist(), batch[BEHAVIOUR_LOGPROB].tolist(), lengths.tolist(), strict=True
            )
            sizes.append(len(lengths))
        per_process = [local]
        if self.accelerator.num_processes > 1:
            per_process = gather_object([local])
        rank = self.accelerator.process_index if self.accelerator.num_processes > 1 else 0
        logp_pi, logp_beta, lengths = torch.tensor(
            [row for rows in per_process for row in rows], dtype=torch.float64
        ).T
        weights, stats = self._weights(logp_pi, logp_beta, lengths)
        self._count_zero_weights(stats, "train")
        self._log_weight_stats(stats, "train")  # the optimizer batch's, once a step
        start = sum(len(rows) for rows in per_process[:rank])
        for batch, part in zip(batch_samples, weights[start : start + len(local)].split(sizes), strict=True):
            batch[IW_WEIGHT] = part

    def _weights(
        self, seq_logp_pi: torch.Tensor, seq_logp_beta: torch.Tensor, lengths: torch.Tensor
    ) -> losses.ImportanceWeights:
        """`losses.importance_weights` with this trainer's options, on one set of traces."""
        args = self.args
        weights, stats = losses.importance_weights(
            seq_logp_pi,
            seq_logp_beta,
            truncate=args.iw_truncate,
            self_normalize=args.iw_self_normalize,
            per_token=args.iw_per_token,
            lengths=lengths,
        )
        stats["traces"] = torch.tensor(len(weights))
        return losses.ImportanceWeights(weights, stats)

    def _sampling_logprobs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """log π(y_i|x_i) under the sampler's transformation (float64, (N,)) and the lengths T_i, from a
        no-grad forward in eval mode outside autocast; the logits in float32, a chunk of positions at a time."""
        model = self.accelerator.unwrap_model(self.model)
        causal_lm = _causal_lm(model)
        _check_plain_lm_head(causal_lm)
        device = self.accelerator.device
        inputs = {k: batch[k].to(device) for k in _BACKBONE_KEYS if k in batch}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                hidden = causal_lm.base_model(**inputs, use_cache=False).last_hidden_state
                return self._head_sampling_logprobs(causal_lm, hidden, batch["labels"])
        finally:
            model.train(was_training)

    def _head_sampling_logprobs(
        self, causal_lm: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log π(y_i|x_i) under the sampler's transformation (float64, (N,)) and the lengths T_i from the
        backbone's last hidden states (N, L, H) of a causal-LM batch: the LM head on the completion positions
        only, a chunk at a time, logits in float32, no gradient."""
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        head = causal_lm.get_output_embeddings()
        with torch.no_grad():
            targets, states = labels[mask], hidden[:, :-1][mask].detach()
            per_token = torch.cat(
                [
                    losses.sampling_logprobs(
                        head(states[i : i + _CHUNK]),
                        targets[i : i + _CHUNK],
                        self.args.sampling_temperature,
                        self.args.sampling_top_p,
                    )
                    for i in range(0, len(targets), _CHUNK)
                ]
                or [hidden.new_zeros(0, dtype=torch.float32)]
            )
        token_logps = torch.zeros(mask.shape, dtype=torch.float64, device=hidden.device)
        token_logps[mask] = per_token.double()
        return token_logps.sum(-1), mask.sum(-1)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """`ValidTraceSFTTrainer.compute_loss`. Where this batch's weights come from the training forward at a
        temperature or top-p other than 1, the backbone's last hidden states are kept (a forward hook) for
        `_sequence_weights`."""
        args = self.args
        keep = (
            IW_WEIGHT not in inputs
            and (args.sampling_temperature != 1.0 or args.sampling_top_p < 1.0)
            and self._training_forward_gives_weights(optimizer_batch=False)
        )
        if not keep:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        causal_lm = _causal_lm(self.accelerator.unwrap_model(model))
        _check_plain_lm_head(causal_lm)

        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            self._training_hidden = output.last_hidden_state

        handle = causal_lm.base_model.register_forward_hook(hook)
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            handle.remove()
            self._training_hidden = None

    def _count_zero_weights(self, stats: dict[str, torch.Tensor], mode: str) -> None:
        """Count (and warn about) a batch whose weights are all 0: it is skipped, contributing no gradient."""
        if mode == "train" and stats["all_zero"].item() > 0:
            self.zero_weight_batches += 1
            logger.warning(
                "IW-SFT skipped a batch of %d trace(s) at step %d: every importance weight is 0 (each trace has a "
                "token outside π's top-p nucleus, or every ratio π/β underflows), so it contributes no gradient; "
                "%d such batch(es) so far. Sample with a larger top_p, set iw_truncate, or train with "
                "ValidTraceSFTTrainer if this persists.",
                stats.get("traces", torch.tensor(0)).item(),
                self.state.global_step,
                self.zero_weight_batches,
            )

    def _log_weight_stats(self, stats: dict[str, torch.Tensor], mode: str) -> None:
        metrics = self._metrics[mode]
        if mode == "train":
            metrics["iw/zero_weight_batches"] = [float(self.zero_weight_batches)]
        # min and max are kept as running extremes (the log averages each list), the others averaged
        low, high = stats["weight_min"].item(), stats["weight_max"].item()
        metrics["iw/weight_min"] = (
            [min(metrics["iw/weight_min"][0], low)] if metrics["iw/weight_min"] else [low]
        )
        metrics["iw/weight_max"] = (
            [max(metrics["iw/weight_max"][0], high)] if metrics["iw/weight_max"] else [high]
        )
        for key in ("weight_mean", "ess", "truncated_fraction"):
            metrics[f"iw/{key}"].append(stats[key].item())

    def _sequence_weights(
        self, token_logps: torch.Tensor, mask: torch.Tensor, inputs: dict[str, Any], mode: str
    ) -> torch.Tensor:
        """The optimizer batch's weights attached by `get_batch_samples`; otherwise this batch's own, from the
        training forward's log π where that is the weight's (`_training_forward_gives_weights`), else from
        `_sampling_logprobs`. Statistics into the trainer's metrics."""
        if IW_WEIGHT in inputs:
            return inputs[IW_WEIGHT].to(token_logps)
        if BEHAVIOUR_LOGPROB not in inputs:
            raise KeyError(_NO_BEHAVIOUR)
        hidden = getattr(self, "_training_hidden", None)
        if hidden is not None:  # the training forward's hidden states (see `compute_loss`)
            self._training_hidden = None
            causal_lm = _causal_lm(self.accelerator.unwrap_model(self.model))
            seq_logp_pi, lengths = self._head_sampling_logprobs(causal_lm, hidden, inputs["labels"])
        elif self._training_forward_gives_weights(optimizer_batch=False) and (
            self.args.sampling_temperature == 1.0 and self.args.sampling_top_p == 1.0
        ):
            seq_logp_pi, lengths = losses.sequence_logprobs(token_logps, mask), mask.sum(-1)
        else:
            seq_logp_pi, lengths = self._sampling_logprobs(inputs)
        weights, stats = self._weights(seq_logp_pi, inputs[BEHAVIOUR_LOGPROB], lengths)
        if self.model.training:
            # zero on every process: this micro-batch's weights are its own (no self-normalisation across them)
            all_zero = self.accelerator.gather_for_metrics(stats["all_zero"].reshape(1)).min()
            self._count_zero_weights({**stats, "all_zero": all_zero, "traces": torch.tensor(len(weights))}, mode)
        gather = self.accelerator.gather_for_metrics
        self._log_weight_stats(
            {
                "weight_min": gather(stats["weight_min"]).min(),
                "weight_max": gather(stats["weight_max"]).max(),
                **{k: gather(stats[k]).mean() for k in ("weight_mean", "ess", "truncated_fraction")},
            },
            mode,
        )
        return weights.to(token_logps)


_NO_BEHAVIOUR = (
    f"the batch has no '{BEHAVIOUR_LOGPROB}': pass a data collator that keeps it "
    f"(see iterdeploy_trl.trainers.iw_sft.KeepFloatColumns)"
)
_BACKBONE_KEYS = ("input_ids", "attention_mask", "position_ids", "token_type_ids")
_CHUNK = 1024  # positions whose full-vocabulary logits are held at once in the weights' forward
# logit transforms some models apply after the LM head; the weights' forward applies none of them
_HEAD_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The causal LM under a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _check_plain_lm_head(causal_lm: torch.nn.Module) -> None:
    config = causal_lm.config.get_text_config()
    found = {k: getattr(config, k) for k in _HEAD_TRANSFORMS if getattr(config, k, None) not in (None, 1.0)}
    if found:
        raise ValueError(
            f"this model transforms its LM head's logits ({found}); ImportanceWeightedSFTTrainer's weights are "
            "taken from the plain head and would not be π(y|x). Use sampling_temperature=1, sampling_top_p=1, "
            "bf16=False and fp16=False with no dropout (the weights then come from the training forward)."
        )


def _has_active_dropout(model: torch.nn.Module) -> bool:
    """Whether a training-mode forward of ``model`` is random: a dropout module or attention dropout above 0."""
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    return bool(config is not None and getattr(config, "attention_dropout", 0.0))


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
            positive = [v for v in values if column == BEHAVIOUR_LOGPROB and v > 0]
            if positive:
                raise ValueError(_positive_logprob(f"a streamed row ({len(positive)} in this batch)", positive[0]))
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
        if value > 0:
            raise ValueError(_positive_logprob(f"row {row} of the {name} dataset", value))


def _positive_logprob(where: str, value: float) -> str:
    return (
        f"{where} has {BEHAVIOUR_LOGPROB}={value!r}, above 0: a log-probability is at most 0 (probability at most "
        "1), so this is not log β(y|x) (a probability, a negated log-prob or a per-token mean?), and its weight "
        f"π/β would be near exp(−{value:g}). Record the sum over the completion's tokens of log β(y_t|…) as "
        "sampled."
    )


def _check_sampling_settings(dataset: Dataset | IterableDataset | None, name: str, args: Any) -> None:
    """Where the rows say how they were sampled (`SAMPLING_COLUMNS`, or a trace record's `sampling` mapping),
    every row agrees with the config's `sampling_temperature` / `sampling_top_p`; else an error naming the
    first row that does not."""
    if not isinstance(dataset, Dataset) or len(dataset) == 0:
        return
    columns = _column_names(dataset)
    for field_name, key in SAMPLING_COLUMNS.items():
        expected = getattr(args, field_name)
        if field_name in columns:
            values, source = dataset[field_name], field_name
        elif "sampling" in columns:
            values = [s.get(key) if isinstance(s, dict) else None for s in dataset["sampling"]]
            source = f"sampling[{key!r}]"
        else:
            continue
        for row, value in enumerate(values):
            if value is None:
                continue
            if not _is_finite_number(value) or not math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12):
                raise ValueError(
                    f"row {row} of the {name} dataset was sampled with {source}={value!r}, but "
                    f"ImportanceWeightedSFTConfig.{field_name}={expected!r}: the weights π/β would compare two "
                    f"different distributions. Set {field_name}={value!r} in the config (the sampler's setting), "
                    "or leave out the rows sampled otherwise."
                )
