"""Importance-weighted SFT: the curated valid traces, each weighted by pi/beta (the trained model's over the
sampler's probability of the trace), truncated and self-normalised (``ImportanceWeightedSFTTrainer``); section
``iw_sft``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from iterdeploy_trl.errors import ConfigError, finite, require
from iterdeploy_trl.methods import valid_sft
from iterdeploy_trl.methods.registry import CURATED, Method, register
from iterdeploy_trl.trainers.defaults import IW_PER_TOKEN, IW_SELF_NORMALIZE, IW_TRUNCATE


@dataclass(frozen=True)
class IWSFTSettings:
    """IW-SFT's own settings (section ``iw_sft``; read by method iw-sft only). Their defaults are the
    trainer's (``trainers.defaults``: ``ImportanceWeightedSFTConfig`` takes the same)."""

    truncate: float | None = IW_TRUNCATE  # weight cap c in min(w, c); null: no cap
    self_normalize: bool = IW_SELF_NORMALIZE  # divide the weights by their mean over the batch
    per_token: bool = IW_PER_TOKEN  # per-token geometric mean of the ratio instead of the sequence ratio

    def check(self) -> None:
        require(self.truncate is None or (finite(self.truncate) and self.truncate > 0), "iw_sft.truncate",
                self.truncate, "must be a finite number > 0, or null for no cap")


def _sampling_fields(cfg: Any) -> dict[str, float]:
    """What produced beta, for ImportanceWeightedSFTConfig (where the trainer takes it)."""
    from iterdeploy_trl.trainers import ImportanceWeightedSFTConfig

    names = {f.name for f in dataclasses.fields(ImportanceWeightedSFTConfig)}
    s = cfg.sampling
    return ({"sampling_temperature": s.temperature, "sampling_top_p": s.top_p}
            if "sampling_temperature" in names else {})


def build_trainer(cfg: Any, common: dict[str, Any]) -> tuple[Any, type, tuple[str, ...]]:
    """(trainer config, trainer class, extra dataset columns) of one generation's fine-tune."""
    from iterdeploy_trl.trainers import ImportanceWeightedSFTConfig, ImportanceWeightedSFTTrainer

    iw = METHOD.settings_of(cfg)
    args = ImportanceWeightedSFTConfig(**common, iw_truncate=iw.truncate, iw_self_normalize=iw.self_normalize,
                                       iw_per_token=iw.per_token, **_sampling_fields(cfg))
    return args, ImportanceWeightedSFTTrainer, ("behaviour_logprob",)


def trained_stats(trainer: Any) -> dict[str, Any]:
    """Batches whose importance weights were all 0 (skipped: no gradient)."""
    return {"iw_zero_weight_batches": trainer.zero_weight_batches}


def check(cfg: Any) -> None:
    """This version's trainer evaluates pi at temperature 1 and top-p 1 only: other sampling settings refused."""
    if _sampling_fields(cfg) or (cfg.sampling.temperature, cfg.sampling.top_p) == (1.0, 1.0):
        return
    s = cfg.sampling
    raise ConfigError(f"sampling.temperature {s.temperature:g} / sampling.top_p {s.top_p:g}: this version's "
                      "IW-SFT trainer evaluates pi at temperature 1 and top-p 1 only, so its weights would "
                      "compare two distributions; use temperature 1 and top_p 1 for method iw-sft")


def hash_layout(section: dict[str, Any] | None, data: dict[str, Any]) -> None:
    """Hashed under ``training`` with the names it had before the section existed (old runs resume)."""
    iw = section or dataclasses.asdict(IWSFTSettings())
    data["training"].update(iw_truncate=iw["truncate"], iw_self_normalize=iw["self_normalize"],
                            iw_per_token=iw["per_token"])


METHOD = register(Method(
    name="iw-sft", label="IW-SFT", colour="#009E73", order=1, in_comparison=True,
    summary="curated valid traces weighted by pi/beta (ImportanceWeightedSFTTrainer)", trains_on=CURATED,
    train=valid_sft.train, section="iw_sft", settings=IWSFTSettings, check=check, hash_layout=hash_layout,
    build_trainer=build_trainer, trained_stats=trained_stats,
))
