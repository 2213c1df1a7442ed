r"""The gradient vectors of the ``pipeline``-style checks, computed by the package's own trainers: the SFT
trainers' ``compute_loss`` on their prepared, collated rows (:func:`sft_trainer`, :func:`collate`,
:func:`trainer_gradient`), the REINFORCE vector of the deployed sampler β_θ (softmax(logits/T) on the top-p
nucleus: :func:`sampler_sequence_logprobs`, :func:`reinforce_vector`), each under a precision (float32, or
bf16 autocast), and how the checks compare them over repeats (:func:`safe_cosine`, :func:`t_interval`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from iterdeploy_trl.theory.errors import TheoryError
from iterdeploy_trl.theory.gradients import ParamSet, cosine, flat_grad
from iterdeploy_trl.theory.report import fmt_interval as report_fmt_interval
from iterdeploy_trl.theory.report import interval
from iterdeploy_trl.trainers import losses

# ------------------------------------------------------------------------------------ over repeats


def t_interval(values: Sequence[float]) -> dict[str, float]:
    """Mean, std and the 95% Student-t interval of the mean over *independent* repeats (fresh sampling seeds):
    ``report.interval`` without the raw values; NaN values dropped, no interval (NaN bounds) from one value.
    Never over bootstrap replicates: their spread is already a standard error (``stats.percentile_interval``)."""
    iv = interval(values)
    return {key: iv[key] for key in ("n", "mean", "std", "lo", "hi")}


def safe_cosine(a: Tensor, b: Tensor) -> float:
    """``cosine``, NaN where a vector is zero (e.g. every weight underflowed)."""
    try:
        return cosine(a, b)
    except TheoryError:
        return float("nan")


def fmt_interval(s: dict[str, float], digits: int = 4) -> str:
    """``report.fmt_interval`` at 4 digits, one value read as one repeat."""
    return report_fmt_interval(s, digits, one="1 repeat")


# ---------------------------------------------------------------------------- the sampler's log-probs


@contextlib.contextmanager
def precision(name: str, device: str) -> Iterator[None]:
    """float32 as is; bfloat16 as mixed precision trains it (autocast; the weights stay float32)."""
    if name == "float32":
        yield
    elif name == "bfloat16":
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            yield
    else:
        raise TheoryError(f"unknown precision {name!r}: use float32 or bfloat16")


def nucleus_token_logprobs(
    logits: Tensor, tokens: Tensor, temperature: float, top_p: float
) -> tuple[Tensor, Tensor]:
    """log β(y_t | ·) of the sampler that ``deploy.SampledLogProbs`` records: softmax(logits/T) restricted
    to the top-p nucleus (:func:`iterdeploy_trl.sampler.sampling_log_distribution`; the nucleus is a mask,
    so ∇ flows through the kept logits only). Returns (log-probs (…, T), in_nucleus (…, T) bool)."""
    from iterdeploy_trl.sampler import sampling_log_distribution

    logp = sampling_log_distribution(logits, temperature, top_p).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    inside = torch.isfinite(logp)
    return logp.masked_fill(~inside, 0.0), inside


def sampler_sequence_logprobs(
    model: torch.nn.Module, batch: dict[str, Tensor], temperature: float, top_p: float
) -> tuple[Tensor, Tensor]:
    """Σ_t log β_θ(y_t | ·) over each row's completion tokens (labels ≠ −100) of a TRL-collated batch, and
    the number of completion tokens outside the nucleus per row (0 when the sample is consistent)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels.ne(-100)
    logp, inside = nucleus_token_logprobs(logits, labels.clamp(min=0), temperature, top_p)
    return (logp * mask).sum(-1), (mask & ~inside).sum(-1)


# ------------------------------------------------------------------------------- the trainers' gradients


def sft_trainer(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    *,
    importance_weighted: bool,
    normalization: str,
    temperature: float = 1.0,
    top_p: float = 1.0,
    out_dir: str,
) -> Any:
    """The package's SFT trainer (valid-trace or importance-weighted) over ``rows``, for its tokenisation,
    collator and ``compute_loss``; nothing is trained. The IW config gets the sampling settings that
    produced the behaviour log-probs when it has fields for them."""
    from datasets import Dataset

    from iterdeploy_trl.trainers import (
        ImportanceWeightedSFTConfig,
        ImportanceWeightedSFTTrainer,
        ValidTraceSFTConfig,
        ValidTraceSFTTrainer,
    )

    common = dict(
        output_dir=out_dir,
        report_to=[],
        bf16=False,
        use_cpu=not str(model.device).startswith("cuda"),
        loss_normalization=normalization,
        per_device_train_batch_size=max(1, len(rows)),
        max_length=None,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    cols = (
        ("prompt_ids", "completion_ids")
        if all(r.get("completion_ids") for r in rows)
        else ("prompt", "completion")
    )
    if importance_weighted:
        cols += ("behaviour_logprob",)
    data = Dataset.from_list([{k: r[k] for k in cols} for r in rows])
    if importance_weighted:
        fields = ImportanceWeightedSFTConfig.__dataclass_fields__
        extra = {}
        if "sampling_temperature" in fields:
            extra["sampling_temperature"] = temperature
        if "sampling_top_p" in fields:
            extra["sampling_top_p"] = top_p
        # self-normalised over the batch: the direction of plain w (one scalar), without underflow of
        # exp(log π − log β) for long or unlikely traces
        args = ImportanceWeightedSFTConfig(**common, **extra, iw_self_normalize=True)
        cls = ImportanceWeightedSFTTrainer
    else:
        args = ValidTraceSFTConfig(**common)
        cls = ValidTraceSFTTrainer
    return cls(model=model, args=args, train_dataset=data, processing_class=tokenizer)


_MODEL_COLUMNS = (
    "input_ids",
    "labels",
    "completion_mask",
    "assistant_masks",
    "attention_mask",
    "behaviour_logprob",
)


def collate(trainer: Any, device: Any) -> dict[str, Any]:
    """The trainer's whole (prepared, tokenised) train dataset as one collated batch on ``device``."""
    data = trainer.train_dataset
    keep = [c for c in _MODEL_COLUMNS if c in data.column_names]
    batch = trainer.data_collator([{k: data[i][k] for k in keep} for i in range(len(data))])
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def trainer_gradient(trainer: Any, batch: dict[str, Any], params: ParamSet, prec: str, device: str) -> Tensor:
    """−∇ of the trainer's own ``compute_loss`` on ``batch`` (eval mode: no dropout; the loss's own
    denominators), flattened over ``params``."""
    trainer.model.eval()
    with precision(prec, device):
        loss = trainer.compute_loss(trainer.model, dict(batch))
    return -flat_grad(loss, params)


def reinforce_vector(
    model: torch.nn.Module,
    valid_batch: dict[str, Any],
    n_samples: int,
    temperature: float,
    top_p: float,
    params: ParamSet,
    prec: str = "float32",
    device: str = "cpu",
) -> Tensor:
    """(1/N) Σ r ∇log β_θ(y), the REINFORCE vector of a draw of N samples (binary reward, no baseline) from the
    collated batch of its valid ones: invalid samples have A = r = 0, so their log-probs carry no gradient and
    only the valid rows are run through the model; N counts them all."""
    with precision(prec, device):
        seq_valid, _ = sampler_sequence_logprobs(model, valid_batch, temperature, top_p)
    n_valid = seq_valid.shape[0]
    seq = torch.cat([seq_valid.double(), seq_valid.new_zeros(n_samples - n_valid, dtype=torch.float64)])
    reward = torch.cat([torch.ones(n_valid), torch.zeros(n_samples - n_valid)]).to(seq)
    return -flat_grad(losses.reinforce_loss(seq, reward, "none"), params)
