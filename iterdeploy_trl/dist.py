"""Several processes (``accelerate launch`` or ``torchrun``): which process this is, and waiting for the rest.

Every process runs the same loop. Deployment is split by chunk (chunk j on process j mod N), training is
DDP through the TRL trainers, and every file of the run directory except a process's own trace chunks is
written by the main process alone; barriers put those writes before the reads. The launcher's variables
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) say how many processes there are; without them this module
does nothing and the loop runs as one process.

The process group is made here, before any trainer makes one, so that its timeout is ours: a barrier can
wait for the slowest process's share of a deployment, hours with a large reasoning model. Set it with
``ITERDEPLOY_DIST_TIMEOUT`` (seconds; default one day). It is not a config key because it does not change
results, and a new config key would change the hash of every existing run directory.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")

TIMEOUT_ENV = "ITERDEPLOY_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 24 * 3600


class MainProcessFailed(RuntimeError):
    """Raised in the other processes when a step that the main process runs first failed there."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes on this machine (they share its CPUs, e.g. for VAL)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


_this_rank = rank


def is_main() -> bool:
    return rank() == 0


def device() -> str:
    """This process's device: its own GPU (``cuda:LOCAL_RANK``) when CUDA exists, else the CPU."""
    import torch

    if torch.cuda.is_available():
        # modulo: a launcher may already show each process only its own GPU
        return f"cuda:{local_rank() % torch.cuda.device_count()}"
    return "cpu"


def timeout_seconds() -> float:
    value = os.environ.get(TIMEOUT_ENV)
    if value is None:
        return float(DEFAULT_TIMEOUT_S)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV}={value!r}: give the barrier timeout in seconds, e.g. 86400")
    return seconds


def init() -> None:
    """Join the process group (once; nothing to do in a single process): NCCL on GPUs, gloo on CPUs."""
    if world_size() == 1:
        return
    import torch
    import torch.distributed as tdist

    if tdist.is_initialized():
        return
    for var in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        if os.environ.get(var, "false").lower() == "true":
            raise ValueError(f"{var} is set: the loop supports plain data parallelism (DDP) only, since the main "
                             "process saves each generation's model alone; launch without FSDP/DeepSpeed")
    timeout = timedelta(seconds=timeout_seconds())
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
        tdist.init_process_group("nccl", timeout=timeout)
    else:
        # accelerate (hence the trainers) treats several CPU processes as one group only when told to use the
        # CPU; without this each process would train alone on its shard of the data.
        os.environ["ACCELERATE_USE_CPU"] = "true"
        tdist.init_process_group("gloo", timeout=timeout)
    atexit.register(_destroy)


def check_trainer(trainer: object) -> None:
    """Fail if a trainer does not train over all the processes (each would train alone on its data shard)."""
    n = trainer.accelerator.num_processes  # type: ignore[attr-defined]
    if n != world_size():
        raise RuntimeError(f"the trainer sees {n} process(es) but {world_size()} were launched (WORLD_SIZE): each "
                           "would train alone on part of the data; launch as README.md, 'Several GPUs', says")


def _destroy() -> None:
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.destroy_process_group()


def _active() -> bool:
    if world_size() == 1:
        return False
    import torch.distributed as tdist

    if not tdist.is_initialized():
        raise RuntimeError("WORLD_SIZE > 1 but the process group is not set up: call iterdeploy_trl.dist.init() first")
    return True


def barrier() -> None:
    """Wait until every process is here."""
    if not _active():
        return
    import torch.distributed as tdist

    if tdist.get_backend() == "nccl":
        tdist.barrier(device_ids=[int(device().split(":")[1])])
    else:
        tdist.barrier()


def from_main(value: T) -> T:
    """The main process's ``value``, in every process (for decisions that read files the main process writes)."""
    if not _active():
        return value
    import torch.distributed as tdist

    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def main_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` in the main process, then in the others: for steps that create shared files once (the run
    directory, the task set, the base model) and afterwards only read them. If it fails in the main
    process, the others raise :class:`MainProcessFailed` instead of waiting at a barrier."""
    if not _active():
        return fn()
    if is_main():
        try:
            result = fn()
        except BaseException as exc:
            from_main(f"{type(exc).__name__}: {exc}")
            raise
        from_main(None)
        return result
    error = from_main(None)
    if error is not None:
        raise MainProcessFailed(f"the main process failed: {error}")
    return fn()


def shard(items: Sequence[T], rank: int | None = None, world: int | None = None) -> list[T]:
    """This process's share of ``items``: item j goes to process j mod N. Items keep their identity (and
    their seeds) whatever N is, so N processes together do exactly what one process does."""
    r = _this_rank() if rank is None else rank
    n = world_size() if world is None else world
    if not 0 <= r < n:
        raise ValueError(f"rank {r} is not in 0..{n - 1}")
    return [item for j, item in enumerate(items) if j % n == r]


def split_batch(batch_size: int, accumulation: int, world: int) -> tuple[int, int]:
    """Per-process batch size and accumulation steps that keep the global batch (``batch_size`` x
    ``accumulation``) of a single process: accumulation steps are divided first (each micro-batch stays as
    it is, so per-micro-batch statistics such as IW self-normalisation do not change), then the batch."""
    from math import gcd

    g = gcd(accumulation, world)
    rest = world // g
    if batch_size % rest:
        raise ValueError(f"the global batch {batch_size} x {accumulation} (batch size x gradient accumulation "
                         f"steps) cannot be split evenly over {world} processes")
    return batch_size // rest, accumulation // g
