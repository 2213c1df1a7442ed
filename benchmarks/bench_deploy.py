"""Deployment throughput of the transformers backend (completions/s, tokens/s) for the small model on
CPU, at several batch sizes against batch size 1 measured in the same run, and the share of a
generation's wall time spent in generation, validation and training (from a run directory's metrics
and a fresh timed generation).

    python benchmarks/bench_deploy.py [--model DIR] [--tasks 64] [--samples 4]

Without --model the small blocksworld base model is pretrained (or reused from the cache) first.

With --backends, the three backends on the same model (a head_dim-64 one: vLLM's CPU attention refuses
the tiny model's head_dim 16), prompts and sampling, as ratios to the transformers backend measured in the
same run, and each backend's share of one generation's wall time in generation, validation and training:

    .venv-vllm/bin/python benchmarks/bench_deploy.py --backends [--config experiments/cpu_vllm.yaml]
        [--servers URL ...]    # running `vllm serve` servers of the model; default: one started here

Everything that can be checked is checked before any timing: vLLM importable, each server answering and
serving this model, and (--lora-rank R) that the servers take an adapter of rank R.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", action="store_true", help="compare transformers, vllm and vllm-server")
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "experiments" / "cpu_vllm.yaml",
                    help="--backends: the run config whose model, prompts and sampling are used")
    ap.add_argument("--servers", nargs="*", default=None, help="--backends: URLs of running vLLM servers")
    ap.add_argument("--lora-rank", type=int, default=None,
                    help="--backends: also check that the servers take a LoRA adapter of this rank")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.backends:
        compare_backends(args)
        return
    from iterdeploy_trl.backends import load_for_generation
    from iterdeploy_trl.basemodel import resolve_base_model
    from iterdeploy_trl.config import RunConfig
    from iterdeploy_trl.curate import curate, training_rows
    from iterdeploy_trl.deploy import TransformersBackend
    from iterdeploy_trl.deployment import prompt_for, score_completions
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.tasks import generate_tasks
    from iterdeploy_trl.traces import TraceRecord
    from iterdeploy_trl.training import train_generation

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
        train_generation(cfg, model_dir, rows, Path(tmp) / "seed_0" / "gen_01" / "model", seed=0)
        t_train = time.perf_counter() - t0
    total = t_gen + t_val + t_train
    print(f"one generation ({len(flat)} completions, {sum(v.valid for v in verdicts)} valid, trained on "
          f"{len(rows)} traces): generation {t_gen:.1f}s ({t_gen / total:.0%}), validation {t_val:.1f}s "
          f"({t_val / total:.0%}), training {t_train:.1f}s ({t_train / total:.0%})")


def _phases(cfg, base, tasks, dom, out, t_gen, train_s=None):
    """(validation seconds, training seconds, training rows) of one generation made of ``out``."""
    import tempfile

    from iterdeploy_trl.curate import curate, training_rows
    from iterdeploy_trl.deployment import prompt_for, score_completions
    from iterdeploy_trl.training import train_generation

    flat_tasks = [t for t, row in zip(tasks, out, strict=True) for _ in row]
    flat = [c for row in out for c in row]
    t0 = time.perf_counter()
    _, verdicts = score_completions(dom, flat_tasks, [c.text for c in flat], timeout=30, workers=None)
    t_val = time.perf_counter() - t0
    from iterdeploy_trl.traces import TraceRecord

    records = [TraceRecord(run="bench", method=cfg.method, generation=0, seed=0, split="pool", task_id=t.id,
                           sample_index=i, domain=cfg.domain, prompt=prompt_for(cfg, dom, t), completion=c.text,
                           plan="", plan_length=v.plan_length, valid=v.valid, reason=v.reason,
                           reasoning_tokens=c.reasoning_tokens, completion_tokens=c.completion_tokens,
                           truncated=c.truncated, behaviour_logprob=c.behaviour_logprob,
                           reference_length=t.reference_length, model=str(base), sampling={}, validator={})
               for i, (t, c, v) in enumerate(zip(flat_tasks, flat, verdicts, strict=True))]
    rows = training_rows(curate(records, cfg.curation)) or training_rows(curate(records, "none"))
    if train_s is None:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            train_generation(cfg, base, rows, Path(tmp) / "seed_0" / "gen_01" / "model", seed=0)
            train_s = time.perf_counter() - t0
    return t_val, train_s, sum(v.valid for v in verdicts)


def compare_backends(args) -> None:
    """transformers vs in-process vLLM vs vLLM server: same model, prompts, sampling; ratios in one run."""
    import dataclasses
    import os
    import subprocess
    import tempfile

    from iterdeploy_trl.backends import load_for_generation
    from iterdeploy_trl.basemodel import resolve_base_model
    from iterdeploy_trl.config import load_config
    from iterdeploy_trl.deploy import TransformersBackend, VLLMBackend, check_backend
    from iterdeploy_trl.deployment import prompt_for
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.tasks import generate_tasks
    from iterdeploy_trl.vllm_server import (
        HTTPFailure,
        VLLMServerBackend,
        check_lora_rank,
        check_servers,
        serve_command,
        served_models,
    )

    cfg = load_config(args.config)
    check_backend("vllm")  # vLLM missing: the ConfigError names sampling.backend, before any work
    base = args.model or resolve_base_model(cfg)
    started = None
    servers = args.servers
    if servers:
        check_servers(servers, str(base))
    if args.lora_rank is not None and servers:
        check_lora_rank(servers, base, args.lora_rank)
    cfg = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, samples_per_task=args.samples,
                                                                max_new_tokens=args.max_new_tokens))
    dom = domain_pddl(cfg.domain)
    tasks = generate_tasks(cfg.domain, args.tasks, seed=123, size=cfg.tasks.size)
    prompts = [prompt_for(cfg, dom, t) for t in tasks]
    s = cfg.sampling
    kw = dict(num_samples=s.samples_per_task, temperature=s.temperature, top_p=s.top_p,
              max_new_tokens=s.max_new_tokens)
    log = Path(tempfile.mkdtemp()) / "server.log"
    try:
        if not servers:  # one server of the same model, on this machine
            port = 8000 + os.getpid() % 1000
            env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
            started = subprocess.Popen(
                serve_command(base, port=port, dtype=cfg.model.dtype, max_model_len=cfg.training.max_length),
                stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
            servers = [f"http://127.0.0.1:{port}"]
        print(f"model {base}; {len(prompts)} prompts x {s.samples_per_task} samples, temperature {s.temperature}, "
              f"top-p {s.top_p}, max_new_tokens {s.max_new_tokens}; dtype {cfg.model.dtype}; servers {servers}")
        results = {}
        model, tok = load_for_generation(cfg, base, None)
        backends = [("transformers", lambda: TransformersBackend(model, tok, batch_size=256)),
                    ("vllm", lambda: VLLMBackend(str(base), dtype=cfg.model.dtype,
                                                 max_model_len=cfg.training.max_length)),
                    ("vllm-server", lambda: VLLMServerBackend(servers, base, model=str(base)))]
        train_s = None
        for name, make in backends:
            if name == "vllm-server" and started is not None:
                for _ in range(600):
                    if started.poll() is not None:
                        raise RuntimeError(f"vllm serve exited: {log.read_text()[-2000:]}")
                    try:
                        served_models(servers[0], timeout=2)
                        break
                    except HTTPFailure:
                        time.sleep(1)
            t0 = time.perf_counter()
            backend = make()
            t_start = time.perf_counter() - t0
            backend.generate(prompts[:4], **kw, seed=99)  # warm-up (first-call compilation, caches)
            t0 = time.perf_counter()
            out = backend.generate(prompts, **kw, seed=0)
            t_gen = time.perf_counter() - t0
            backend.close()
            n = sum(len(r) for r in out)
            toks = sum(c.completion_tokens for r in out for c in r)
            t_val, train_s, valid = _phases(cfg, base, tasks, dom, out, t_gen, train_s)
            results[name] = (n / t_gen, toks / t_gen, t_start, t_gen, t_val, train_s, valid, n)
        ref = results["transformers"]
        for name, (cps, tps, t_start, t_gen, t_val, t_train, valid, n) in results.items():
            total = t_gen + t_val + t_train
            print(f"{name:>12}: {cps:8.1f} completions/s ({cps / ref[0]:5.2f}x transformers) {tps:9.1f} tokens/s "
                  f"({tps / ref[1]:5.2f}x); start {t_start:5.1f}s; one generation: generation {t_gen:.1f}s "
                  f"({t_gen / total:.0%}), validation {t_val:.1f}s ({t_val / total:.0%}), training {t_train:.1f}s "
                  f"({t_train / total:.0%}); {valid}/{n} valid")
    finally:
        if started is not None and started.poll() is None:
            import signal

            os.killpg(started.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
