"""Figures of a study, drawn from the directories that ``iterdeploy run``, ``iterdeploy compare`` and
``iterdeploy theory --out`` write.

``make_figures(paths, out)`` detects each path's kind and writes, as PNG and PDF, into ``out``:

=========================================  ==========================================================
file (stem)                                 from
=========================================  ==========================================================
``solved-<domain>``                        run dirs: tasks solved per generation (mean, min–max over
                                           seeds) and unanimous@k
``pool_vs_heldout-<domain>``               run dirs with a held-out split: solved fraction of each split
``plan_lengths-<domain>-<run>``            a run dir's traces: valid plan lengths per generation, the
                                           longest so far, against the pool's reference plan lengths
``tokens-<domain>-<run>``                  a run dir's traces: reasoning and completion tokens per trace
``curation_ablation-<domain>``             curated and uncurated runs (two run dirs, or a compare dir's
                                           valid-sft and uncurated-sft): solved, training-set sizes
``head_to_head-<domain>[-<compare>]``      a compare dir: pool solved vs sampled completions, vs training
                                           tokens and vs wall-clock seconds, 95% CIs, for every arm it holds
``head_to_head_heldout-<domain>[-<cmp>]``  a compare dir: held-out solved (the primary measure) vs sampled
                                           completions and vs wall-clock seconds
``theory-cosine_vs_n``                     theory.json: cosine vs samples per prompt, per estimator
``theory-same_samples``                    theory.json: same-sample cosines by normalisation and baseline
=========================================  ==========================================================

and ``results.md``: the numbers behind each figure and the source paths. Run directories given on the
command line make the per-run figures; a compare directory makes the head-to-head and (with both
methods) the curation ablation. Figures over several runs are drawn per domain. A run still in
progress is drawn up to its last finished generation, marked in the legend and in ``results.md``.

The package, one module a concern: ``sources`` (reading the directories), ``style`` (look and axis
helpers), ``markdown`` (``results.md``), one module per figure family (``runs``, ``run_traces``,
``compare``, ``theory``, ``audit``), ``render`` (the driver) and ``compare_page`` (``iterdeploy figures CMP --out
FIG --page PAGE``: a finished comparison's figures and the draft of its results page, every table of compare.json).
"""

from __future__ import annotations

from iterdeploy_trl.figures.markdown import Drawn, FigureReport
from iterdeploy_trl.figures.render import make_figures, render_figures
from iterdeploy_trl.figures.sources import (
                                            Compare,
                                            FigureError,
                                            Run,
                                            Theory,
                                            detect,
                                            load,
                                            load_compare,
                                            load_run,
                                            load_theory,
)

__all__ = ["Compare", "Drawn", "FigureError", "FigureReport", "Run", "Theory", "detect", "load", "load_compare",
           "load_run", "load_theory", "make_figures", "render_figures"]
