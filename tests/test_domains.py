"""The domain registry: every registered folder is complete, an incomplete one is named, and moving the
study's three domains into folders changed none of their bytes (tasks, vocabulary, prompts, walks)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from iterdeploy_trl import domains
from iterdeploy_trl.domains import PLANNING_DOMAINS, DomainError, get, missing_parts
from iterdeploy_trl.models import build_tokenizer, vocabulary, walk_examples
from iterdeploy_trl.prompts import build_prompt
from iterdeploy_trl.sim import Simulator
from iterdeploy_trl.tasks import generate_tasks


def _digest(items: list[str]) -> str:
    return hashlib.sha256("\x00".join(items).encode()).hexdigest()[:16]


def test_every_registered_domain_is_complete() -> None:
    for name in PLANNING_DOMAINS:
        assert missing_parts(name) == [], f"domain {name} still lacks: {missing_parts(name)}"
        spec = get(name)
        lo, hi = spec.size_limits
        for kind in ("cpu", "full"):
            a, b = spec.sizes[kind]
            assert lo <= a <= b <= hi, f"{name}: SIZES[{kind!r}] = {(a, b)} is outside SIZE_LIMITS {(lo, hi)}"
        assert spec.generator_version >= 1 and spec.size_parameter


def _fake_domain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, files: dict[str, str]) -> None:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for file, text in files.items():
        (folder / file).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(domains, "__path__", [*domains.__path__, str(tmp_path)])
    monkeypatch.setattr(domains, "PLANNING_DOMAINS", (*PLANNING_DOMAINS, name))
    get.cache_clear()


def test_an_incomplete_domain_folder_names_what_it_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_domain(tmp_path, monkeypatch, "halfdone", {"generator.py": "SIZES = {'cpu': (1, 2)}\nSIZE_LIMITS = (1, 3)\n"})
    try:
        with pytest.raises(DomainError) as err:
            get("halfdone")
        text = str(err.value)
        for lacking in ("domain.pddl", "generate(rng, size, name)", "GENERATOR_VERSION", "SIZE_PARAMETER",
                        "'full' range"):
            assert lacking in text, text
        assert "SIZE_LIMITS" not in text  # it has that one
    finally:
        get.cache_clear()


def test_a_complete_fake_folder_registers_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bw = get("blocksworld")
    generator = (
        "from iterdeploy_trl.domains.blocksworld.generator import generate\n"
        "GENERATOR_VERSION = 1\nSIZE_PARAMETER = 'blocks'\nSIZES = {'cpu': (2, 3), 'full': (2, 4)}\n"
        "SIZE_LIMITS = (2, 4)\n"
    )
    _fake_domain(tmp_path, monkeypatch, "towers", {"generator.py": generator, "domain.pddl": bw.pddl})
    try:
        tasks = generate_tasks("towers", 5, seed=0)
        assert [t.id for t in tasks][:2] == ["towers-0-00000", "towers-0-00001"]
        tok = build_tokenizer("towers")  # object names read from its largest tasks: b1..b4
        assert {"b1", "b4"} <= set(vocabulary("towers"))
        for task in tasks:
            prompt = build_prompt(bw.pddl, task.problem, "compact", domain="towers")
            assert tok.unk_token_id not in tok(prompt)["input_ids"]
    finally:
        get.cache_clear()


@pytest.mark.parametrize("name", PLANNING_DOMAINS)
def test_generated_tasks_run_in_the_simulator_and_encode(name: str) -> None:
    spec = get(name)
    tok = build_tokenizer(name)
    lo, hi = spec.size_limits
    for task in generate_tasks(name, 6, seed=3, size=(lo, min(hi, lo + 2))) + generate_tasks(name, 2, 4, (hi, hi)):
        sim = Simulator(spec.pddl, task.problem)
        assert sim.solves(task.reference_plan), f"{task.id}: the reference plan does not reach the goal"
        ids = tok(build_prompt(spec.pddl, task.problem, "compact", domain=name) + "".join(
            a + "\n" for a in task.reference_plan))["input_ids"]
        unknown = [w for w in set(task.problem.lower().replace("(", " ").replace(")", " ").split())
                   if w in sim.objects and w not in tok.get_vocab()]
        assert tok.unk_token_id not in ids, f"{task.id}: objects outside the tokenizer's vocabulary: {unknown}"


# sha256 prefixes of the study's three domains as they were before the registry (commit beeea1d): the
# tasks of seed 0, the tokenizer's vocabulary, compact prompts and pretraining walks. Equal digests mean
# cached base models and run hashes stay valid.
BEFORE = {
    "blocksworld": {"vocab": "efeba23ee796d7a9", "tasks": "b0a9668e403a5c72", "prompts": "e7988147581f5f21",
                    "walks": "9f95b647b4f30809"},
    "rovers": {"vocab": "dcd54b03d87faa45", "tasks": "9b177c70c18e00a5", "prompts": "43b96f9f79d1be6d",
               "walks": "1127d1045ef02570"},
    "sokoban": {"vocab": "62678312b33565bc"},
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_study_domains_keep_their_bytes(name: str) -> None:
    dom = get(name).pddl
    tasks = generate_tasks(name, 40, 0)
    now = {
        "vocab": _digest(vocabulary(name)),
        "tasks": _digest([t.problem + "|".join(t.reference_plan) + json.dumps(t.params, sort_keys=True)
                          for t in tasks]),
        "prompts": _digest([build_prompt(dom, t.problem, "compact", domain=name) for t in tasks[:20]]),
        "walks": _digest([p + c for p, c in walk_examples(
            name, 100, task_size=(2, 5) if name == "blocksworld" else (1, 3), notes=name != "blocksworld")]),
    }
    for key, digest in BEFORE[name].items():
        assert now[key] == digest, f"{name} {key} changed: {now[key]} != {digest}"
