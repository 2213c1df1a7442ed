"""How often ``max_grad_norm`` clips: a ``TrainerCallback`` for every trainer of the package (valid-trace SFT,
IW-SFT, REINFORCE, TRL's GRPO), and the pure summary it reports.

HF ``Trainer`` clips the accumulated gradient to ``max_grad_norm`` before each optimizer step and logs the
norm it measured BEFORE clipping as ``grad_norm`` (``torch.nn.utils.clip_grad_norm_`` returns it; with
``max_grad_norm`` = 0 the norm is still measured, nothing is clipped). It logs only on logging steps, so the
callback asks for a log at every optimizer step (``control.should_log``): no other setting of the run changes,
and every step's norm is counted whatever ``logging_steps`` is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback


def grad_clip_summary(grad_norms: Sequence[float], max_grad_norm: float | None) -> dict[str, Any]:
    """What clipping did over the optimizer steps whose pre-clip gradient norms ‖g‖ are ``grad_norms``.

    clip_fraction  = (1/S) Σ_s 1[‖g_s‖ > max_grad_norm]  (0 when max_grad_norm is None or ≤ 0: no clipping;
                     None when S = 0); a clipped step moves by max_grad_norm/‖g_s‖ of its unclipped update
    grad_norm_mean = (1/S) Σ_s ‖g_s‖, grad_norm_max = max_s ‖g_s‖ (None when S = 0)
    A non-finite norm counts as a step (clipping cannot rescale it) and is left out of the mean and max."""
    clipping = max_grad_norm is not None and max_grad_norm > 0
    finite = [float(n) for n in grad_norms if math.isfinite(n)]
    clipped = sum(1 for n in grad_norms if clipping and n > max_grad_norm)
    steps = len(grad_norms)
    return {
        "max_grad_norm": max_grad_norm,
        "optimizer_steps": steps,
        "clipped_steps": clipped,
        "clip_fraction": clipped / steps if steps else None,
        "grad_norm_mean": sum(finite) / len(finite) if finite else None,
        "grad_norm_max": max(finite) if finite else None,
        "nonfinite_steps": steps - len(finite),
    }


class GradClipCallback(TrainerCallback):
    """Counts the optimizer steps whose pre-clip gradient norm exceeded ``max_grad_norm``.

    Use: ``clip = GradClipCallback(); trainer.add_callback(clip)`` (or ``callbacks=[clip]``), train, then
    ``clip.summary()`` (``grad_clip_summary``: clip_fraction, grad_norm_mean, grad_norm_max, steps) or the
    attributes ``clip_fraction`` and ``grad_norm_mean``. ``grad_norms`` holds each step's norm in order. Under
    several processes the norm is of the all-reduced gradient, the same on each process."""

    def __init__(self) -> None:
        self.grad_norms: list[float] = []
        self.max_grad_norm: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.max_grad_norm = args.max_grad_norm

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        control.should_log = True  # HF logs the step's grad_norm only on a logging step
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and "grad_norm" in logs:
            self.grad_norms.append(float(logs["grad_norm"]))

    def summary(self) -> dict[str, Any]:
        """``grad_clip_summary`` of the steps seen so far."""
        return grad_clip_summary(self.grad_norms, self.max_grad_norm)

    @property
    def clip_fraction(self) -> float | None:
        return self.summary()["clip_fraction"]

    @property
    def grad_norm_mean(self) -> float | None:
        return self.summary()["grad_norm_mean"]
