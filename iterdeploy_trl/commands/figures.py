"""`iterdeploy figures`: every figure of a study, from run, compare and theory directories."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "figures", help="draw the figures (PNG + PDF) and results.md from run/compare/theory directories",
        description="Detects each directory's kind and draws what it allows: from run directories (iterdeploy "
                    "run) tasks solved and unanimous@k, pool vs held-out, plan lengths and tokens per "
                    "generation, the curation ablation (a curated and an uncurated run); from a compare "
                    "directory (iterdeploy compare) the head-to-head against the sampling budget and training "
                    "tokens, and the ablation; from a theory directory (iterdeploy theory --out) the cosine "
                    "checks. Figures over several runs are drawn per domain. A run still in progress is drawn "
                    "up to its last finished generation. OUT/results.md holds the numbers behind each figure.")
    p.add_argument("paths", nargs="+", type=Path, metavar="DIR", help="run, compare or theory directories")
    p.add_argument("--out", type=Path, required=True, help="directory for the figures and results.md")
    p.add_argument("--page", type=Path, default=None, metavar="PAGE",
                   help="with one finished compare directory: also write a draft of its results page (e.g. "
                        "docs/results/compare-blocksworld.md) holding every table of compare.json and marked slots "
                        "(WRITE:) for the question and what it shows; an existing PAGE is not written over")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.figures import FigureError, render_figures

    def warn(msg: str) -> None:
        print(f"iterdeploy figures: warning: {msg}", file=sys.stderr)

    if getattr(args, "page", None) is not None:
        return _page(args, warn)
    try:
        report = render_figures(args.paths, args.out, warn=warn)
    except FigureError as exc:
        print(f"iterdeploy figures: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable --out, disk full
        print(f"iterdeploy figures: cannot write to {args.out}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a file of a shape we did not foresee: say which kind of failure, no traceback
        print(f"iterdeploy figures: could not draw from {', '.join(map(str, args.paths))}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not report.figures:
        print(f"iterdeploy figures: nothing to draw from {', '.join(map(str, args.paths))} (see the warnings); "
              f"wrote only {report.results}", file=sys.stderr)
        return 2
    for d in report.figures:
        print(f"{d.kind:<20} {', '.join(str(f) for f in d.files)}")
    print(f"wrote {len(report.figures)} figures and {report.results}")
    return 0


def _page(args: argparse.Namespace, warn) -> int:
    """``--page``: the figures of one compare directory and its results page draft."""
    from iterdeploy_trl.figures import FigureError
    from iterdeploy_trl.figures.compare_page import SLOT, write_page

    if len(args.paths) != 1:
        print(f"iterdeploy figures: --page takes one compare directory, got {len(args.paths)} paths "
              f"({', '.join(map(str, args.paths))})", file=sys.stderr)
        return 2
    try:
        page = write_page(args.paths[0], args.out, args.page, warn=warn)
    except FigureError as exc:
        print(f"iterdeploy figures: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"iterdeploy figures: cannot write {args.page} or under {args.out}: {exc}", file=sys.stderr)
        return 2
    for d in page.figures:
        print(f"{d.kind:<20} {', '.join(str(f) for f in d.files)}")
    print(f"wrote {page.path}: a draft; fill the slots marked {SLOT} (the question, the commit, what it shows and "
          "does not show) before it is committed")
    return 0
