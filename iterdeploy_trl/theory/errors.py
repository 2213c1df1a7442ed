"""Errors of the theory checks: bad input, and a batch without a valid trace."""

from __future__ import annotations


class TheoryError(ValueError):
    """Bad input to a theory check (no trainable parameters, mismatched tokenizers, ...)."""


class NoValidTraces(TheoryError):
    """A batch without a valid trace: the REINFORCE gradient is exactly 0 and SFT has no data."""


def no_valid_message(n: int) -> str:
    return (
        f"no valid trace among the {n} samples (N⁺ = 0): the REINFORCE gradient (1/N) Σ r_i ∇log π is "
        f"exactly 0 and SFT on valid traces has no data, so their cosine is undefined; sample more "
        f"completions or use a model that solves some tasks"
    )
