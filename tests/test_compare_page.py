"""The results page of a head-to-head (``iterdeploy figures OUT --out FIG --page PAGE``) from a REAL tiny
comparison made here with the tiny model through ``iterdeploy compare`` (2 arms, 2 result seeds, each arm
tuned over 2 grid points on a tuning pool of its own): every table the protocol reports is on the page, and
each number in it is compare.json's (or, for an arm's bootstrap interval, recomputed here from its metrics
rows). The tiny model solves few tasks, so many of the real counts are 0; the same check then runs on the
same compare.json with every number of its tables made distinct, so that a number read from the wrong key
or column shows."""

from __future__ import annotations

import copy
import itertools
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import tiny_run_config

from iterdeploy_trl.cli import main
from iterdeploy_trl.figures.markdown import fmt

ROOT = Path(__file__).resolve().parents[1]
MEASURES = {"heldout_solved": ("held-out tasks solved", "heldout_solved_mean", "heldout_ci", "heldout_solved_per_seed",
                               "heldout_unanimous", "heldout_unanimous_ci", "heldout_tasks", "heldout_solved_task_ids"),
            "solved": ("pool tasks solved", "solved_mean", "solved_ci", "solved_per_seed", "unanimous", "unanimous_ci",
                       "tasks", "solved_task_ids")}


@pytest.fixture(scope="module")
def compared(tiny_base_model, tmp_path_factory):
    """A real comparison through the CLI: valid-sft and reinforce, seeds 0 and 1, one generation, 8 pool + 4
    held-out tasks (tasks.seed 8: several 2-action tasks), each arm tuned over 2 points on seed 7 and a tuning
    pool drawn past the reported problems. Returns (compare dir, what ``iterdeploy compare`` printed)."""
    import contextlib
    import io

    import torch

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("page")
    data = tiny_run_config(tiny_base_model, generations=1, seeds=[0, 1], tasks={"n": 8, "heldout": 4, "seed": 8},
                           sampling={"samples_per_task": 4}, chunk_size=8, training={"batch_size": 4},
                           compare_methods=["valid-sft", "reinforce"],
                           tuning={"seeds": [7], "task_seed": 3, "n": 4, "heldout": 2, "exclude_reported": True,
                                   "grids": {"valid-sft": {"learning_rate": [1e-2, 1e-3]},
                                             "reinforce": {"learning_rate": [1e-3], "prompts_per_step": [1, 2]}}})
    (root / "cfg.yaml").write_text(yaml.safe_dump(data))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["compare", "--config", str(root / "cfg.yaml"), "--out", str(root / "cmp"), "--no-progress"]) == 0
    return root / "cmp", printed.getvalue()


def tables(text: str) -> dict[str, list[list[str]]]:
    """Every Markdown table of ``text``: its header line -> its rows as cells."""
    out: dict[str, list[list[str]]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            rows = list(itertools.takewhile(lambda x: x.startswith("| "), lines[i + 2:]))
            out[line] = [[c.strip() for c in r.strip("|").split(" | ")] for r in rows]
    return out


def table(text: str, first: str, has: str) -> list[list[str]]:
    """The rows of the one table whose header starts with ``first`` and names ``has``."""
    found = [rows for head, rows in tables(text).items() if head.startswith(f"| {first} |") and has in head]
    assert len(found) == 1, (first, has, list(tables(text)))
    return found[0]


def section(text: str, heading: str) -> str:
    """The page from the line starting with ``heading`` to the next level-2 heading."""
    start = text.index(f"\n{heading}") + 1
    end = text.find("\n## ", start)
    return text[start:] if end < 0 else text[start:end]


def iv(ci) -> str:
    return "–" if ci is None else f"[{fmt(float(ci[0]))}, {fmt(float(ci[1]))}]"


def own_bootstrap(cmp: Path, arm: str, seeds, generation: int, ids_key: str, n_tasks: int):
    """An arm's task-and-seed bootstrap interval of tasks solved, from its metrics.jsonl files as written."""
    from iterdeploy_trl.stats import task_seed_bootstrap

    solved = []
    for seed in seeds:
        rows = [json.loads(x) for x in (cmp / arm / f"seed_{seed}" / "metrics.jsonl").read_text().splitlines() if x]
        solved.append(set(next(r for r in rows if r["generation"] == generation)[ids_key]))
    ids = sorted(set().union(*solved))
    matrix = [[int(t in s) for s in solved] for t in ids] + [[0] * len(seeds)] * (n_tasks - len(ids))
    mean, lo, hi = task_seed_bootstrap(matrix)
    return mean, [lo, hi]


def check_page(text: str, report: dict, boots: dict) -> None:
    """Each table of the page holds compare.json's numbers (``boots``: measure -> arm -> the arm's bootstrap
    interval, checked separately)."""
    for measure, (label, mean_k, ci_k, seeds_k, un_k, un_ci_k, _, _) in MEASURES.items():
        heading = f"## {label[0].upper()}{label[1:]}"
        rows = table(section(text, heading), "arm", "unanimous@k")
        assert [r[0] for r in rows] == list(report["methods"])
        for r in rows:
            last = report["methods"][r[0]][-1]
            assert r[2:] == [fmt(last["samples_used"]), fmt(last[mean_k]), ", ".join(fmt(v) for v in last[seeds_k]),
                             iv(last[ci_k]), iv(boots[measure][r[0]]), fmt(last[un_k]), iv(last[un_ci_k])], (measure, r)
        for verdict in report["verdicts"][measure]:  # compare.json's verdict per arm and measure, as it is
            assert f"- {verdict}\n" in text
    labels = {label: m for m, (label, *_) in MEASURES.items()}
    paired = table(text, "comparison", "p (Holm)")
    expected = [[name, label, fmt(p["generation"]), fmt(p[m]["diff_mean"]), iv(p[m]["t_ci"]), iv(p[m]["bootstrap_ci"]),
                 fmt(p[m]["p_value"]), fmt(p[m]["p_holm"])]
                for name, points in report["paired"].items() for p in points for label, m in labels.items()]
    assert paired == expected
    along = table(text, "arm", "wall s (cumulative")
    assert along == [[arm, fmt(r["generation"]), fmt(r["samples_used"]), f"{fmt(r['heldout_solved_mean'])} {iv(r['heldout_ci'])}",
                      f"{fmt(r['solved_mean'])} {iv(r['solved_ci'])}", fmt(r["wall_seconds_cumulative"])]
                     for arm, rs in report["methods"].items() for r in rs]
    # tuning: every grid point with its score per tuning seed and wall seconds; per arm its grid, runs, chosen
    # value and the edge flag naming the knob
    points = table(text, "arm", "per tuning seed")
    assert points == [[arm, ", ".join(f"{k} {fmt(r[k])}" for k in t["grid"]), fmt(r["solved_mean"]),
                       ", ".join(fmt(v) for v in r["solved_per_seed"]), fmt(r["heldout_solved_mean"]),
                       fmt(r["wall_seconds"]), "chosen" if all(r[k] == t["chosen_settings"][k] for k in t["grid"]) else ""]
                      for arm, t in report["tuning"].items() for r in t["table"]]
    summary = table(text, "arm", "chosen at a grid edge")
    assert [(r[0], r[2], r[5]) for r in summary] == [
        (arm, fmt(t["runs"]), f"yes ({', '.join(t['edge_knobs'])})" if t["at_edge"] else "no")
        for arm, t in report["tuning"].items()]
    for r, t in zip(summary, report["tuning"].values(), strict=True):
        assert r[4] == ", ".join(f"{k} {v:g}" for k, v in t["chosen_settings"].items())
    # budgets in every unit, the wall seconds per phase (tuning included) and the machine that measured them
    budgets = table(text, "arm", "optimizer steps")
    assert budgets == [[arm, fmt(b["sampled_completions"]), fmt(b["optimizer_steps"]), fmt(b["training_tokens"]),
                        fmt(b["generated_completions"]), fmt(b["seconds"]["deploy"]), fmt(b["seconds"]["train"]),
                        fmt(b["seconds"]["evaluate"]), fmt(b["seconds"]["total"]),
                        fmt(round(sum(r["wall_seconds"] for r in report["tuning"][arm]["table"]), 1)),
                        fmt(b["seconds"]["validate"]), ", ".join(b["machines"])]
                       for arm, b in report["budgets"].items()]
    pool, overlap = report["tuning_pool"], report["task_overlap"]
    assert (f"disjoint from the {pool['checked_against']} reported tasks: {fmt(pool['disjoint'])}" in text
            and f"{pool['tasks']} + {pool['heldout_tasks']} tasks" in text)
    assert (f"Held-out tasks whose problem also lies in the pool: {overlap['heldout_tasks_in_pool']} of "
            f"{overlap['heldout_tasks']}; the pool holds {overlap['distinct_pool_problems']} distinct problems") in text
    m = report["machine"]
    assert f"{m['cpu']} (cpu family/model {m['cpu_family_model']}, {m['cpu_capability']}" in text
    assert f"trl {m['versions']['trl']}" in text
    assert f"Wall time measured in the runs: {fmt(report['total_wall_seconds'])} s, of which tuning " \
           f"{fmt(report['tuning_wall_seconds'])} s" in text
    assert f"**Seeds.** Result seeds {', '.join(map(str, report['seeds']))}; tuning seeds 7." in text


def test_the_page_holds_every_table_with_compare_jsons_numbers(compared, tmp_path, capsys):
    from iterdeploy_trl.figures.compare_page import SLOT, page_markdown

    cmp, printed = compared
    report = json.loads((cmp / "compare.json").read_text())
    # iterdeploy compare's own summary reads this compare.json layout (held-out first, Holm-adjusted p)
    last = report["paired"]["reinforce - valid-sft"][-1]["heldout_solved"]
    assert f"held-out {last['diff_mean']:+.1f} [{last['t_ci'][0]:+.1f}, {last['t_ci'][1]:+.1f}], p=" in printed
    page = tmp_path / "docs" / "results" / "compare-tiny.md"
    # a tuning run of an earlier, moved grid stays in OUT/tuning outside the tuning tables: the Time section names it
    # and does not count it
    planned = {row["run"] for tuned in report["tuning"].values() for row in tuned["table"]}
    earlier = cmp / "tuning" / "reinforce-lr1e-09"
    shutil.copytree(cmp / "tuning" / sorted(planned)[0], earlier)
    try:
        assert main(["figures", str(cmp), "--out", str(tmp_path / "figures" / "tiny"), "--page", str(page)]) == 0
    finally:
        shutil.rmtree(earlier)
    assert f"fill the slots marked {SLOT}" in capsys.readouterr().out
    text = page.read_text()
    boots = {m: {} for m in MEASURES}
    for measure, (*_, total_k, ids_key) in MEASURES.items():
        for arm, rows in report["methods"].items():
            mean, boots[measure][arm] = own_bootstrap(cmp, arm, report["seeds"], rows[-1]["generation"], ids_key,
                                                      rows[-1][total_k])
            assert mean == pytest.approx(rows[-1][MEASURES[measure][1]])  # the same quantity as the seed-t mean
            assert boots[measure][arm][0] <= mean <= boots[measure][arm][1]
    check_page(text, report, boots)
    # how often max_grad_norm clipped each fine-tune, from each seed's train_stats.json
    clipped = table(text, "arm", "steps clipped")
    expected = []
    for arm, rows in report["methods"].items():
        for g in [r["generation"] for r in rows if r["generation"] > 0]:
            recs = [json.loads(f.read_text())["grad_clip"] for s in report["seeds"]
                    for f in [cmp / arm / f"seed_{s}" / f"gen_{g:02d}" / "model" / "train_stats.json"] if f.is_file()]
            recs = [r for r in recs if r and r["optimizer_steps"]]
            if recs:
                n, c = sum(r["optimizer_steps"] for r in recs), sum(r["clipped_steps"] for r in recs)
                expected.append([arm, fmt(g), f"{c} of {n}", fmt(c / n), ", ".join(fmt(r["clip_fraction"]) for r in recs),
                                 fmt(sum(r["grad_norm_mean"] for r in recs) / len(recs)), fmt(recs[0]["max_grad_norm"])])
    assert clipped == expected and any(r[0] == "reinforce" for r in clipped)
    # the Time section: every run's metrics rows (result arms and tuning runs), summed here by hand
    tuning_files = [f for name in planned for f in (cmp / "tuning" / name).glob("seed_*/metrics.jsonl")]
    rows = [json.loads(line) for f in [*cmp.glob("*/seed_*/metrics.jsonl"), *tuning_files]
            for line in f.read_text().splitlines() if line.strip()]
    spent = sum(r["deploy_seconds"] + r["train_seconds"] for r in rows)
    assert spent == pytest.approx(report["tuning_wall_seconds"] + sum(b["seconds"]["total"]
                                                                      for b in report["budgets"].values()), abs=1)
    time_text = text[text.index("## Time"):text.index("## Figures")]
    # (the page sums the rows unrounded: off from the hand sums by its own display rounding only)
    assert abs(int(re.search(r"(\d+) run-seconds", time_text).group(1)) - spent) <= 0.5 + 1e-9
    training = int(re.search(r"training (\d+)% \(", time_text).group(1))
    assert abs(training - 100 * sum(r["train_seconds"] for r in rows) / spent) <= 0.5 + 1e-9
    assert "Not counted above: 1 run(s) in `tuning/` outside the tuning tables (reinforce-lr1e-09; " in time_text
    assert f"(`--jobs {report['jobs']}`) took {fmt(report['invocation_wall_seconds']['total'])} s" in time_text
    # the parts tests/test_docs.py asks of every results page, and the slots a person fills
    for mark in ("**question.**", "command", "machine", "**date", "**seeds.**", "|---|", "\n## figure", "does not"):
        assert mark in text.lower(), mark
    assert text.count(SLOT) >= 5 and "**Question.** _[WRITE:" in text
    # the figures it links exist: pool and held-out solved vs completions and vs wall-clock seconds
    links = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", text)
    assert len(links) == 2 and all((page.parent / target).is_file() for _, target in links)
    assert "vs wall-clock time" in links[0][0] and "held-out tasks solved vs sampling budget" in links[1][0]
    # the same check on the same compare.json with every number of its tables made distinct
    distinct = copy.deepcopy(report)
    counter = itertools.count(1)
    for node in _numeric_parents(distinct):
        for key, value in node.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("generation", "runs"):
                node[key] = 1.25 + next(counter)
            elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value) \
                    and key.endswith(("ci", "_ci")):
                node[key] = [1.25 + next(counter), 1.25 + next(counter)]
    distinct_boots = {m: {arm: [1.25 + next(counter), 1.25 + next(counter)] for arm in report["methods"]}
                      for m in MEASURES}
    for t in distinct["tuning"].values():  # a chosen point that still is one of the table's
        t["chosen_settings"] = {k: t["table"][-1][k] for k in t["grid"]}
    for b in distinct["budgets"].values():
        b["seconds"] = {k: 1.25 + next(counter) for k in b["seconds"]}
    distinct["machine"]["cpu_family_model"] = "99/98"
    text = page_markdown(distinct, cmp, [], page, distinct_boots, written="now", compare_date="then", config="c",
                         figures_command="f")
    check_page(text, distinct, distinct_boots)


def _numeric_parents(report: dict):
    """The dicts of compare.json whose numbers the page's tables show: method rows, paired entries, tuning rows,
    budgets, the tuning pool and overlap records."""
    for rows in report["methods"].values():
        yield from rows
    for points in report["paired"].values():
        for p in points:
            yield from (p[m] for m in MEASURES)
    for t in report["tuning"].values():
        yield from t["table"]
    yield from report["budgets"].values()
    yield report["tuning_pool"]
    yield report["task_overlap"]
    yield report


def test_a_page_is_never_written_over_and_needs_a_finished_comparison(compared, tmp_path, capsys):
    cmp, _ = compared
    page = tmp_path / "page.md"
    page.write_text("written by a person\n")
    assert main(["figures", str(cmp), "--out", str(tmp_path / "fig"), "--page", str(page)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--page: {page} exists" in err
    assert page.read_text() == "written by a person\n" and not (tmp_path / "fig").exists()
    running = tmp_path / "running"  # a comparison without compare.json yet
    running.mkdir()
    (running / "valid-sft").symlink_to(cmp / "valid-sft")
    assert main(["figures", str(running), "--out", str(tmp_path / "fig"), "--page", str(tmp_path / "p.md")]) == 2
    assert "does not exist (the comparison has not finished)" in capsys.readouterr().err
    assert main(["figures", str(cmp), str(cmp / "valid-sft"), "--out", str(tmp_path / "fig"), "--page",
                 str(tmp_path / "p.md")]) == 2
    assert "--page takes one compare directory, got 2 paths" in capsys.readouterr().err
    assert not (tmp_path / "p.md").exists()


def test_no_results_page_is_a_draft():
    """A page written by --page holds slots for what a person writes; none may stay in docs/results/."""
    from iterdeploy_trl.figures.compare_page import DRAFT_NOTE, SLOT

    drafts = [p.name for p in (ROOT / "docs" / "results").glob("*.md") if SLOT in p.read_text()
              or DRAFT_NOTE in p.read_text()]
    assert not drafts, f"results pages with unfilled {SLOT} slots or the draft note: {drafts}"


@pytest.mark.parametrize("domain", ["blocksworld", "spanner"])
def test_the_protocol_configs_hold_what_issue_24_asks(domain, tmp_path):
    """experiments/compare_<domain>.yaml: at least 5 result seeds, 200 pool + 50 held-out tasks, no held-out
    problem in the pool, every arm the issue names (REINFORCE at 4 or more prompts a step at every grid point),
    the same number of tuning runs per arm, and a tuning pool that shares no problem with the reported tasks
    (written as iterdeploy compare writes it, compared here by problem text)."""
    from iterdeploy_trl.compare import (
        check_tuning,
        check_tuning_pool,
        problem_key,
        split_overlap,
        write_tuning_pool,
    )
    from iterdeploy_trl.config import load_config
    from iterdeploy_trl.tasks import generate_tasks, load_task_set

    cfg = load_config(ROOT / "experiments" / f"compare_{domain}.yaml", check_paths=False)
    assert cfg.domain == domain and len(cfg.seeds) >= 5 and cfg.tasks.n >= 200 and cfg.tasks.heldout >= 50
    arms = {"valid-sft", "iw-sft", "uncurated-sft", "reinforce", "rloo", "grpo", "expert-iteration",
            "valid-sft@random-valid", "valid-sft@all-valid"}
    assert arms <= set(cfg.compare_methods)
    assert cfg.reinforce_settings.prompts_per_step >= 4 and cfg.reinforce_settings.baseline == "none"
    assert min(cfg.tuning.grids["reinforce"]["prompts_per_step"]) >= 4
    assert not set(cfg.tuning.seeds) & set(cfg.seeds)
    check_tuning(cfg, cfg.compare_methods)  # raises unless every arm gets the same number of tuning runs
    assert split_overlap(cfg)["heldout_tasks_in_pool"] == 0
    root = write_tuning_pool(cfg, tmp_path)
    assert check_tuning_pool(cfg, root)["disjoint"] is True
    size = tuple(cfg.tasks.size)
    reported = {problem_key(t.problem) for t in generate_tasks(domain, cfg.tasks.n + cfg.tasks.heldout, cfg.tasks.seed,
                                                                size=size, distinct=True)}
    tuning = [problem_key(t.problem) for t in load_task_set(root).tasks]
    assert len(tuning) == cfg.tuning.n + cfg.tuning.heldout and not set(tuning) & reported
