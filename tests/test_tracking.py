"""report_to with real trackers (trackio, local; TensorBoard event files), the quiet console and
``iterdeploy status``. Runs are the real ``iterdeploy run`` command on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_run_config

from iterdeploy_trl.config import ConfigError, config_from_dict, config_hash
from iterdeploy_trl.testing import killrun

TRACKED = dict(generations=1, method="uncurated-sft", curation="none", tasks={"n": 8, "heldout": 2},
               sampling={"samples_per_task": 2}, chunk_size=4, seeds=[0, 1])


@pytest.fixture(scope="module")
def tracked_run(tiny_base_model, tmp_path_factory):
    pytest.importorskip("trackio")
    pytest.importorskip("tensorboard")
    root = tmp_path_factory.mktemp("tracked")
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run_config(tiny_base_model, name="tracked", **TRACKED)))
    env = {**os.environ, "TRACKIO_DIR": str(root / "trackio"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "iterdeploy_trl.cli", "run", "--config", str(cfg), "--out",
                           str(root / "run"), "--report-to", "trackio", "tensorboard"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def _trackio_logs(root: Path) -> dict[str, list[dict]]:
    code = ("import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; "
            "print(json.dumps({r: S.get_logs('tracked', r) for r in S.get_runs('tracked')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TRACKIO_DIR": str(root / "trackio")})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_trackio_and_tensorboard_get_the_loop_metrics_and_trainer_logs(tracked_run):
    from iterdeploy_trl.tracking import read_tensorboard

    root, _ = tracked_run
    summary = json.loads((root / "run" / "summary.json").read_text())
    logs = _trackio_logs(root)
    for seed in ("0", "1"):
        want = {m["generation"]: float(m["solved"]) for m in summary["per_seed"][seed]}
        want_held = {m["generation"]: float(m["heldout_solved"]) for m in summary["per_seed"][seed]}
        want_traces = {m["generation"]: float(m["train_traces"]) for m in summary["per_seed"][seed]}
        rows = logs[f"tracked-seed{seed}"]
        assert {r["step"]: r["loop/solved"] for r in rows} == want
        assert {r["step"]: r["loop/heldout_solved"] for r in rows} == want_held
        assert {r["step"]: r["train/traces"] for r in rows} == want_traces
        tb = root / "run" / "tensorboard" / f"seed_{seed}"
        assert read_tensorboard(tb / "loop", "loop/solved") == want
        assert read_tensorboard(tb / "loop", "train/traces") == want_traces
        # the trainer of generation 1 logged its own curve to both, under a run name per seed and generation
        assert any("train/loss" in r or "loss" in r for r in logs[f"tracked-seed{seed}-gen1"])
        assert read_tensorboard(tb / "gen_01", "train/loss")


def test_console_is_quiet_and_the_libraries_log_goes_to_the_run_log(tracked_run):
    root, proc = tracked_run
    console = proc.stdout + proc.stderr
    for noise in ("Loading weights", "Writing model shards", "Tokenizing", "Building labels", "{'loss'",
                  "FutureWarning", "Trackio"):
        assert noise not in console, noise
    assert console.count("gen 0: solved") == 2 and console.count("gen 1: solved") == 2
    assert "done:" in proc.stdout
    log = (root / "run" / "run.log").read_text()
    assert "'loss'" in log and "seed 0 gen 1: train" in log


def test_verbose_restores_the_libraries_output(tiny_base_model, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run_config(tiny_base_model, **{**TRACKED, "seeds": [0]})))
    child = killrun.fork_call(killrun.cli_run(cfg, tmp_path / "run", "--verbose"), tmp_path / "out.log")
    assert child.status == 0, child.output[-3000:]
    assert "Loading weights" in child.output and "'loss'" in child.output
    assert not (tmp_path / "run" / "run.log").exists()


def test_report_to_is_checked_and_left_out_of_the_hash(tiny_base_model):
    base = tiny_run_config(tiny_base_model)
    with pytest.raises(ConfigError, match="report_to: 'tensorbord' is not a tracker"):
        config_from_dict({**base, "report_to": ["tensorbord"]})
    a = config_from_dict(base)
    b = config_from_dict({**base, "report_to": ["tensorboard"]})
    assert config_hash(a) == config_hash(b)  # a run resumes whatever it reports to


def test_status_of_a_finished_and_a_stopped_run(tracked_run, tmp_path):
    import shutil

    from iterdeploy_trl.cli import main

    root, _ = tracked_run
    run = tmp_path / "copy"
    shutil.copytree(root / "run", run)
    from iterdeploy_trl.status import run_status

    st = run_status(run)
    assert not st.held and st.complete and [s.done for s in st.seeds] == [[0, 1], [0, 1]]
    assert st.seeds[1].last_line.startswith("seed 1 gen 1: solved")
    # stopped in generation 1 of seed 1: its model and traces gone, the metrics row of generation 1 too
    shutil.rmtree(run / "seed_1" / "gen_01")
    rows = (run / "seed_1" / "metrics.jsonl").read_text().splitlines()
    (run / "seed_1" / "metrics.jsonl").write_text(rows[0] + "\n")
    st = run_status(run)
    assert not st.complete and st.seeds[1].done == [0]
    assert st.seeds[1].stage == "stopped while training the generation-1 model"
    assert main(["status", str(run)]) == 0
    assert main(["status", str(tmp_path / "nothing")]) == 2


def test_model_location_inside_and_outside_a_run_directory(tmp_path) -> None:
    """A run's model directory names its seed and generation; one outside that layout (train_generation
    from the Python API, as tests/test_paper_path.py calls it) names neither and is not an error."""
    from iterdeploy_trl.rundir import model_location

    assert model_location(tmp_path / "run" / "seed_3" / "gen_02" / "model.partial") == (tmp_path / "run", 3, 2)
    assert model_location(tmp_path / "gen0" / "model.partial") == (tmp_path / "gen0", None, None)
