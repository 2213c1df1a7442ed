"""The ``iterdeploy`` command. Each subcommand lives in ``iterdeploy_trl/commands/<name>.py`` and
exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a callable
``func(args) -> int`` (the exit status)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommand name -> module in iterdeploy_trl.commands. Imported lazily so that `iterdeploy tasks`
# does not pay for importing torch.
COMMANDS: dict[str, str] = {
    "tasks": "tasks",
    "validate": "validate",
    "base-model": "base_model",
    "evaluate": "evaluate",
    "run": "run",
    "compare": "compare",
    "theory": "theory",
    "figures": "figures",
    "status": "status",
    "audit": "audit",
    "drift": "drift",
    "export": "export",
    "gpu-check": "gpu_check",
}


# What an interrupted command keeps: the commands that resume say how.
RESUMES = {
    "run": "; nothing finished is lost: run the same command again (same --out) to resume where it stopped",
    "compare": "; nothing finished is lost: run the same command again (same --out) to resume where it stopped",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    from iterdeploy_trl import __version__

    parser = argparse.ArgumentParser(
        prog="iterdeploy",
        description="Iterative deployment of language models on PDDL planning tasks, validated by VAL, on TRL. "
        "`iterdeploy COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the package version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"(see `iterdeploy {name} --help`)")
            continue
        try:
            mod = importlib.import_module(f"iterdeploy_trl.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"iterdeploy_trl.commands.{module}":
                raise
            continue  # command not built yet
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Only import the module of the command asked for.
    only = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"iterdeploy {args.command}: interrupted{RESUMES.get(args.command, '')}", file=sys.stderr)
        return 130
    except Exception as exc:
        full = disk_full(exc, getattr(args, "out", None))
        if full is None:
            raise
        print(f"iterdeploy {args.command}: {full}", file=sys.stderr)
        return 3


def disk_full(exc: BaseException, out: str | os.PathLike[str] | None = None) -> str | None:
    """The message for a write that failed because the disk (or the quota) is full, else None. Libraries
    wrap the OS error (safetensors: ``IoError(... StorageFull ...)``), so the chain and the text are read.
    It names the file when the error does, and the free space where it was written (else under ``out``,
    the command's output directory)."""
    import errno
    import shutil

    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if (isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT)) \
                or "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text:
            path = getattr(seen, "filename", None) or _written_file(seen) or _written_file(exc)
            where = f" writing {path}" if path else ""
            free = ""
            # a library's error may name no file: then the free space under the command's output directory
            probe = str(path) if path else (str(out) if out is not None else None)
            if not path and probe:
                where = f" writing under {probe}"
            while probe and not os.path.exists(probe):
                probe = os.path.dirname(probe)
            if probe:
                free = f" ({shutil.disk_usage(probe).free / 2**20:.1f} MiB free there now)"
            return (f"no space left on the device{where}{free}. Nothing written so far is lost: free some space "
                    "and run the same command again; the run resumes where it stopped")
        seen = seen.__cause__ or seen.__context__
    return None


# Local names this package's writers give the file they write, most specific first.
_WRITTEN_NAMES = ("path", "target", "dest", "tmp", "out_dir")


def _written_file(exc: BaseException) -> str | None:
    """The file a failed write was writing, where the OS error names none (``write()``, ``close()`` and
    ``fsync()`` on a full disk): from the innermost frame of this package in the traceback, its local
    ``path`` (or target, dest, tmp, out_dir)."""
    tb, frames = exc.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        if not frame.f_globals.get("__name__", "").startswith("iterdeploy_trl."):
            continue
        for name in _WRITTEN_NAMES:
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and str(value):
                return str(value)
    return None


if __name__ == "__main__":
    sys.exit(main())
