"""`iterdeploy gpu-check`: the paper configs' GPU path (vLLM bf16 + LoRA, REINFORCE through TRL's vLLM) checked
end to end in minutes on a fresh machine; a reduced CPU mode runs the same steps where there is no GPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gpu-check", help="check the GPU path (vLLM bf16 + LoRA, TRL's vLLM REINFORCE) in minutes",
                       description="Reports the machine, makes a Qwen3 model locally, runs one valid-SFT generation "
                                   "(vLLM, bf16, LoRA) and one REINFORCE step through TRL's vLLM integration, checks "
                                   "behaviour log-probs against the trainer's log pi, the LoRA adapter against the "
                                   "merged model and the run directory against the CPU schema, measures throughput, "
                                   "and writes OUT/gpu_check.json. Without a GPU (or with --cpu) a reduced CPU mode "
                                   "runs the same steps and reports the GPU-only ones as skipped, with the reason.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--cpu", action="store_true", help="the reduced CPU mode (automatic without a CUDA GPU)")
    which.add_argument("--gpu", action="store_true",
                       help="the GPU mode, refused on a machine that lacks a CUDA GPU, bf16 or vLLM (default: "
                            "GPU mode where torch sees a CUDA GPU)")
    p.add_argument("--out", type=Path, default=Path("gpu-check"),
                   help="a new directory for the check's model, runs and gpu_check.json (default: ./gpu-check)")
    p.add_argument("--with-vllm", action="store_true",
                   help="CPU mode only: deploy through vLLM's CPU build (run with .venv-vllm's Python) instead of "
                        "the transformers backend")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="wall-time budget; steps that would start after it are reported as skipped (default: 480)")
    p.add_argument("--verbose", action="store_true",
                   help="show the libraries' own logs (by default they go to OUT/run.log)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.console import quiet_session
    from iterdeploy_trl.gpucheck import (
        DEFAULT_BUDGET_S,
        RESULT_FILE,
        GpuCheckError,
        choose_mode,
        run_gpu_check,
    )

    mode = choose_mode(args.cpu, args.gpu)
    if args.with_vllm and mode != "cpu":
        print("iterdeploy gpu-check: --with-vllm is for the CPU mode (the GPU mode always deploys through vLLM)",
              file=sys.stderr)
        return 2
    if mode == "cpu" and not args.cpu:
        print("iterdeploy gpu-check: torch sees no CUDA GPU: running the reduced CPU mode (--gpu to require one)")
    if args.out.exists() and any(args.out.iterdir()):
        print(f"iterdeploy gpu-check: --out {args.out} is not empty: give a new directory", file=sys.stderr)
        return 2
    print(f"iterdeploy gpu-check ({mode} mode) into {args.out}")
    try:
        with quiet_session(None if args.verbose else args.out, progress=False):
            result = run_gpu_check(args.out, mode=mode, budget_s=args.budget or DEFAULT_BUDGET_S,
                                   vllm_on_cpu=args.with_vllm)
    except GpuCheckError as exc:
        print(f"iterdeploy gpu-check: {exc}", file=sys.stderr)
        return 2
    skipped = len(result["skipped"])
    print(f"{'ok' if result['ok'] else 'FAILED'}: {sum(s['status'] == 'pass' for s in result['steps'])} of "
          f"{len(result['steps'])} steps passed on {result['device']} in {result['wall_seconds']} s"
          f"{f', {skipped} part(s) skipped (reasons above and in the JSON)' if skipped else ''}; "
          f"{args.out / RESULT_FILE}")
    return 0 if result["ok"] else 1
