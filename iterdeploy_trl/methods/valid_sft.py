"""Valid-trace SFT, the study's method: the curated valid traces (one shortest valid trace per solved task by
default: ``curation``), with the summed token log-likelihood loss (``ValidTraceSFTTrainer``); a fresh model from
the base each generation (``training.init: base``) or continuing (``previous``)."""

from __future__ import annotations

from typing import Any

from iterdeploy_trl.methods.registry import CURATED, Method, TrainJob, register


def train(cfg: Any, job: TrainJob, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Fine-tune the next generation on the curated ``rows`` (``training.train_generation``)."""
    from iterdeploy_trl.training import train_generation

    init_from = job.model_dir if cfg.training.init == "previous" else None
    return train_generation(cfg, job.base, rows, job.out_dir, seed=job.seed, init_from=init_from)


NAME = "valid-sft"
METHOD = register(Method(
    name=NAME, label="valid-trace SFT", colour="#0072B2", order=0, in_comparison=True,
    summary="curated valid traces (ValidTraceSFTTrainer, sequence-sum loss)", trains_on=CURATED, train=train,
))
