"""Checks before any work: whether this launch (its number of processes) can run a config, and whether each
method of a run or comparison reads the config's settings and can run at its sampling settings. Each method's
own checks are its plug-in's (``Method.check``, ``Method.launch_check``, ``Method.server_backend``)."""

from __future__ import annotations

from collections.abc import Sequence

from iterdeploy_trl import dist
from iterdeploy_trl.config import ConfigError, RunConfig, check_settings_read
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.methods import get as get_method
from iterdeploy_trl.training import process_batch


def check_launch(cfg: RunConfig) -> None:
    """Fail before any work if this many processes cannot run ``cfg``."""
    n = dist.world_size()
    if n == 1:
        return
    if cfg.sampling.backend == "vllm":
        # Each process would start its own vLLM engine, and every engine would take the first GPU.
        raise RunError(f"sampling.backend vllm does not run under {n} processes: deploy through vLLM servers "
                       "instead (sampling.backend vllm-server, docs/scale-out.md), launch one process (vLLM can "
                       "use several GPUs itself), or use sampling.backend transformers")
    method = get_method(cfg.method)
    if method.launch_check is not None:
        method.launch_check(cfg)
    else:
        process_batch(cfg.training.batch_size, cfg.training.gradient_accumulation_steps)


def check_methods(cfg: RunConfig, methods: Sequence[str], *, compare: bool = False,
                  read_by: Sequence[str] | None = None) -> None:
    """Before any work: every setting of ``cfg`` is read by one of ``read_by`` (default ``methods``; a
    ``ConfigError`` names the first that is not; ``compare``: ``iterdeploy compare`` reads ``tuning``), and
    each of ``methods`` can run at the config's sampling settings (its ``Method.check``)."""
    check_settings_read(cfg, tuple(read_by or methods), compare=compare)
    check_server_methods(cfg, methods)
    for name in methods:
        method = get_method(name)
        if method.check is not None:
            method.check(cfg)


def check_server_methods(cfg: RunConfig, methods: Sequence[str]) -> None:
    """Fail with a ``ConfigError`` naming ``sampling.backend`` when a method among ``methods`` samples its
    training completions inside TRL (``Method.server_backend`` False) and the backend is ``vllm-server``; asked
    before any server is contacted."""
    if cfg.sampling.backend != "vllm-server":
        return
    online = [m for m in methods if not get_method(m).server_backend]
    if online:
        raise ConfigError(f"sampling.backend: 'vllm-server' with method {online[0]}: it samples its training "
                          "completions inside TRL's GRPOTrainer, whose server mode talks to `trl vllm-serve` (it "
                          "pushes the weights into the server), not to `vllm serve` with LoRA loading; use "
                          f"sampling.backend transformers for {online[0]} (or vllm on a GPU)")
