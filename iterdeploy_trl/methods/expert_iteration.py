"""Expert iteration (rejection-sampling fine-tuning): valid-trace SFT that always continues from the deployed
model (``training.init`` is not read), on the curated valid traces (``curation``: all-valid keeps every valid
trace, shortest one per task; random-valid one at random; ``none`` is refused: it is not rejection sampling)."""

from __future__ import annotations

from typing import Any

from iterdeploy_trl.errors import require
from iterdeploy_trl.methods.registry import CURATED, SFT_KEYS, Method, TrainJob, register

NAME = "expert-iteration"


def train(cfg: Any, job: TrainJob, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Fine-tune the deployed model on the curated ``rows`` (``training.train_generation``)."""
    from iterdeploy_trl.training import train_generation

    return train_generation(cfg, job.base, rows, job.out_dir, seed=job.seed, init_from=job.model_dir)


def check(cfg: Any) -> None:
    require(cfg.curation != "none", "curation", cfg.curation,
            f"is not rejection sampling: method {NAME} keeps valid traces only (all-valid, shortest, random-valid)")


METHOD = register(Method(
    name=NAME, label="expert iteration", colour="#000000", order=6,
    summary="curated valid traces, continuing from the deployed model (ValidTraceSFTTrainer)", trains_on=CURATED,
    train=train, reads=tuple(k for k in SFT_KEYS if k != "training.init"), continues=True, check=check,
))
