"""Figures from REAL run, compare and theory directories made here with the tiny model (no made-up numbers):
every figure renders, as a readable PNG and a PDF, with the expected panels; bad inputs give a message."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import tiny_run_config

from iterdeploy_trl.cli import main
from iterdeploy_trl.figures import FigureError, detect, make_figures, render_figures

pytestmark = pytest.mark.slow

# kind -> number of panels (axes) each figure must have
PANELS = {"solved": 2, "pool_vs_heldout": 2, "plan_lengths": 1, "tokens": 2, "curation_ablation": 1,
          "head_to_head": 3, "theory_same_samples": 1}


@pytest.fixture(scope="module")
def compare_dir(tiny_base_model, tmp_path_factory) -> Path:
    """A real ``iterdeploy compare`` of valid-sft and uncurated-sft (2 seeds, generations 0-1, a small pool
    and held-out split). Its method directories are real run directories too: the ablation's pair."""
    import torch

    from iterdeploy_trl.compare import run_compare
    from iterdeploy_trl.config import config_from_dict

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("figures") / "cmp"
    cfg = config_from_dict(tiny_run_config(tiny_base_model, seeds=[0, 1], generations=1,
                                           tasks={"n": 6, "heldout": 2}, sampling={"max_new_tokens": 32}))
    run_compare(cfg, out, methods=("valid-sft", "uncurated-sft"), progress=False, log=lambda m: None)
    return out


def theory_json() -> Path | None:
    """A real theory.json: $ITERDEPLOY_THEORY_DIR, or the repository's theory/ (``iterdeploy theory --out
    theory``). Making one here takes minutes of CPU (warm-up, enumeration, Monte Carlo), too slow for
    this file."""
    root = Path(__file__).resolve().parents[1] / "theory"
    for d in (os.environ.get("ITERDEPLOY_THEORY_DIR"), root / "results", root):
        if d and (Path(d) / "theory.json").is_file():
            return Path(d) / "theory.json"
    return None


def check_files(report) -> None:
    for d in report.figures:
        png, pdf = d.files
        assert png.suffix == ".png" and pdf.suffix == ".pdf"
        from PIL import Image

        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            w, h = im.size
            assert w >= 600 and h >= 400, (png, im.size)  # ~3.3 in at 300 dpi
            assert sum(1 for c in im.convert("L").histogram() if c) > 8, f"{png} looks blank"
        assert png.stat().st_size > 10_000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000
        if d.kind in PANELS:
            assert len(d.panels) == PANELS[d.kind], (d.stem, d.panels)
        assert all(d.panels), f"{d.stem}: a panel without a title"


def test_every_figure_from_real_directories(compare_dir, tmp_path):
    runs = [compare_dir / "valid-sft", compare_dir / "uncurated-sft"]
    assert [detect(p) for p in [*runs, compare_dir]] == ["run", "run", "compare"]
    report = render_figures([*runs, compare_dir], tmp_path / "fig")
    check_files(report)
    kinds = [d.kind for d in report.figures]
    for kind in ("solved", "pool_vs_heldout", "plan_lengths", "tokens", "curation_ablation", "head_to_head"):
        assert kind in kinds, f"no {kind} figure; got {kinds}; warnings {report.warnings}"
    stems = {d.stem for d in report.figures}
    assert {"solved-blocksworld", "pool_vs_heldout-blocksworld", "curation_ablation-blocksworld",
            "head_to_head-blocksworld", "plan_lengths-blocksworld-tiny-valid-sft",
            "tokens-blocksworld-tiny-uncurated-sft"} <= stems
    assert kinds.count("plan_lengths") == kinds.count("tokens") == 2  # one per run dir
    assert kinds.count("curation_ablation") == 1  # run dirs and the compare's pair in one figure
    ablation = next(d for d in report.figures if d.kind == "curation_ablation")
    assert set(ablation.sources) == set(runs)
    # results.md: the numbers and the sources of every figure
    md = (tmp_path / "fig" / "results.md").read_text()
    for d in report.figures:
        assert f"`{d.stem}.png`" in md
    assert f"`{compare_dir / 'valid-sft'}`" in md and f"`{compare_dir}`" in md
    summary = json.loads((compare_dir / "valid-sft" / "summary.json").read_text())
    for g in summary["generations"]:
        assert f"| tiny/valid-sft | {g['generation']} |" in md
    cmp = json.loads((compare_dir / "compare.json").read_text())
    last = cmp["methods"]["uncurated-sft"][-1]
    assert f"| uncurated-sft | {last['generation']} | {last['samples_used']} |" in md
    assert report.files == [f for d in report.figures for f in d.files] + [tmp_path / "fig" / "results.md"]
    assert not report.warnings, report.warnings


def test_theory_figures(tmp_path):
    path = theory_json()
    if path is None:
        pytest.skip("no theory.json: run `iterdeploy theory --out theory` (minutes on CPU) or set "
                    "ITERDEPLOY_THEORY_DIR to test the theory figures on real output")
    assert detect(path.parent) == "theory"
    report = render_figures([path.parent], tmp_path / "fig")
    check_files(report)
    theory = json.loads(path.read_text())
    kinds = {d.kind: d for d in report.figures}
    plots = [p for p in theory.get("plots", []) if p.get("series")]
    if plots:
        assert len(kinds["theory_convergence"].panels) == len(plots)
    comps = theory.get("checks", {}).get("on_policy_same_samples", {}).get("comparisons")
    assert ("theory_same_samples" in kinds) == bool(comps)
    md = (tmp_path / "fig" / "results.md").read_text()
    assert "| check | expected | measured | verdict |" in md and str(path) in md


def test_cli_writes_figures_and_api_returns_files(compare_dir, tmp_path, capsys):
    assert main(["figures", str(compare_dir / "valid-sft"), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "solved-blocksworld.png" in out and "results.md" in out
    files = make_figures([compare_dir], tmp_path / "b")
    names = {f.name for f in files}
    assert {"head_to_head-blocksworld.png", "head_to_head-blocksworld.pdf", "curation_ablation-blocksworld.png",
            "results.md"} <= names
    assert all(f.exists() for f in files)


def test_not_a_run_directory(compare_dir, tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    for bad in (junk, tmp_path / "missing", compare_dir / "valid-sft" / "tasks",
                compare_dir / "valid-sft" / "summary.json"):
        assert main(["figures", str(compare_dir / "valid-sft"), str(bad), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and "Traceback" not in err
    assert "not a run directory" in err or "give the run directory" in err
    assert not (tmp_path / "o" / "results.md").exists()  # nothing written when an input is bad
    with pytest.raises(FigureError, match="no such directory"):
        make_figures([tmp_path / "missing"], tmp_path / "o")


def test_broken_json_is_a_message(compare_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(compare_dir / "valid-sft", run)
    (run / "resolved_config.json").write_text("{not json")
    assert main(["figures", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "resolved_config.json" in err and "not valid JSON" in err
    shutil.copy(compare_dir / "valid-sft" / "resolved_config.json", run)
    (run / "seed_0" / "metrics.jsonl").write_text('{"generation": 0, "solved": 1}\n')  # another version's rows
    assert main(["figures", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl: rows without" in err and "Traceback" not in err


def test_run_in_progress_is_drawn_with_a_warning(compare_dir, tmp_path):
    """A copy of a real run as a kill leaves it: no summary.json, seed 1's last generation unfinished
    (its traces on disk, no metrics row), the rest finished."""
    run = tmp_path / "running"
    shutil.copytree(compare_dir / "valid-sft", run)
    (run / "summary.json").unlink()
    metrics = run / "seed_1" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:-1]) + "\n")
    last = json.loads(lines[-1])["generation"]
    warnings: list[str] = []
    report = render_figures([run], tmp_path / "o", warn=warnings.append)
    check_files(report)
    assert {"solved", "pool_vs_heldout", "plan_lengths", "tokens"} <= {d.kind for d in report.figures}
    assert len(warnings) == 1 and warnings == report.warnings
    assert "in progress" in warnings[0] and f"seed 1: generations 0–{last - 1} finished" in warnings[0]
    md = (tmp_path / "o" / "results.md").read_text()
    assert "IN PROGRESS" in md
    # seed 1's unfinished generation is not drawn: its traces are ignored
    from iterdeploy_trl.figures import load_run

    r = load_run(run)
    assert not r.complete and {t["seed"] for t in r.traces() if t["generation"] == last} == {0}


def test_run_with_nothing_finished(compare_dir, tmp_path, capsys):
    run = tmp_path / "fresh"
    run.mkdir()
    shutil.copy(compare_dir / "valid-sft" / "resolved_config.json", run)
    assert main(["figures", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no generation finished yet" in err and "nothing to draw" in err


def test_mixed_domains_are_split_with_a_message(compare_dir, tmp_path, capsys):
    """Two runs that claim different domains: each cross-run figure is drawn once per domain, and the
    message says so (the rovers run is a relabelled copy: no rovers model is trained here)."""
    other = tmp_path / "rovers-run"
    shutil.copytree(compare_dir / "valid-sft", other)
    resolved = json.loads((other / "resolved_config.json").read_text())
    resolved["config"]["domain"] = "rovers"
    (other / "resolved_config.json").write_text(json.dumps(resolved))
    assert main(["figures", str(compare_dir / "valid-sft"), str(other), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "2 domains" in err and "blocksworld" in err and "rovers" in err and "per domain" in err
    assert (tmp_path / "o" / "solved-blocksworld.png").exists()
    assert (tmp_path / "o" / "solved-rovers.png").exists()


def test_theory_figure_helpers_keep_every_series_and_label_readable():
    """Mended theory figure: a series equal to an earlier one is detected (so it is drawn as rings on top
    instead of hidden), a different one is not, and a formula in an axis label is never broken."""
    from iterdeploy_trl.figures.theory import coinciding, wrap_label

    earlier = [("plain", [0.6, 0.64, 0.61]), ("IW", [0.71, 0.90, 0.94])]
    assert coinciding([0.71, 0.90 + 1e-15, 0.94], earlier) == "IW"
    assert coinciding([0.71, 0.91, 0.94], earlier) is None
    label = wrap_label("cosine to E_π[r(λ + (1−λ)β/π)∇log π]", 30)
    assert label.split("\n") == ["cosine to", "E_π[r(λ + (1−λ)β/π)∇log π]"]
    assert wrap_label("cosine to the exact on-policy gradient ∇J", 30).count("\n") == 1


def test_curation_ablation_is_mentioned_only_when_an_uncurated_run_is_given(compare_dir, tmp_path):
    """Two curated runs (nobody asked for the ablation): no warning about it. An uncurated run without a
    curated one: the warning says what the ablation lacks."""
    for method, expect in (("valid-sft", False), ("uncurated-sft", True)):
        copy = tmp_path / f"{method}-copy"
        shutil.copytree(compare_dir / method, copy)
        report = render_figures([compare_dir / method, copy], tmp_path / f"o-{method}")
        ablation = [w for w in report.warnings if "curation ablation" in w]
        assert bool(ablation) is expect, report.warnings
        if expect:
            assert "only uncurated runs" in ablation[0] and "needs a curated run" in ablation[0]


def test_the_nine_comparison_arms_are_drawn_apart():
    """experiments/compare_*.yaml's nine arms: eight colours are not enough, so a curation-sensitivity arm is drawn
    in its method's colour with its rule's line style and marker (before, two pairs of arms shared a line)."""
    import yaml

    from iterdeploy_trl.figures.style import arm_style

    arms = yaml.safe_load((Path(__file__).parent.parent / "experiments" / "compare_spanner.yaml").read_text())[
        "compare_methods"]
    styles = [arm_style(arm, i) for i, arm in enumerate(arms)]
    looks = {(s["colour"], s["line"]["linestyle"], s["line"]["marker"]) for s in styles}
    assert len(arms) == 9 and len(looks) == 9 and len({s["label"] for s in styles}) == 9
    variant = styles[arms.index("valid-sft@random-valid")]
    base = styles[arms.index("valid-sft")]
    assert variant["colour"] == base["colour"] and variant["line"]["linestyle"] != base["line"]["linestyle"]
    assert variant["label"] == "valid-trace SFT, random-valid curation"
