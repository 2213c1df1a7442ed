"""The transformers backend's in-place key/value cache (``kvcache.PreallocatedCache``) against ``generate``'s default
cache (``DynamicCache``, grown by concatenation), on one config's base model and prompts: seconds for the same
samples with each, their ratio, and whether the samples and log-probs are the same, bit for bit.

    python benchmarks/bench_kvcache.py [--config experiments/compare_spanner.yaml] [--tasks 32] [--samples 8]
        [--batch-size 128] [--max-new-tokens 256] [--repeats 2]

Each cache is timed ``--repeats`` times, alternating, in one process on one thread; the best of each is compared.
The config's base model (``model.path: auto``) is pretrained first if it is not cached.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "experiments" / "compare_spanner.yaml")
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's sampling.batch_size")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the config's sampling.max_new_tokens")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    from iterdeploy_trl.backends import load_for_generation
    from iterdeploy_trl.basemodel import resolve_base_model
    from iterdeploy_trl.config import load_config
    from iterdeploy_trl.deploy import TransformersBackend
    from iterdeploy_trl.deployment import prompt_for
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.tasks import generate_tasks

    torch.set_num_threads(1)
    cfg = load_config(args.config)
    model_dir = resolve_base_model(cfg)
    model, tok = load_for_generation(cfg, model_dir, None)
    tasks = generate_tasks(cfg.domain, args.tasks, seed=123, size=cfg.tasks.size)
    prompts = [prompt_for(cfg, domain_pddl(cfg.domain), t) for t in tasks]
    batch = args.batch_size or cfg.sampling.batch_size
    max_new = args.max_new_tokens or cfg.sampling.max_new_tokens
    print(f"{args.config.name}: {cfg.domain}, {args.tasks} prompts x {args.samples} samples, batch {batch}, "
          f"max_new_tokens {max_new}, 1 thread, CPU {torch.backends.cpu.get_cpu_capability()}")
    in_place = model.generate

    def default_cache(*a, past_key_values=None, cache=None, **k):  # the cache argument dropped: generate's own
        return in_place(*a, **k)

    seconds: dict[str, list[float]] = {"in-place": [], "default": []}
    samples: dict[str, list] = {}
    for _ in range(args.repeats):
        for name, generate in (("default", default_cache), ("in-place", in_place)):
            model.generate = generate
            backend = TransformersBackend(model, tok, batch_size=batch)
            t0 = time.perf_counter()
            out = backend.generate(prompts, num_samples=args.samples, temperature=cfg.sampling.temperature,
                                   top_p=cfg.sampling.top_p, max_new_tokens=max_new, seed=0)
            seconds[name].append(time.perf_counter() - t0)
            samples[name] = [(c.text, c.completion_tokens, c.behaviour_logprob) for row in out for c in row]
    model.generate = in_place
    n = len(samples["default"])
    tokens = sum(t for _, t, _ in samples["default"])
    for name in ("default", "in-place"):
        best = min(seconds[name])
        print(f"{name:>9} cache: {best:6.2f} s ({n / best:6.1f} completions/s, {tokens / best:7.0f} tokens/s; "
              f"runs {', '.join(f'{s:.2f}' for s in seconds[name])})")
    print(f"in-place / default: {min(seconds['default']) / min(seconds['in-place']):.2f}x faster; "
          f"samples and log-probs identical: {samples['default'] == samples['in-place']}")


if __name__ == "__main__":
    main()
