"""What the console and the package metadata say (issue 22, "Console and output"): counts as counts, no
"None" where a number belongs, no library progress bars from loading a model, no setuptools deprecation."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from iterdeploy_trl.status import generation_line

ROOT = Path(__file__).resolve().parents[1]


def _gen(g: int, solved: float, **over) -> dict:
    return {"generation": g, "seeds": [0], "solved": solved, "tasks": 12, "heldout_solved": 1.0,
            "heldout_tasks": 4, "max_solved_reference_length": 5.0, **over}


def test_the_done_line_prints_counts_not_floats() -> None:
    from iterdeploy_trl.commands.run import done_line
    from iterdeploy_trl.status import count_text

    line = done_line("out", {"generations": [_gen(0, 6.0), _gen(1, 8.0)]})
    assert "solved 6 -> 8 of 12" in line and "held-out 1 -> 1 of 4" in line and ".0" not in line
    two_seeds = done_line("out", {"generations": [_gen(0, 6.5, seeds=[0, 1]), _gen(1, 8.0, seeds=[0, 1])]})
    assert "solved 6.5 -> 8 of 12" in two_seeds and two_seeds.endswith("(means over 2 seeds)")
    assert (count_text(None), count_text(3), count_text(2.0), count_text(2 / 3)) == ("-", "3", "2", "0.667")


def test_a_generation_without_valid_plans_says_so() -> None:
    m = {"generation": 0, "solved": 0, "tasks": 12, "heldout_solved": 0, "heldout_tasks": 4, "all_samples_valid": 0,
         "mean_valid_plan_length": None, "max_valid_plan_length": 0, "train_traces": 0}
    line = generation_line(0, m, 8)
    assert "None" not in line and "no valid plan" in line
    assert "valid plan length mean 4.5 max 7" in generation_line(0, {**m, "mean_valid_plan_length": 4.5,
                                                                          "max_valid_plan_length": 7}, 8)


def test_loading_a_model_shows_no_loading_weights_bar(tmp_path: Path, capfd) -> None:
    from iterdeploy_trl.models import build_tokenizer, load_model_and_tokenizer, make_small_model

    tok = build_tokenizer("blocksworld")
    make_small_model(tok, "tiny", seed=0).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    capfd.readouterr()
    load_model_and_tokenizer(tmp_path)
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err
    import transformers

    assert transformers.utils.logging.is_progress_bar_enabled()  # switched off while loading only


def test_package_metadata_builds_without_a_license_deprecation(tmp_path: Path) -> None:
    """project.license as an SPDX string (PEP 639; setuptools >= 77, which build-system requires): the table
    form made setuptools warn on every install."""
    import setuptools
    from setuptools import build_meta

    assert int(setuptools.__version__.split(".")[0]) >= 77
    src, meta = tmp_path / "src", tmp_path / "meta"
    src.mkdir()
    meta.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    cwd = os.getcwd()
    os.chdir(src)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dist_info = build_meta.prepare_metadata_for_build_wheel(str(meta))
    finally:
        os.chdir(cwd)
    assert not [w for w in caught if "license" in str(w.message).lower()]
    metadata = (meta / dist_info / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
