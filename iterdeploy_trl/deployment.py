"""Deploying a generation (the backends themselves are ``deploy``'s): sample K completions of each task's
prompt, judge each with VAL, write the trace records chunk by chunk (resumable), and judge again on resume the
chunks another validator judged."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from iterdeploy_trl import dist, rundir
from iterdeploy_trl.config import RunConfig
from iterdeploy_trl.deploy import Backend, batch_seed
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.faults import fault, note_chunk
from iterdeploy_trl.runio import read_rows, write_jsonl
from iterdeploy_trl.traces import (
    Asked,
    Provenance,
    Sampled,
    TraceRecord,
    TraceVerdict,
    read_traces,
    write_traces,
)


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
    provenance = Provenance(run=run_name, method=method, generation=generation, seed=seed, model=model_id)
    records = []
    for i, ((task, prompt, k, comp), ext, verdict) in enumerate(zip(flat, extractions, verdicts, strict=True)):
        records.append(TraceRecord.of(
            Asked(task_id=task.id, split=split, domain=cfg.domain, prompt=prompt,
                  reference_length=task.reference_length, prompt_ids=prompt_ids.get(prompt)),
            Sampled(sample_index=k, completion=comp.text, reasoning_tokens=comp.reasoning_tokens,
                    completion_tokens=comp.completion_tokens, truncated=comp.truncated,
                    behaviour_logprob=comp.behaviour_logprob, sampling=sampling,
                    completion_ids=list(comp.token_ids) if comp.token_ids else None,
                    stop_token_id=comp.stop_token_id),
            _trace_verdict(ext, verdict, None if exact is None else exact[i], validator),
            provenance,
        ))
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
        again = _trace_verdict(ext, verdict, None if exact is None else exact[i], validator)
        if exact is None:  # no blind spot now: the record's exact verdict, if it had one, is kept
            again = dataclasses.replace(again, exact_valid=rec.exact_valid, validators=rec.validators)
        out.append(rec.judged(again))
    return out


def _trace_verdict(ext: Any, verdict: Any, exact: Any, validator: dict[str, Any]) -> TraceVerdict:
    """A trace's verdict from its extraction and VAL's verdict (``exact``: the exact verdict, with a blind
    spot; ``None`` without one): ``valid`` is the verdict trained on, both verdicts in ``validators``."""
    both = {} if exact is None else {"exact_valid": bool(exact.valid), "validators": {
        "train": verdict.to_dict(raw_output=False), "exact": exact.to_dict(raw_output=False)}}
    return TraceVerdict(plan="\n".join(ext.actions), plan_length=verdict.plan_length, valid=bool(verdict.valid),
                        reason=verdict.reason, validator=validator, **both)


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
    for g, gdir in rundir.gen_dirs(sdir).items():
        rewritten: dict[Path, list[TraceRecord]] = {}
        changed = 0
        for path in rundir.chunk_files(gdir):
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
        if changed:
            _drop_from(sdir, g)
        for path, new in rewritten.items():
            write_traces(path, new)
        log(f"seed {rundir.seed_of(sdir)} gen {g}: {len(rewritten)} trace chunk(s) judged again by {current['version']} "
            f"sha256:{current['sha256'][:12]} (they named another validator or a validator failure): "
            + (f"{changed} verdict(s) changed, so generation {g} is summed up again and the later ones redone"
               if changed else "no verdict changed"))
        if changed:
            return  # the later generations are gone


def _drop_from(sdir: Path, g: int) -> None:
    """Remove what was made from generation ``g``'s verdicts: its metrics row and training set, the later
    generations (models and traces), and the run's summary."""
    metrics = rundir.metrics(sdir)
    if metrics.exists():
        write_jsonl(metrics, [m for m in read_rows(metrics) if m["generation"] < g])
    rundir.train_set(rundir.gen_dir(sdir, g)).unlink(missing_ok=True)
    for later, gdir in rundir.gen_dirs(sdir).items():
        if later > g:
            shutil.rmtree(gdir)
    rundir.summary(sdir.parent).unlink(missing_ok=True)


def deploy_generation(cfg: RunConfig, backend_factory: Callable[[], Backend], domain_pddl: str,
                      splits: dict[str, Sequence[Any]], gen_dir: Path, *, seed: int, generation: int,
                      model_id: str, run_name: str, method: str, progress: bool = True) -> list[TraceRecord]:
    """Deploy on every split, chunk by chunk; chunks already on disk are kept (resume). Under several
    processes each deploys its share of the chunks (:func:`dist.shard`), then every process reads them all."""
    from iterdeploy_trl.validate import ValidatorFailed

    validator = current_validator(cfg, domain_pddl)
    backend = None
    jobs = [(split, i, tasks[i : i + cfg.chunk_size], rundir.chunk(gen_dir, split, i // cfg.chunk_size))
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


