"""What every step of ``iterdeploy gpu-check`` shares: the tolerances and file names, the two modes' sizes
(:class:`Scale`), a step's outcome (:class:`Step`) and the trace records of the check's run directory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterdeploy_trl import rundir

# Largest per-token gap (nats) between a recorded behaviour log-prob and the trainer's log pi of the same tokens,
# |beta - log pi| / completion tokens, accepted where either side runs in bf16: bf16 keeps 8 significant bits, so
# a logit of magnitude ~10 is rounded by up to ~0.04 and a token's log-prob moves by ~0.01 (two kernels, vLLM's
# and transformers', round differently). In float32 the per-sequence tolerance of theory.pipeline applies.
BF16_TOLERANCE_PER_TOKEN = 0.02
# TRL's default importance-sampling correction (GRPOConfig: vllm_importance_sampling_mode "sequence_mask",
# clip_max 3) drops sequences whose ratio pi/beta exceeds this: the check reports how many would be dropped.
TRL_IS_CLIP_MAX = 3.0
# The wall-time budget the issue sets for a fresh GPU machine (seconds); steps after it are skipped.
DEFAULT_BUDGET_S = 480.0
RESULT_FILE = "gpu_check.json"
OWN_MODEL_DIR = "model"  # the check's own folders (OUT/model, OUT/reinforce/model), not a run directory's


class GpuCheckError(RuntimeError):
    """The check cannot start (a machine that lacks what the mode needs, an unusable --out)."""


@dataclass(frozen=True)
class Scale:
    """The sizes of one mode of the check."""

    model_size: str  # models.SIZES key
    dtype: str  # the deployed and trained model's dtype (the paper configs: bfloat16)
    backend: str  # the main sampling backend
    tasks: int
    heldout: int
    task_size: tuple[int, int]
    samples_per_task: int
    max_new_tokens: int
    teach_epochs: float
    teach_learning_rate: float
    learning_rate: float  # the valid-SFT generation's LoRA
    sft_epochs: float
    lora_r: int
    parameters: tuple[float, float] | None = None  # the model's required size range (the issue: 50-100 M on a GPU)


GPU_SCALE = Scale(model_size="gpu-check", dtype="bfloat16", backend="vllm", tasks=16, heldout=4, task_size=(2, 3),
                  samples_per_task=4, max_new_tokens=64, teach_epochs=60, teach_learning_rate=1e-3,
                  learning_rate=5e-3, sft_epochs=2, lora_r=16,
                  parameters=(50e6, 100e6))
CPU_SCALE = Scale(model_size="tiny-h64", dtype="bfloat16", backend="transformers", tasks=4, heldout=2,
                  task_size=(2, 2), samples_per_task=4, max_new_tokens=32, teach_epochs=50,
                  teach_learning_rate=2e-2, learning_rate=2e-2, sft_epochs=4, lora_r=8)


@dataclass
class Step:
    """One step's outcome. ``skipped_parts``: what of the step did not run here, each with its reason."""

    name: str
    status: str = "pass"  # pass | fail | skipped
    seconds: float = 0.0
    reason: str = ""  # why it failed or was skipped
    data: dict[str, Any] = field(default_factory=dict)
    skipped_parts: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# A run directory's files that are not part of its schema (the run log, the lock and its holder record)
VOLATILE = ("run.log", ".lock", ".lock.json")


def gen_traces(run_dir: Path, generation: int) -> list[Any]:
    """The trace records of seed 0's ``generation`` in the check's run directory ``run_dir``."""
    from iterdeploy_trl.traces import read_traces

    return [r for p in rundir.chunk_files(rundir.gen_dir(rundir.seed_dir(run_dir, 0), generation))
            for r in read_traces(p)]
