"""Methods as plug-ins (iterdeploy_trl/methods/): every registered method runs one generation of the real loop
on the tiny model (VAL, TRL trainers, no mock), records how often max_grad_norm clipped (and, for the RL arms,
every importance-sampling and clipping setting it ran with), and no module outside methods/ branches on a
method's name."""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import pytest
from conftest import tiny_run_config

import iterdeploy_trl
from iterdeploy_trl import methods
from iterdeploy_trl.config import ConfigError, config_from_dict, config_hash
from iterdeploy_trl.loop import run_loop
from iterdeploy_trl.runio import read_jsonl

PACKAGE = Path(iterdeploy_trl.__file__).parent

# A name-string comparison that is not a method's: the gpu check names one of its steps "reinforce".
NOT_A_METHOD = {("report.py", 'step.name == "reinforce"')}  # gpucheck/report.py


def method_run_config(model: Path, name: str) -> dict:
    """One generation of ``name`` on 16 two-block tasks (K 8): the tiny model solves two at generation 0, so the
    methods that curate train too."""
    method = methods.get(name)
    data = tiny_run_config(model, generations=1, method=name, tasks={"n": 16, "heldout": 4, "size": [2, 2]},
                           sampling={"samples_per_task": 8}, chunk_size=8)
    if method.required_curation is not None:
        data["curation"] = method.required_curation
    if "training.epochs" not in method.reads:
        del data["training"]["epochs"]  # a setting the method does not read is refused
    return data


@pytest.mark.parametrize("name", methods.names())
def test_each_registered_method_runs_one_generation_of_the_loop(tiny_base_model, tmp_path, name):
    method = methods.get(name)
    cfg = config_from_dict(method_run_config(tiny_base_model, name))
    summary = run_loop(cfg, tmp_path / "run", progress=False)
    assert [g["generation"] for g in summary["generations"]] == [0, 1]
    stats_path = tmp_path / "run" / "seed_0" / "gen_01" / "model" / "train_stats.json"
    assert stats_path.exists(), "generation 0 trained nothing: the test's pool no longer gives a training set"
    stats = json.loads(stats_path.read_text())
    clip = stats["grad_clip"]
    assert clip["optimizer_steps"] == stats["train_steps"] >= 1  # every optimizer step's norm was counted
    assert clip["max_grad_norm"] == 1.0 and 0 <= clip["clip_fraction"] <= 1 and clip["grad_norm_mean"] >= 0
    # (an RL step whose groups all have one reward has no gradient: with a baseline its norm is 0)
    assert clip["grad_norm_mean"] > 0 or not method.curates
    row = read_jsonl(tmp_path / "run" / "seed_0" / "metrics.jsonl")[1]
    assert (row["clip_fraction"], row["grad_norm_mean"]) == (clip["clip_fraction"], clip["grad_norm_mean"])
    if method.curates:
        assert (tmp_path / "run" / "seed_0" / "gen_00" / "train.jsonl").exists()
        return
    # an RL arm: n*K fresh completions, in steps of its prompts per step, every IS/clipping setting recorded
    settings = method.settings_of(cfg)
    assert stats["train_traces"] == 16 * 8
    rl = stats["rl_settings"]
    if settings.prompts_per_step is not None:
        assert stats["train_steps"] == math.ceil(16 / settings.prompts_per_step)
        assert rl["prompts_per_step"] == settings.prompts_per_step and rl["completions_per_step"] == 4 * 8
    assert stats["importance_sampling"]["vllm_importance_sampling_correction"] is False  # no vLLM here
    if hasattr(settings, "baseline"):
        assert rl["baseline"] == settings.baseline and rl["ratio_clipping"] is False and rl["std_scaling"] is False
    else:  # TRL's GRPO: its objective as TRL sets it, recorded
        assert rl["not_at_trl_defaults"] == [] and rl["ratio_clip_range"] == [0.8, 1.2]


def _name_branches(path: Path, names: tuple[str, ...], root: Path = PACKAGE) -> list[str]:
    """Comparisons of a value with a method's name string in ``path`` (``==``, ``!=``, ``in``/``not in`` a
    literal or with the name on the left), as 'file:line: source'."""
    source = path.read_text()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        strings = set()
        for operand in operands:
            if isinstance(operand, ast.Constant) and isinstance(operand.value, str):
                strings.add(operand.value)
            elif isinstance(operand, ast.Tuple | ast.List | ast.Set):
                strings |= {e.value for e in operand.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        if strings & set(names):
            text = ast.get_source_segment(source, node) or ""
            if (path.name, text) not in NOT_A_METHOD:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {text}")
    return found


def test_no_module_outside_methods_branches_on_a_method_name():
    """Adding a method is its module (and its trainer): nothing else compares a value with a method's name."""
    names = methods.names()
    assert {"valid-sft", "iw-sft", "uncurated-sft", "reinforce"} <= set(names)
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if "methods" not in path.relative_to(PACKAGE).parts
             for hit in _name_branches(path, names)]
    assert not found, "branches on a method's name outside iterdeploy_trl/methods/:\n" + "\n".join(found)


def test_the_branch_scan_finds_a_branch(tmp_path):
    """The scan above would catch what it looks for (a comparison with a name, in a tuple, either side)."""
    path = tmp_path / "loop.py"
    path.write_text('if method == "iw-sft":\n    pass\nif m in ("valid-sft", "x"):\n    pass\nok = "reinforce" != m\n')
    assert [hit.split(": ", 1)[0] for hit in _name_branches(path, methods.names(), tmp_path)] == \
        ["loop.py:1", "loop.py:3", "loop.py:5"]


def test_registering_the_arms_changed_no_run_hash():
    """The new arms' sections are left out of the hash while null, and reinforce.prompts_per_step while unset:
    a run directory made before them resumes; setting one is another run."""
    plain = config_from_dict({"method": "reinforce"})
    pinned = config_from_dict({"method": "reinforce", "reinforce": {"prompts_per_step": None}})
    assert config_hash(plain) == config_hash(pinned)
    assert config_hash(config_from_dict({"method": "reinforce", "reinforce": {"prompts_per_step": 4}})) != \
        config_hash(plain)
    assert config_hash(config_from_dict({"method": "reinforce",
                                         "reinforce": {"vllm_importance_sampling_correction": True}})) != \
        config_hash(plain)
    assert config_hash(config_from_dict({"method": "rloo"})) != config_hash(plain)
    assert config_hash(config_from_dict({"method": "rloo", "rloo": {"prompts_per_step": 8}})) != \
        config_hash(config_from_dict({"method": "rloo"}))


@pytest.mark.parametrize(("data", "message"), [
    ({"method": "reinforce", "rloo": {"prompts_per_step": 8}}, r"^rloo\.prompts_per_step: set, but only method rloo"),
    ({"method": "grpo", "training": {"epochs": 2.0}}, r"^training\.epochs: set, but only the SFT methods"),
    ({"method": "expert-iteration", "training": {"init": "previous"}},
     r"^training\.init: set, but only the SFT methods \(valid-sft, iw-sft, uncurated-sft\) read it"),
])
def test_a_setting_the_arm_does_not_read_is_refused(data, message):
    from iterdeploy_trl.runchecks import check_methods

    cfg = config_from_dict(data)
    with pytest.raises(ConfigError, match=message):
        check_methods(cfg, (cfg.method,))


def test_expert_iteration_refuses_curation_none():
    from iterdeploy_trl.runchecks import check_methods

    with pytest.raises(ConfigError, match=r"^curation: 'none' is not rejection sampling"):
        check_methods(config_from_dict({"method": "expert-iteration", "curation": "none"}), ("expert-iteration",))


def test_every_registered_method_is_documented():
    """The architecture note's table of methods names every registered method."""
    note = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    missing = [n for n in methods.names() if not re.search(rf"`{re.escape(n)}`", note)]
    assert not missing, f"docs/ARCHITECTURE.md does not name the registered methods {missing}"
