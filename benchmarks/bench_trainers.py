"""Step time of each trainer against the TRL trainer it extends, same model, same data, one run.

    python benchmarks/bench_trainers.py [--size small] [--steps 20] [--rounds 4] [--threads 1]

Pairs: ValidTraceSFTTrainer and ImportanceWeightedSFTTrainer vs trl.SFTTrainer (IW-SFT twice, three times with `--own-forward-row`: at
temperature 1 / top-p 1 its weights are the training forward's log π; at T = 0.6 / top-p 0.95 the training
forward's hidden states through the LM head once more; with bf16 autocast on CPU, or self-normalised over
accumulated micro-batches, a no-grad float32 forward of their own: the third row shows that
path's cost against the same baseline, full step only); ReinforceTrainer vs
trl.GRPOTrainer(scale_rewards="none") at T 1 / top-p 1 and at T 0.6 / top-p 0.95 (generation with
transformers, real VAL reward; below top-p 1 ours takes log q over the nucleus from a plain forward). Each trainer runs
`--steps` optimizer steps per round, the rounds alternate between the two trainers of a pair (every other
round in reverse order, ABBA; an even `--rounds` balances it), the first
steps of a run are warm-up; the figure is the median step time and the ratio ours / TRL's (goal <= 1.05).
For REINFORCE the step includes generation and VAL, which are TRL's and ours alike, so the loss alone
(forward + backward on one fixed generation batch) is timed too. A script, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback, set_seed
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from iterdeploy_trl.domains import domain_pddl
from iterdeploy_trl.models import build_tokenizer, make_small_model
from iterdeploy_trl.prompts import build_prompt
from iterdeploy_trl.reward import ValidPlanReward
from iterdeploy_trl.tasks import generate_tasks
from iterdeploy_trl.trainers import (
    ImportanceWeightedSFTConfig,
    ImportanceWeightedSFTTrainer,
    ReinforceConfig,
    ReinforceTrainer,
    ValidTraceSFTConfig,
    ValidTraceSFTTrainer,
)

WARMUP = 3


def clocks() -> tuple[float, float]:
    """(wall, CPU) seconds. On a shared machine the CPU time of this process is the steadier measure: it
    leaves out the time other processes hold the cores (VAL's subprocesses are left out of it too)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


class StepTimer(TrainerCallback):
    """Wall and CPU time of every optimizer step, end to end: from the end of the previous step (or the start
    of training) to the end of this one, so that work done before the first micro-batch (fetching the batch,
    IW-SFT's weights forward in `get_batch_samples`) is counted too."""

    def __init__(self, trainer: Any = None) -> None:
        self.times: list[tuple[float, float]] = []
        self.lengths: list[float] = []  # an RL trainer's mean completion length at each step (its metrics)
        self._start = (0.0, 0.0)
        self._trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = clocks()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        end = clocks()
        self.times.append((end[0] - self._start[0], end[1] - self._start[1]))
        metrics = getattr(self._trainer, "_metrics", {}).get("train", {}).get("completions/mean_length")
        if metrics:
            self.lengths.append(float(metrics[-1]))
        self._start = end


def common_args(out: Path, steps: int, batch: int, device: str) -> dict[str, Any]:
    return {
        "output_dir": str(out),
        "report_to": [],
        "bf16": device == "cuda",
        "use_cpu": device == "cpu",
        "save_strategy": "no",
        "activation_checkpointing": False,
        "disable_tqdm": True,
        "logging_steps": 10_000,
        "per_device_train_batch_size": batch,
        "max_steps": steps,
        "learning_rate": 1e-5,  # small: the models stay where they are, so later steps cost the same
    }


def time_pair(
    build: dict[str, Callable[[], Any]], rounds: int, lengths: dict[str, list[float]] | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Step times of each trainer; runs alternate between the trainers of the pair. ``lengths``, when given,
    receives each RL trainer's mean completion length per timed step (printed, to show that both trainers of a
    pair sampled the same work)."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in build}
    trainers = {name: make() for name, make in build.items()}
    for trainer in trainers.values():
        trainer.remove_callback(PrinterCallback)
    order = list(trainers.items())
    for r in range(rounds):
        # ABBA: every other round runs the pair in reverse, so a drift of the machine within a round (or an
        # advantage of running first) falls on both trainers alike
        for name, trainer in order if r % 2 == 0 else order[::-1]:
            timer = StepTimer(trainer)
            trainer.add_callback(timer)
            set_seed(0)  # same samples for both trainers of a pair (generation is the bulk of an RL step)
            trainer.train()
            trainer.remove_callback(timer)
            times[name].extend(timer.times[WARMUP:])
            if lengths is not None:
                lengths.setdefault(name, []).extend(timer.lengths[WARMUP:])
    return times


def loss_times(
    trainers: dict[str, Any], inputs: dict[str, Any], reps: int
) -> dict[str, list[tuple[float, float]]]:
    """Forward + backward of `compute_loss` on one fixed batch, alternating trainers."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in trainers}
    for trainer in trainers.values():
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
    order = list(trainers.items())
    for rep in range(reps + WARMUP):
        for name, trainer in order if rep % 2 == 0 else order[::-1]:  # ABBA, as in time_pair
            keep = getattr(trainer, "_extra_columns", ())  # behaviour_logprob for IW-SFT only
            batch = {k: v for k, v in inputs.items() if k != "behaviour_logprob" or k in keep}
            start = clocks()
            loss = trainer.compute_loss(trainer.model, batch)
            loss.backward()
            trainer.model.zero_grad(set_to_none=True)
            end = clocks()
            if rep >= WARMUP:
                times[name].append((end[0] - start[0], end[1] - start[1]))
    return times


def report(title: str, times: dict[str, list[tuple[float, float]]], baseline: str) -> None:
    """Median wall and CPU time per step, and their ratios to the TRL trainer's."""
    base = [statistics.median(t[k] for t in times[baseline]) for k in (0, 1)]
    print(f"\n{title}")
    print(f"  {'trainer':<40} {'wall ms':>9} {'ratio':>6} {'CPU ms':>9} {'ratio':>6}   n")
    for name, values in times.items():
        wall, cpu = (statistics.median(t[k] for t in values) for k in (0, 1))
        print(
            f"  {name:<40} {1000 * wall:9.2f} {wall / base[0]:6.3f} {1000 * cpu:9.2f} {cpu / base[1]:6.3f}"
            f"   {len(values)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size", default="small", help="small model size: tiny, small, medium (default small)"
    )
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default 20)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating runs per trainer, ABBA (default 4)")
    parser.add_argument("--batch", type=int, default=8, help="per-device batch size (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--pairs",
        nargs="+",
        choices=("sft", "reinforce"),
        default=["sft", "reinforce"],
        help="which pairs to time (default both)",
    )
    parser.add_argument(
        "--own-forward-row",
        action="store_true",
        help="also time IW-SFT on the path with its own weights forward (self-normalised over 2 accumulated "
        "micro-batches); full step only",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    tokenizer = build_tokenizer("blocksworld")
    domain = domain_pddl("blocksworld")
    tasks = generate_tasks("blocksworld", 64, 0, size=(2, 8))
    traces = [
        {"prompt": build_prompt(domain, t.problem), "completion": "\n".join(t.reference_plan) + "\n"}
        for t in tasks
    ]
    iw_traces = [{**row, "behaviour_logprob": -50.0 - i % 7} for i, row in enumerate(traces)]
    prompts = [
        {"prompt": r["prompt"], "domain_pddl": domain, "problem_pddl": t.problem}
        for r, t in zip(traces, tasks, strict=True)
    ]

    def model() -> torch.nn.Module:  # the same initial weights for every trainer
        return make_small_model(tokenizer, args.size, seed=0)

    print(
        f"model {args.size} ({sum(p.numel() for p in model().parameters()) / 1e6:.2f} M parameters), device {device}, "
        f"{args.threads} thread(s), batch {args.batch}, {args.steps} steps x {args.rounds} rounds"
    )

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        kw = common_args(out, args.steps, args.batch, device)
        sft = {
            "trl.SFTTrainer": lambda: SFTTrainer(
                model(),
                args=SFTConfig(**kw),
                train_dataset=Dataset.from_list(traces),
                processing_class=tokenizer,
            ),
            "ValidTraceSFTTrainer": lambda: ValidTraceSFTTrainer(
                model(),
                args=ValidTraceSFTConfig(**kw),
                train_dataset=Dataset.from_list(traces),
                processing_class=tokenizer,
            ),
            "ImportanceWeightedSFTTrainer": lambda: ImportanceWeightedSFTTrainer(
                model(),
                args=ImportanceWeightedSFTConfig(**kw, iw_truncate=10.0),
                train_dataset=Dataset.from_list(iw_traces),
                processing_class=tokenizer,
            ),
            # temperature/top-p: the weights from the training forward's hidden states (one more LM-head pass)
            "ImportanceWeightedSFTTrainer(T=0.6, top-p 0.95)": lambda: ImportanceWeightedSFTTrainer(
                model(),
                args=ImportanceWeightedSFTConfig(
                    **kw, iw_truncate=10.0, sampling_temperature=0.6, sampling_top_p=0.95
                ),
                train_dataset=Dataset.from_list(iw_traces),
                processing_class=tokenizer,
            ),
        }
        if args.own_forward_row:
            # self-normalised over 2 accumulated micro-batches: the weights need their own no-grad forward of the
            # optimizer batch (what bf16 autocast also forces); not a path the ≤ 1.05 goal covers
            sft["ImportanceWeightedSFTTrainer(T=0.6, top-p 0.95, own forward)"] = lambda: (
                ImportanceWeightedSFTTrainer(
                    model(),
                    args=ImportanceWeightedSFTConfig(
                        **{**kw, "per_device_train_batch_size": args.batch // 2},
                        gradient_accumulation_steps=2,
                        iw_self_normalize=True,
                        sampling_temperature=0.6,
                        sampling_top_p=0.95,
                    ),
                    train_dataset=Dataset.from_list(iw_traces),
                    processing_class=tokenizer,
                )
            )
        if "sft" in args.pairs:
            time_sft(sft, args)
        if "reinforce" in args.pairs:
            time_reinforce(kw, args, model, tokenizer, prompts)


def time_sft(sft: dict[str, Callable[[], Any]], args: argparse.Namespace) -> None:
    """The SFT pair(s): full optimizer steps, then the loss alone on one batch."""
    report("SFT (full optimizer step)", time_pair(sft, args.rounds), "trl.SFTTrainer")
    sft_trainers = {name: make() for name, make in sft.items() if "own forward" not in name}
    iw = sft_trainers["ImportanceWeightedSFTTrainer"]
    batch = iw._prepare_inputs(iw.data_collator([iw.train_dataset[i] for i in range(args.batch)]))
    report(
        "SFT (loss only: forward + backward on one batch)",
        loss_times(sft_trainers, batch, reps=args.steps * args.rounds),
        "trl.SFTTrainer",
    )


def time_reinforce(
    kw: dict[str, Any], args: argparse.Namespace, model: Callable[[], Any], tokenizer: Any, prompts: list
) -> None:
    """The REINFORCE pair at T 1 / top-p 1 and at T 0.6 / top-p 0.95 (where ReinforceTrainer's loss takes log q
    over the nucleus from a plain forward, GRPO's the fused log softmax(z/T)): full steps (generation, VAL,
    loss), then the loss alone on one generation batch."""
    for temperature, top_p in ((1.0, 1.0), (0.6, 0.95)):
        time_reinforce_at(kw, args, model, tokenizer, prompts, temperature, top_p)


def time_reinforce_at(
    kw: dict[str, Any],
    args: argparse.Namespace,
    model: Callable[[], Any],
    tokenizer: Any,
    prompts: list,
    temperature: float,
    top_p: float,
) -> None:
    setting = f"T {temperature:g} / top-p {top_p:g}"
    rl_kw = {
        **kw,
        "num_generations": args.batch,
        "max_completion_length": 48,
        "temperature": temperature,
        "top_p": top_p,
    }
    rl = {
        'trl.GRPOTrainer(scale_rewards="none")': lambda: GRPOTrainer(
            model(),
            reward_funcs=ValidPlanReward(),
            args=GRPOConfig(**rl_kw, scale_rewards="none"),
            train_dataset=Dataset.from_list(prompts),
            processing_class=tokenizer,
        ),
        "ReinforceTrainer": lambda: ReinforceTrainer(
            model(),
            reward_funcs=ValidPlanReward(),
            args=ReinforceConfig(**rl_kw),
            train_dataset=Dataset.from_list(prompts),
            processing_class=tokenizer,
        ),
    }
    lengths: dict[str, list[float]] = {}
    rl_times = time_pair(rl, args.rounds, lengths)
    report(
        f"REINFORCE at {setting} (full step: generation + VAL + loss)",
        rl_times,
        'trl.GRPOTrainer(scale_rewards="none")',
    )
    for name, values in lengths.items():
        if values:
            print(f"  {name:<40} mean completion length {statistics.mean(values):.2f} tokens over {len(values)} steps")

    trainers = {name: make() for name, make in rl.items()}
    grpo = trainers['trl.GRPOTrainer(scale_rewards="none")']
    grpo.model.train()
    inputs = grpo._generate_and_score_completions([grpo.train_dataset[i] for i in range(args.batch)])
    report(
        f"REINFORCE at {setting} (loss only: forward + backward on one generation batch)",
        loss_times(trainers, inputs, reps=args.steps * args.rounds),
        'trl.GRPOTrainer(scale_rewards="none")',
    )


if __name__ == "__main__":
    main()
