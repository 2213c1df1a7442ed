"""`iterdeploy evaluate`: deploy a model on a task set and count the tasks it solves (VAL-checked)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="deploy a model on a task set and count solved tasks",
                       description="Samples --samples completions per task of a task set from a local model, "
                                   "extracts each plan and validates it with VAL; prints the tasks solved (a task "
                                   "is solved when any of its samples is valid), the rate and the fraction of "
                                   "legal actions.")
    p.add_argument("--model", type=Path, required=True, help="local model directory (any HF causal LM)")
    p.add_argument("--tasks", type=Path, required=True, help="task directory (IPC layout, `iterdeploy tasks`)")
    p.add_argument("--samples", type=int, default=1, help="completions per task (solved: any valid)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1] (default: 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=512,
                   help="generation limit (default: 512; a small model with state notes writes ~25 tokens an action)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="sequences per generate() call of the transformers backend (default: 64)")
    p.add_argument("--prompt-style", choices=["compact", "paper"], default="compact",
                   help="compact: the small local model's word-level prompt (default); paper: the study's prompt "
                        "through the tokenizer's chat template, for Hugging Face chat models")
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                   help="generation engine: transformers (default) or an in-process vLLM engine")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--traces", type=Path, default=None, help="write every trace record to this JSONL file")
    p.add_argument("--json", action="store_true", help='print {"solved", "tasks", "rate", "legal_action_fraction"}')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.errors import RunError
    from iterdeploy_trl.evaluate import evaluate_model
    from iterdeploy_trl.tasks import TaskSetError

    try:
        result = evaluate_model(args.model, args.tasks, samples=args.samples, temperature=args.temperature,
                                top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                prompt_style=args.prompt_style, backend=args.backend, seed=args.seed,
                                traces_out=args.traces, progress=not args.json)
    except (RunError, TaskSetError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"iterdeploy evaluate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: result[k] for k in ("solved", "tasks", "rate", "legal_action_fraction")}))
    else:
        print(f"solved {result['solved']}/{result['tasks']} ({result['rate']:.1%}); "
              f"legal actions {result['legal_action_fraction']:.1%}; "
              f"valid completions {result['valid_fraction']:.1%}")
    return 0
