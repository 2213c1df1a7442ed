"""The small model's tokenizer and model, and loading local models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from iterdeploy_trl.domains import PLANNING_DOMAINS
from iterdeploy_trl.models import (
    build_tokenizer,
    count_parameters,
    load_model_and_tokenizer,
    make_small_model,
    object_names,
    vocabulary,
)

torch.set_num_threads(1)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

PROMPT = "init: (clear b1) (on b1 b2) (ontable b2)\ngoal: (on b2 b1)\nplan:\n"
COMPLETION = "(unstack b1 b2)\n(put-down b1)\n(pick-up b2)\n(stack b2 b1)\n"


def test_round_trip_prompt_and_plan() -> None:
    tok = build_tokenizer("blocksworld")
    ids = tok(PROMPT + COMPLETION)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == PROMPT + COMPLETION


def test_prompt_tokens_are_a_prefix_of_prompt_plus_completion() -> None:
    # TRL tokenizes prompt and prompt+completion separately and needs the first to prefix the second.
    tok = build_tokenizer("blocksworld")
    prompt_ids = tok(PROMPT)["input_ids"]
    assert tok(PROMPT + COMPLETION)["input_ids"][: len(prompt_ids)] == prompt_ids


@pytest.mark.parametrize("domain", PLANNING_DOMAINS)
def test_no_unknown_object_or_symbol(domain: str) -> None:
    tok = build_tokenizer(domain)
    ids = tok(" ".join(vocabulary(domain)[4:]))["input_ids"]
    assert tok.unk_token_id not in ids
    for name in object_names(domain):
        assert tok.convert_tokens_to_ids(name) != tok.unk_token_id, name


def test_vocabulary_is_deterministic() -> None:
    assert build_tokenizer("rovers").get_vocab() == build_tokenizer("rovers").get_vocab()


def test_unknown_word_maps_to_unk() -> None:
    tok = build_tokenizer("blocksworld")
    assert tok("(fly b1)", add_special_tokens=False)["input_ids"][1] == tok.unk_token_id


def test_tiny_model_forward_and_save_load(tmp_path) -> None:
    tok = build_tokenizer("blocksworld")
    model = make_small_model(tok, "tiny", seed=0)
    assert 50_000 < count_parameters(model) < 200_000
    batch = tok([PROMPT, PROMPT + COMPLETION], return_tensors="pt", padding=True)
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (*batch["input_ids"].shape, len(tok))
    assert torch.isfinite(out.loss)

    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = load_model_and_tokenizer(tmp_path)
    assert tok2.get_vocab() == tok.get_vocab()
    assert tok2.padding_side == "left" and tok2.pad_token == "<pad>"
    assert (
        tok2.decode(tok2(PROMPT + COMPLETION)["input_ids"], skip_special_tokens=True) == PROMPT + COMPLETION
    )
    for p, q in zip(model.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(p, q)


def test_load_missing_path_names_it_and_the_fix(tmp_path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="iterdeploy base-model") as err:
        load_model_and_tokenizer(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_model_and_tokenizer(tmp_path)


def test_walk_examples_are_legal_and_goal_unrelated() -> None:
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.models import walk_examples
    from iterdeploy_trl.sim import parse_plan

    examples = walk_examples("blocksworld", 12, seed=1, task_size=(3, 6), walks_per_task=3)
    assert len(examples) == 12
    tok = build_tokenizer("blocksworld")
    for prompt, completion in examples:
        assert prompt.startswith("init: ") and prompt.endswith("\nplan:\n")
        assert tok.unk_token_id not in tok(prompt + completion)["input_ids"]
        assert completion.endswith(")\n") and len(parse_plan(completion)) >= 1
    assert walk_examples("blocksworld", 12, seed=1, task_size=(3, 6), walks_per_task=3) == examples
    # Legal from the prompt's initial state: rebuild the problem from the prompt's init atoms.
    prompt, completion = examples[0]
    init = prompt.split("\n")[0][len("init: ") :]
    blocks = sorted({w.strip("()") for w in init.split() if w.strip("()").startswith("b")})
    problem = f"(define (problem p) (:domain blocksworld) (:objects {' '.join(blocks)}) (:init {init}) (:goal (and)))"
    from iterdeploy_trl.sim import Simulator

    sim = Simulator(domain_pddl("blocksworld"), problem)
    assert sim.legal_prefix(parse_plan(completion)) == len(parse_plan(completion))


def test_pretrain_smoke(tmp_path) -> None:
    """A few steps of the tiny model: saved like a hub model, loadable, generates text."""
    import json

    from iterdeploy_trl.models import pretrain_base_model, sample_completions

    record = pretrain_base_model(
        "blocksworld",
        tmp_path,
        steps=3,
        size="tiny",
        num_walks=16,
        batch_size=4,
        task_size=(2, 4),
        threads=1,
        progress=False,
    )
    assert json.loads((tmp_path / "base_model.json").read_text()) == record
    assert record["steps"] == 3 and record["final_loss"] > 0
    assert record["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    model, tok = load_model_and_tokenizer(tmp_path)
    [(text, _)] = sample_completions(model, tok, [PROMPT], max_new_tokens=8)
    assert isinstance(text, str)


def test_base_model_command(tmp_path, capsys) -> None:
    import json

    from iterdeploy_trl.cli import main
    from iterdeploy_trl.commands.base_model import SIZES as CLI_SIZES
    from iterdeploy_trl.models import SIZES

    assert set(CLI_SIZES) == set(SIZES)
    out = tmp_path / "bm"
    argv = ["base-model", "--domain", "sokoban", "--out", str(out), "--steps", "2", "--size", "tiny"]
    argv += ["--num-walks", "8", "--task-size", "1", "2", "--threads", "1", "--measure", "4", "--measure-seeds", "3"]
    assert main(argv) == 0
    assert json.loads((out / "base_model.json").read_text())["domain"] == "sokoban"
    report = json.loads((out / "measure.json").read_text())
    assert report["tasks"] == 4 and 0 <= report["legal_action_fraction"] <= 1
    seeds = report["by_seed"]
    assert [s["seed"] for s in seeds] == [0, 1, 2] and seeds[0]["solved"] == report["solved"]
    assert report["legal_action_fraction_mean"] == pytest.approx(sum(s["legal_action_fraction"] for s in seeds) / 3)
    assert report["solved_mean"] == pytest.approx(sum(s["solved"] for s in seeds) / 3)
    bad = ["base-model", "--domain", "sokoban", "--out", str(tmp_path / "x"), "--task-size", "0", "99"]
    assert main(bad) == 2
    assert "size" in capsys.readouterr().err
    # --measure-size: the pool's sizes, not the pretraining walks'; one the generator rejects is refused before
    # any pretraining (nothing written).
    wide = tmp_path / "wide"
    argv = ["base-model", "--domain", "ferry", "--out", str(wide), "--steps", "1", "--num-walks", "4",
            "--task-size", "1", "2", "--measure", "6", "--measure-size", "7", "8"]
    assert main(argv) == 0
    assert json.loads((wide / "base_model.json").read_text())["task_size"] == [1, 2]
    assert set(json.loads((wide / "measure.json").read_text())["solved_by_size"]) <= {"7", "8"}
    bad = ["base-model", "--domain", "ferry", "--out", str(tmp_path / "y"), "--measure", "2", "--measure-size", "1", "101"]
    assert main(bad) == 2
    assert "--measure-size 1 101" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_base_task_size_widens_the_pretraining_range_only() -> None:
    """``model.base_task_size`` sets the auto base model's walk range (named in its cache key) and nothing else:
    unset or equal to ``tasks.size`` it is the model and run hash of a config without the key."""
    from iterdeploy_trl.basemodel import auto_base_model_path, pretraining_task_size
    from iterdeploy_trl.config import ConfigError, config_from_dict, config_hash, load_config

    cfg = load_config(EXPERIMENTS / "cpu_default.yaml")
    assert cfg.model.base_task_size is None and pretraining_task_size(cfg) == (2, 5)
    same = replace(cfg, model=replace(cfg.model, base_task_size=(2, 5)))
    assert auto_base_model_path(same) == auto_base_model_path(cfg)
    wide = replace(cfg, model=replace(cfg.model, base_task_size=(2, 9)))
    assert pretraining_task_size(wide) == (2, 9) and wide.tasks.size == cfg.tasks.size
    assert "-tasks2to9-" in auto_base_model_path(wide).name and config_hash(wide) != config_hash(cfg)
    data = {"domain": "ferry", "tasks": {"size": [1, 4]}, "model": {"base_task_size": [1, 8]}}
    assert config_from_dict(data).model.base_task_size == (1, 8)
    for model, match in (({"base_task_size": [1, 101]}, r"within ferry's sizes 1\.\.100"),
                         ({"base_task_size": [3, 2]}, "low <= high"),
                         ({"base_task_size": [1, 8], "path": "/tmp"}, "model.path is '/tmp'")):
        with pytest.raises(ConfigError, match=r"^model\.base_task_size: .*" + match):
            config_from_dict({"domain": "ferry", "tasks": {"size": [1, 4]}, "model": model})


def test_illegal_reason_names_types_not_objects() -> None:
    import re

    import pytest

    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.models import illegal_reason
    from iterdeploy_trl.sim import Simulator
    from iterdeploy_trl.tasks import generate_tasks

    task = generate_tasks("blocksworld", 1, 3, size=(3, 3))[0]
    sim = Simulator(domain_pddl("blocksworld"), task.problem)
    first = sim.applicable(sim.init_state)[0]
    state = sim.apply(sim.init_state, first)
    reason = illegal_reason(sim, state, first)  # the same action twice
    assert reason.startswith(first.strip("(").split()[0] + ": precondition (")
    assert f"<{sim.objects['b1']}>" in reason and not set(sim.objects) & set(re.split(r"[\s()<>]", reason))
    assert illegal_reason(sim, state, "(fly b1)") == "fly: unknown action (name)"
    with pytest.raises(ValueError, match="legal"):
        illegal_reason(sim, sim.init_state, first)


def test_base_model_task_size_defaults_follow_the_cpu_configs() -> None:
    from iterdeploy_trl.commands.base_model import CPU_TASK_SIZES
    from iterdeploy_trl.config import load_config
    from iterdeploy_trl.domains import PLANNING_DOMAINS

    assert set(CPU_TASK_SIZES) == set(PLANNING_DOMAINS)
    checked = 0
    for domain, size in CPU_TASK_SIZES.items():
        path = EXPERIMENTS / ("cpu_default.yaml" if domain == "blocksworld" else f"cpu_{domain}.yaml")
        if path.exists():  # a domain without a CPU loop yet has nothing to keep in step
            cfg = load_config(path)
            assert cfg.domain == domain and tuple(cfg.tasks.size) == size, path
            checked += 1
    assert checked >= 3


def test_cached_base_model_key_follows_the_generator_version() -> None:
    from iterdeploy_trl.basemodel import auto_base_model_path
    from iterdeploy_trl.config import load_config

    # Blocksworld's generator never changed: its key (and so its cached model) is the one of before.
    blocks = auto_base_model_path(load_config(EXPERIMENTS / "cpu_default.yaml")).name
    assert blocks == "blocksworld-tiny-steps5000-bs32-lr0.003-walks80000x10-per4-tasks2to5-prompt1-seed0"
    # Sokoban's tasks changed (the player starts anywhere): a model pretrained on the old tasks is not reused.
    assert "-prompt2-gen3-" in auto_base_model_path(load_config(EXPERIMENTS / "cpu_sokoban.yaml")).name


def test_cached_base_model_key_names_notes_and_walk_lengths() -> None:
    from iterdeploy_trl.basemodel import auto_base_model_path
    from iterdeploy_trl.config import config_hash, load_config

    cfg = load_config(EXPERIMENTS / "cpu_rovers.yaml")
    assert cfg.model.base_notes and cfg.model.base_walk_length == "uniform"
    assert auto_base_model_path(cfg).name.endswith("-prompt1-uniformwalks-notes-seed0")
    plain = replace(cfg, model=replace(cfg.model, base_notes=False, base_walk_length="plan"))
    assert auto_base_model_path(plain).name.endswith("-prompt1-seed0")
    assert config_hash(plain) != config_hash(cfg)


@pytest.mark.parametrize(("domain", "size"), [("rovers", (1, 1)), ("sokoban", (1, 4)), ("spanner", (1, 4)),
                                            ("ferry", (1, 4)), ("miconic", (1, 5))])
def test_walks_with_notes_read_back_as_the_walk(domain: str, size: tuple[int, int]) -> None:
    """Each note is that of the state the walk has reached; the plan read from the completion (notes are
    ``;`` comments) is the walk itself, legal from the prompt's task."""
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.extract import extract_plan
    from iterdeploy_trl.models import PRETRAIN_SEED_OFFSET, walk_examples
    from iterdeploy_trl.prompts import state_note
    from iterdeploy_trl.sim import Simulator
    from iterdeploy_trl.tasks import generate_tasks

    examples = walk_examples(domain, 6, seed=0, task_size=size, walks_per_task=6, notes=True)
    task = generate_tasks(domain, 1, seed=PRETRAIN_SEED_OFFSET, size=size)[0]  # the walks' task
    sim = Simulator(domain_pddl(domain), task.problem)
    tok = build_tokenizer(domain)
    for prompt, completion in examples:
        assert tok.unk_token_id not in tok(prompt + completion)["input_ids"]
        lines = completion.splitlines()
        assert lines[0] == state_note(domain, sim.init_state)
        actions = extract_plan(completion).actions
        assert len(actions) == len(lines) - 1 >= 1
        state = sim.init_state
        for action, line in zip(actions, lines[1:], strict=True):
            state = sim.apply(state, action)
            assert line == f"{action} {state_note(domain, state)}"
    plain = walk_examples(domain, 6, seed=0, task_size=size, walks_per_task=6)
    assert [extract_plan(c).actions for _, c in plain] == [extract_plan(c).actions for _, c in examples]


# Argument positions of an action that its domain's note need not name: a destination any other location
# or floor may be (the names give the floors' order).
_FREE_ARGUMENTS = {"ferry": {"sail": {1}}, "miconic": {"up": {1}, "down": {1}}, "spanner": {}}
# Arguments the note must name after a keyword, not just somewhere: a passenger that may depart here is
# listed after "destin" (boarded passengers bound for another floor are not).
_AFTER_KEYWORD = {"miconic": {"depart": {1: "destin"}}}


@pytest.mark.parametrize("domain", sorted(_FREE_ARGUMENTS))
def test_notes_name_what_the_legal_actions_act_on(domain: str) -> None:
    """Along random walks, every object an applicable action acts on is named in the state's note (save a
    destination of ``_FREE_ARGUMENTS``), so the small model can read its next legal action off the note."""
    import random

    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.prompts import state_note
    from iterdeploy_trl.sim import Simulator, parse_action
    from iterdeploy_trl.tasks import CPU_SIZES, generate_tasks

    rng = random.Random(0)
    checked = 0
    for task in generate_tasks(domain, 10, seed=3, size=CPU_SIZES[domain]):
        sim = Simulator(domain_pddl(domain), task.problem)
        _, states = sim.random_walk_states(rng, 12)
        for state in states:
            words = set(state_note(domain, state).split()[1:])
            for action in sim.applicable(state):
                name, *args = parse_action(action)
                free = _FREE_ARGUMENTS[domain].get(name, set())
                missing = {a for i, a in enumerate(args) if i not in free} - words
                assert not missing, (action, state_note(domain, state))
                note = state_note(domain, state).split()
                for i, keyword in _AFTER_KEYWORD.get(domain, {}).get(name, {}).items():
                    assert keyword in note and args[i] in note[note.index(keyword) + 1:], (action, note)
                checked += 1
    assert checked > 100


def test_notes_for_a_domain_without_them_are_refused() -> None:
    from iterdeploy_trl.models import walk_examples

    with pytest.raises(ValueError, match="blocksworld has no state notes"):
        walk_examples("blocksworld", 2, notes=True)
    with pytest.raises(ValueError, match="walk_length"):
        walk_examples("rovers", 2, walk_length="long")


def test_walk_length_uniform_is_not_capped_by_the_plan() -> None:
    from iterdeploy_trl.models import PRETRAIN_SEED_OFFSET, walk_examples
    from iterdeploy_trl.sim import parse_plan
    from iterdeploy_trl.tasks import generate_tasks

    capped = walk_examples("rovers", 120, task_size=(1, 1), max_walk=12, walks_per_task=6)
    uniform = walk_examples("rovers", 120, task_size=(1, 1), max_walk=12, walks_per_task=6, walk_length="uniform")
    tasks = generate_tasks("rovers", 20, seed=PRETRAIN_SEED_OFFSET, size=(1, 1))  # the walks' tasks
    longest_plan = max(len(t.reference_plan) for t in tasks)
    assert longest_plan < 12
    assert max(len(parse_plan(c)) for _, c in capped) <= longest_plan
    assert max(len(parse_plan(c)) for _, c in uniform) > longest_plan
