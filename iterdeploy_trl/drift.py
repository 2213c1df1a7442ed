"""What iterative deployment does to the model over generations: drift measures of a run directory.

Per seed and generation g, from the generation's trace records (and, for the KL, the deployed models):

- ``entropy_heldout``: the Monte-Carlo estimate of the deployed sampling distribution's sequence entropy on the
  held-out prompts, H(β_g) ≈ −mean log β_g(y|x) over the held-out samples y ~ β_g(·|x) (nats a completion;
  ``entropy_per_token``: the same sum over all tokens sampled). ``se`` fields: the standard error over the
  samples (the K samples of a task are not independent of each other's task, so read it as a lower bound).
- ``kl_prev_heldout``: KL(β_g ‖ β_{g-1}) on the held-out prompts, ≈ mean [log β_g(y|x) − log β_{g-1}(y|x)]
  over the held-out samples of generation g, the first term recorded at sampling, the second scored under
  generation g−1's deployed model with the same temperature and top-p (``audit.score_logprobs``).
- ``distinct_valid_plans``: per task solved in the generation (pool and held-out apart), the number of
  distinct valid plans among its K samples, averaged over solved tasks (1 for a task solved one way).
- ``valid_plan_length_by_task``: each solved task's mean valid plan length (the figure draws it across
  generations); ``plan_length_change_common``: the mean change from generation g−1 over the tasks solved in
  both.
- ``reasoning_tokens_mean`` / ``completion_tokens_mean``: over every sample of the generation.
- ``tiebreak_acts``: of the pool tasks solved in the generation, the share where the curation's tie-break
  (shortest plan, then fewer reasoning tokens, then fewer completion tokens) keeps another completion than
  shortest-plan-then-earliest-sample would: where it is 0 the tie-break changes nothing.

Every measure but the KL is model-free (``drift_measures``) and is also in each generation's ``metrics.jsonl``
row, written by the loop as the generation finishes (``metrics.generation_metrics``; not
``valid_plan_length_by_task``, which stays here). The KL needs the previous generation's deployed model: with
``drift.kl_previous: true`` the loop loads it and writes ``kl_prev_heldout`` / ``kl_prev_heldout_se`` into the
row too (``metrics.kl_to_previous``, the function ``iterdeploy drift`` uses); by default only ``iterdeploy drift``
computes it, afterwards.

``iterdeploy drift RUN_DIR`` writes ``RUN_DIR/drift.jsonl`` (one row per seed and generation) and, with
``--figure``, a PNG of the measures across generations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl.drift_measures import (  # noqa: F401 (re-exported: the measures' old home)
    distinct_valid_plans,
    entropy_estimate,
    generation_row,
    kl_estimate,
    plan_length_by_task,
    tiebreak_share,
)
from iterdeploy_trl.metrics import kl_to_previous, score_under
from iterdeploy_trl.runio import write_jsonl


class DriftError(ValueError):
    """A run directory whose drift cannot be measured (the message names what is missing)."""


def measure_run(path: str | Path, *, kl: bool = True, log: Callable[[str], None] = lambda m: None
                ) -> list[dict[str, Any]]:
    """Drift rows of every finished generation of every seed of the run directory ``path``."""
    from iterdeploy_trl.audit import AuditError, open_run, read_traces

    try:
        run = open_run(path)
    except AuditError as exc:
        raise DriftError(str(exc)) from exc
    scoring: tuple[Any, Path] | None = None  # (the run's RunConfig, its base model), once the KL needs them
    rows: list[dict[str, Any]] = []
    for seed in run.seeds:
        previous: dict[str, float] | None = None
        prev_model: Path | None | str = "none"
        for g in range(run.generations + 1):
            recs = read_traces(run, seed, g)
            if recs is None:
                break
            row = {"seed": seed, "generation": g, **generation_row(recs, previous)}
            model = _deployed_model(run.path, seed, g)
            if kl and g > 0 and prev_model != "none":
                scoring = scoring or _run_base(run.config)
                row.update(kl_to_previous(*scoring, prev_model, recs))
            log(f"seed {seed} gen {g}: entropy {_fmt(row['entropy_heldout'])}, KL to previous "
                f"{_fmt(row.get('kl_prev_heldout'))}, distinct valid plans {_fmt(row['distinct_valid_plans_pool'])}")
            rows.append(row)
            previous = row["valid_plan_length_by_task"]
            prev_model = model
    if not rows:
        raise DriftError(f"{path}: no generation has trace records yet")
    return rows


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _deployed_model(run_path: Path, seed: int, g: int) -> Path | None:
    from iterdeploy_trl.rundir import deployed_model, seed_dir

    return deployed_model(seed_dir(run_path, seed), g)


def _run_base(cfg: Mapping[str, Any]) -> tuple[Any, Path]:
    """(RunConfig, base model path) of a run directory's resolved config; DriftError if the base is missing."""
    from iterdeploy_trl.audit import load_run_config
    from iterdeploy_trl.basemodel import auto_base_model_path

    run_cfg = load_run_config(dict(cfg))
    given = run_cfg.model.path
    base = auto_base_model_path(run_cfg) if given == "auto" else Path(given).expanduser()
    if not base.exists():
        raise DriftError(f"{base}: the run's base model is not there; the KL needs it (or run "
                         "`iterdeploy drift --no-kl`)")
    return run_cfg, base


def _score(run_path: Path, cfg: Mapping[str, Any], model_dir: Path | None, recs: Sequence[Mapping[str, Any]],
           temperature: float, top_p: float) -> list[float]:
    """log β(y|x) of ``recs`` under a deployed model of the run whose resolved config is ``cfg``."""
    return score_under(*_run_base(cfg), model_dir, recs, temperature, top_p)


def write_drift(path: str | Path, *, kl: bool = True, figure: bool = False,
                log: Callable[[str], None] = lambda m: None) -> Path:
    """Measure ``path`` and write ``path/drift.jsonl`` (and ``drift.png`` with ``figure``); returns the JSONL."""
    rows = measure_run(path, kl=kl, log=log)
    out = Path(path) / "drift.jsonl"
    write_jsonl(out, rows)
    if figure:
        from iterdeploy_trl.figures.drift import drift_figure

        drift_figure([(Path(path).name, rows)], Path(path) / "drift.png")
    return out
