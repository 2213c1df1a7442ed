"""The user-facing documentation stays in step with the code: every flag of the CLI has a help line, the
config reference (docs/config.md) lists every key of the run config with its default, every relative link
of the README and of docs/ resolves, the README stays a short guide, and its Python blocks run on a CPU."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import types
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


# --------------------------------------------------------------------------------------- docs/config.md


def _dataclass_in(tp: typing.Any) -> type | None:
    """The dataclass a field's type names (``Section`` or ``Section | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def config_keys(cls: type | None = None, prefix: str = "") -> dict[str, str | None]:
    """Every dotted key of the run config -> its default as JSON (None for a section), walking the
    dataclasses from ``RunConfig`` down."""
    if cls is None:
        from iterdeploy_trl.config import RunConfig

        cls = RunConfig
    hints = typing.get_type_hints(cls)
    keys: dict[str, str | None] = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        section = _dataclass_in(hints[f.name])
        if section is not None:
            keys[key] = None
            keys.update(config_keys(section, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        keys[key] = json.dumps(list(default) if isinstance(default, tuple) else default)
    return keys


_ROW = re.compile(r"^\| `([a-z_][a-z0-9_.]*)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \| (.+) \|$")


def documented_keys(text: str) -> dict[str, list[str]]:
    """docs/config.md's reference rows: key -> [type, default, read by, meaning] (a key twice: listed twice)."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = _ROW.match(line)
        if match:
            key = match.group(1)
            assert key not in rows, f"docs/config.md lists {key} twice"
            rows[key] = [g.strip() for g in match.groups()[1:]]
    return rows


def test_config_reference_lists_every_key_with_its_default() -> None:
    keys = config_keys()
    assert {"tasks.n", "model.prompt_style", "training.lora.r", "validator.blind_spot.goal_atoms"} <= set(keys)
    rows = documented_keys(CONFIG_DOC.read_text())
    missing = sorted(set(keys) - set(rows))
    assert not missing, f"docs/config.md has no row for {missing}: add `| \\`key\\` | type | default | read by | meaning |`"
    stale = sorted(set(rows) - set(keys))
    assert not stale, f"docs/config.md documents keys the config does not have: {stale}"
    wrong = {k: (rows[k][1], f"`{d}`") for k, d in keys.items() if d is not None and rows[k][1] != f"`{d}`"}
    assert not wrong, f"docs/config.md defaults differ from iterdeploy_trl/config.py (doc, code): {wrong}"
    empty = [k for k, row in rows.items() if not all(cell.strip("` ") for cell in row)]
    assert not empty, f"docs/config.md rows with an empty cell: {empty}"


def test_config_reference_check_fails_on_an_undocumented_key() -> None:
    """The check above would catch a key added to a section without its row (a new dataclass field)."""
    from iterdeploy_trl.methods.reinforce import ReinforceSettings

    grown = dataclasses.make_dataclass("Grown", [("new_knob", int, dataclasses.field(default=3))],
                                       bases=(ReinforceSettings,), frozen=True)
    keys = config_keys(grown, "reinforce.")
    rows = documented_keys(CONFIG_DOC.read_text())
    assert keys["reinforce.new_knob"] == "3"
    assert sorted(set(keys) - set(rows)) == ["reinforce.new_knob"]


# ------------------------------------------------------------------------------- README and docs/ links

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file (code blocks and inline code left out; no URLs, no
    anchors within the page), without their #fragment."""
    text = _CODE.sub("", _FENCE.sub("", path.read_text()))
    targets = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_relative_link_in_readme_and_docs_resolves() -> None:
    files = markdown_files()
    assert CONFIG_DOC in files and (ROOT / "docs" / "results" / "README.md") in files
    broken = [f"{path.relative_to(ROOT)} -> {target}" for path in files for target in relative_links(path)
              if not (path.parent / target).exists()]
    assert not broken, f"links to files that do not exist: {broken}"


def test_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md) [gone](missing.md#part) ![fig](figs/a.png) [web](https://x.org/a) `[no](code.md)`\n"
                    "```\n[no](block.md)\n```\n")
    assert relative_links(page) == ["page.md", "missing.md", "figs/a.png"]


def test_readme_results_rows_link_to_result_pages() -> None:
    """Every row of the README's results table links to a page under docs/results/."""
    text = README.read_text()
    section = text.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| study")]
    assert len(rows) >= 10
    unlinked = [row for row in rows if not re.search(r"\]\(docs/results/[a-z0-9-]+\.md\)", row)]
    assert not unlinked, f"results rows without a docs/results/ page: {unlinked}"
    pages = {p.name for p in (ROOT / "docs" / "results").glob("*.md")} - {"README.md"}
    linked = set(re.findall(r"\]\(docs/results/([a-z0-9-]+\.md)\)", section))
    assert pages <= linked, f"result pages the README's table does not list: {sorted(pages - linked)}"


def test_readme_is_a_short_guide() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    text = "\n".join(lines)
    for command in ("./setup.sh && .venv/bin/iterdeploy run --out runs/cpu-default", "./test.sh"):
        assert f"```bash\n{command}\n```" in text


# -------------------------------------------------------------------------------- README's Python blocks


def readme_python() -> str:
    """The README's ```python blocks, in order, as one script (later blocks may use earlier names)."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    return "\n".join(blocks)


def test_readme_python_blocks_run_on_cpu(tmp_path: Path) -> None:
    """The README's example runs as written on a CPU (in a fresh process, in a temporary directory, with no
    GPU visible and nothing downloaded)."""
    script = readme_python()
    assert "ReinforceTrainer" in script and "ValidPlanReward" in script
    (tmp_path / "readme_example.py").write_text(script)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "WANDB_DISABLED": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "readme_example.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"README's Python example failed:\n{done.stderr[-4000:]}"
    assert "plan:" in done.stdout  # the prompt it prints
    assert (tmp_path / "reinforce-out").is_dir()


def test_each_results_page_has_the_parts_of_a_study() -> None:
    """Each docs/results page says what was asked, the command, machine, date and seeds, holds a table, a
    figure section, and what the numbers do not show."""
    pages = sorted(p for p in (ROOT / "docs" / "results").glob("*.md") if p.name != "README.md")
    assert len(pages) >= 10
    parts = {"question": "**question.**", "command": "command", "machine": "machine", "date": "**date",
             "seeds": "**seeds.**", "table": "|---|", "figure": "\n## figure", "limits": "does not"}
    lacking = {p.name: [name for name, mark in parts.items() if mark not in p.read_text().lower()] for p in pages}
    lacking = {name: missing for name, missing in lacking.items() if missing}
    assert not lacking, f"results pages without these parts: {lacking}"
