"""Damaged run directories: resume checks what it reuses. A finished tiny run is made once; each case copies
it, damages one thing (a trace chunk, a task file, train.jsonl, a model, resolved_config.json), and runs the
real ``iterdeploy run`` command on it again. Either the run repairs the damage (what it makes again is seeded)
and the directory then equals the undamaged run's (traces, training sets, metrics rows, summary, model
weights: ``killrun.snapshot``), or it refuses in one line naming the file and the step to take."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from iterdeploy_trl.cli import main
from iterdeploy_trl.status import status_report
from iterdeploy_trl.testing import killrun

CHUNK = "seed_0/gen_01/traces/pool-00000.jsonl"
MODEL = "seed_0/gen_01/model"


@pytest.fixture(scope="module")
def finished(tiny_base_model, tmp_path_factory) -> tuple[Path, Path, dict]:
    """(the config file, the finished run directory, its snapshot): 3 generations of 8 + 2 tasks x 2 samples."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("damaged")
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(killrun.tiny_config(tiny_base_model, generations=2)))
    out = root / "reference"
    assert main(["run", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    return config, out, killrun.snapshot(out)


def damaged_copy(finished, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished[1], run)
    return run


def resume(finished, run: Path, capsys) -> tuple[int, str, str]:
    """Run the same command on ``run`` again: (exit status, stdout, stderr). A traceback would raise here."""
    capsys.readouterr()
    status = main(["run", "--config", str(finished[0]), "--out", str(run), "--no-progress"])
    out, err = capsys.readouterr()
    return status, out, err


def assert_repaired(finished, run: Path, capsys, *named: str) -> str:
    """The resume exits 0, prints a line naming each of ``named``, and leaves the undamaged run's directory."""
    status, out, err = resume(finished, run, capsys)
    assert status == 0, err[-3000:]
    assert killrun.differences(killrun.snapshot(run), finished[2]) == []
    for name in named:
        assert any(name in line for line in out.splitlines()), out
    return out


def assert_refused(finished, run: Path, capsys, *words: str) -> str:
    """The resume exits 2 with one line on stderr, no traceback, holding each of ``words``."""
    status, _, err = resume(finished, run, capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def edit_lines(path: Path, edit) -> None:
    path.write_text("".join(edit(path.read_text().splitlines(keepends=True))))


@pytest.mark.parametrize("damage", [
    pytest.param(lambda lines: [], id="empty"),
    pytest.param(lambda lines: lines[:1] + lines[2:], id="row-deleted"),
    pytest.param(lambda lines: lines + lines[-1:], id="row-doubled"),
    pytest.param(lambda lines: lines[:-1] + [lines[-1][: len(lines[-1]) // 2]], id="last-line-torn"),
])
def test_a_damaged_trace_chunk_is_sampled_again(finished, tmp_path, capsys, damage):
    run = damaged_copy(finished, tmp_path)
    edit_lines(run / CHUNK, damage)
    text, _ = status_report(run)
    assert "DAMAGED" in text and str(run / CHUNK) in text, text  # status says what, not "3/3 done" alone
    out = assert_repaired(finished, run, capsys, CHUNK)
    assert "sampled again" in out
    assert "DAMAGED" not in status_report(run)[0]


def test_a_resampled_chunk_that_disagrees_with_its_metrics_row_stops_the_run(finished, tmp_path, capsys):
    """Sampling again must give what the later generations were made from; here the row says otherwise."""
    run = damaged_copy(finished, tmp_path)
    (run / CHUNK).write_text("")
    metrics = run / "seed_0" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows[1]["samples"] += 1
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert_refused(finished, run, capsys, CHUNK, "not reproducible", f"delete {run / 'seed_0'}")


@pytest.mark.parametrize("damage", [
    pytest.param(lambda p: p.write_text(p.read_text().replace("(:goal (and ", "(:goal (and (handempty) ")), id="edited"),
    pytest.param(lambda p: p.write_bytes(b"\x82\xff\x00garbage"), id="binary"),
    pytest.param(lambda p: p.unlink(), id="missing"),
])
def test_a_damaged_generated_task_file_is_written_again(finished, tmp_path, capsys, damage):
    run = damaged_copy(finished, tmp_path)
    problem = sorted((run / "tasks" / "problems").iterdir())[1]
    before = problem.read_bytes()
    damage(problem)
    (run / "seed_0" / "gen_02" / "traces" / "pool-00000.jsonl").unlink()  # a run stopped here samples that task
    assert_repaired(finished, run, capsys, problem.name)
    assert problem.read_bytes() == before


def test_a_changed_file_of_tasks_dir_stops_the_run(tiny_base_model, tmp_path):
    from iterdeploy_trl.config import config_from_dict
    from iterdeploy_trl.errors import RunError
    from iterdeploy_trl.runtasks import prepare_tasks
    from iterdeploy_trl.tasks import generate_tasks, write_task_set

    tdir = write_task_set(generate_tasks("blocksworld", 3, 0, size=(2, 3)), tmp_path / "tasks")
    cfg = config_from_dict(killrun.tiny_config(tiny_base_model) | {"tasks": {"n": 2, "heldout": 1, "dir": str(tdir)}})
    (tmp_path / "run").mkdir()
    prepare_tasks(cfg, tmp_path / "run")  # the run starts: its task files are recorded
    plan = sorted((tdir / "plans").iterdir())[2]
    plan.write_text(plan.read_text() + "(pick-up b1)\n")
    with pytest.raises(RunError, match=f"{plan}: changed since the run started.*restore it, or start a new run"):
        prepare_tasks(cfg, tmp_path / "run")


def test_a_torn_train_set_is_written_again(finished, tmp_path, capsys):
    run = damaged_copy(finished, tmp_path)
    train = run / "seed_0" / "gen_00" / "train.jsonl"
    assert train.read_text().count("\n") >= 2
    train.write_text(train.read_text()[:-40])
    assert "train.jsonl: line" in status_report(run)[0]
    assert_repaired(finished, run, capsys, "gen_00/train.jsonl")


@pytest.mark.parametrize("damage", [
    pytest.param(lambda d: shutil.rmtree(d), id="missing-dir"),
    pytest.param(lambda d: (d / "model.safetensors").write_bytes(b"garbage" * 100), id="garbage-weights"),
    pytest.param(lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]),
                 id="weights-cut-short"),
])
def test_a_damaged_model_is_trained_again(finished, tmp_path, capsys, damage):
    run = damaged_copy(finished, tmp_path)
    damage(run / MODEL)
    assert MODEL in status_report(run)[0]
    assert_repaired(finished, run, capsys)


def test_a_damaged_model_is_named_where_it_would_be_loaded(finished, tmp_path):
    """The audit, the release and the theory checks load models through rundir.deployed_model."""
    from iterdeploy_trl.errors import RunError
    from iterdeploy_trl.rundir import deployed_model

    run = damaged_copy(finished, tmp_path)
    assert deployed_model(run / "seed_0", 1) == run / MODEL
    (run / MODEL / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RunError, match=f"{run / MODEL}/model.safetensors: not a safetensors file.*run the same"):
        deployed_model(run / "seed_0", 1)


def test_an_edited_config_record_is_written_again(finished, tmp_path, capsys):
    run = damaged_copy(finished, tmp_path)
    resolved = run / "resolved_config.json"
    record = json.loads(resolved.read_text())
    record["config"]["generations"] = 7  # the hash kept
    resolved.write_text(json.dumps(record))
    text, _ = status_report(run)  # read from config.yaml, which hashes as the record says; and named damaged
    assert "3/3 generations done" in text and "DAMAGED" in text, text
    assert f"{resolved}: the config it holds does not hash to its recorded hash" in text, text
    assert_repaired(finished, run, capsys, "resolved_config.json")
    assert resolved.read_text() == (finished[1] / "resolved_config.json").read_text()
    assert "3/3 generations done" in status_report(run)[0]


def test_a_garbage_config_record(finished, tmp_path, capsys):
    run = damaged_copy(finished, tmp_path)
    resolved = run / "resolved_config.json"
    resolved.write_text("{'hash': garbage")
    with pytest.raises(ValueError, match=f"{resolved}: not valid JSON"):
        status_report(run)
    # config.yaml holds the config given: the record is written again from it
    assert_repaired(finished, run, capsys, "resolved_config.json")
    assert resolved.read_text() == (finished[1] / "resolved_config.json").read_text()
    # without it nothing proves which config made the run: refused, naming the file and what to do
    resolved.write_text("{'hash': garbage")
    (run / "config.yaml").unlink()
    assert_refused(finished, run, capsys, str(resolved), "not valid JSON", "restore the file", "new run directory")
