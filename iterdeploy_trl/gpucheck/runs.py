"""Steps 2-5 of ``iterdeploy gpu-check``: the runs it makes. A fresh model (step 2), taught the pool's reference
plans (3), one valid-SFT generation through the loop, and the same in float32 with transformers as the reference
(4), and the run directory's schema against the reference's (5)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl import rundir
from iterdeploy_trl.gpucheck.common import VOLATILE, Scale, Step

# --------------------------------------------------------------------------- step 2: the model


def step_model(scale: Scale, out: Path) -> Step:
    """A random-initialised Qwen3 model of ``scale.model_size`` over the blocksworld tokenizer of the package
    (``models.build_tokenizer``, ``models.make_small_model``), saved to ``out``."""
    from iterdeploy_trl.models import build_tokenizer, count_parameters, make_small_model

    tok = build_tokenizer("blocksworld")
    model = make_small_model(tok, size=scale.model_size, seed=0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    params = count_parameters(model)
    step = Step("model", data={"path": str(out), "architecture": type(model).__name__, "size": scale.model_size,
                               "parameters": params, "vocabulary": len(tok), "head_dim": model.config.head_dim,
                               "init": "random (seed 0)"})
    if scale.parameters and not scale.parameters[0] <= params <= scale.parameters[1]:
        step.status = "fail"
        step.reason = (f"{params / 1e6:.1f} M parameters, outside {scale.parameters[0] / 1e6:g}-"
                       f"{scale.parameters[1] / 1e6:g} M: models.SIZES[{scale.model_size!r}] changed")
    return step


# --------------------------------------------------------------------------- configs of the check


def check_config(scale: Scale, model_path: Path, *, backend: str | None = None, dtype: str | None = None,
                 method: str = "valid-sft") -> Any:
    """The run config of the check: one valid-SFT generation (deploy, VAL, curate, train a LoRA, deploy it)
    on a small blocksworld pool, at temperature 1 and top-p 1 (so the behaviour log-prob is log pi)."""
    from iterdeploy_trl.config import config_from_dict
    from iterdeploy_trl.methods import get as get_method

    data: dict[str, Any] = {
        "name": "gpu-check", "domain": "blocksworld", "generations": 1, "seeds": [0], "method": method,
        "tasks": {"n": scale.tasks, "heldout": scale.heldout, "size": list(scale.task_size), "seed": 0},
        "model": {"path": str(model_path), "prompt_style": "compact", "dtype": dtype or scale.dtype},
        "sampling": {"backend": backend or scale.backend, "samples_per_task": scale.samples_per_task,
                     "temperature": 1.0, "top_p": 1.0, "max_new_tokens": scale.max_new_tokens,
                     "batch_size": 64, "gpu_memory_utilization": 0.3},
        "training": {"learning_rate": scale.learning_rate, "batch_size": 8, "max_length": 512,
                     "lora": {"r": scale.lora_r, "alpha": 2 * scale.lora_r, "dropout": 0.0}},
        "chunk_size": scale.tasks, "validation_workers": 2,
    }
    if "training.epochs" in get_method(method).reads:
        data["training"]["epochs"] = scale.sft_epochs
    return config_from_dict(data)


def teach_config(scale: Scale, model_path: Path) -> Any:
    """Full fine-tuning in float32 of the fresh model on the reference plans (the ``teach`` step)."""
    from iterdeploy_trl.config import config_from_dict

    return config_from_dict({
        "name": "gpu-check-teach", "domain": "blocksworld", "method": "valid-sft",
        "tasks": {"n": scale.tasks, "heldout": scale.heldout, "size": list(scale.task_size), "seed": 0},
        "model": {"path": str(model_path), "dtype": "float32"},
        "training": {"learning_rate": scale.teach_learning_rate, "epochs": scale.teach_epochs, "batch_size": 4,
                     "max_length": 512, "warmup_ratio": 0.1},
    })


def pool_tasks(cfg: Any) -> tuple[str, list[Any]]:
    """(domain PDDL, the pool tasks) of a check config, as the loop draws them."""
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.tasks import generate_tasks

    tasks = generate_tasks(cfg.domain, cfg.tasks.n + cfg.tasks.heldout, cfg.tasks.seed, size=tuple(cfg.tasks.size))
    return domain_pddl(cfg.domain), tasks[: cfg.tasks.n]


# --------------------------------------------------------------------------- step 3: teach the plans


def step_teach(scale: Scale, base: Path, out: Path) -> Step:
    """Teach the fresh model the pool tasks' reference plans (``loop.train_generation``, full fine-tuning):
    afterwards some of its samples are valid plans."""
    from iterdeploy_trl.deployment import prompt_for
    from iterdeploy_trl.training import train_generation

    cfg = teach_config(scale, base)
    dom, tasks = pool_tasks(cfg)
    rows = [{"prompt": prompt_for(cfg, dom, t), "completion": "".join(a + "\n" for a in t.reference_plan),
             "task_id": t.id} for t in tasks]
    stats = train_generation(cfg, base, rows, out, seed=0)
    if scale.dtype != "float32":
        # saved in the dtype it is deployed in: TRL's colocated vLLM engine loads it with dtype "auto"
        from iterdeploy_trl.models import load_model_and_tokenizer

        model, _ = load_model_and_tokenizer(out, dtype=scale.dtype)
        model.save_pretrained(out)
    return Step("teach", data={"path": str(out), "rows": len(rows), "epochs": scale.teach_epochs,
                               "learning_rate": scale.teach_learning_rate, "train_steps": stats["train_steps"],
                               "train_loss": stats["train_loss"], "saved_dtype": scale.dtype})


# --------------------------------------------------------------------------- step 4: the valid-SFT generation


def step_valid_sft(cfg: Any, out: Path, name: str, log: Callable[[str], None],
                   skipped: Sequence[dict[str, str]] = ()) -> Step:
    """One generation of valid-SFT through ``loop.run_loop``: deploy the taught model, VAL, curate, train a LoRA
    adapter (in ``cfg.model.dtype``), deploy the adapter unmerged. ``skipped``: the parts of the GPU path this
    run stands in for (the CPU mode's)."""
    from iterdeploy_trl.loop import run_loop

    summary = run_loop(cfg, out, progress=False, log=lambda line: log(f"  {line}"))
    rows = summary["per_seed"]["0"]
    step = Step(name, data={"run_dir": str(out), "backend": cfg.sampling.backend, "dtype": cfg.model.dtype,
                            "lora_r": cfg.training.lora.r if cfg.training.lora else None,
                            "generations": [{k: r.get(k) for k in ("generation", "solved", "tasks", "valid_fraction",
                                                                   "samples", "train_traces", "deploy_seconds",
                                                                   "train_seconds", "train_completion_tokens")}
                                            for r in rows]}, skipped_parts=list(skipped))
    adapter = rundir.model(rundir.gen_dir(rundir.seed_dir(out, 0), 1)) / "adapter_config.json"
    if not adapter.exists():
        step.status = "fail"
        step.reason = (f"generation 0 gave no valid trace, so no LoRA adapter was trained ({adapter} missing): "
                       "the teach step did not make the model write valid plans")
    return step


# --------------------------------------------------------------------------- step 5: the run directory's schema




def run_dir_schema(run_dir: Path) -> dict[str, Any]:
    """What a reader of a run directory relies on: its files (relative paths; the run log and the lock left
    out), the trace records' fields and value types (read through ``traces.read_traces``, which refuses a
    field of the wrong type), and the keys of ``metrics.jsonl``, ``summary.json`` and ``train_stats.json``."""
    from iterdeploy_trl.runio import read_json, read_rows
    from iterdeploy_trl.traces import read_traces

    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name not in VOLATILE)
    fields: dict[str, set[str]] = {}
    for path in rundir.every_chunk_file(run_dir):
        for rec in read_traces(path):
            for key, value in rec.to_dict().items():
                if value is not None:
                    fields.setdefault(key, set()).add(type(value).__name__)
                else:
                    fields.setdefault(key, set())
    metrics = read_rows(rundir.metrics(rundir.seed_dir(run_dir, 0)))
    stats = [p for p in rundir.every_model_file(run_dir) if p.name == rundir.TRAIN_STATS]
    return {"files": files, "trace_fields": {k: sorted(v) for k, v in sorted(fields.items())},
            "metrics_keys": sorted({k for row in metrics for k in row}),
            "summary_keys": sorted(read_json(rundir.summary(run_dir))),
            "train_stats_keys": sorted({k for p in stats for k in read_json(p)})}


def schema_differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """One line per way ``got`` (a run directory's schema) differs from ``want``; a trace field's types
    differ only where both runs have a value (a ``None`` in one run is not a type)."""
    out = []
    for key in ("files", "metrics_keys", "summary_keys", "train_stats_keys"):
        missing, extra = sorted(set(want[key]) - set(got[key])), sorted(set(got[key]) - set(want[key]))
        if missing:
            out.append(f"{key}: missing {', '.join(missing)}")
        if extra:
            out.append(f"{key}: not in the reference: {', '.join(extra)}")
    gf, wf = got["trace_fields"], want["trace_fields"]
    for name in sorted(set(gf) | set(wf)):
        if name not in gf or name not in wf:
            out.append(f"trace field {name}: only in {'the reference' if name in wf else 'this run'}")
        elif gf[name] and wf[name] and gf[name] != wf[name]:
            out.append(f"trace field {name}: types {gf[name]}, the reference's {wf[name]}")
    return out


def step_schema(run_dir: Path, reference_dir: Path) -> Step:
    """The check's run directory against the CPU schema: the same config run with the transformers backend in
    float32 (the CPU default's backend and dtype)."""
    diffs = schema_differences(run_dir_schema(run_dir), run_dir_schema(reference_dir))
    step = Step("schema", data={"run_dir": str(run_dir), "reference": str(reference_dir), "differences": diffs})
    if diffs:
        step.status, step.reason = "fail", f"{len(diffs)} difference(s) from the CPU schema: {diffs[0]}"
    return step

