"""Experiment tracking through ``report_to`` (the run config's top-level key, ``--report-to``), as in TRL.

The trackers named there receive two things:

- every trainer's own logs (loss, grad norm, learning rate, IW weights, rewards): ``report_to`` is passed to
  each TRL trainer with a run name per seed and generation, ``<name>-seed<s>-gen<g>`` (the generation the
  fine-tune makes), in the project ``<name>`` (trackio; W&B's project through ``WANDB_PROJECT``);
- the loop's own per-generation metrics (:data:`LOOP_METRICS`: solved, held-out solved, valid fraction,
  plan lengths, training-set size, ...), one run per seed, ``<name>-seed<s>``, with the generation as step.

``trackio`` is local-first: it writes to ``TRACKIO_DIR`` (default ``~/.cache/huggingface/trackio``; view
with ``trackio show``), with no account and no network. ``tensorboard`` writes event files under the run
directory, ``RUNDIR/tensorboard/seed_<s>/loop`` and ``.../seed_<s>/gen_<g>`` (view with ``tensorboard
--logdir RUNDIR/tensorboard``). ``wandb`` works the same way where it is installed and logged in.
``metrics.jsonl`` stays the record: a row is logged once, right after it is written, so a run killed
between the two leaves that point out of the trackers; a generation whose training was killed and redone
logs its trainer curve twice under the same run name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
from pathlib import Path
from typing import Any

from iterdeploy_trl import rundir

TRACKERS = ("trackio", "tensorboard", "wandb")

#: Loop metric (tracker name) -> key of the metrics.jsonl row.
LOOP_METRICS = {
    "loop/solved": "solved",
    "loop/heldout_solved": "heldout_solved",
    "loop/all_samples_valid": "all_samples_valid",
    "reward/valid_fraction": "valid_fraction",
    "completions/truncated_fraction": "truncated_fraction",
    "plan/length_mean": "mean_valid_plan_length",
    "plan/length_median": "median_valid_plan_length",
    "plan/length_max": "max_valid_plan_length",
    "plan/solved_reference_length_max": "max_solved_reference_length",
    "train/traces": "train_traces",
    "train/completion_tokens": "train_completion_tokens",
    "budget/samples_used": "samples_used",
}


def check_report_to(names: tuple[str, ...]) -> str | None:
    """What is wrong with ``report_to`` (None: nothing): an unknown tracker, or one not installed."""
    for name in names:
        if name not in TRACKERS:
            return f"{name!r} is not a tracker this package reports to; choose from {', '.join(TRACKERS)} (or [])"
        if importlib.util.find_spec(name) is None:
            return f"{name!r} is not installed: pip install {name} (or pip install 'iterdeploy-trl[tracking]')"
    return None


def project_name(cfg: Any) -> str:
    """The tracker project of a run: its name up to the first '/' (a comparison's methods share one)."""
    return cfg.name.split("/")[0]


def run_name(cfg: Any, seed: int | None, generation: int | None = None) -> str:
    if seed is None:  # a model trained outside a run directory's layout
        return cfg.name.replace("/", "-")
    name = f"{cfg.name.replace('/', '-')}-seed{seed}"
    return name if generation is None else f"{name}-gen{generation}"


def trainer_kwargs(cfg: Any, model_dir: Path) -> dict[str, Any]:
    """TrainingArguments fields that route a generation's trainer logs to ``cfg.report_to``.

    TensorBoard: transformers' callback takes its directory from ``TENSORBOARD_LOGGING_DIR`` when the trainer is
    built, so this sets it (to ``RUNDIR/tensorboard/seed_<s>/gen_<g>``); build the trainer right after."""
    report = list(cfg.report_to)
    run_dir, seed, gen = rundir.model_location(model_dir)
    if "tensorboard" in report:
        logs = rundir.tensorboard_dir(run_dir)
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(
            rundir.gen_dir(rundir.seed_dir(logs, seed), gen) if seed is not None else logs)
    if "wandb" in report:
        os.environ.setdefault("WANDB_PROJECT", project_name(cfg))
    kwargs: dict[str, Any] = {"report_to": report, "run_name": run_name(cfg, seed, gen)}
    if report:
        kwargs["project"] = project_name(cfg)  # trackio's project (TrainingArguments.project)
    return kwargs


def log_generation(cfg: Any, run_dir: Path, seed: int, row: dict[str, Any]) -> None:
    """Send one generation's metrics row to every tracker of ``cfg.report_to`` (step: the generation)."""
    if not cfg.report_to:
        return
    values = {name: float(row[key]) for name, key in LOOP_METRICS.items() if row.get(key) is not None}
    step = int(row["generation"])
    # The trackers announce themselves on stdout; that goes to the log, not to the console.
    with contextlib.redirect_stdout(io.StringIO()) as said:
        if "tensorboard" in cfg.report_to:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(rundir.seed_dir(rundir.tensorboard_dir(run_dir), seed) / "loop"))
            for name, value in values.items():
                writer.add_scalar(name, value, step)
            writer.close()
        if "trackio" in cfg.report_to:
            import trackio

            trackio.init(project=project_name(cfg), name=run_name(cfg, seed), resume="allow",
                         config={"run_dir": str(run_dir), "seed": seed, "config": cfg.to_dict()},
                         auto_log_cpu=False, auto_log_gpu=False)
            trackio.log(values, step=step)
            trackio.finish()
        if "wandb" in cfg.report_to:
            import wandb

            run = wandb.init(project=os.environ.get("WANDB_PROJECT", project_name(cfg)), name=run_name(cfg, seed),
                             id=_wandb_id(run_dir, seed), resume="allow", reinit=True)
            run.log(values, step=step)
            run.finish()
    import logging

    if said.getvalue().strip():
        logging.getLogger("iterdeploy_trl.tracking").info(said.getvalue().strip())


def _wandb_id(run_dir: Path, seed: int) -> str:
    import hashlib

    return hashlib.sha256(f"{Path(run_dir).resolve()}:{seed}".encode()).hexdigest()[:16]


def read_tensorboard(log_dir: Path, tag: str) -> dict[int, float]:
    """Scalars of ``tag`` in the TensorBoard event files under ``log_dir``: {step: value} (the last per step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return {}
    return {e.step: e.value for e in acc.Scalars(tag)}
