"""The head-to-head schedules methods of the one loop and does statistics: no second driver, no import
cycle, each method's run config holds only what it reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from iterdeploy_trl.compare import method_config
from iterdeploy_trl.config import ConfigError, check_settings_read, config_from_dict

PACKAGE = Path(__file__).resolve().parents[1] / "iterdeploy_trl"


def _imports(module: str) -> set[str]:
    """The package modules ``module`` imports anywhere in its source (top level and inside functions)."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("iterdeploy_trl"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if PACKAGE.joinpath(*node.module.split(".")[1:], a.name + ".py").exists())
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("iterdeploy_trl"))
    return {m for m in found if m != "iterdeploy_trl"}


def test_compare_imports_nothing_that_imports_compare():
    seen, todo = set(), [m for m in _imports("iterdeploy_trl.compare")]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        assert m != "iterdeploy_trl.compare", "a module compare imports imports compare back"
        todo.extend(_imports(m))
    assert "iterdeploy_trl.loop" in seen


def test_compare_holds_no_second_driver():
    import iterdeploy_trl.compare as compare

    for name in ("run_reinforce", "_reinforce_seed", "train_reinforce_segment", "deploy_generation"):
        assert not hasattr(compare, name), name


def test_each_method_gets_only_its_own_settings():
    cfg = config_from_dict({"iw_sft": {"truncate": 5.0}, "reinforce": {"learning_rate": 1e-4},
                            "training": {"epochs": 2}, "curation": "all-valid"})
    for method in ("valid-sft", "iw-sft", "uncurated-sft", "reinforce"):
        mcfg = method_config(cfg, method)
        check_settings_read(mcfg, (method,))  # nothing in it the method ignores
        assert mcfg.method == method and mcfg.name == f"cpu-default/{method}"
    assert method_config(cfg, "iw-sft").iw_sft_settings.truncate == 5.0
    assert method_config(cfg, "reinforce").reinforce_settings.learning_rate == 1e-4
    assert method_config(cfg, "valid-sft").training.epochs == 2 and method_config(cfg, "valid-sft").reinforce is None
    assert method_config(cfg, "uncurated-sft").curation == "none"
    with pytest.raises(ConfigError, match=r"^iw_sft\.truncate: set"):
        check_settings_read(cfg, ("valid-sft", "reinforce"))  # what run_compare checks before any work
