"""Miconic's state notes for the small model (see ``prompts.py``)."""

from __future__ import annotations

COMPACT_KEYWORDS = (";",)


def state_note(state: set | frozenset) -> str:
    """The lift's floor, the passengers waiting there (``origin``), then ``boarded`` and the passengers in
    the lift, then ``destin`` and those of them bound for this floor: every fact ``board`` and ``depart``
    check (``up``/``down`` need only the floor, whose order the names give)."""
    from iterdeploy_trl.domains.common import NOTE, natural_key

    words: list[str] = []
    for here in sorted((a[1] for a in state if a[0] == "lift-at"), key=natural_key):
        words.append(here)
        words += sorted((a[1] for a in state if a[0] == "origin" and a[2] == here), key=natural_key)
        boarded = sorted((a[1] for a in state if a[0] == "boarded"), key=natural_key)
        if boarded:
            words += ["boarded", *boarded]
            bound = [p for p in boarded if ("destin", p, here) in state]
            if bound:
                words += ["destin", *bound]
    return f"{NOTE} {' '.join(words)}"
