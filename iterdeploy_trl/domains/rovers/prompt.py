"""Rovers' state notes for the small model (see ``prompts.py``)."""

from __future__ import annotations

COMPACT_KEYWORDS = (";",)


def state_note(state: set | frozenset) -> str:
    """For each rover: its waypoint, then what is there (``at_soil_sample``, ``at_rock_sample``), the
    objectives visible from it, the waypoints it can drive to, the landers it can talk to, and ``full`` /
    ``calibrated`` when its store is full / a camera of its is calibrated."""
    from iterdeploy_trl.domains.common import NOTE, natural_key

    words: list[str] = []
    stores = {a[2]: a[1] for a in state if a[0] == "store_of"}
    for rover, here in sorted((a[1], a[2]) for a in state if a[0] == "at"):
        words += [rover, here]
        words += [p for p in ("at_soil_sample", "at_rock_sample") if (p, here) in state]
        words += sorted((a[1] for a in state if a[0] == "visible_from" and a[2] == here), key=natural_key)
        words += sorted(
            (a[3] for a in state if a[0] == "can_traverse" and a[1] == rover and a[2] == here
             and ("visible", here, a[3]) in state),
            key=natural_key,
        )
        words += sorted(a[1] for a in state if a[0] == "at_lander" and ("visible", here, a[2]) in state)
        if ("full", stores.get(rover)) in state:
            words.append("full")
        if any(a[0] == "calibrated" and a[2] == rover for a in state):
            words.append("calibrated")
    return f"{NOTE} {' '.join(words)}"
