"""Sokoban's compact prompt and state notes (see ``prompts.py`` for the format and the reasons)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# The map (``compact_map``) implies these facts, so the compact prompt leaves them out.
COMPACT_OMIT = frozenset({"move-dir", "is-nongoal", "clear"})
COMPACT_KEYWORDS = ("map:", "row:", "col:", ";")
COMPACT_PROMPT_VERSION = 2  # 2: the map replaced the clear / move-dir / is-nongoal facts
# "object" is a word of the domain file (``thing location direction - object``) that the reader does not
# report as a type (it is the root of every type); kept so that token ids stay those of base models
# pretrained when the vocabulary was every word of the domain file.
VOCABULARY_EXTRAS = ("object",)


def compact_map(init: Iterable[tuple[str, ...]]) -> str:
    """The ``map:`` section of a sokoban state: its floor cells (``clear`` or occupied), one line for each
    horizontal (``row:``) and vertical (``col:``) run of two or more neighbouring cells."""
    cells: dict[str, tuple[int, int]] = {}
    for atom in init:
        if atom[0] in ("clear", "at"):
            match = re.fullmatch(r"pos-(\d+)-(\d+)", atom[-1])
            if match is None:
                raise ValueError(f"sokoban cell {atom[-1]!r} is not named pos-XX-YY")
            cells[atom[-1]] = (int(match[1]), int(match[2]))
    lines = []
    for word, line_of, along in (("row:", 1, 0), ("col:", 0, 1)):
        runs: list[list[str]] = []  # cells in line order; a new run where the line changes or a wall breaks it
        for name in sorted(cells, key=lambda c: (cells[c][line_of], cells[c][along])):
            last = cells[runs[-1][-1]] if runs else None
            if last and last[line_of] == cells[name][line_of] and last[along] + 1 == cells[name][along]:
                runs[-1].append(name)
            else:
                runs.append([name])
        lines += [f"{word} {' '.join(run)}\n" for run in runs if len(run) > 1]
    return "map:\n" + "".join(lines)


def state_note(state: set | frozenset) -> str:
    """Where the player and each stone are now, then for each direction with a floor cell next to the
    player: the direction and the cell, and when a stone is on it, the stone and, if the cell beyond is
    clear, that cell (and ``is-goal`` when it is a goal): the pushes open to the player."""
    from iterdeploy_trl.domains.common import NOTE, natural_key

    at = sorted((a for a in state if a[0] == "at"), key=natural_key)
    words = [w for a in at for w in a[1:]]
    stone_at = {a[2]: a[1] for a in at if a[1].startswith("stone")}
    step = {(a[1], a[3]): a[2] for a in state if a[0] == "move-dir"}
    for player in (a[2] for a in at if a[1].startswith("player")):
        for direction in ("dir-up", "dir-down", "dir-left", "dir-right"):
            cell = step.get((player, direction))
            if cell is None:
                continue
            words += [direction, cell]
            if cell in stone_at:
                words.append(stone_at[cell])
                beyond = step.get((cell, direction))
                if beyond is not None and ("clear", beyond) in state:
                    words.append(beyond)
                    if ("is-goal", beyond) in state:
                        words.append("is-goal")
    return f"{NOTE} {' '.join(words)}"
