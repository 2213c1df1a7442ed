"""Bad inputs a user can give the CLI: each is refused with exit status 2 and one line that names the file,
key or value and what to do, no traceback, and nothing written to ``--out``. ``run --check`` refuses what
``run`` refuses (the same checks, preflight.check_before_run), and a refused ``run`` leaves its ``--out``
as it found it, so the corrected config runs there.

The cases are tables run in-process through ``iterdeploy_trl.cli.main``. Where a case, if refused too late,
would start the real loop or score models, a tripwire (a stand-in that raises; it is not called when the
refusal works) stops it instead of minutes of work."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from iterdeploy_trl.cli import disk_full, main


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def tripwire(monkeypatch):
    """The run's first write (taking the run directory's lock) and the audit (scoring models) raise: a case
    refused late fails here instead of running (these stand-ins are never reached when the refusal works)."""
    import iterdeploy_trl.audit
    from iterdeploy_trl.runlock import RunDirLock

    def started(*_a, **_k):
        raise AssertionError("the command went past its checks")

    monkeypatch.setattr(RunDirLock, "acquire", started)
    monkeypatch.setattr(iterdeploy_trl.audit, "write_audit", started)


@pytest.fixture(scope="module")
def gpt2_models(tmp_path_factory) -> dict[int, Path]:
    """Two tiny GPT-2s with the small model's blocksworld tokenizer: 32 positions (fewer than a compact
    prompt plus 40 new tokens) and 1024 (plenty). Random weights: only their config.json is read."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from iterdeploy_trl.models import build_tokenizer

    tok = build_tokenizer("blocksworld")
    out = {}
    for positions in (32, 1024):
        path = tmp_path_factory.mktemp(f"gpt2-{positions}")
        config = GPT2Config(n_positions=positions, n_embd=8, n_layer=1, n_head=1, vocab_size=len(tok),
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        GPT2LMHeadModel(config).save_pretrained(path)
        tok.save_pretrained(path)
        out[positions] = path
    return out


def _config(tmp_path: Path, data: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# (case, config data, the key or words the refusal names). Each is refused by `run --check` and by `run`.
TINY = {"tasks": {"n": 4, "heldout": 1, "size": [2, 3]}, "sampling": {"max_new_tokens": 40},
        "training": {"max_length": 256}}
BAD_CONFIGS = [
    ("reinforce-reads-no-epochs", {"method": "reinforce", "training": {"epochs": 2}}, "training.epochs"),
    ("iw-section-under-valid-sft", {"method": "valid-sft", "iw_sft": {"truncate": 5}}, "iw_sft.truncate"),
    ("learning-rate-1e300", {"training": {"learning_rate": 1e300}}, "training.learning_rate"),
    ("learning-rate-inf", {"training": {"learning_rate": float("inf")}}, "training.learning_rate"),
    ("temperature-inf", {"sampling": {"temperature": float("inf")}}, "sampling.temperature"),
    ("temperature-nan", {"sampling": {"temperature": float("nan")}}, "sampling.temperature"),
    ("top-p-zero", {"sampling": {"top_p": 0.0}}, "sampling.top_p"),
    ("tasks-n-1e9", {"tasks": {"n": 10**9}}, "tasks.n"),
    ("samples-per-task-1e9", {"sampling": {"samples_per_task": 10**9}}, "sampling.samples_per_task"),
    ("size-past-the-generator", {"tasks": {"size": [2, 100000]}}, "tasks.size"),
    ("tasks-dir-missing", {"tasks": {"dir": "/nonexistent/iterdeploy-tasks"}}, "/nonexistent/iterdeploy-tasks"),
]


@pytest.mark.parametrize("case,data,key", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_check_and_run_refuse_the_same_configs_and_write_nothing(case, data, key, tmp_path, capsys, tripwire):
    cfg = _config(tmp_path, data)
    out = tmp_path / "run"
    code, stdout, err = _cli(["run", "--check", "--config", cfg, "--out", out], capsys)
    assert code == 2, stdout + err
    assert "Traceback" not in stdout + err and "check passed" not in stdout
    assert key in stdout + err
    code, stdout, err = _cli(["run", "--config", cfg, "--out", out], capsys)
    assert code == 2
    assert key in _one_line(err)
    assert not out.exists(), sorted(p.name for p in out.iterdir())  # no .lock, config.yaml, resolved_config


def test_a_refused_start_leaves_the_directory_to_the_corrected_config(tmp_path, capsys, tripwire):
    out = tmp_path / "run"
    bad = _config(tmp_path, {**TINY, "tasks": {"n": 4, "heldout": 1, "size": [2, 100000]}}, "bad.yaml")
    assert _cli(["run", "--config", bad, "--out", out], capsys)[0] == 2
    good = _config(tmp_path, TINY, "good.yaml")
    code, stdout, err = _cli(["run", "--check", "--config", good, "--out", out], capsys)
    assert code == 0, stdout + err
    assert f"run directory: {out} (new)" in stdout


def test_the_models_context_against_prompt_and_new_tokens(gpt2_models, tmp_path, capsys, tripwire):
    """A GPT-2 of 32 positions and prompts of more than 0 tokens + 40 new ones: refused by --check and by run
    (GPT-2 would fail with an IndexError mid-run), naming the keys and where the context was read; the same
    config on a GPT-2 of 1024 positions passes."""
    short = _config(tmp_path, {**TINY, "model": {"path": str(gpt2_models[32])}}, "short.yaml")
    out = tmp_path / "run"
    code, stdout, err = _cli(["run", "--check", "--config", short, "--out", out], capsys)
    assert code == 2
    problem = next(line for line in stdout.splitlines() if line.startswith("PROBLEM:"))
    assert "sampling.max_new_tokens (40)" in problem and "context of 32 positions" in problem
    assert f"n_positions in {gpt2_models[32] / 'config.json'}" in problem
    code, stdout, err = _cli(["run", "--config", short, "--out", out], capsys)
    assert code == 2 and "context of 32 positions" in _one_line(err)
    assert not out.exists()
    long = _config(tmp_path, {**TINY, "model": {"path": str(gpt2_models[1024])}}, "long.yaml")
    code, stdout, err = _cli(["run", "--check", "--config", long, "--out", out], capsys)
    assert code == 0, stdout + err


def _binary(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x82\xff\xfe binary")
    return path


def _cases(tmp: Path) -> list[tuple[str, list, str]]:
    """(case, argv, what the one line must say) for bad arguments to the other commands and to run."""
    a_file = tmp / "a-file"
    a_file.write_text("not a directory\n")
    folder = tmp / "folder.yaml"
    folder.mkdir()
    empty = tmp / "empty.yaml"
    empty.write_text("# nothing set\n")
    imported = tmp / "import-me"
    (imported / "problems").mkdir(parents=True)
    _binary(imported / "domain.pddl")
    model = tmp / "some-model"
    model.mkdir()
    return [
        ("binary-config", ["run", "--check", "--config", _binary(tmp / "bin.yaml")],
         f"{tmp / 'bin.yaml'}: not a text file"),
        ("config-is-a-folder", ["run", "--check", "--config", folder], f"{folder} is a folder"),
        ("empty-config", ["run", "--check", "--config", empty], "leave --config out to run the CPU default"),
        ("run-out-is-a-file", ["run", "--out", a_file], f"--out {a_file} is a file"),
        ("run-out-under-a-file", ["run", "--out", a_file / "run"], f"{a_file} is a file"),
        ("status-no-dir", ["status", tmp / "nodir"], f"{tmp / 'nodir'} does not exist"),
        ("evaluate-no-tasks-dir", ["evaluate", "--model", model, "--tasks", tmp / "nodir"],
         f"task set directory {tmp / 'nodir'} does not exist"),
        ("tasks-from-binary-file", ["tasks", "--from", imported, "--out", tmp / "imported"],
         f"{imported / 'domain.pddl'} is not a text file"),
        ("audit-out-is-a-file", ["audit", tmp / "some-run", "--out", a_file], f"--out {a_file} is a file"),
        ("base-model-out-is-a-file", ["base-model", "--domain", "blocksworld", "--out", a_file],
         f"--out {a_file} is a file"),
        ("tasks-out-is-a-file", ["tasks", "--domain", "blocksworld", "--n", "2", "--out", a_file],
         f"--out {a_file} is a file"),
    ]


CASES = ["binary-config", "config-is-a-folder", "empty-config", "run-out-is-a-file", "run-out-under-a-file",
         "status-no-dir", "evaluate-no-tasks-dir", "tasks-from-binary-file", "audit-out-is-a-file",
         "base-model-out-is-a-file", "tasks-out-is-a-file"]


@pytest.mark.parametrize("case", CASES)
def test_bad_arguments_get_one_line(case, tmp_path, capsys, tripwire):
    cases = {name: (argv, says) for name, argv, says in _cases(tmp_path)}
    assert sorted(cases) == sorted(CASES)
    argv, says = cases[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = _cli(argv, capsys)
    assert code == 2, (stdout, err)
    assert says in _one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing made


def test_run_check_out_is_a_file(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine\n")
    code, stdout, err = _cli(["run", "--check", "--out", a_file], capsys)
    assert code == 2 and "Traceback" not in stdout + err
    assert f"PROBLEM: --out {a_file} is a file" in stdout
    assert a_file.read_text() == "mine\n"


def test_interrupted_run_says_it_resumes(tmp_path, capsys, monkeypatch):
    """Ctrl-C (KeyboardInterrupt, raised here by a stand-in loop) ends with one line that says the run resumes."""
    import iterdeploy_trl.loop

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(iterdeploy_trl.loop, "run_loop", interrupted)
    code, _, err = _cli(["run", "--out", tmp_path / "run"], capsys)
    assert code == 130
    assert "run the same command again (same --out) to resume" in _one_line(err)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), a device that is always full")
def test_a_full_disk_under_the_run_log_is_one_line(tmp_path, capsys):
    """Records logged to a file on a full device (/dev/full: every write fails with ENOSPC, as on a full
    disk): one line on stderr, not logging's '--- Logging error ---' and a traceback per record."""
    from iterdeploy_trl.console import _RunLogHandler

    logger = logging.getLogger("iterdeploy-test-full-disk")
    handler = _RunLogHandler("/dev/full", delay=True)
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    try:
        for i in range(50):
            logger.info("record %d", i)
    finally:
        logger.handlers = []
        handler.close()
    line = _one_line(capsys.readouterr().err)
    assert "/dev/full" in line and "No space left on device" in line


def test_a_full_disk_names_the_file_and_the_free_space(tmp_path, monkeypatch):
    """On a full disk, write() and fsync() raise ENOSPC naming no file; the run's writer names the file it
    wrote and the CLI's message the free space there."""
    from iterdeploy_trl import runio

    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what the OS raises: no filename

    monkeypatch.setattr(runio.os, "fsync", full)
    target = tmp_path / "run" / "summary.json"
    with pytest.raises(OSError) as info:
        runio.write_json(target, {"a": 1})
    message = disk_full(info.value, tmp_path / "run")
    assert message is not None and f"writing {target}" in message and "MiB free there now" in message
    assert not target.exists() and not [p for p in target.parent.iterdir()]  # no temporary file left
    # a writer that lets the OS error through: the file from the writing frame (here the task set's writer)
    from iterdeploy_trl.tasks import generate_tasks, write_task_set

    monkeypatch.undo()

    def full_write(self, *_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full_write)
    with pytest.raises(OSError) as info:
        write_task_set(generate_tasks("blocksworld", 1, 0, size=(2, 2)), tmp_path / "tasks")
    monkeypatch.undo()
    message = disk_full(info.value, tmp_path)
    assert message is not None and f"writing {tmp_path / 'tasks'}/" in message and "MiB free there now" in message
    # an error from a library that names no file: the free space under the command's --out
    message = disk_full(RuntimeError("IoError: StorageFull"), tmp_path / "run")
    assert f"writing under {tmp_path / 'run'}" in message and "MiB free there now" in message


def test_status_of_a_file(tmp_path, capsys):
    a_file = tmp_path / "summary.json"
    a_file.write_text(json.dumps({}))
    code, _, err = _cli(["status", a_file], capsys)
    assert code == 2 and f"{a_file} is a file" in _one_line(err)
