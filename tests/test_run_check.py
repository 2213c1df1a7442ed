"""`iterdeploy run --check`: a config, its model, backend, task set, prompt lengths and run directory are
checked and the run described, with nothing run or written."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from iterdeploy_trl.cli import main

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _stand_in(tmp_path: Path, chat_model: Path) -> Path:
    """The tiny chat model with Qwen3-4B-Thinking-2507's context (262 144 positions), as --check reads it
    from config.json: the paper config's 30 000 new tokens need it."""
    model = tmp_path / "stand-in"
    shutil.copytree(chat_model, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 262144}))
    return model


def _paper_config(tmp_path: Path, chat_model: Path, **sampling) -> Path:
    """experiments/paper_blocksworld.yaml with the tiny chat model standing in for Qwen3-4B-Thinking-2507."""
    data = yaml.safe_load((EXPERIMENTS / "paper_blocksworld.yaml").read_text())
    data["model"]["path"] = str(_stand_in(tmp_path, chat_model))
    data["sampling"].update(sampling)
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _check(args: list[str], capsys) -> tuple[int, str]:
    code = main(["run", "--check", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_paper_config_checks_and_describes_the_run(chat_model, tmp_path, capsys):
    cfg = _paper_config(tmp_path, chat_model, backend="transformers")
    code, out = _check(["--config", str(cfg), "--out", str(tmp_path / "run")], capsys)
    assert code == 0, out
    assert "tasks: 1000 pool + 200 held-out; generations 0..5 (5 trained); seeds [0, 1, 2]" in out
    assert "1200 completions a deployment, 18 deployments = 21600 completions" in out
    assert "LoRA r=16 alpha=32 dropout=0.05" in out and "validation_fraction 0.1" in out
    assert "chat template yes" in out and "eos '<|im_end|>'" in out
    assert "prompt tokens (first 20 pool tasks): " in out
    assert f"run directory: {tmp_path / 'run'} (new)" in out
    assert "per-step scores" not in out  # the transformers backend holds one step's scores at a time
    assert "check passed" in out
    assert not (tmp_path / "run").exists()


def test_check_reports_every_problem(chat_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # vLLM not importable, whether installed or not
    cfg = _paper_config(tmp_path, chat_model)  # backend vllm, as shipped
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, out = _check(["--config", str(cfg), "--out", str(other)], capsys)
    assert code == 2
    assert "PROBLEM: sampling.backend: 'vllm' but vLLM cannot be imported" in out
    assert "pip install 'iterdeploy-trl[vllm]'" in out
    assert f"PROBLEM: --out {other} is not empty and is not a run directory" in out
    assert "check failed" in out


def test_shipped_paper_config_without_its_model(tmp_path, capsys):
    path = EXPERIMENTS / "paper_sokoban.yaml"
    if Path("~/models/Qwen3-4B-Thinking-2507").expanduser().exists():
        pytest.skip("the paper model is on this machine")
    code, out = _check(["--config", str(path)], capsys)
    assert code == 2
    assert "PROBLEM: model.path: '~/models/Qwen3-4B-Thinking-2507' does not exist on this machine" in out
    assert "tasks: 1000 pool + 200 held-out" in out  # the rest is still checked and described


def test_cpu_default_check_and_out_is_required_without_it(tmp_path, capsys):
    code, out = _check([], capsys)
    assert code == 0 and "run 'cpu-default'" in out and "the small tiny blocksworld base model" in out
    assert main(["run"]) == 2
    assert "--out RUNDIR is required" in capsys.readouterr().err
