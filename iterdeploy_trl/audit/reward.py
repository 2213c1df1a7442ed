"""Prop. 2's effective reward ``r · Σ_k λ_k β_k(y|x) / π(y|x)`` of a curated training set: the mixture
shares and densities, the weights and their statistics, and the scoring of traces under a seed's models
(:func:`score_logprobs`, :class:`TraceScorer`, ``_score_generation``)."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl.audit.features import _mean, plan_actions
from iterdeploy_trl.audit.reading import RunDir, load_run_config
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.sampler import score_logprobs  # noqa: F401 (re-exported: its home before sampler.py)

PER_TRACE_MAX = 1000  # training sets up to this size keep every trace's weight in audit.json


# ---------------------------------------------------------------------------------- effective reward


def source_shares(sources: Sequence[int]) -> dict[int, float]:
    """λ_k: the share of the training rows sampled in generation k, for every source generation k."""
    if not sources:
        raise ValueError("source_shares of an empty training set: there is no mixture to weigh")
    counts = Counter(int(s) for s in sources)
    return {k: counts[k] / len(sources) for k in sorted(counts)}


def mixture_logprob(log_beta: Mapping[int, float], shares: Mapping[int, float]) -> float:
    """log Σ_k λ_k β_k(y|x), by logsumexp: ``log_beta[k]`` = log β_k(y|x) (−inf where β_k cannot draw y),
    ``shares[k]`` = λ_k. Every k with λ_k > 0 needs its log β_k."""
    missing = sorted(k for k, lam in shares.items() if lam > 0 and k not in log_beta)
    if missing:
        raise ValueError(f"mixture_logprob: no log β for source generation(s) {missing}; score the trace under "
                         "every source generation's model")
    terms = [math.log(lam) + float(log_beta[k]) for k, lam in shares.items() if lam > 0]
    top = max(terms)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(t - top) for t in terms))


def log_effective_weights(log_beta: Sequence[Mapping[int, float]], log_pi: Sequence[float],
                          shares: Mapping[int, float]) -> list[float]:
    """log of Prop. 2's weight Σ_k λ_k β_k(y|x) / π(y|x) of each trace (+inf where π(y|x) = 0 < the mixture's)."""
    out = []
    for lb, lp in zip(log_beta, log_pi, strict=True):
        mix = mixture_logprob(lb, shares)
        out.append(-math.inf if mix == -math.inf else math.inf if lp == -math.inf else mix - float(lp))
    return out


def effective_rewards(rewards: Sequence[float], log_beta: Sequence[Mapping[int, float]], log_pi: Sequence[float],
                      shares: Mapping[int, float]) -> list[float]:
    """Prop. 2's per-trace effective reward ``r · Σ_k λ_k β_k(y|x) / π(y|x)``.

    SFT on a training set mixed from several sources, a share λ_k of its rows sampled by β_k, has the expected
    gradient Σ_k λ_k E_{β_k}[∇ log π] = E_π[(Σ_k λ_k β_k / π) ∇ log π]: REINFORCE of π with that reward.
    ``log_beta[i]``: {k: log β_k(y_i|x_i)} for every source generation k (each trace under EVERY source's
    model, not only the one that sampled it); ``log_pi``: log π(y_i|x_i) under the model the training starts
    from; ``shares``: {k: λ_k}. The ratio is exp(log-weight) capped at exp(700) to stay finite."""
    logs = log_effective_weights(log_beta, log_pi, shares)
    return [r * math.exp(min(700.0, lw)) for r, lw in zip(rewards, logs, strict=True)]


def weight_statistics(weights: Sequence[float], sources: Sequence[int]) -> dict[str, Any]:
    """Distribution of effective rewards: quantiles, effective sample size, the share of the total
    weight carried by the top 10 % of traces and by each source generation."""
    n = len(weights)
    if not n:
        return {"n": 0}
    srt = sorted(weights)
    total = sum(weights)
    top = max(1, math.ceil(0.1 * n))

    def q(p: float) -> float:
        return srt[min(n - 1, int(p * (n - 1) + 0.5))]

    share: dict[str, float] = {}
    for w, s in zip(weights, sources, strict=True):
        share[str(s)] = share.get(str(s), 0.0) + w
    return {
        "n": n, "mean": statistics.fmean(weights), "median": statistics.median(weights), "p10": q(0.1),
        "p90": q(0.9), "min": srt[0], "max": srt[-1], "sum": total,
        "ess_fraction": (total * total / sum(w * w for w in weights)) / n if total > 0 else None,
        "top10pct_share": sum(srt[-top:]) / total if total > 0 else None,
        "share_by_source_generation": {k: v / total for k, v in sorted(share.items(), key=lambda kv: int(kv[0]))}
        if total > 0 else {},
    }


def start_generation(cfg: Mapping[str, Any], g: int) -> int:
    """The generation whose deployed model the training after generation ``g`` starts from: 0 (the base
    model) under ``training.init: base``, ``g`` under ``training.init: previous`` and for REINFORCE (which
    always continues from the deployed model)."""
    init = (cfg.get("training") or {}).get("init", "base")
    from iterdeploy_trl.methods import get, names

    method = cfg.get("method")
    return g if init == "previous" or (method in names() and get(method).continues) else 0


class TraceScorer:
    """Log-probabilities of trace completions under a seed's models (``score_logprobs``), each (model,
    sampler, trace) scored once: the generations of a seed share their accumulated traces, and a model is
    loaded only when some trace is not scored under it yet."""

    def __init__(self, cfg: Any, base: Path, threads: int) -> None:
        self.cfg, self.base, self.threads = cfg, base, threads
        self._cache: dict[tuple[str, float, float], dict[int, tuple[dict[str, Any], float]]] = {}

    def __call__(self, model_dir: Path | None, recs: Sequence[dict[str, Any]], temperature: float,
                 top_p: float, log: Callable[[str], None] = lambda m: None) -> list[float]:
        cache = self._cache.setdefault((str(model_dir), temperature, top_p), {})
        todo = [r for r in recs if id(r) not in cache or cache[id(r)][0] is not r]
        if todo:
            import torch

            from iterdeploy_trl.backends import load_for_generation

            log(f"  scoring {len(todo)} training traces under {model_dir or self.base} (T {temperature:g}, "
                f"top-p {top_p:g})")
            torch.set_num_threads(max(1, self.threads))
            model, tok = load_for_generation(self.cfg, self.base, model_dir)
            scores = score_logprobs(model, tok, todo, temperature=temperature, top_p=top_p)
            del model
            for r, lp in zip(todo, scores, strict=True):
                cache[id(r)] = (r, lp)
        return [cache[id(r)][1] for r in recs]


def _score_generation(run: RunDir, seed: int, g: int, matched: list[dict[str, Any]], rows: list[dict[str, Any]],
                      scorers: dict[str, TraceScorer], log: Callable[[str], None]) -> dict[str, Any]:
    """Prop. 2's effective rewards of the training set written after generation ``g``: each trace under the
    model of every source generation k (β_k, at the run's sampling temperature and top-p) and under π, the
    model that generation's training starts from (at T 1, top-p 1: the model as trained, whose log-prob
    the SFT loss differentiates)."""
    sources = [int(t.get("generation", 0)) for t in matched]
    shares = source_shares(sources)
    pi_gen = start_generation(run.config, g)
    try:
        from iterdeploy_trl.basemodel import auto_base_model_path

        cfg = load_run_config(run.config)
        try:
            dirs = {k: run.model(seed, k) for k in sorted(set(shares) | {pi_gen})}
        except RunError as exc:
            return {"computed": False, "why": str(exc)}
        base = Path((run.summary or {}).get("base_model") or (
            run.config["model"]["path"] if run.config["model"]["path"] != "auto" else auto_base_model_path(cfg)))
        needs_base = [k for k, d in dirs.items() if d is None or (d / "adapter_config.json").exists()]
        if needs_base and not (base / "config.json").exists():
            return {"computed": False, "why": f"the base model {base} is not on this machine (the model of "
                                              f"generation(s) {needs_base} needs it)"}
        scorer = scorers.setdefault("scorer", TraceScorer(cfg, base, int(run.config.get("threads") or 1)))
        s = run.config.get("sampling", {})
        temperature, top_p = float(s.get("temperature", 1.0)), float(s.get("top_p", 1.0))
        by_source = {k: scorer(dirs[k], matched, temperature, top_p, log) for k in shares}
        log_pi = scorer(dirs[pi_gen], matched, 1.0, 1.0, log)
    except Exception as exc:  # noqa: BLE001 - the audit reports, it does not crash
        return {"computed": False, "why": f"{type(exc).__name__}: {exc}"}
    log_beta = [{k: by_source[k][i] for k in shares} for i in range(len(matched))]
    log_w = log_effective_weights(log_beta, log_pi, shares)
    log_mix = [mixture_logprob(lb, shares) for lb in log_beta]
    weights = effective_rewards([1.0] * len(matched), log_beta, log_pi, shares)
    # identity check: each trace's recorded behaviour log-prob against its source model, rescored here
    gaps = [abs(float(t["behaviour_logprob"]) - lb[s_]) for t, lb, s_ in zip(matched, log_beta, sources, strict=True)
            if t.get("behaviour_logprob") is not None]
    top = sorted(range(len(matched)), key=lambda i: -weights[i])[:5]

    def trace(i: int) -> dict[str, Any]:
        return {"task_id": matched[i]["task_id"], "generation": sources[i], "weight": weights[i],
                "log_weight": log_w[i], "log_mixture": log_mix[i], "log_pi": log_pi[i],
                "log_beta_by_source": {str(k): v for k, v in log_beta[i].items()}}

    return {
        "computed": True,
        "pi_generation": pi_gen,
        "pi_model": str(dirs[pi_gen]) if dirs[pi_gen] else str(base),
        "beta_models": {str(k): str(dirs[k]) if dirs[k] else str(base) for k in shares},
        "shares_by_source_generation": {str(k): v for k, v in shares.items()},
        "statistics": weight_statistics(weights, sources),
        "valid_fraction_of_rewarded": _mean(float(bool(t.get("valid"))) for t in matched),
        "recorded_behaviour_max_abs_logprob_diff": max(gaps) if gaps else None,
        "log_weight_mean": _mean(x for x in log_w if math.isfinite(x)),
        "outside_pi_support": sum(1 for x in log_w if x == math.inf),
        "top_traces": [{**trace(i), "sample_index": matched[i].get("sample_index"),
                        "plan_length": len(plan_actions(matched[i]))} for i in top],
        # every trace of a small set; a large one (the uncurated ablation: thousands) as 1000 quantiles
        "per_trace": [trace(i) for i in range(len(matched))] if len(matched) <= PER_TRACE_MAX else None,
        "weight_quantiles": None if len(matched) <= PER_TRACE_MAX else [
            sorted(weights)[round(i * (len(weights) - 1) / (PER_TRACE_MAX - 1))] for i in range(PER_TRACE_MAX)],
    }
