"""Where a comparison stands (``iterdeploy status OUT`` on the ``--out`` of ``iterdeploy compare``), from its
files alone: each tuning run and result arm finished, under way, stopped or not started; the run seconds
measured so far; each arm's tuning choice once its grid is finished (the rule of ``compare_tuning``); and a
rough estimate of the run seconds left. Reads only and takes no lock, so it is safe while the comparison runs.

The plan is read from ``OUT/config.yaml`` (written when the comparison starts): the tuning runs
(:func:`~iterdeploy_trl.compare_tuning.tuning_points`) and then the arms of ``compare_methods``."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterdeploy_trl import rundir
from iterdeploy_trl.compare_arms import arm_grid
from iterdeploy_trl.compare_stats import measured_seconds, metrics_rows
from iterdeploy_trl.compare_tuning import choose_point, final_solved, tuning_points, tuning_run_config
from iterdeploy_trl.config import RunConfig, load_config
from iterdeploy_trl.runlock import describe_holder, is_held, read_holder
from iterdeploy_trl.status import run_status

FINISHED, UNDER_WAY, STOPPED, NOT_STARTED = "finished", "under way", "stopped", "not started"


@dataclass
class PlannedState:
    """One run of the plan: a tuning point (``arm`` at ``point``) or a result arm (``point`` None)."""

    arm: str
    name: str
    path: Path
    point: dict[str, float] | None
    seeds: list[int]
    state: str = NOT_STARTED
    seconds: float = 0.0  # measured in its metrics rows so far (deployment + training, every seed)
    solved_mean: float | None = None  # finished: pool tasks solved at the full budget, mean over its seeds
    detail: list[str] = field(default_factory=list)  # under way or stopped: where each seed stands

    def to_dict(self) -> dict[str, Any]:
        return {"arm": self.arm, "name": self.name, "path": str(self.path), "point": self.point,
                "state": self.state, "seconds": self.seconds, "solved_mean": self.solved_mean,
                "detail": self.detail}


def _read_state(run: PlannedState) -> None:
    """Fill ``run``'s state, seconds and result from its directory."""
    if not rundir.is_run(run.path):
        run.state = UNDER_WAY if is_held(run.path) else NOT_STARTED  # held: its config is being written
        return
    st = run_status(run.path, damage=False)  # the comparison's report names no damage: no chunk is read
    run.seconds = measured_seconds(metrics_rows(run.path, run.seeds))["seconds"]
    summary, _ = rundir.read_summary(run.path)
    if st.complete and summary is not None:
        run.state = FINISHED
        run.solved_mean = statistics.fmean(final_solved(summary))
        return
    run.state = UNDER_WAY if st.held else STOPPED
    total = st.generations + 1
    run.detail = [f"seed {s.seed}: {len(s.done)}/{total} generations done; {s.stage}" for s in st.seeds]


@dataclass
class ComparisonStatus:
    out: Path
    cfg: RunConfig
    tuning: list[PlannedState]
    arms: list[PlannedState]
    held: bool
    holder: dict[str, Any] | None
    finished: bool  # compare.json written and no run left

    def choices(self) -> dict[str, dict[str, Any]]:
        """Per arm whose tuning runs are all finished: the chosen point (compare_tuning's rule) and its edges."""
        by_arm: dict[str, list[PlannedState]] = {}
        for run in self.tuning:
            by_arm.setdefault(run.arm, []).append(run)
        chosen = {}
        for arm, runs in by_arm.items():
            if any(r.state != FINISHED for r in runs):
                continue
            table = [{**r.point, "solved_mean": r.solved_mean, "run": r.name} for r in runs]
            best, edges = choose_point(arm_grid(self.cfg, arm), table)
            chosen[arm] = {"run": best["run"], "solved_mean": best["solved_mean"], "edge_knobs": edges,
                           "table": {r.name: r.solved_mean for r in runs}}
        return chosen

    def seconds_left(self) -> dict[str, float | None]:
        """A rough estimate of the run seconds left (summed over runs; with ``--jobs J`` the wall time is
        about 1/J of it): an unfinished tuning run takes what its arm's finished tuning runs took on average
        (the mean of every finished tuning run where its arm has none); a result arm that, scaled by its tasks
        and seeds against the tuning runs'. None where nothing has finished to scale from."""
        done = [r for r in self.tuning if r.state == FINISHED]
        if not done:
            return {"tuning": None, "arms": None}
        overall = statistics.fmean(r.seconds for r in done)
        per_arm = {a: statistics.fmean(r.seconds for r in done if r.arm == a) for a in {r.arm for r in done}}
        tuning = sum(max(per_arm.get(r.arm, overall) - r.seconds, 0.0) for r in self.tuning if r.state != FINISHED)
        tcfg = tuning_run_config(self.cfg)
        scale = ((self.cfg.tasks.n + self.cfg.tasks.heldout) * len(self.cfg.seeds)
                 / max((tcfg.tasks.n + tcfg.tasks.heldout) * len(tcfg.seeds), 1))
        arms = sum(max(per_arm.get(r.arm, overall) * scale - r.seconds, 0.0)
                   for r in self.arms if r.state != FINISHED)
        return {"tuning": round(tuning, 1), "arms": round(arms, 1)}

    def report(self) -> str:
        head = f"{self.out}: comparison {self.cfg.name} ({self.cfg.domain}), {len(self.arms)} arms, seeds {list(self.cfg.seeds)}"
        if self.held:
            state = f"running: held by {describe_holder(self.holder)}"
        elif self.finished:
            state = f"finished ({rundir.COMPARE} written); no process holds it"
        else:
            last = f" (last holder: {describe_holder(self.holder)})" if self.holder else ""
            state = f"stopped: no process holds it{last}; run the same `iterdeploy compare` command again to resume"
        lines = [head, f"  {state}"]
        left = self.seconds_left()
        chosen = self.choices()
        for title, runs, key in (("tuning runs", self.tuning, "tuning"), ("result arms", self.arms, "arms")):
            if not runs:
                continue
            count = {s: sum(r.state == s for r in runs) for s in (FINISHED, UNDER_WAY, STOPPED, NOT_STARTED)}
            seconds = sum(r.seconds for r in runs)
            estimate = (f"; about {left[key] / 60:.0f} run-minutes left (rough, from the finished tuning runs)"
                        if left[key] is not None and count[FINISHED] < len(runs) else "")
            lines.append(f"  {title}: {count[FINISHED]} of {len(runs)} finished, {count[UNDER_WAY]} under way, "
                         f"{count[STOPPED]} stopped, {count[NOT_STARTED]} not started; "
                         f"{seconds:.0f} run-seconds measured so far{estimate}")
            for run in runs:
                if run.state in (UNDER_WAY, STOPPED):
                    lines.append(f"    {run.state}: {run.name}")
                    lines += [f"      {d}" for d in run.detail]
        for arm, c in chosen.items():
            edge = f" (at the grid edge of {', '.join(c['edge_knobs'])})" if c["edge_knobs"] else ""
            lines.append(f"  tuned {arm}: {c['run']}, {c['solved_mean']:g} tuning-pool tasks solved{edge}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "name": self.cfg.name, "held": self.held, "holder": self.holder,
                "finished": self.finished, "tuning": [r.to_dict() for r in self.tuning],
                "arms": [r.to_dict() for r in self.arms], "chosen": self.choices(),
                "seconds_left": self.seconds_left()}


def is_comparison(out: Path) -> bool:
    """Whether ``out`` is the ``--out`` of ``iterdeploy compare``: it holds the config.yaml that compare writes
    first, is no run directory itself, and holds an arm's run directory, the tuning folder or compare's lock."""
    return rundir.config_yaml(out).is_file() and not rundir.is_run(out) and (
        rundir.method_runs(out) != [] or (Path(out) / rundir.TUNING).is_dir() or is_held(out))


def comparison_status(out: str | Path) -> ComparisonStatus:
    """The status of the comparison in ``out`` (its ``config.yaml`` must be readable)."""
    out = Path(out)
    cfg = load_config(rundir.config_yaml(out), check_paths=False)
    tseeds = list(cfg.tuning.seeds) if cfg.tuning else []
    tuning = [PlannedState(arm, name, rundir.tuning_run(out, name), point, tseeds)
              for arm, point, name in (tuning_points(cfg, cfg.compare_methods) if cfg.tuning else [])]
    arms = [PlannedState(arm, arm, out / arm, None, list(cfg.seeds)) for arm in cfg.compare_methods]
    for run in (*tuning, *arms):
        _read_state(run)
    done = all(r.state == FINISHED for r in (*tuning, *arms))
    return ComparisonStatus(out, cfg, tuning, arms, is_held(out), read_holder(out),
                            rundir.compare_json(out).is_file() and done)
