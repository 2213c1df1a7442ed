"""The loop's methods as plug-ins: one module each, registered in :mod:`.registry` when this package is imported.

A method module holds its config section (a frozen dataclass, if it has settings), what it trains on
(curated traces or the pool's prompts), how its trainer is built and trained for a generation, and its label
and colour for figures. Adding a method: one module here (imported below) plus its trainer; nothing else
names it (docs/ARCHITECTURE.md, "Methods as plug-ins").
"""

from __future__ import annotations

from iterdeploy_trl.methods import (  # noqa: F401  (each registers itself; the order is the figures' order)
    expert_iteration,
    grpo,
    iw_sft,
    reinforce,
    rloo,
    uncurated_sft,
    valid_sft,
)
from iterdeploy_trl.methods.registry import (
    CURATED,
    PROMPTS,
    SFT_KEYS,
    Method,
    TrainJob,
    all_methods,
    get,
    names,
    reader_of,
    register,
    with_section,
)

__all__ = ["CURATED", "PROMPTS", "SFT_KEYS", "Method", "TrainJob", "all_methods", "get", "names", "reader_of",
           "register", "with_section"]
