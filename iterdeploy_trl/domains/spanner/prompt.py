"""Spanner's state notes for the small model (see ``prompts.py``)."""

from __future__ import annotations

COMPACT_KEYWORDS = (";",)


def state_note(state: set | frozenset) -> str:
    """For each man: his location, the location he can walk to from it, the spanners lying there, then
    ``carrying`` and the usable spanners he carries (when he carries one), then ``loose`` and the loose
    nuts there (when there is one): every fact ``walk``, ``pickup_spanner`` and ``tighten_nut`` check."""
    from iterdeploy_trl.domains.common import NOTE, natural_key

    men = {a[1] for a in state if a[0] == "carrying"} | {
        a[1] for a in state if a[0] == "at" and not a[1].startswith(("nut", "spanner"))}
    words: list[str] = []
    for man in sorted(men, key=natural_key):
        here = next((a[2] for a in state if a[0] == "at" and a[1] == man), None)
        if here is None:
            continue
        words += [man, here]
        words += sorted((a[2] for a in state if a[0] == "link" and a[1] == here), key=natural_key)
        words += sorted((a[1] for a in state if a[0] == "at" and a[2] == here and a[1].startswith("spanner")),
                        key=natural_key)
        carried = sorted((a[2] for a in state if a[0] == "carrying" and a[1] == man and ("usable", a[2]) in state),
                         key=natural_key)
        if carried:
            words += ["carrying", *carried]
        loose = sorted((a[1] for a in state if a[0] == "at" and a[2] == here and ("loose", a[1]) in state),
                       key=natural_key)
        if loose:
            words += ["loose", *loose]
    return f"{NOTE} {' '.join(words)}"
