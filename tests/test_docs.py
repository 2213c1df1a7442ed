"""The user-facing documentation stays in step with the code: every flag of the CLI has a help line, the
config reference (docs/config.md) lists every key of the run config with its default, every relative link
of the README and of docs/ resolves, the README stays a short guide, and its Python blocks run on a CPU."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIG_DOC = ROOT / "docs" / "config.md"
README_MAX_LINES = 250


# ------------------------------------------------------------------------------------------------ CLI


def _actions(parser: argparse.ArgumentParser, path: str) -> typing.Iterator[tuple[str, str, str | None]]:
    """(where, what, help text) of every option, positional, subcommand and description under ``parser``."""
    yield path, "description", parser.description
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield path, f"subcommand {name}", helps.get(name)
                yield from _actions(sub, f"{path} {name}")
            continue
        yield path, "/".join(action.option_strings) or action.dest, action.help


def test_every_cli_action_has_help_without_markup() -> None:
    from iterdeploy_trl.cli import build_parser

    found = list(_actions(build_parser(), "iterdeploy"))
    assert len(found) > 80  # every command's parser was built (not the lazy placeholders)
    missing = [f"{where}: {what}" for where, what, text in found if not (text or "").strip()]
    assert not missing, f"no help text: {missing}"
    markup = [f"{where}: {what}" for where, what, text in found if "``" in (text or "")]
    assert not markup, f"RST markup (``) in help text: {markup}"


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from iterdeploy_trl import __version__
    from iterdeploy_trl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"iterdeploy {__version__}"
