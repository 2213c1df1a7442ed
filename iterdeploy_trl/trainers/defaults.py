"""The defaults the run config and the trainer configs share, defined once.

``ImportanceWeightedSFTConfig`` (the trainer, for a TRL user) and ``methods.iw_sft.IWSFTSettings`` (the run
config's ``iw_sft:`` section) both take their IW-SFT defaults from here, so a direct user of the trainer gets
what the runs used. Changing one of these changes the run hash of every run that leaves the setting out
(``tests/test_config.py`` pins them).

Imports nothing (the config layer reads it, and importing TRL takes seconds).
"""

from __future__ import annotations

IW_TRUNCATE: float | None = 10.0  # cap c on the importance weights, min(w, c); None: no cap
IW_SELF_NORMALIZE: bool = True  # divide the weights by their mean over the optimizer batch
IW_PER_TOKEN: bool = False  # per-token geometric mean of the ratio instead of the sequence ratio
