"""Uncurated SFT, the control: every untruncated trace, valid or not (``curation: none``), with valid-trace SFT's
trainer; it tells what the validator's curation adds."""

from __future__ import annotations

from iterdeploy_trl.methods import valid_sft
from iterdeploy_trl.methods.registry import CURATED, Method, register

NAME = "uncurated-sft"
METHOD = register(Method(
    name=NAME, label="uncurated SFT", colour="#E69F00", order=2, in_comparison=True, required_curation="none",
    summary="every untruncated trace (ValidTraceSFTTrainer)", trains_on=CURATED, train=valid_sft.train,
))
