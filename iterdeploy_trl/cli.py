"""The ``iterdeploy`` command. Each subcommand lives in ``iterdeploy_trl/commands/<name>.py`` and
exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a callable
``func(args) -> int`` (the exit status)."""

from __future__ import annotations

import argparse
import importlib
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
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iterdeploy", description=__doc__.split(".")[0])
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
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
