"""The audit of a run directory: per seed and generation the funnel, the solved and lost tasks, the
lineage, the completeness and consistency checks and the effective reward (:func:`audit_run`); every run
audited and written out (:func:`write_audit`); the blind-spot experiment over the runs."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iterdeploy_trl import rundir
from iterdeploy_trl.audit.features import UndoCounter, _mean, stage_summary, trace_features
from iterdeploy_trl.audit.markdown import audit_markdown
from iterdeploy_trl.audit.reading import (
    SCHEMA,
    AuditError,
    RunDir,
    _read_json,
    load_run_config,
    open_run,
    read_traces,
    read_train_rows,
)
from iterdeploy_trl.audit.reward import TraceScorer, _score_generation
from iterdeploy_trl.rundir import RunDirError
from iterdeploy_trl.traces import match_training_rows, trace_key

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
