"""Apply each mutation of ``mutations.yaml`` to a temporary copy of the repository, run the tests it names
there, and report the mutations no test caught (survivors). Exit status 1 when any survives, or when the
named tests fail on the unmutated copy (then a "catch" would mean nothing).

    python tests/mutations/run.py [--only NAME ...] [--list]

Each mutation's ``old`` text must occur exactly once in its file: a mutation that no longer applies is an
error, not a pass. Runs the copy with the interpreter running this script and the copy first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
LIST = Path(__file__).with_name("mutations.yaml")
IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", "*.egg-info", "runs", ".pytest_cache", ".ruff_cache"
)


def load() -> list[dict]:
    mutations = yaml.safe_load(LIST.read_text())
    for m in mutations:
        missing = {"name", "file", "old", "new", "tests"} - set(m)
        if missing:
            raise SystemExit(f"{LIST}: mutation {m.get('name', '?')!r} lacks {sorted(missing)}")
    return mutations


def run_tests(copy: Path, tests: list[str]) -> tuple[bool, float, str]:
    """(passed, seconds, output tail) of pytest on ``tests`` in ``copy``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy), os.environ.get("PYTHONPATH", "")])}
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0, time.time() - start, (proc.stdout + proc.stderr)[-1500:]


def apply(copy: Path, mutation: dict) -> None:
    path = copy / mutation["file"]
    text = path.read_text()
    count = text.count(mutation["old"])
    if count != 1:
        raise SystemExit(
            f"mutation {mutation['name']!r}: its old text occurs {count} times in {mutation['file']} (needs exactly "
            f"once): update {LIST}"
        )
    path.write_text(text.replace(mutation["old"], mutation["new"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="run only these mutations (by name)")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    args = parser.parse_args()
    mutations = load()
    if args.only:
        unknown = set(args.only) - {m["name"] for m in mutations}
        if unknown:
            raise SystemExit(f"unknown mutation(s) {sorted(unknown)}: see {LIST}")
        mutations = [m for m in mutations if m["name"] in args.only]
    if args.list:
        for m in mutations:
            print(f"{m['name']:<36} {m['file']}: {m.get('why', '')}")
        return

    survivors, broken = [], []
    with tempfile.TemporaryDirectory(prefix="mutations-") as tmp:
        clean = Path(tmp) / "clean"
        shutil.copytree(ROOT, clean, ignore=IGNORE)
        # the unmutated code must pass every named test (one session: the fixtures are made once)
        selection = list(dict.fromkeys(arg for m in mutations for arg in m["tests"]))
        passed, seconds, tail = run_tests(clean, selection)
        print(
            f"{'ok' if passed else 'FAILS'} unmutated: {len(selection)} test selections ({seconds:.0f} s)",
            flush=True,
        )
        if not passed:
            broken.append(selection)
            print(tail)
        if broken:
            raise SystemExit("the named tests fail on the unmutated code: fix them first")
        for m in mutations:
            copy = Path(tmp) / m["name"]
            shutil.copytree(clean, copy)
            apply(copy, m)
            passed, seconds, _ = run_tests(copy, m["tests"])
            print(
                f"{'SURVIVED' if passed else 'killed  '}  {m['name']:<36} ({seconds:.0f} s)  {m.get('why', '')}",
                flush=True,
            )
            if passed:
                survivors.append(m["name"])
            shutil.rmtree(copy)
    print(
        f"\n{len(mutations) - len(survivors)} of {len(mutations)} mutations killed; survivors: {survivors or 'none'}"
    )
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
