"""Step 1 of ``iterdeploy gpu-check``: the machine (GPU, CUDA, bf16, the versions of torch, vLLM and TRL), what
the GPU mode needs and this machine lacks, and the mode to run in."""

from __future__ import annotations

import warnings
from typing import Any

from iterdeploy_trl.gpucheck.common import Step


def machine_report() -> dict[str, Any]:
    """The GPU (name, memory, compute capability, bf16), CUDA, and the versions of torch, vLLM, TRL and the rest
    (``runio.machine_record``), with ``lacks``: what the GPU mode needs and this machine does not have."""
    import torch

    from iterdeploy_trl.runio import machine_record

    report: dict[str, Any] = {**machine_record(), "cuda": torch.version.cuda, "torch": torch.__version__}
    lacks: list[str] = []
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                         "compute_capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
                         "bf16": bool(torch.cuda.is_bf16_supported())}
        if not report["gpu"]["bf16"]:
            lacks.append(f"bf16: {props.name} does not support bfloat16 (the paper configs' dtype)")
    else:
        report["gpu"] = None
        lacks.append("CUDA GPU: torch sees none (torch.cuda.is_available() is False"
                     f"{'; this torch has no CUDA build' if torch.version.cuda is None else ''})")
    report["vllm"], problem = vllm_version()
    if problem:
        from iterdeploy_trl.deploy import VLLM_INSTALL_HELP

        lacks.append(f"{problem}; install it {VLLM_INSTALL_HELP}")
    elif report["gpu"] is not None:
        from iterdeploy_trl.deploy import VLLM_INSTALL, vllm_on_cpu

        if vllm_on_cpu():
            lacks.append(f"vLLM for CUDA: the vLLM here ({report['vllm']}) runs on its CPU platform; install the CUDA "
                         f"build: {VLLM_INSTALL}")
    report["trl"], report["trl_vllm_warning"] = _trl_vllm_support()
    report["lacks"] = lacks
    return report


def vllm_version() -> tuple[str | None, str]:
    """(vLLM's version, '') where it imports, else (None, what is wrong)."""
    try:
        import vllm
    except Exception as exc:  # ImportError, or a broken install (CUDA/torch mismatch)
        return None, f"vLLM cannot be imported here ({type(exc).__name__}: {exc})"
    return str(getattr(vllm, "__version__", "unknown")), ""


def _trl_vllm_support() -> tuple[str, str | None]:
    """TRL's version and the warning it gives about the installed vLLM (it names the vLLM versions it supports),
    or None when it gives none."""
    import trl
    from trl.import_utils import is_vllm_available

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        is_vllm_available()
    text = [str(w.message) for w in caught if "vLLM" in str(w.message)]
    return trl.__version__, (text[0] if text else None)


def step_machine(mode: str) -> Step:
    """Report the machine; in GPU mode a machine that lacks something fails (the command refuses it)."""
    report = machine_report()
    step = Step("machine", data=report)
    if mode == "gpu" and report["lacks"]:
        step.status, step.reason = "fail", "; ".join(report["lacks"])
    if mode == "cpu":
        step.skipped_parts = [{"what": "GPU checks (CUDA, bf16 on a GPU, vLLM on CUDA)",
                               "reason": "CPU mode" + (f": {'; '.join(report['lacks'])}" if report["lacks"] else "")}]
    return step



def no_vllm_reason(mode: str) -> str:
    """Why a vLLM part did not run: the CPU mode, and whether vLLM is there at all."""
    _, problem = vllm_version()
    return f"CPU mode: {problem or 'vLLM imports, but the CPU mode samples with the transformers backend'}"


def choose_mode(cpu: bool, gpu: bool) -> str:
    """``cpu`` when asked or when torch sees no CUDA GPU (and the GPU mode was not asked for), else ``gpu``."""
    if cpu:
        return "cpu"
    if gpu:
        return "gpu"
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"
