"""Deployment throughput of the transformers backend (completions/s, tokens/s) for the small model on
CPU, at several batch sizes against batch size 1 measured in the same run, and the share of a
generation's wall time spent in generation, validation and training (from a run directory's metrics
and a fresh timed generation).

    python benchmarks/bench_deploy.py [--model DIR] [--tasks 64] [--samples 4]

Without --model the small blocksworld base model is pretrained (or reused from the cache) first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from iterdeploy_trl.config import RunConfig
    from iterdeploy_trl.curate import curate, training_rows
    from iterdeploy_trl.deploy import TransformersBackend
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.loop import (
        load_for_generation,
        prompt_for,
        resolve_base_model,
        score_completions,
        train_generation,
    )
    from iterdeploy_trl.tasks import generate_tasks
    from iterdeploy_trl.traces import TraceRecord

    cfg = RunConfig().check()
    model_dir = args.model or resolve_base_model(cfg)
    model, tok = load_for_generation(cfg, model_dir, None)
    tasks = generate_tasks("blocksworld", args.tasks, seed=123, size=cfg.tasks.size)
    dom = domain_pddl("blocksworld")
    prompts = [prompt_for(cfg, dom, t) for t in tasks]
    print(f"model {model_dir}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{args.tasks} prompts x {args.samples} samples, max_new_tokens {args.max_new_tokens}, "
          f"{args.threads} threads")
    base_rate = None
    for bs in (1, 16, 64, 256):
        backend = TransformersBackend(model, tok, batch_size=bs)
        n_prompts = min(len(prompts), 8) if bs == 1 else len(prompts)
        t0 = time.perf_counter()
        out = backend.generate(prompts[:n_prompts], num_samples=args.samples, temperature=1.0, top_p=1.0,
                               max_new_tokens=args.max_new_tokens, seed=0)
        dt = time.perf_counter() - t0
        comps = [c for row in out for c in row]
        toks = sum(c.completion_tokens for c in comps)
        rate = len(comps) / dt
        base_rate = base_rate or rate
        print(f"batch {bs:>4}: {rate:8.1f} completions/s {toks / dt:9.1f} tokens/s  ({rate / base_rate:5.1f}x batch 1)")

    # One generation's phases, timed: generation, validation (VAL), training.
    backend = TransformersBackend(model, tok, batch_size=64)
    t0 = time.perf_counter()
    out = backend.generate(prompts, num_samples=args.samples, temperature=1.0, top_p=1.0,
                           max_new_tokens=args.max_new_tokens, seed=1)
    t_gen = time.perf_counter() - t0
    flat_tasks = [t for t, row in zip(tasks, out, strict=True) for _ in row]
    flat = [c for row in out for c in row]
    t0 = time.perf_counter()
    _, verdicts = score_completions(dom, flat_tasks, [c.text for c in flat], timeout=30, workers=None)
    t_val = time.perf_counter() - t0
    records = [TraceRecord(run="bench", method="valid-sft", generation=0, seed=0, split="pool", task_id=t.id,
                           sample_index=i, domain="blocksworld", prompt=prompt_for(cfg, dom, t), completion=c.text,
                           plan="", plan_length=v.plan_length, valid=v.valid, reason=v.reason,
                           reasoning_tokens=c.reasoning_tokens, completion_tokens=c.completion_tokens,
                           truncated=c.truncated, behaviour_logprob=c.behaviour_logprob,
                           reference_length=t.reference_length, model=str(model_dir), sampling={}, validator={})
               for i, (t, c, v) in enumerate(zip(flat_tasks, flat, verdicts, strict=True))]
    rows = training_rows(curate(records, "all-valid")) or training_rows(curate(records, "none"))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train_generation(cfg, model_dir, rows, Path(tmp) / "model", seed=0)
        t_train = time.perf_counter() - t0
    total = t_gen + t_val + t_train
    print(f"one generation ({len(flat)} completions, {sum(v.valid for v in verdicts)} valid, trained on "
          f"{len(rows)} traces): generation {t_gen:.1f}s ({t_gen / total:.0%}), validation {t_val:.1f}s "
          f"({t_val / total:.0%}), training {t_train:.1f}s ({t_train / total:.0%})")


if __name__ == "__main__":
    main()
