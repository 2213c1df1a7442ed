"""Reward audit of a run directory (``iterdeploy audit``): what each generation's selection rewarded.

Everything is read from the run directory alone (its config, tasks, trace records, curated training sets,
models and metrics):

- **funnel**: per seed and generation, the pool traces sampled → valid → curated (returned to training at
  that generation), and how their features differ along the way: plan length (actions, and relative to the
  task's reference plan), reasoning and completion tokens, task size, action-type frequencies, repeated
  actions (an action written a second time in one plan), undone actions (an action whose successor puts
  the state back to what it was before it, e.g. ``(pick-up a)`` then ``(put-down a)``; found with the
  simulator on the plan's legal prefix, so it holds for any domain) and novelty (a plan never written for
  that task in an earlier generation of the seed);
- **implicit reward** (Prop. 2): SFT on a training set whose rows were sampled by several models β_k (a
  share λ_k of the rows from generation k) is REINFORCE of π with the per-trace effective reward
  ``r · Σ_k λ_k β_k(y|x) / π(y|x)``, the mixture density over every source generation. Here r = 1 for
  every trace curation returned to training (the selection *is* the reward), β_k is the model that
  deployed generation k (its sampling temperature and top-p), scored on EVERY trace of the set, and π is
  the model the generation's training starts from (the base model under ``training.init: base``, the
  deployed model otherwise), at temperature 1; each model is loaded from the run directory. λ_k are shares
  of the curated rows, so the density is that of the samples before curation (the valid mass of each
  source, which conditioning on curation would add, is not in it);
- **drift and regressions**: features of every deployed output per generation (pool and held-out), tasks
  solved earlier and lost later;
- **lineage and completeness**: validator identity, curation rule, base model, training set per generation,
  and checks that the directory is complete and consistent (trace counts, metrics recomputed from traces,
  the training set recomputed with the run's curation rule).

A section that cannot be computed says why in the report; bad input (not a run directory, unreadable
config) raises :class:`AuditError` with the path.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterdeploy_trl import rundir
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.rundir import RunDirError
from iterdeploy_trl.runio import read_json_or_raise
from iterdeploy_trl.traces import match_training_rows, trace_key

SCHEMA = "iterdeploy-audit/1"
STAGES = ("sampled", "valid", "curated")
PER_TRACE_MAX = 1000  # training sets up to this size keep every trace's weight in audit.json


class AuditError(ValueError):
    """A path that cannot be audited (the message names it and says what to give instead)."""


# ----------------------------------------------------------------------------------------- reading


@dataclass
class RunDir(rundir.RunDir):
    """A run directory as the audit reads it: :class:`iterdeploy_trl.rundir.RunDir` and its task set."""

    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # task id -> size, reference_length, ...
    domain_pddl: str | None = None


def _read_json(path: Path) -> Any:
    return read_json_or_raise(path, AuditError)


def open_run(path: str | Path) -> RunDir:
    """Read a run directory's config, summary and tasks (:func:`iterdeploy_trl.rundir.open_run`);
    :class:`AuditError` if it is not one."""
    path = Path(path)
    try:
        run = rundir.open_run(path)
    except RunDirError as exc:
        hint = ""
        if path.is_dir() and not rundir.is_run(path):
            methods = [p.name for p in rundir.method_runs(path)]
            hint = (f"; it holds run directories ({', '.join(methods)}): audit those" if methods else
                    "; give a directory written by `iterdeploy run --out`")
        raise AuditError(f"{exc}{hint}") from exc
    problems = list(run.problems)
    tasks, domain_pddl = _read_tasks(run, problems)
    return RunDir(run.path, run.resolved, run.summary, problems, tasks, domain_pddl)


def _read_tasks(run: rundir.RunDir, problems: list[str]) -> tuple[dict[str, dict[str, Any]], str | None]:
    from iterdeploy_trl.tasks import TaskSetError, load_task_set
    from iterdeploy_trl.tasks.taskset import INDEX

    cfg = run.config
    for cand in run.task_dirs():
        if not (cand / INDEX).is_file():
            continue
        try:
            ts = load_task_set(cand)
        except (TaskSetError, OSError, ValueError) as exc:
            problems.append(f"{cand}: task set unreadable ({exc})")
            continue
        n = int(cfg.get("tasks", {}).get("n", len(ts.tasks)))
        held = int(cfg.get("tasks", {}).get("heldout", 0))
        if len(ts.tasks) < n + held:
            problems.append(f"{cand}: {len(ts.tasks)} tasks, the config needs tasks.n + tasks.heldout = {n + held}")
        out = {}
        for i, t in enumerate(ts.tasks[: n + held]):
            out[t.id] = {"size": t.params.get("size"), "reference_length": t.reference_length,
                         "problem": t.problem, "split": "pool" if i < n else "heldout"}
        return out, ts.domain_pddl
    problems.append(f"{rundir.tasks_dir(run.path)}: no task set ({INDEX}); task sizes and undone actions are not "
                    "reported")
    return {}, None


def read_traces(run: rundir.RunDir, seed: int, generation: int) -> list[dict[str, Any]] | None:
    """Every trace record of one generation of one seed (:meth:`iterdeploy_trl.rundir.RunDir.traces`), or
    None when the generation has no trace file; :class:`AuditError` naming a file that cannot be read."""
    try:
        return run.traces(seed, generation)
    except RunDirError as exc:
        raise AuditError(str(exc)) from exc


def read_train_rows(run: rundir.RunDir, seed: int, generation: int) -> list[dict[str, Any]] | None:
    """The curated training set written after ``generation`` (:meth:`iterdeploy_trl.rundir.RunDir.train_rows`),
    or None; :class:`AuditError` naming a file that cannot be read."""
    try:
        return run.train_rows(seed, generation)
    except RunDirError as exc:
        raise AuditError(str(exc)) from exc


# ---------------------------------------------------------------------------------------- features


def plan_actions(rec: dict[str, Any]) -> list[str]:
    """The actions of a trace's extracted plan (its ``plan`` field, one action a line)."""
    return [a.strip() for a in (rec.get("plan") or "").split("\n") if a.strip()]


def action_type(action: str) -> str:
    """``(pick-up a)`` -> ``pick-up``."""
    words = action.strip().strip("()").split()
    return words[0].lower() if words else ""


def repeated_actions(actions: Sequence[str]) -> int:
    """Actions written a second (third, ...) time in the same plan."""
    return len(actions) - len({a.lower() for a in actions})


class UndoCounter:
    """Counts undone actions of plans with the simulator: step i+1 undoes step i when the state after it
    equals the state before step i. Only the legal prefix of a plan is followed. One simulator per task."""

    def __init__(self, domain_pddl: str | None, tasks: dict[str, dict[str, Any]]) -> None:
        self.domain_pddl = domain_pddl
        self.tasks = tasks
        self._sims: dict[str, Any] = {}
        self.actions: set[str] | None = None  # the domain's action names (others count as malformed)
        if domain_pddl is not None:
            from iterdeploy_trl.blindspot import BlindSpotError, parse_sexpr

            try:
                define = parse_sexpr(domain_pddl)[0]
                self.actions = {f[1] for f in define if isinstance(f, list) and f and f[0] == ":action"}
            except (BlindSpotError, IndexError, TypeError):
                self.actions = None

    def name_of(self, name: str) -> str:
        """An action type as reported: the domain's action name, or ``(malformed)``."""
        return name if self.actions is None or name in self.actions else "(malformed)"

    def __call__(self, task_id: str, actions: Sequence[str]) -> int | None:
        if self.domain_pddl is None or task_id not in self.tasks or len(actions) < 2:
            return None if self.domain_pddl is None or task_id not in self.tasks else 0
        sim = self._sims.get(task_id)
        if sim is None:
            from iterdeploy_trl.sim import Simulator

            sim = self._sims[task_id] = Simulator(self.domain_pddl, self.tasks[task_id]["problem"])
        from iterdeploy_trl.sim import IllegalAction

        states = [sim.init_state]
        for a in actions:
            try:
                states.append(sim.apply(states[-1], a))
            except (IllegalAction, ValueError, KeyError):
                break
        return sum(1 for i in range(len(states) - 2) if states[i + 2] == states[i])


def trace_features(rec: dict[str, Any], tasks: dict[str, dict[str, Any]], undo: UndoCounter) -> dict[str, Any]:
    """The features of one trace record that the audit compares along the funnel."""
    actions = plan_actions(rec)
    ref = rec.get("reference_length") or tasks.get(rec.get("task_id"), {}).get("reference_length")
    return {
        "plan_length": len(actions),
        "relative_length": len(actions) / ref if ref else None,
        "reasoning_tokens": rec.get("reasoning_tokens"),
        "completion_tokens": rec.get("completion_tokens"),
        "task_size": tasks.get(rec.get("task_id"), {}).get("size"),
        "action_types": Counter(undo.name_of(action_type(a)) for a in actions),
        "repeated": repeated_actions(actions),
        "undone": undo(rec.get("task_id"), actions),
        "truncated": bool(rec.get("truncated")),
        "valid": bool(rec.get("valid")),
    }


def _mean(xs: Iterable[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return round(statistics.fmean(vals), 4) if vals else None


def stage_summary(feats: Sequence[dict[str, Any]], novel: Sequence[bool] | None = None) -> dict[str, Any]:
    """Mean features of a set of traces (a funnel stage)."""
    types: Counter[str] = Counter()
    for f in feats:
        types.update(f["action_types"])
    total = sum(types.values())
    undone = [f["undone"] for f in feats]
    return {
        "n": len(feats),
        "plan_length_mean": _mean(f["plan_length"] for f in feats),
        "plan_length_median": statistics.median([f["plan_length"] for f in feats]) if feats else None,
        "relative_length_mean": _mean(f["relative_length"] for f in feats),
        "reasoning_tokens_mean": _mean(f["reasoning_tokens"] for f in feats),
        "completion_tokens_mean": _mean(f["completion_tokens"] for f in feats),
        "task_size_mean": _mean(f["task_size"] for f in feats),
        "repeated_per_plan": _mean(f["repeated"] for f in feats),
        "undone_per_plan": _mean(undone),
        "with_undone_fraction": _mean(float(u > 0) for u in undone if u is not None),
        "truncated_fraction": _mean(float(f["truncated"]) for f in feats),
        "valid_fraction": _mean(float(f["valid"]) for f in feats),
        "novel_fraction": _mean(float(x) for x in novel) if novel is not None else None,
        "action_type_fraction": {k: round(v / total, 4) for k, v in sorted(types.items())} if total else {},
    }


# ---------------------------------------------------------------------------------------- curation


def recompute_curation(cfg: dict[str, Any], history: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The training set the run's curation rule makes from ``history`` (the loop's own curation,
    ``training.curated_traces``)."""
    from iterdeploy_trl.training import curated_traces

    counter = (cfg.get("validator") or {}).get("counter_reward")
    records = _as_records(history)
    chosen = curated_traces(records, str(cfg.get("curation", "shortest")), counter, seed=seed)
    return [r if isinstance(r, dict) else r.to_dict() for r in chosen]


def _as_records(rows: Sequence[dict[str, Any]]) -> list[Any]:
    """Trace dicts as this version's ``TraceRecord`` (what ``curate`` takes) where it has one; a row that
    is not one raises ``ValueError`` (another version's record: the check is then not made)."""
    try:
        from iterdeploy_trl.traces import TraceRecord
    except ImportError:  # a version whose curate takes dicts
        return list(rows)
    import dataclasses

    names = {f.name for f in dataclasses.fields(TraceRecord)}
    return [TraceRecord.from_dict({k: v for k, v in r.items() if k in names}) for r in rows]


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


def _completion_ids(tok: Any, rec: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of a trace: the recorded ones where the trace has them, else the text
    tokenised as the deployment backend and the SFT trainer do (prompt with special tokens, completion
    without, the end-of-sequence token appended to a completion that was not cut by max_new_tokens)."""
    p = rec.get("prompt_ids")
    c = rec.get("completion_ids")
    if p and c is not None:
        return list(p), list(c)
    prompt = tok(rec["prompt"])["input_ids"]
    comp = tok(rec["completion"], add_special_tokens=False)["input_ids"]
    if not rec.get("truncated") and tok.eos_token_id is not None:
        comp = comp + [tok.eos_token_id]
    return list(prompt), list(comp)


def score_logprobs(model: Any, tok: Any, recs: Sequence[dict[str, Any]], *, temperature: float = 1.0,
                   top_p: float = 1.0, batch_size: int = 32) -> list[float]:
    """log π(y|x) of each trace's completion under ``model``, summed over the completion's tokens, with the
    sampling temperature and top-p applied as the deployment backend applied them."""
    import torch

    from iterdeploy_trl.sampler import sampling_log_distribution
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    out: list[float] = []
    model.eval()
    for start in range(0, len(recs), batch_size):
        pairs = [_completion_ids(tok, r) for r in recs[start : start + batch_size]]
        seqs = [p + c for p, c in pairs]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        for i, (p, c) in enumerate(pairs):
            if not c:
                out.append(0.0)
                continue
            pos = torch.arange(len(p) - 1, len(p) + len(c) - 1)
            logq = sampling_log_distribution(logits[i, pos], temperature, top_p)
            lp = logq.gather(-1, torch.tensor(c).unsqueeze(-1).to(logq.device))
            out.append(float(lp.sum()))
    return out


# ------------------------------------------------------------------------------------------- audit


@dataclass
class Check:
    name: str
    ok: bool | None  # None: could not be checked
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


def _file_sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _validator_ids(recs: Sequence[dict[str, Any]]) -> list[str]:
    ids = set()
    for r in recs:
        v = r.get("validator")
        if isinstance(v, dict):
            ids.add(" ".join(f"{k}={v[k]}" for k in sorted(v) if not isinstance(v[k], dict)) or "{}")
        elif v:
            ids.add(str(v))
        else:
            ids.add("(not recorded)")
    return sorted(ids)


def audit_run(path: str | Path, *, score: bool = True, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """The audit of one run directory as a JSON-able dict (see the module docstring)."""
    run = open_run(path)
    cfg = run.config
    checks: list[Check] = [Check("readable", False, p) for p in run.problems]
    checks.append(_hash_check(run))
    undo = UndoCounter(run.domain_pddl, run.tasks)
    K = int(cfg.get("sampling", {}).get("samples_per_task", 1))
    n_pool = int(cfg.get("tasks", {}).get("n", 0))
    n_held = int(cfg.get("tasks", {}).get("heldout", 0))
    seeds_out = {}
    for seed in run.seeds:
        log(f"audit {run.path} seed {seed}")
        seeds_out[str(seed)] = _audit_seed(run, seed, K, n_pool, n_held, undo, checks, score, log)
    if run.summary is None:
        checks.append(Check(rundir.SUMMARY, False, f"{rundir.summary(run.path)} missing: the run is unfinished or "
                            "was killed; the audit covers what is on disk"))
    elif not run.summary.get("complete"):
        checks.append(Check(rundir.SUMMARY, False, f"{rundir.SUMMARY} does not say complete"))
    else:
        checks.append(Check(rundir.SUMMARY, True, "present, complete"))
    return {
        "schema": SCHEMA, "run": str(run.path), "name": cfg.get("name"), "domain": cfg.get("domain"),
        "lineage": {
            "method": cfg.get("method"), "curation": cfg.get("curation"), "accumulate": cfg.get("accumulate"),
            "validator_config": cfg.get("validator"),
            "base_model": (run.summary or {}).get("base_model") or cfg.get("model", {}).get("path"),
            "config_hash": run.stored_hash, "seeds": run.seeds, "generations": run.generations,
            "samples_per_task": K, "pool_tasks": n_pool, "heldout_tasks": n_held,
            "sampling": cfg.get("sampling"), "training_init": cfg.get("training", {}).get("init"),
        },
        "seeds": seeds_out,
        "checks": [c.to_dict() for c in checks],
        "complete": all(c.ok for c in checks),
    }


def load_run_config(data: dict[str, Any]) -> Any:
    """The ``RunConfig`` of a resolved config, also one written before keys moved into a method's own
    section (``config.MOVED_KEYS``: moved there when the run's method reads it, else dropped)."""
    import copy

    from iterdeploy_trl import config as config_module

    data = copy.deepcopy(data)
    from iterdeploy_trl.methods import with_section

    readers = {m.section: m.name for m in with_section()}
    for old, new in getattr(config_module, "MOVED_KEYS", {}).items():
        s_old, k_old = old.split(".")
        s_new, k_new = new.split(".")
        if k_old not in (data.get(s_old) or {}):
            continue
        value = data[s_old].pop(k_old)
        if data.get("method") == readers.get(s_new):
            data[s_new] = {**(data.get(s_new) or {}), k_new: value}
    return config_module.config_from_dict(data, check_paths=False)


def _hash_check(run: RunDir) -> Check:
    try:
        from iterdeploy_trl.config import ConfigError, config_hash, hash_matches

        try:
            cfg = load_run_config(run.config)
            h = config_hash(cfg)
        except ConfigError as exc:
            return Check("config hash", False, f"resolved_config.json does not load with this version ({exc}): "
                         "an older or newer iterdeploy wrote it")
        if run.stored_hash is None:
            return Check("config hash", False, "resolved_config.json has no hash")
        if h != run.stored_hash:
            if hash_matches(cfg, {"hash": run.stored_hash, "config": run.config}):
                return Check("config hash", True, f"{run.stored_hash} (as hashed before compare_methods left "
                             f"the hash; this version computes {h} and resumes it)")
            return Check("config hash", False, f"stored {run.stored_hash}, this version computes {h}: written by "
                         "another version of iterdeploy (resume would refuse it)")
        return Check("config hash", True, f"{h} (this version computes the same)")
    except Exception as exc:  # noqa: BLE001 - the audit reports, it does not crash
        return Check("config hash", None, f"not checked: {type(exc).__name__}: {exc}")


def _audit_seed(run: RunDir, seed: int, K: int, n_pool: int, n_held: int, undo: UndoCounter, checks: list[Check],
                score: bool, log: Callable[[str], None]) -> dict[str, Any]:
    sdir = run.seed_dir(seed)
    cfg = run.config
    accumulate = bool(cfg.get("accumulate", True))
    metrics = {}
    if rundir.metrics(sdir).is_file():
        try:
            metrics = rundir.read_metrics(rundir.metrics(sdir))
        except RunDirError as exc:
            checks.append(Check(f"seed {seed} {rundir.METRICS}", False, str(exc)))
    else:
        checks.append(Check(f"seed {seed} {rundir.METRICS}", False, f"{rundir.metrics(sdir)} missing"))
    history: list[dict[str, Any]] = []
    scorers: dict[str, TraceScorer] = {}  # one per seed: its generations share the accumulated traces
    seen_plans: dict[str, set[str]] = {}  # task id -> plans written in earlier generations
    solved_ever: set[str] = set()
    solved_prev: set[str] | None = None
    gens = []
    for g in range(run.generations + 1):
        recs = read_traces(run, seed, g)
        if recs is None:
            checks.append(Check(f"seed {seed} gen {g} traces", False, f"{rundir.traces_dir(run.gen_dir(seed, g))}: no "
                                "trace file"
                                + (" (the run stopped before this generation)" if g > 0 else "")))
            break
        pool = [r for r in recs if r["split"] == "pool"]
        held = [r for r in recs if r["split"] == "heldout"]
        ok = len(pool) == n_pool * K and len(held) == n_held * K
        checks.append(Check(f"seed {seed} gen {g} trace count", ok,
                            f"pool {len(pool)} (expected {n_pool}×{K}), held-out {len(held)} (expected {n_held}×{K})"))
        feats = [trace_features(r, run.tasks, undo) for r in pool]
        novel = [(r.get("plan") or "") not in seen_plans.get(r["task_id"], set()) for r in pool]
        entry: dict[str, Any] = {"generation": g}
        valid_idx = [i for i, r in enumerate(pool) if r.get("valid")]
        entry["funnel"] = {"sampled": stage_summary(feats, novel),
                           "valid": stage_summary([feats[i] for i in valid_idx], [novel[i] for i in valid_idx])}
        entry["funnel_tasks"] = {"sampled": len({r["task_id"] for r in pool}),
                                 "valid": len({pool[i]["task_id"] for i in valid_idx})}
        held_feats = [trace_features(r, run.tasks, undo) for r in held]
        entry["deployed"] = {"pool": entry["funnel"]["sampled"], "heldout": stage_summary(held_feats)}
        # solved and lost
        solved = {r["task_id"] for r in pool if r.get("valid")}
        held_solved = {r["task_id"] for r in held if r.get("valid")}
        m = metrics.get(g)
        if m is not None:
            same = m.get("solved") == len(solved) and m.get("heldout_solved", len(held_solved)) == len(held_solved)
            checks.append(Check(f"seed {seed} gen {g} metrics", same,
                                f"metrics.jsonl says solved {m.get('solved')}, held-out {m.get('heldout_solved')}; "
                                f"the traces give {len(solved)}, {len(held_solved)}"))
        else:
            checks.append(Check(f"seed {seed} gen {g} metrics", False, "no metrics.jsonl row (generation unfinished)"))
        entry["solved"] = {"pool": len(solved), "heldout": len(held_solved), "pool_tasks": n_pool,
                           "heldout_tasks": n_held,
                           "lost_since_previous": sorted(solved_prev - solved) if solved_prev is not None else [],
                           "lost_since_ever": sorted(solved_ever - solved),
                           "gained": sorted(solved - solved_ever)}
        entry["lineage"] = {"model": sorted({str(r.get("model")) for r in recs}),
                            "validator": _validator_ids(recs)}
        verdicts = [r.get("validators") for r in pool if isinstance(r.get("validators"), dict)]
        if verdicts:  # a run with a declared blind spot: both verdicts per trace
            entry["blind_spot"] = _blind_summary(pool)
        solved_prev = solved
        solved_ever |= solved
        history.extend(recs)
        # the curated set written after this generation
        rows = read_train_rows(run, seed, g) if g < run.generations else None
        next_model = rundir.model(run.gen_dir(seed, g + 1))
        if g < run.generations and rows is None:
            checks.append(Check(f"seed {seed} gen {g} {rundir.TRAIN_SET}", not next_model.exists(),
                                "missing" + (" although the next generation's model exists" if next_model.exists()
                                             else " (the run stopped before curating)")))
        if rows is not None:
            hist = history if accumulate else recs
            matched, missing = match_training_rows(rows, hist)
            checks.append(Check(f"seed {seed} gen {g} {rundir.TRAIN_SET} rows traced", missing == 0,
                                f"{len(rows) - missing} of {len(rows)} training rows found among the trace records"))
            try:
                again = recompute_curation(cfg, hist, seed)
                same = Counter(map(trace_key, again)) == Counter(map(trace_key, rows))
                checks.append(Check(f"seed {seed} gen {g} curation recomputed", same,
                                    f"the run's rule ({cfg.get('curation')}) applied to the traces gives "
                                    f"{len(again)} rows; {rundir.TRAIN_SET} has {len(rows)}"
                                    + ("" if same else " — they differ")))
            except Exception as exc:  # noqa: BLE001
                checks.append(Check(f"seed {seed} gen {g} curation recomputed", None,
                                    f"not checked: {type(exc).__name__}: {exc}"))
            cur_now = [t for t in matched if t.get("generation") == g]
            cur_feats = [trace_features(t, run.tasks, undo) for t in cur_now]
            entry["funnel"]["curated"] = stage_summary(cur_feats, [
                (t.get("plan") or "") not in seen_plans.get(t["task_id"], set()) for t in cur_now])
            entry["funnel_tasks"]["curated"] = len({t["task_id"] for t in cur_now})
            entry["training_set"] = {
                "file": str(rundir.train_set(run.gen_dir(seed, g)).relative_to(run.path)),
                "sha256": _file_sha(rundir.train_set(run.gen_dir(seed, g))),
                "rows": len(rows), "from_this_generation": len(cur_now),
                "by_source_generation": dict(sorted(Counter(str(t.get("generation")) for t in matched).items(),
                                                    key=lambda kv: int(kv[0]))),
                "valid_fraction": _mean(float(bool(t.get("valid"))) for t in matched),
                "features": stage_summary([trace_features(t, run.tasks, undo) for t in matched]),
                "trains_generation": g + 1,
            }
            stats_path = rundir.train_stats(next_model)
            if stats_path.is_file():
                st = _read_json(stats_path)
                entry["training_set"]["train_stats"] = {k: st.get(k) for k in ("train_traces", "eval_traces",
                                                                                "overlong_skipped", "train_steps")}
            if score and matched:
                entry["effective_reward"] = _score_generation(run, seed, g, matched, rows, scorers, log)
        for r in pool:
            seen_plans.setdefault(r["task_id"], set()).add(r.get("plan") or "")
        gens.append(entry)
    return {"generations": gens}


def _blind_summary(pool: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Fractions of the deployed outputs accepted by the training validator, by the exact one, and by the
    training one only (exploiting its blind spot)."""
    v = [r["validators"] for r in pool]
    n = len(v)
    train = [bool(x.get("train", {}).get("valid")) for x in v]
    exact = [bool(x.get("exact", {}).get("valid")) for x in v]
    return {"n": n, "train_valid_fraction": sum(train) / n, "exact_valid_fraction": sum(exact) / n,
            "exploit_fraction": sum(t and not e for t, e in zip(train, exact, strict=True)) / n}


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


# ------------------------------------------------------------------------------------------ report


@dataclass
class AuditReport:
    """What ``write_audit`` wrote."""

    out: Path
    audits: list[dict[str, Any]]
    files: list[Path]


def write_audit(paths: Sequence[str | Path], out: str | Path, *, score: bool = True,
                log: Callable[[str], None] = lambda m: None) -> AuditReport:
    """Audit every run directory (all are opened first: a bad one raises before anything is written) and
    write ``audit.json``, ``audit.md`` and the audit figures into ``out``."""
    if not paths:
        raise AuditError("no input: give run directories written by `iterdeploy run --out`")
    runs = [open_run(p) for p in paths]
    audits = [audit_run(p, score=score, log=log) for p in paths]
    experiment = blind_spot_experiment(runs, log=log)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from iterdeploy_trl.figures.audit import draw_audit_figures, fig_blind_spot

    figs = draw_audit_figures(audits, out)
    if experiment:
        figs += fig_blind_spot(experiment, out, "blind_spot_experiment")
    doc = {"schema": SCHEMA, "runs": audits, "blind_spot_experiment": experiment}
    (out / "audit.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "audit.md").write_text(audit_markdown(audits, figs, experiment))
    return AuditReport(out, audits, [*figs, out / "audit.json", out / "audit.md"])


def blind_spot_experiment(runs: Sequence[RunDir], *, log: Callable[[str], None] = lambda m: None
                          ) -> dict[str, Any] | None:
    """When a run declares a blind spot: every run measured by that blind validator and the exact one
    (exploit fraction, solve rates per generation, mean and 95 % t-interval over seeds); else None."""
    from iterdeploy_trl.blindspot import condition_label, describe, measure_run, paired_comparisons, summarise
    from iterdeploy_trl.config import BlindSpotConfig

    declared = [(r.config.get("validator") or {}).get("blind_spot") for r in runs]
    declared = [d for d in declared if d]
    if not declared:
        return None
    blind = BlindSpotConfig(**declared[0])
    if any(BlindSpotConfig(**d) != blind for d in declared):
        log("runs declare different blind spots; all are measured with the first one's")
    result: dict[str, Any] = {"blind_spot": describe(blind), "runs": []}
    for r in runs:
        log(f"blind-spot measures of {r.path}")
        try:
            per_seed = measure_run(r, blind, log=log)
        except RunDirError as exc:
            raise AuditError(str(exc)) from exc
        v = r.config.get("validator") or {}
        own = BlindSpotConfig(**v["blind_spot"]) if v.get("blind_spot") else None
        result["runs"].append({
            "run": str(r.path), "name": r.config.get("name"),
            "condition": condition_label(blind, own, v.get("counter_reward")),
            "per_seed": per_seed, "summary": summarise(per_seed) if per_seed and all(per_seed.values()) else []})
    result["paired"] = paired_comparisons([(f"{r['condition']} (`{r['name']}`)", r["per_seed"])
                                           for r in result["runs"] if r["per_seed"]])
    return result


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.2e}"
        return f"{v:.{digits}g}"
    return str(v)


def audit_markdown(audits: Sequence[dict[str, Any]], figures: Sequence[Path] = (),
                   experiment: dict[str, Any] | None = None) -> str:
    """The report: the blind-spot comparison (when a run declares one), then one section per run
    (lineage, checks, funnel, effective reward, drift)."""
    lines = ["# Reward audit", "", "Written by `iterdeploy audit` from the run directories alone. Funnel: pool "
             "traces of each generation; *curated* = those of the generation that curation returned to training "
             "right after it. Effective reward (Prop. 2): r·Σ_k λ_k β_k/π per training trace, r = 1 for every "
             "trace curation kept, λ_k the share of the training set sampled in generation k, β_k the model that "
             "deployed generation k (its sampling temperature and top-p) scored on every trace, π the model the "
             "training starts from (the base under training.init base, else the deployed model; at T 1).", ""]
    if experiment:
        lines += blind_spot_markdown(experiment, figures)
    for a in audits:
        lin = a["lineage"]
        lines += [f"## {a['name']} — `{a['run']}`", "",
                  f"Domain {a['domain']}; method {lin['method']}, curation `{lin['curation']}`"
                  f"{' (accumulated over generations)' if lin['accumulate'] else ''}; validator config "
                  f"`{lin['validator_config'] or 'exact VAL (no validator section)'}`; base model `{lin['base_model']}`; "
                  f"config hash {lin['config_hash']}; seeds {lin['seeds']}; {lin['pool_tasks']} pool + "
                  f"{lin['heldout_tasks']} held-out tasks × {lin['samples_per_task']} samples.", ""]
        for f in figures:
            if f.suffix == ".png" and _slug(a["name"]) in f.name:
                lines.append(f"![{f.stem}]({f.name})")
        lines.append("")
        bad = [c for c in a["checks"] if not c["ok"]]
        lines += [f"**Completeness and consistency**: {len(a['checks']) - len(bad)} of {len(a['checks'])} checks "
                  "pass" + (":" if bad else "."), ""]
        for c in bad:
            lines.append(f"- {'FAILED' if c['ok'] is False else 'not checked'}: {c['check']} — {c['detail']}")
        if bad:
            lines.append("")
        for seed, s in a["seeds"].items():
            lines += [f"### seed {seed}", "", "Funnel (pool): traces (tasks) at each stage and their mean features.", "",
                      "| gen | stage | traces | tasks | plan length | rel. to reference | reasoning tok. | completion tok. "
                      "| task size | repeated / plan | undone / plan | novel | valid |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for e in s["generations"]:
                for st in STAGES:
                    x = e["funnel"].get(st)
                    if x is None:
                        continue
                    lines.append(f"| {e['generation']} | {st} | {x['n']} | {e['funnel_tasks'].get(st)} | "
                                 f"{_f(x['plan_length_mean'])} | {_f(x['relative_length_mean'])} | "
                                 f"{_f(x['reasoning_tokens_mean'])} | {_f(x['completion_tokens_mean'])} | "
                                 f"{_f(x['task_size_mean'])} | {_f(x['repeated_per_plan'])} | "
                                 f"{_f(x['undone_per_plan'])} | {_f(x['novel_fraction'])} | {_f(x['valid_fraction'])} |")
            lines += ["", "Action types (fraction of the actions written), sampled → curated:", ""]
            for e in s["generations"]:
                samp = e["funnel"]["sampled"]["action_type_fraction"]
                cur = e["funnel"].get("curated", {}).get("action_type_fraction", {})
                kinds = sorted(set(samp) | set(cur))
                lines.append(f"- gen {e['generation']}: " + ", ".join(
                    f"{k} {_f(samp.get(k, 0.0), 2)} → {_f(cur.get(k), 2) if cur else '–'}" for k in kinds))
            lines += ["", "Effective reward r·Σ_k λ_k β_k/π of each training set:", "",
                      "| after gen | rows | π = model of gen | λ_k by source gen | mean | median | p10 | p90 | max | ESS / n | top 10 % share | "
                      "weight share by source gen | valid among rewarded | recorded vs rescored log β, max abs diff |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for e in s["generations"]:
                er = e.get("effective_reward")
                if er is None:
                    continue
                if not er.get("computed"):
                    lines.append(f"| {e['generation']} | {e['training_set']['rows']} | not computed: {er['why']} "
                                 "| | | | | | | | | | | |")
                    continue
                st = er["statistics"]
                share = ", ".join(f"{k}: {v:.2f}" for k, v in st["share_by_source_generation"].items())
                lams = ", ".join(f"{k}: {v:.2f}" for k, v in er["shares_by_source_generation"].items())
                lines.append(f"| {e['generation']} | {st['n']} | {er['pi_generation']} | {lams} | {_f(st['mean'])} | "
                             f"{_f(st['median'])} | {_f(st['p10'])} | {_f(st['p90'])} | {_f(st['max'])} | "
                             f"{_f(st['ess_fraction'])} | {_f(st['top10pct_share'])} | {share} | "
                             f"{_f(er['valid_fraction_of_rewarded'])} | {_f(er['recorded_behaviour_max_abs_logprob_diff'])} |")
            tops = [(e["generation"], t) for e in s["generations"] if e.get("effective_reward", {}).get("computed")
                    for t in e["effective_reward"]["top_traces"][:3]]
            if tops:
                lines += ["", "Heaviest training traces (top 3 per training set):", ""]
                lines += [f"- after gen {g}: {t['task_id']} (sampled in gen {t['generation']}, {t['plan_length']} "
                          f"actions): weight {_f(t['weight'])}, log Σλβ {t['log_mixture']:.2f}, log π {t['log_pi']:.2f}"
                          for g, t in tops]
            lines += ["", "Drift and regressions (all deployed outputs):", "",
                      "| gen | pool solved | held-out solved | lost since previous | lost since ever | newly solved "
                      "| pool valid | held-out valid | pool truncated | pool plan length | held-out plan length "
                      "| pool undone / plan | model | validator |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for e in s["generations"]:
                sv, dp = e["solved"], e["deployed"]
                lines.append(f"| {e['generation']} | {sv['pool']}/{sv['pool_tasks']} | {sv['heldout']}/{sv['heldout_tasks']} "
                             f"| {len(sv['lost_since_previous'])} | {len(sv['lost_since_ever'])} | {len(sv['gained'])} | "
                             f"{_f(dp['pool']['valid_fraction'])} | {_f(dp['heldout']['valid_fraction'])} | "
                             f"{_f(dp['pool']['truncated_fraction'])} | {_f(dp['pool']['plan_length_mean'])} | "
                             f"{_f(dp['heldout']['plan_length_mean'])} | {_f(dp['pool']['undone_per_plan'])} | "
                             f"`{', '.join(e['lineage']['model'])}` | {'; '.join(e['lineage']['validator'])} |")
            blind = [e for e in s["generations"] if "blind_spot" in e]
            if blind:
                lines += ["", "Blind spot (pool outputs): accepted by the training validator, by the exact one, "
                          "and by the training one only (exploits):", "",
                          "| gen | training-validator valid | exact valid | exploit |", "|---|---|---|---|"]
                lines += [f"| {e['generation']} | {_f(e['blind_spot']['train_valid_fraction'])} | "
                          f"{_f(e['blind_spot']['exact_valid_fraction'])} | {_f(e['blind_spot']['exploit_fraction'])} |"
                          for e in blind]
            lines += ["", "Training sets (lineage):", ""]
            for e in s["generations"]:
                ts = e.get("training_set")
                if ts:
                    lines.append(f"- `{ts['file']}` (sha256 {ts['sha256']}): {ts['rows']} rows, "
                                 f"{ts['from_this_generation']} sampled in gen {e['generation']}, by source generation "
                                 f"{ts['by_source_generation']}, valid {_f(ts['valid_fraction'])}; trains generation "
                                 f"{ts['trains_generation']}" + (f"; train_stats {ts['train_stats']}"
                                                                 if ts.get("train_stats") else ""))
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def blind_spot_markdown(experiment: dict[str, Any], figures: Sequence[Path] = ()) -> list[str]:
    """The blind-spot comparison: per condition and generation, the exploit shares (of all samples, of the
    blind-accepted ones, of the curated training set) and solve rates, mean [95 % t-interval] over seeds;
    then every condition against every other, paired by seed, with raw and Holm-adjusted p."""
    lines = ["## Blind-spot experiment", "",
             f"Blind spot: {experiment['blind_spot']}. Every condition's deployed pool outputs are judged by the "
             "same two validators (traces of a run that did not record this blind verdict are checked again by VAL "
             "on the blind task). Exploit: accepted by the blind validator, rejected by the exact one. Its share "
             "among all samples, among the samples the blind validator accepts, and among the curated training set "
             "written after the generation (all generations' curated traces when accumulated; the last generation "
             "trains nothing: –). Solved: fraction of pool tasks with at least one accepted sample. Mean over "
             "seeds [95 % t-interval].", ""]
    lines += [f"![{f.stem}]({f.name})" for f in figures if f.suffix == ".png" and f.stem == "blind_spot_experiment"]
    lines += ["", "| condition | run | gen | seeds | exploits / all samples | exploits / blind-accepted | "
              "exploits / curated training set | exactly valid / sample | exact solved | blind solved |",
              "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(x: dict[str, Any] | None) -> str:
        return "–" if x is None else f"{x['mean']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}]"

    for r in experiment["runs"]:
        for e in r["summary"]:
            lines.append(f"| {r['condition']} | `{r['name']}` | {e['generation']} | {e['seeds']} | "
                         f"{cell(e.get('exploit_fraction'))} | {cell(e.get('exploit_share_of_blind_accepted'))} | "
                         f"{cell(e.get('curated_exploit_share'))} | {cell(e.get('exact_valid_fraction'))} | "
                         f"{cell(e.get('exact_solved'))} | {cell(e.get('blind_solved'))} |")
    paired = experiment.get("paired") or []
    if paired:
        from iterdeploy_trl.blindspot import PAIRED_MEASURES

        lines += ["", f"Paired by seed (A − B, the same seed in both; generation 0 deploys the same base model in "
                  f"every condition and is not tested): per-seed difference, mean [95 % t-interval], the seeds where "
                  f"A is higher / lower, two-sided paired-t p and Holm-adjusted p over all {len(paired)} tests of "
                  "this table.", "",
                  "| A − B | measure | gen | per seed (seed: A − B) | mean [95 % CI] | A higher / lower | p | Holm p |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in paired:
            seeds = ", ".join(f"{d['seed']}: {d['diff']:+.3f}" for d in row["per_seed"])
            lines.append(f"| {row['a']} − {row['b']} | {PAIRED_MEASURES.get(row['measure'], row['measure'])} | "
                         f"{row['generation']} | {seeds} | {row['mean_diff']:+.3f} [{row['ci'][0]:+.3f}, "
                         f"{row['ci'][1]:+.3f}] | {row['a_higher_on']} / {row['a_lower_on']} | {_f(row['p'])} | "
                         f"{_f(row['p_holm'])} |")
    return [*lines, ""]


def _slug(text: Any) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "run"
