"""The base model of a run: ``model.path``, or the small local base model of the domain (``model.path: auto``),
pretrained once and kept in the cache under a key that names everything it was made from."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from iterdeploy_trl.config import RunConfig
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.prompts import COMPACT_PROMPT_VERSION
from iterdeploy_trl.runio import replace_dir
from iterdeploy_trl.tasks.generate import GENERATOR_VERSION


def cache_root(cfg: RunConfig) -> Path:
    if cfg.model.cache_dir:
        return Path(cfg.model.cache_dir).expanduser()
    return Path(os.environ.get("ITERDEPLOY_CACHE", Path.home() / ".cache" / "iterdeploy_trl"))


def auto_base_model_path(cfg: RunConfig) -> Path:
    """Where the small base model of ``model.path: auto`` is cached (made there once when missing)."""
    size = pretraining_task_size(cfg)
    key = (f"{cfg.domain}-{cfg.model.size}-steps{cfg.model.base_steps}-bs{cfg.model.base_batch_size}"
           f"-lr{cfg.model.base_learning_rate:g}-walks{cfg.model.base_num_walks}x{cfg.model.base_max_walk}"
           f"-per{cfg.model.base_walks_per_task}-tasks{'default' if size is None else f'{size[0]}to{size[1]}'}"
           f"-prompt{COMPACT_PROMPT_VERSION.get(cfg.domain, 1)}")
    generator = GENERATOR_VERSION.get(cfg.domain, 1)
    if generator > 1:  # version 1 keys predate the version: keep them valid
        key += f"-gen{generator}"
    if cfg.domain not in GENERATOR_VERSION:  # a domain without a generator pretrains on its task set's tasks
        key += f"-taskset{_task_set_digest(cfg)}"
    if cfg.model.base_walk_length != "plan":
        key += f"-{cfg.model.base_walk_length}walks"
    if cfg.model.base_notes:
        key += "-notes"
    key += "-seed0"
    return cache_root(cfg) / "base_models" / key


def pretraining_task_size(cfg: RunConfig) -> tuple[int, int] | None:
    """The size range of the tasks the auto base model's walks start from: ``model.base_task_size``, else the
    run's ``tasks.size`` (None: the generator's default range). The cache key names this range, so a
    ``base_task_size`` equal to ``tasks.size`` is the model of a config without the key."""
    size = cfg.model.base_task_size or cfg.tasks.size
    return tuple(size) if size else None


def _own_task_set(cfg: RunConfig) -> Any:
    """The task set of a domain without a generator (its base model's walks start from its tasks), else None."""
    if cfg.domain in GENERATOR_VERSION:
        return None
    from iterdeploy_trl.tasks import load_task_set

    return load_task_set(Path(cfg.tasks.dir).expanduser())


def _task_set_digest(cfg: RunConfig) -> str:
    """A digest of the domain file and problems of ``tasks.dir`` (what a task-set base model learns from)."""
    import hashlib

    from iterdeploy_trl.tasks import load_task_set

    task_set = load_task_set(Path(cfg.tasks.dir).expanduser())
    digest = hashlib.sha256(task_set.domain_pddl.encode())
    for task in task_set.tasks:
        digest.update(task.problem.encode())
    return digest.hexdigest()[:12]


def resolve_base_model(cfg: RunConfig, *, progress: bool = True) -> Path:
    """The base model's directory: ``model.path``, or the small local base model of the domain,
    pretrained once (a few minutes on CPU) and kept in the cache."""
    if cfg.model.path != "auto":
        path = Path(cfg.model.path).expanduser()
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise RunError(f"model.path {path} is not a model directory (no config.json); "
                           "give a local Hugging Face model or 'auto'")
        return path
    from iterdeploy_trl.models import pretrain_base_model

    size = pretraining_task_size(cfg)
    path = auto_base_model_path(cfg)
    if not (path / "base_model.json").exists():
        print(f"[iterdeploy] pretraining the small {cfg.domain} base model into {path} "
              "(once; reused by later runs)", flush=True)
        tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")  # runs may pretrain side by side
        shutil.rmtree(tmp, ignore_errors=True)
        pretrain_base_model(cfg.domain, tmp, steps=cfg.model.base_steps, seed=0, size=cfg.model.size,
                            batch_size=cfg.model.base_batch_size, lr=cfg.model.base_learning_rate,
                            num_walks=cfg.model.base_num_walks,
                            task_size=size, max_walk=cfg.model.base_max_walk, progress=progress,
                            walks_per_task=cfg.model.base_walks_per_task, notes=cfg.model.base_notes,
                            walk_length=cfg.model.base_walk_length, threads=cfg.threads,
                            task_set=_own_task_set(cfg))
        if (path / "base_model.json").exists():  # another run finished the same model first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            replace_dir(tmp, path)
    return path


