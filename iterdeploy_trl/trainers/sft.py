"""Valid-trace SFT: TRL's ``SFTTrainer`` on curated valid traces, with a loss that sums a trace's log-probs.

With a binary VAL reward, the SFT gradient on the N⁺ valid on-policy traces, (1/N⁺) Σ_valid ∇ log π(y|x),
is N/N⁺ times the REINFORCE gradient (Prop. 1), provided the loss sums log-probs over a trace's tokens.
TRL's default normalisation (a batch-global token mean) is that loss times a positive constant per batch;
a per-trace token mean is not. ``ValidTraceSFTConfig.loss_normalization`` picks one of the three.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc
import torch
from datasets import Dataset, IterableDataset
from trl import SFTConfig, SFTTrainer

from iterdeploy_trl.trainers import losses

logger = logging.getLogger(__name__)

OVERLONG_POLICIES: tuple[str, ...] = ("skip", "raise")
_ROW = "_iterdeploy_row"  # original row index, carried through TRL's preparation to name over-long rows

EMPTY_TRAINING_SET = (
    "no valid traces yet: nothing to train on — the training set has 0 rows. Deploy the model on more tasks "
    "(or sample more completions per task) until VAL accepts some plans, or skip fine-tuning this generation."
)


def default_bf16(use_cpu: bool) -> bool:
    """`bf16` where a config leaves it unset (TRL's default is `True` if `fp16` is unset): `True` where bf16
    mixed precision can run, i.e. on a GPU (or XPU, NPU, ...) with bf16 support, or on the CPU when `use_cpu`
    asks for it (CPU autocast, as TRL does); `False` otherwise, where TRL's default would fail with "Your setup
    doesn't support bf16/gpu" (a machine without an accelerator, `use_cpu` not set)."""
    from transformers.utils import is_torch_bf16_gpu_available

    return bool(use_cpu or is_torch_bf16_gpu_available())


class RestoresModelState:
    """Mixin for the trainers: a model object given to the trainer comes back from `train()` as it went in.

    Training changes the model object in ways that outlive the trainer: accelerate wraps its `forward` in
    bf16/fp16 autocast (so a later `generate` on the same object samples under autocast: other samples and
    other behaviour log-probs than before, with no parameter changed), `gradient_checkpointing` turns on
    checkpointing and `config.use_cache = False` and adds an input-grad hook, and the model is left in
    train mode. `train()` undoes these on the object the caller passed (its parameters are trained, as
    asked). A LoRA that `peft_config` puts on the model stays: that is what was trained."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        model = kwargs.get("model", args[0] if args else None)
        self._given_model = model if isinstance(model, torch.nn.Module) else None
        self._given_state = _model_state(self._given_model) if self._given_model is not None else None
        super().__init__(*args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """The parent's `train()`, then the given model's forward, mode, checkpointing and cache restored."""
        try:
            return super().train(*args, **kwargs)
        finally:
            # the autocast wrapper accelerate put on the forward of the model it prepared
            self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)
            if self._given_model is not None:
                _restore_model_state(self._given_model, self._given_state)


def _model_state(model: torch.nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        "training": model.training,
        "checkpointing": _is_checkpointing(model),
        "use_cache": getattr(config, "use_cache", None),
        "input_grads_hook": hasattr(model, "_require_grads_hook"),
    }


def _is_checkpointing(model: torch.nn.Module) -> bool:
    value = getattr(model, "is_activation_checkpointing", None)  # transformers 5.x's name
    if value is None:
        value = getattr(model, "is_gradient_checkpointing", False)
    return bool(value)


def _restore_model_state(model: torch.nn.Module, state: dict[str, Any]) -> None:
    if not state["checkpointing"] and _is_checkpointing(model):
        # transformers 5.x's name, or the older one
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    if not state["input_grads_hook"] and hasattr(model, "_require_grads_hook"):
        model.disable_input_require_grads()
    config = getattr(model, "config", None)
    if config is not None and state["use_cache"] is not None:
        config.use_cache = state["use_cache"]
    model.train(state["training"])


@dataclass
class ValidTraceSFTConfig(SFTConfig):
    r"""
    Configuration for [`ValidTraceSFTTrainer`]: [`~trl.SFTConfig`] plus the fields below.

    Parameters:
        loss_normalization (`str`, *optional*, defaults to `"sequence_sum"`):
            How the negative log-likelihood of a batch of N traces is normalised:
            - `"sequence_sum"`: −(1/N) Σ_i Σ_t log π(y_i,t). Same direction as binary-reward REINFORCE (Prop. 1).
            - `"batch_tokens"`: −Σ_i Σ_t log π(y_i,t) / Σ_i T_i, TRL's default. The same direction (a positive
              constant factor per batch), a step size that shrinks as traces grow longer.
            - `"sequence_mean"`: −(1/N) Σ_i (1/T_i) Σ_t log π(y_i,t). Reweights traces by 1/T_i: NOT the
              REINFORCE direction when lengths differ. For ablations.
            Under gradient accumulation the denominator (N or Σ_i T_i) counts the whole optimizer batch.
        overlong_policy (`str`, *optional*, defaults to `"skip"`):
            What to do with a row whose prompt + completion is longer than `max_length` tokens. TRL would
            truncate it and train on a cut plan, which teaches the model to stop mid-plan. `"skip"` drops such
            rows and logs how many; `"raise"` stops with the offending row indices.
        completion_only_loss (`bool`, *optional*, defaults to `True`):
            Overrides TRL's `None`. Must be `True`: the policy gradient involves log π(y|x), the completion only;
            a loss on the prompt tokens adds ∇ log p(x), which is no part of it.
        bf16 (`bool`, *optional*):
            Unset: `True` where bf16 mixed precision can run (a GPU with bf16, or `use_cpu=True` as in TRL),
            else `False` (TRL's `True` fails on a machine without an accelerator). See `default_bf16`.
    """

    loss_normalization: str = field(
        default="sequence_sum",
        metadata={
            "help": "Normalisation of the trace log-likelihood: 'sequence_sum' (−(1/N) Σ_i Σ_t log π; "
            "REINFORCE's direction), 'batch_tokens' (TRL's token mean; same direction, a constant factor per "
            "batch) or 'sequence_mean' (per-trace token mean; reweights traces by 1/T_i, not REINFORCE's "
            "direction).",
            "choices": list(losses.NORMALIZATIONS),
        },
    )
    overlong_policy: str = field(
        default="skip",
        metadata={
            "help": "Rows whose prompt + completion exceeds `max_length`: 'skip' (drop them, log the count) or "
            "'raise'. TRL would otherwise truncate them and train on a cut plan.",
            "choices": list(OVERLONG_POLICIES),
        },
    )
    completion_only_loss: bool | None = field(
        default=True,
        metadata={
            "help": "Must be True: the loss is on the completion (the trace) only, as in the policy gradient."
        },
    )

    def __post_init__(self) -> None:
        if self.bf16 is None and not self.fp16:
            self.bf16 = default_bf16(self.use_cpu)
        super().__post_init__()
        if self.loss_normalization not in losses.NORMALIZATIONS:
            raise ValueError(
                f"loss_normalization={self.loss_normalization!r}: choose one of {', '.join(losses.NORMALIZATIONS)}"
            )
        if self.overlong_policy not in OVERLONG_POLICIES:
            raise ValueError(
                f"overlong_policy={self.overlong_policy!r}: choose one of {', '.join(OVERLONG_POLICIES)}"
            )
        if self.completion_only_loss is False:
            raise ValueError(
                "completion_only_loss=False would train on the prompt tokens too; the valid-trace loss is on the "
                "completion only. Leave it at True (or use trl.SFTTrainer for full-sequence SFT)."
            )
        if self.packing or self.padding_free:
            raise ValueError(
                "packing / padding_free put several traces in one row, but the loss is computed per trace: "
                "set packing=False and padding_free=False."
            )
        if self.loss_type != "nll":
            raise ValueError(f"loss_type={self.loss_type!r} is not supported: this trainer's loss is the NLL")
        if self.label_smoothing_factor:
            raise ValueError(
                "label_smoothing_factor is not supported: the loss is the exact trace log-likelihood"
            )


class ValidTraceSFTTrainer(RestoresModelState, SFTTrainer):
    """[`~trl.SFTTrainer`] on curated valid traces, with a REINFORCE-equivalent loss.

    Dataset: prompt-completion rows, columns `prompt` and `completion` (standard text or conversational),
    tokenised by TRL with an EOS appended; or rows with `prompt_ids` and `completion_ids` (lists of token ids,
    e.g. as the deployment backend sampled them), trained on exactly as given: no re-tokenisation and no EOS
    appended (a completion that sampled its stop token carries it; a truncated one has none).
    Loss: `losses.sft_loss` on the completion tokens, normalised by `args.loss_normalization`;
    `"sequence_sum"` (default) and `"batch_tokens"` keep the direction of binary-reward REINFORCE, because
    they sum each trace's token log-probs (up to a positive constant per batch); `"sequence_mean"` divides
    each trace by its length and does not.

    Differences from `SFTTrainer`: an empty training set is a clear error; rows longer than `max_length` are
    skipped (or raise) instead of being truncated to a cut plan; `compute_loss` computes per-trace
    log-likelihoods from the same fused forward TRL uses; gradient accumulation divides by the number of
    traces (or tokens) of the whole optimizer batch.
    """

    config_class = ValidTraceSFTConfig
    _tag_names = ["trl", "sft", "iterdeploy"]
    _name = "ValidTraceSFT"
    # compute_loss divides by the count over the whole accumulated batch itself
    loss_is_scaled_for_ga = True
    # dataset columns that travel to compute_loss beside the model inputs (IW-SFT: behaviour_logprob)
    _extra_columns: tuple[str, ...] = ()

    def __init__(
        self,
        model: Any,
        args: ValidTraceSFTConfig | None = None,
        data_collator: Any = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = self.config_class(output_dir=f"{self._name}-output")
        if not isinstance(args, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(args).__name__}: "
                f"build the config with {self.config_class.__name__}(...)"
            )
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                f"{type(self).__name__} computes its own loss: compute_loss_func is not supported"
            )
        self._pending_args = args  # for _check_datasets, which runs before Trainer sets self.args
        self._check_datasets(train_dataset, eval_dataset)
        self.num_overlong_skipped: dict[str, int] = {}
        self._batch_counts: dict[str, torch.Tensor] | None = None
        super().__init__(
            model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )

    # --- data ---------------------------------------------------------------------------------------------

    def _check_datasets(self, train_dataset: Dataset | IterableDataset | None, eval_dataset: Any) -> None:
        """Clear errors for unusable datasets, before TRL prepares them (IW-SFT adds its own column's)."""
        _check_prompt_completion(train_dataset, "train")

    def _prepare_dataset(
        self,
        dataset: Dataset | IterableDataset,
        processing_class: Any,
        args: ValidTraceSFTConfig,
        packing: bool,
        formatting_func: Any,
        dataset_name: str,
    ) -> Dataset | IterableDataset:
        """TRL's preparation without its truncation, then over-long rows skipped or reported. Rows with token
        ids (``prompt_ids``, ``completion_ids``) become TRL's pre-tokenised form first (``_ids_to_inputs``)."""
        dataset = _ids_to_inputs(dataset, dataset_name)
        max_length = args.max_length
        if max_length is None:
            return super()._prepare_dataset(
                dataset, processing_class, args, packing, formatting_func, dataset_name
            )
        untruncated = copy.copy(args)  # a shallow copy: TRL's preparation reads max_length from it
        untruncated.max_length = None
        if isinstance(dataset, Dataset) and _ROW not in dataset.column_names:
            dataset = dataset.add_column(_ROW, list(range(len(dataset))))
        dataset = super()._prepare_dataset(
            dataset, processing_class, untruncated, packing, formatting_func, dataset_name
        )
        if not isinstance(dataset, Dataset):  # streaming: rows are checked as they come, not counted
            return dataset.filter(_fits, fn_kwargs={"max_length": max_length, "policy": args.overlong_policy})
        # lengths from Arrow: a Python list of every token id would not fit in memory at 32k context
        lengths = pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_pylist()
        overlong = [(row, n) for row, n in zip(dataset[_ROW], lengths, strict=True) if n > max_length]
        dataset = dataset.remove_columns(_ROW)
        if overlong and args.overlong_policy == "raise":
            shown = ", ".join(f"row {row} ({n} tokens)" for row, n in sorted(overlong)[:5])
            raise ValueError(
                f"{len(overlong)} of {len(lengths)} rows of the {dataset_name} dataset are longer than "
                f"max_length={max_length} tokens (prompt + completion, with the EOS TRL appends to text rows): {shown}. Training on them would "
                f"teach a cut plan. Raise max_length, drop those traces, or set overlong_policy='skip'."
            )
        self.num_overlong_skipped[dataset_name] = len(overlong)
        if overlong:
            logger.warning(
                "skipped %d of %d rows of the %s dataset: prompt + completion longer than max_length=%d tokens "
                "(truncating would train on a cut plan); raise max_length to keep them",
                len(overlong),
                len(lengths),
                dataset_name,
                max_length,
            )
            keep = [i for i, n in enumerate(lengths) if n <= max_length]
            dataset = dataset.select(keep)
        if len(dataset) == 0:
            raise ValueError(
                f"no valid traces yet: nothing to train on — every row of the {dataset_name} dataset is longer "
                f"than max_length={max_length} tokens. Raise max_length."
            )
        return dataset

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, Any]:
        """Also count the traces and completion tokens of the whole optimizer batch (all devices), the
        denominators of the loss under gradient accumulation."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        masks = [b["labels"][:, 1:].ne(-100) for b in batch_samples]
        traces = sum(int(m.any(-1).sum()) for m in masks)
        tokens = sum(int(m.sum()) for m in masks)
        counts = torch.tensor([traces, tokens], device=device, dtype=torch.float64)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        self._batch_counts = {"traces": counts[0], "tokens": counts[1]}
        return batch_samples, num_items_in_batch

    # --- loss ---------------------------------------------------------------------------------------------

    def _sequence_weights(
        self, token_logps: torch.Tensor, mask: torch.Tensor, inputs: dict[str, Any], mode: str
    ) -> torch.Tensor | None:
        """Per-trace factors of the loss; none for plain valid-trace SFT (importance weights in IW-SFT)."""
        return None

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """One fused forward (TRL's chunked LM head: per-token log π without the full logits), then
        `losses.iw_sft_loss` / `losses.sft_loss` on the completion tokens."""
        mode = "train" if self.model.training else "eval"
        extra = {k: inputs.pop(k) for k in self._extra_columns if k in inputs}
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True
        outputs = model(**inputs, fused_lm_head=True)
        # log_probs[:, t] = log π(input_ids[:, t+1] | input_ids[:, :t+1]), 0 where labels[:, t+1] == -100
        token_logps, mask = outputs.log_probs, outputs.label_mask
        weights = self._sequence_weights(token_logps, mask, {**inputs, **extra}, mode)

        normalization = self.args.loss_normalization
        denominator = None
        if mode == "train" and self._batch_counts is not None:
            key = "tokens" if normalization == "batch_tokens" else "traces"
            denominator = self._batch_counts[key]
        loss = losses.weighted_nll(token_logps, mask, weights, normalization, denominator)
        if denominator is not None and self.accelerator.num_processes > 1:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the denominator is global
        if self.aux_loss_enabled:
            steps = self.current_gradient_accumulation_steps if mode == "train" else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps

        self._log_token_metrics(outputs, inputs, mode)
        if return_outputs:  # only for `compute_metrics`: the logits need a second forward, as in TRL
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            return loss, outputs
        return loss

    def _log_token_metrics(self, outputs: Any, inputs: dict[str, Any], mode: str) -> None:
        """The metrics `SFTTrainer.compute_loss` logs: entropy, mean_token_accuracy, num_tokens."""
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(outputs.label_mask.sum()).sum()
        entropy_sum = gather(outputs.entropy.detach().sum()).sum()
        num_correct = gather(outputs.is_top1.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append(
            (num_correct / num_valid).item() if num_valid > 0 else 0.0
        )
        if mode == "train":
            self._total_train_tokens += (
                int(gather(inputs["attention_mask"].sum()).sum().item()) // self._tp_size
            )
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if self.aux_loss_enabled:
            self._metrics[mode]["aux_loss"].append(gather(outputs.aux_loss).mean().item())


def _fits(row: dict[str, Any], max_length: int, policy: str) -> bool:
    if len(row["input_ids"]) <= max_length:
        return True
    if policy == "raise":
        raise ValueError(
            f"a row of {len(row['input_ids'])} tokens is longer than max_length={max_length} (prompt + completion"
            "); training on it would teach a cut plan. Raise max_length or set overlong_policy='skip'."
        )
    return False


PROMPT_IDS, COMPLETION_IDS = "prompt_ids", "completion_ids"
_TEXT_AND_IDS = ("prompt", "completion", PROMPT_IDS, COMPLETION_IDS)


def _ids_to_inputs(dataset: Dataset | IterableDataset, name: str) -> Dataset | IterableDataset:
    """Rows with ``prompt_ids`` and ``completion_ids`` as TRL's pre-tokenised rows: ``input_ids`` = prompt_ids +
    completion_ids and a ``completion_mask`` on the completion part. TRL then neither tokenises nor appends an
    EOS: the loss covers exactly the sampled tokens (their own stop token included, none when truncated).
    Other datasets are returned unchanged."""
    columns = _column_names(dataset)
    present = [c for c in (PROMPT_IDS, COMPLETION_IDS) if c in columns]
    if not present:
        return dataset
    if len(present) == 1 or "input_ids" in columns:
        raise ValueError(
            f"the {name} dataset has {present} and {'input_ids' if 'input_ids' in columns else 'not both'}: give "
            f"both '{PROMPT_IDS}' and '{COMPLETION_IDS}' (the sampled tokens) and no 'input_ids', or text only"
        )

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        prompt, completion = row[PROMPT_IDS], row[COMPLETION_IDS]
        if not prompt or not completion:
            raise ValueError(
                f"row {index} of the {name} dataset has {PROMPT_IDS}={prompt!r} and {COMPLETION_IDS}="
                f"{completion!r}: every row needs both as non-empty lists of token ids (a trace written before "
                f"they were recorded has none: drop the id columns to train on the text instead)"
            )
        return {
            "input_ids": [*prompt, *completion],
            "completion_mask": [0] * len(prompt) + [1] * len(completion),
        }

    drop = [c for c in _TEXT_AND_IDS if c in columns]
    return dataset.map(convert, with_indices=True, remove_columns=drop)


def _column_names(dataset: Dataset | IterableDataset | None) -> list[str]:
    if dataset is None:
        return []
    names = dataset.column_names
    if names is None:  # an IterableDataset of unknown features
        names = list(next(iter(dataset)).keys())
    return list(names)


def _check_prompt_completion(dataset: Dataset | IterableDataset | None, name: str) -> None:
    """A clear error for an empty or wrongly shaped training set, before TRL trips on it."""
    if dataset is None:
        return  # TRL's own "`train_dataset` is required"
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise ValueError(EMPTY_TRAINING_SET)
    if isinstance(dataset, IterableDataset):
        try:
            next(iter(dataset))
        except StopIteration:
            raise ValueError(EMPTY_TRAINING_SET) from None
    columns = _column_names(dataset)
    if (
        "input_ids" not in columns
        and not {"prompt", "completion"} <= set(columns)
        and not {PROMPT_IDS, COMPLETION_IDS} <= set(columns)
    ):
        raise ValueError(
            f"the {name} dataset needs the columns 'prompt' and 'completion' (one curated trace a row), or "
            f"'{PROMPT_IDS}' and '{COMPLETION_IDS}' (its sampled token ids), got {columns}"
        )
