"""The loop's methods as plug-ins: one module each in this package, each registering its ``Method`` in
:mod:`.registry` when imported; importing this package imports every module of it (``pkgutil``), so a new
method is its module alone (plus its trainer, if it needs a new one).

A method module holds its config section (a frozen dataclass, if it has settings), what it trains on
(curated traces or the pool's prompts), how its trainer is built and trained for a generation, and its label
and colour for figures (docs/ARCHITECTURE.md, "Methods as plug-ins").
"""

from __future__ import annotations

import importlib
import pkgutil

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

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "registry"):
    importlib.import_module(f"{__name__}.{_module}")  # registers its method (Method.order sets the listing order)

__all__ = ["CURATED", "PROMPTS", "SFT_KEYS", "Method", "TrainJob", "all_methods", "get", "names", "reader_of",
           "register", "with_section"]
