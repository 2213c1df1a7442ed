"""Shared fixtures. Models here are real (transformers) and made locally; nothing is downloaded."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The tests that start a real vLLM engine or `vllm serve`: run where vLLM is importable, left out (with the
# one line below in the summary) where it is not. A broken vLLM install fails them instead of hiding them.
VLLM_TESTS = ["test_vllm_real.py", "test_vllm_server.py", "test_vllm_reinforce.py"]
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
collect_ignore = [] if HAVE_VLLM else list(VLLM_TESTS)

# The IPC 2023 learning track's own instances: not redistributable here (no licence statement), so they run
# only where ITERDEPLOY_IPC2023_DIR names a local copy; otherwise left out with one line in the summary.
TRACK_TESTS = ["test_ipc2023_track.py"]
TRACK_DIR = os.environ.get("ITERDEPLOY_IPC2023_DIR", "")
if not TRACK_DIR:
    collect_ignore += TRACK_TESTS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not HAVE_VLLM:
        terminalreporter.write_line(
            f"real-vLLM tests NOT RUN ({', '.join(VLLM_TESTS)}): vLLM is not importable in this Python; "
            "on CPU run: ./setup.sh --vllm && .venv-vllm/bin/python -m pytest -q tests/test_vllm_real.py "
            "tests/test_vllm_server.py tests/test_vllm_reinforce.py")
    if not TRACK_DIR:
        terminalreporter.write_line(
            f"IPC-2023 track import tests NOT RUN ({', '.join(TRACK_TESTS)}): ITERDEPLOY_IPC2023_DIR is not set; "
            "point it at a copy of the track's benchmarks (github.com/ipc2023-learning/benchmarks) and run "
            "pytest -q tests/test_ipc2023_track.py (docs/domains.md)")


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> Path:
    """A tiny blocksworld base model pretrained for 500 steps on random legal walks (~30 s on one core).
    It writes well-formed plans and solves a few 2-block tasks by chance."""
    import torch

    from iterdeploy_trl.models import pretrain_base_model

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("models") / "blocksworld-tiny"
    pretrain_base_model("blocksworld", out, steps=500, seed=0, size="tiny", num_walks=2000, batch_size=32,
                        task_size=(2, 4), max_walk=8, progress=False, log_every=1000, threads=1)
    return out


def _override(cfg: dict, over: dict) -> dict:
    """``cfg`` with ``over`` applied: a dict value updates a section, anything else replaces the key."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def tiny_run_config(model: Path, **over) -> dict:
    """A run config that finishes in well under a minute on CPU with the tiny model."""
    cfg = {
        "name": "tiny",
        "domain": "blocksworld",
        "generations": 2,
        "seeds": [0],
        "tasks": {"n": 16, "heldout": 4, "size": [2, 3], "seed": 0},
        "model": {"path": str(model)},
        "sampling": {"samples_per_task": 4, "max_new_tokens": 40, "batch_size": 32},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "max_length": 256},
        "chunk_size": 8,
        "validation_workers": 2,
    }
    return _override(cfg, over)


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory) -> Path:
    """A tiny Qwen3-Thinking-like chat model: byte-level BPE tokenizer, ChatML template whose generation
    prompt opens <think>, eos <|im_end|>; taught for a few seconds to answer paper prompts in the format
    (reasoning, </think>, a fenced plan of a random legal walk). ~8 s on one core."""
    import torch

    from iterdeploy_trl.testing.chat_model import make_chat_test_model

    torch.set_num_threads(1)
    return make_chat_test_model(tmp_path_factory.mktemp("models") / "chat-tiny")


def paper_run_config(model_path: Path, **over) -> dict:
    """The paper configs' code path at toy scale: paper prompt through the chat template, bf16, a fresh
    LoRA (r 4, alpha 8, dropout 0.05) on the base each generation, the transformers backend."""
    cfg = tiny_run_config(
        model_path,
        name="paper-cpu",
        generations=1,
        tasks={"n": 2, "heldout": 1, "size": [2, 3], "seed": 0},
        sampling={"samples_per_task": 2, "max_new_tokens": 40, "batch_size": 32},
        training={"epochs": 1, "batch_size": 2, "learning_rate": 1e-2, "max_length": 2048,
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.05}},
        chunk_size=4,
    )
    cfg["model"].update(prompt_style="paper", dtype="bfloat16")
    return _override(cfg, over)
