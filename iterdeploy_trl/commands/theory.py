"""``iterdeploy theory``: empirical checks that valid-trace SFT is binary-reward REINFORCE (Prop. 1 and 2).

Enumeration checks (a tiny model in float64; the default): on_policy_same_samples, exact_gradient,
off_policy, mixture. Pipeline checks (real models, deployment backend, TRL tokenisation, VAL):
``pipeline`` (SFT vs REINFORCE vs IW-SFT at T = 1 and T = 0.6 / top-p 0.95, LoRA, float32 and bf16;
needs --model PATH or --run-dir RUN; sampled by the transformers backend, or by vLLM with
--pipeline-backend vllm), ``pipeline_off_policy`` (SFT vs IW-SFT on the samples of --beta-model, gradients at
--model, against the on-policy REINFORCE of --model) and ``actual_update`` (a run directory's real per-generation update against
REINFORCE; --run-dir RUN, which alone selects it) and ``curation`` (the loop's curated update, shortest and
random-valid, against REINFORCE and c(J)-re-weighted REINFORCE on independent draws of --model, at T = 1;
--pipeline-tasks, --pipeline-samples K, --repeats). Each row is labelled identity or empirical.
Prints a table (check, expected, measured, verdict, kind); ``--json`` prints the rows as a JSON list
instead; ``--out DIR`` writes DIR/theory.json (rows and data; schema in ``iterdeploy_trl/theory/``).

Exit status: 0 every check passed, 1 some check failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

# Defaults of the options that ``command_line`` repeats only when they differ (in its order).
DEFAULTS: dict[str, Any] = {
    "device": "cpu",
    "dtype": "float64",
    "repeats": None,
    "sample_sizes": [4, 16, 64, 256],
    "warmup_steps": 600,
    "seed": 0,
    "pipeline_tasks": 24,
    "pipeline_samples": 8,
    "pipeline_backend": "transformers",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from iterdeploy_trl.theory import CHECKS

    parser = subparsers.add_parser(
        "theory",
        help="check empirically that valid-trace SFT points along the binary-reward REINFORCE gradient",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def int_option(flag: str, metavar: str, help: str) -> None:
        """An integer option whose default is ``DEFAULTS``' entry (what ``command_line`` compares against)."""
        dest = flag[2:].replace("-", "_")
        parser.add_argument(flag, type=int, default=DEFAULTS[dest], metavar=metavar, help=help)

    parser.add_argument(
        "--check",
        action="append",
        choices=CHECKS,
        metavar="NAME",
        help=f"run only this check (repeatable): {', '.join(CHECKS)}",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of {check, expected, measured, verdict, kind} and nothing else",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="write DIR/theory.json (rows and plot data)")
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="local Hugging Face causal LM directory for π (default: a fresh small model, warmed "
        "up with a few SFT steps on valid plans)",
    )
    parser.add_argument(
        "--beta-model",
        metavar="PATH",
        help="local model directory for the behaviour policy β (same tokenizer as π; default: an "
        "earlier warm-up checkpoint of π)",
    )
    parser.add_argument("--device", default=DEFAULTS["device"], help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--dtype",
        default=DEFAULTS["dtype"],
        choices=("float64", "float32"),
        help="precision of the checks (default float64: cosines of 1 to ~1e-15)",
    )
    int_option(
        "--repeats",
        "R",
        "independent repeats of each Monte-Carlo estimate (default 10 for the enumeration checks, 5 for "
        "pipeline and actual_update; at least 5 for bands)",
    )
    parser.add_argument(
        "--sample-sizes",
        type=int,
        nargs="+",
        default=list(DEFAULTS["sample_sizes"]),
        metavar="N",
        help="samples per prompt of the Monte-Carlo estimates (default: 4 16 64 256)",
    )
    int_option(
        "--warmup-steps", "S", "at most this many warm-up SFT steps (0: use the model as it is; default 600)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="random seed of the checks (default: 0)")
    parser.add_argument(
        "--run-dir",
        metavar="RUN",
        help="an `iterdeploy run` directory: run the actual_update check on it (its base model is also the "
        "pipeline check's model unless --model is given)",
    )
    parser.add_argument(
        "--run-seed", type=int, metavar="S", help="the run's seed directory (default: the first)"
    )
    int_option(
        "--pipeline-tasks",
        "N",
        "pipeline: tasks (of the run's task set with --run-dir, generated otherwise; default 24)",
    )
    int_option("--pipeline-samples", "K", "pipeline: samples per task per repeat and setting (default 8)")
    parser.add_argument(
        "--pipeline-backend",
        default=DEFAULTS["pipeline_backend"],
        choices=("transformers", "vllm"),
        help="pipeline: the deployment backend that samples (default transformers; vllm serves the LoRA "
        "adapter on the base model unmerged, in float32, and needs vLLM importable)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from iterdeploy_trl.runio import atomic_write_text
    from iterdeploy_trl.theory import (
        PipelineConfig,
        TheoryConfig,
        TheoryError,
        UpdateConfig,
        format_table,
        run_checks,
    )

    def fail(message: str) -> int:
        print(f"iterdeploy theory: {message}", file=sys.stderr)
        return 2

    if args.repeats is not None and args.repeats < 1:
        return fail(f"--repeats must be at least 1, got {args.repeats}")
    checks = list(args.check or [])
    if not checks and args.run_dir:
        checks = ["actual_update"]
    if "actual_update" in checks and not args.run_dir:
        return fail("--check actual_update needs --run-dir RUN (an `iterdeploy run` directory)")
    if "pipeline" in checks and not (args.model or args.run_dir):
        return fail("--check pipeline needs a model that solves some tasks: --model PATH or --run-dir RUN")
    if "curation" in checks and not (args.model or args.run_dir):
        return fail("--check curation needs a model that solves some tasks: --model PATH or --run-dir RUN")
    if "pipeline_off_policy" in checks and not (args.model and args.beta_model):
        return fail("--check pipeline_off_policy needs --model PATH (π, where the gradients are taken) and "
                    "--beta-model PATH (β, the model that samples)")
    pipeline_model, task_dir, prompt_style, domain = args.model or "", None, "compact", "blocksworld"
    if args.run_dir and ("pipeline" in checks or "curation" in checks):
        try:
            from iterdeploy_trl.rundir import tasks_dir
            from iterdeploy_trl.theory.actual_update import RunView

            view = RunView(args.run_dir, args.run_seed)
        except TheoryError as exc:
            return fail(str(exc))
        pipeline_model = args.model or str(view.base)
        task_dir, prompt_style, domain = (
            str(tasks_dir(view.root)),
            view.cfg.model.prompt_style,
            view.cfg.domain,
        )
    if min(args.sample_sizes) < 1:
        return fail(f"--sample-sizes must be positive, got {args.sample_sizes}")
    if args.warmup_steps < 0:
        return fail(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    config = TheoryConfig(
        model_path=args.model,
        beta_model_path=args.beta_model,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        repeats=args.repeats or 10,
        sample_sizes=tuple(sorted(set(args.sample_sizes))),
        warmup_max_steps=args.warmup_steps,
        pipeline=PipelineConfig(
            model_path=pipeline_model,
            beta_model_path=args.beta_model or "",
            domain=domain,
            task_dir=task_dir,
            prompt_style=prompt_style,
            tasks=args.pipeline_tasks,
            samples_per_task=args.pipeline_samples,
            repeats=args.repeats or 5,
            seed=args.seed,
            device=args.device,
            backend=args.pipeline_backend,
        ),
        update=UpdateConfig(
            run_dir=args.run_dir or "",
            seed=args.run_seed,
            repeats=args.repeats or 5,
            device=args.device,
        ),
    )
    log = None if (args.quiet or args.json) else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        report = run_checks(config, checks or None, log=log)
    except TheoryError as exc:
        return fail(str(exc))
    report.command = command_line(args)
    if args.out is not None:
        try:
            atomic_write_text(
                args.out / "theory.json",
                json.dumps(report.to_json(), indent=1, ensure_ascii=False, allow_nan=False) + "\n",
            )
        except OSError as exc:
            return fail(f"{args.out}: cannot write theory.json ({exc.strerror})")
    if args.json:
        print(json.dumps([row.to_dict() for row in report.rows], indent=1, ensure_ascii=False))
    else:
        print(format_table(report.rows))
        failed = sum(row.verdict != "pass" for row in report.rows)
        print(
            f"\n{len(report.rows) - failed}/{len(report.rows)} rows pass; {report.runtime_s:.0f}s"
            + (f"; wrote {args.out / 'theory.json'}" if args.out is not None else "")
        )
    return 0 if report.passed else 1


def command_line(args: argparse.Namespace) -> str:
    """The ``iterdeploy theory`` command that reproduces this run (options that differ from the defaults)."""
    parts = ["iterdeploy", "theory"]
    for check in args.check or []:
        parts += ["--check", check]
    if args.model:
        parts += ["--model", args.model]
    if args.beta_model:
        parts += ["--beta-model", args.beta_model]
    if args.run_dir:
        parts += ["--run-dir", args.run_dir]
    if args.run_seed is not None:
        parts += ["--run-seed", str(args.run_seed)]
    for dest, default in DEFAULTS.items():
        value = getattr(args, dest)
        if isinstance(value, tuple):
            value = list(value)
        if value != default and value is not None:
            parts += ["--" + dest.replace("_", "-"), *map(str, value if isinstance(value, list) else [value])]
    if args.out is not None:
        parts += ["--out", str(args.out)]
    return " ".join(shlex.quote(p) for p in parts)
