"""Run directories: one writer at a time (the lock), kills at any moment and full disks survived.

Runs are the real ``iterdeploy run`` command in processes forked from this one (the harness of
``iterdeploy_trl.testing.killrun``), killed with SIGKILL; each resumed directory is compared with an
uninterrupted run's (traces, curated sets, metrics rows, summary, model weights)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from iterdeploy_trl.faults import DISK_FULL_ENV, KILL_ENV
from iterdeploy_trl.runio import append_row, read_rows
from iterdeploy_trl.runlock import HOLDER_NAME, RunDirBusy, RunDirLock, is_held
from iterdeploy_trl.testing import killrun


@pytest.fixture(scope="module")
def harness(tiny_base_model, tmp_path_factory) -> killrun.Harness:
    import torch

    torch.set_num_threads(1)
    killrun.preload()
    # one trained generation reaches every write site of the loop; the README's full form runs two
    h = killrun.Harness(tmp_path_factory.mktemp("killrun"), tiny_base_model,
                        killrun.tiny_config(tiny_base_model, generations=1))
    h.reference()
    return h


def _wait_for_holder(run: Path, pid: int, timeout: float = 300.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if json.loads((run / HOLDER_NAME).read_text())["pid"] == pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        done, _ = os.waitpid(pid, os.WNOHANG)
        assert not done, "the first run ended before it took the lock"
        time.sleep(0.01)
    raise AssertionError("the first run never took the lock")


def test_second_run_on_same_dir_exits_with_lock_message(harness):
    out = harness.work / "two-runs"
    first = killrun.start_child(killrun.cli_run(harness.config, out), harness.work / "first.log")
    _wait_for_holder(out, first)
    t0 = time.monotonic()
    second = killrun.fork_call(killrun.cli_run(harness.config, out), harness.work / "second.log")
    assert second.status == 2, second.output[-2000:]
    assert time.monotonic() - t0 < 120  # at once: it does not wait for the first run
    msg = second.output
    assert "is in use by another run" in msg and f"PID {first} on host {os.uname().nodename}" in msg, msg
    assert "started 20" in msg
    assert killrun.wait_child(first) == 0, (harness.work / "first.log").read_text()[-3000:]
    assert killrun.differences(killrun.snapshot(out), harness.ref) == []  # the directory is intact
    assert not is_held(out)


def test_stale_lock_of_a_killed_process_is_taken_over(harness):
    out = harness.work / "stale"

    def take_and_die() -> int:
        RunDirLock(out).acquire()
        os.kill(os.getpid(), signal.SIGKILL)
        return 0

    dead = killrun.fork_call(take_and_die, harness.work / "dead.log")
    assert dead.status == killrun.KILLED
    assert json.loads((out / HOLDER_NAME).read_text())["pid"] > 0
    assert not is_held(out)  # the OS dropped it with the process
    run = killrun.fork_call(killrun.cli_run(harness.config, out), harness.work / "after-stale.log")
    assert run.status == 0, run.output[-3000:]
    holder = json.loads((out / HOLDER_NAME).read_text())
    assert "taking over the lock of PID" in run.output and "released" in holder
    assert killrun.differences(killrun.snapshot(out), harness.ref) == []


def test_lock_is_reentrant_in_one_process_and_excludes_another(tmp_path):
    lock = RunDirLock.of(tmp_path / "r")
    with lock:
        with RunDirLock.of(tmp_path / "r"):  # a caller holding the directory calls run_loop on it
            assert is_held(tmp_path / "r")
        assert is_held(tmp_path / "r")
        # another process: refused at once, naming this one
        child = killrun.fork_call(lambda: RunDirLock(tmp_path / "r").acquire() or 0, tmp_path / "other.log")
        assert child.status == 1 and RunDirBusy.__name__ in child.output and f"PID {os.getpid()}" in child.output
    assert not is_held(tmp_path / "r")


def test_metrics_rows_are_never_torn_or_doubled(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_row(path, {"generation": 0, "solved": 1})
    append_row(path, {"generation": 1, "solved": 2})
    append_row(path, {"generation": 1, "solved": 3})  # the same generation again replaces its row
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"generation": 0, "solved": 1},
                                                                      {"generation": 1, "solved": 3}]
    # a file appended in place by an older version, cut mid-row by a crash: the torn row was not committed
    path.write_text('{"generation": 0, "solved": 1}\n{"generation": 1, "sol')
    assert read_rows(path) == [{"generation": 0, "solved": 1}]
    path.write_text('{"generation": 0, "sol\n{"generation": 1}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:1"):
        read_rows(path)


def test_kill_anywhere_quick(harness):
    """The quick form of the kill-anywhere harness: SIGKILL at 3 seeded times over a whole run, and halfway
    through the first write of two sites; each resumed run equals the uninterrupted one."""
    attempts = [harness.attempt("time", f"{t}", kill_after=t)
                for t in killrun.kill_times(3, seed=1, span=harness.ref_seconds)]
    for site in ("trace-chunk", "metrics"):
        attempts.append(harness.attempt("write-kill", site, env={KILL_ENV: f"write:{site}:1"}))
        assert attempts[-1].status == killrun.KILLED
    assert sum(a.status == killrun.KILLED for a in attempts) >= 4
    bad = [(a.kind, a.what, a.stage, a.differences) for a in attempts if not a.ok]
    assert not bad


def test_disk_full_at_every_write_site(harness):
    """ENOSPC at the first write of every site the run reaches: a clear message, exit 3, and the resumed run
    equals the uninterrupted one."""
    assert len(harness.sites) >= 10, harness.sites
    for site in harness.sites:
        a = harness.attempt("disk-full", site, env={DISK_FULL_ENV: f"{site}:1"})
        assert a.status == 3, (site, a.message)
        assert "no space left on the device" in a.message and "run the same command again" in a.message
        assert a.ok, (site, a.stage, a.differences)


def test_a_real_full_disk_stops_the_run_and_it_resumes_once_space_is_freed(harness, tmp_path):
    """The same on a real full file system: a 200 KiB tmpfs (mounting needs root; skipped otherwise), grown to
    8 MiB after the run stopped."""
    import subprocess

    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        out = mnt / "run"
        full = killrun.fork_call(killrun.cli_run(harness.config, out), tmp_path / "full.log")
        assert full.status == 3, full.output[-3000:]
        assert "no space left on the device" in full.output and "run the same command again" in full.output
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        resumed = killrun.fork_call(killrun.cli_run(harness.config, out), tmp_path / "resumed.log")
        assert resumed.status == 0, resumed.output[-3000:]
        assert killrun.differences(killrun.snapshot(out), harness.ref) == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_directory_that_is_not_a_run_is_left_untouched(tiny_base_model, tmp_path):
    from conftest import tiny_run_config

    from iterdeploy_trl.config import config_from_dict
    from iterdeploy_trl.errors import RunError
    from iterdeploy_trl.loop import run_loop

    junk = tmp_path / "junk"
    (junk / "work.partial").mkdir(parents=True)
    (junk / ".draft.tmp").write_text("mine")
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a run directory"):
        run_loop(config_from_dict(tiny_run_config(tiny_base_model)), junk, progress=False)
    assert sorted(p.name for p in junk.iterdir()) == [".draft.tmp", "notes.txt", "work.partial"]
