"""Ferry's state notes for the small model (see ``prompts.py``)."""

from __future__ import annotations

COMPACT_KEYWORDS = (";",)


def state_note(state: set | frozenset) -> str:
    """Where the ferry is, the cars waiting there, then ``on`` and the car aboard or ``empty-ferry``: every
    fact ``sail``, ``board`` and ``debark`` check."""
    from iterdeploy_trl.domains.common import NOTE, natural_key

    words = sorted((a[1] for a in state if a[0] == "at-ferry"), key=natural_key)
    for here in list(words):
        words += sorted((a[1] for a in state if a[0] == "at" and a[2] == here), key=natural_key)
    aboard = sorted((a[1] for a in state if a[0] == "on"), key=natural_key)
    words += ["on", *aboard] if aboard else []
    if ("empty-ferry",) in state:
        words.append("empty-ferry")
    return f"{NOTE} {' '.join(words)}"
