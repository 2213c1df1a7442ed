"""Parameters a gradient is taken over, flattened gradients, cosines (overall and per module), and
per-sequence gradients g_y = ∇_θ log π(y|x) of an enumerated set of completions."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from iterdeploy_trl.theory.errors import TheoryError
from iterdeploy_trl.theory.policies import Policy, completion_logprobs
from iterdeploy_trl.theory.tasks import PlanningPrompt
from iterdeploy_trl.trainers import losses


@dataclass(frozen=True)
class ParamSet:
    """The parameters a gradient is taken over, in a fixed order, with their module groups.

    ``groups`` maps a module name ("embed", "layer0.attn", "layer0.mlp", "layer0.norm", "norm", ...) to
    the slice of the flattened gradient that its parameters occupy."""

    names: tuple[str, ...]
    params: tuple[torch.nn.Parameter, ...]
    groups: dict[str, list[slice]]

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)

    @cached_property
    def group_ids(self) -> Tensor:
        """(P,) index of each flattened entry's group, in the order of ``groups`` (CPU)."""
        ids = torch.empty(self.size, dtype=torch.long)
        for k, slices in enumerate(self.groups.values()):
            for s in slices:
                ids[s] = k
        return ids


def is_peft_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a ``peft`` model (has adapters)."""
    return hasattr(model, "peft_config")


def module_group(name: str) -> str:
    """Module group of a parameter name: ``model.layers.3.self_attn.q_proj.weight`` → ``layer3.attn``."""
    name = re.sub(r"^(base_model\.model\.)+", "", name)
    layer = re.search(r"layers\.(\d+)\.", name)
    if layer:
        rest = name[layer.end() :]
        part = "attn" if "attn" in rest else "mlp" if "mlp" in rest else "norm"
        return f"layer{layer.group(1)}.{part}"
    if "embed" in name:
        return "embed"
    if "lm_head" in name:
        return "lm_head"
    if "norm" in name:
        return "norm"
    return name.rsplit(".", 1)[0]


def trainable_parameters(model: torch.nn.Module) -> ParamSet:
    """All parameters with ``requires_grad`` (only the LoRA parameters of a ``peft`` model).

    Raises ``TheoryError`` if there are none: a gradient over no parameters has no direction."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if is_peft_model(model):
        named = [(n, p) for n, p in named if "lora_" in n]
    if not named:
        kind = "LoRA parameters" if is_peft_model(model) else "parameters with requires_grad=True"
        raise TheoryError(
            f"{type(model).__name__} has no trainable parameters ({kind}): a gradient over no parameters "
            f"has no direction. Unfreeze the model (param.requires_grad_(True)) or attach a LoRA adapter."
        )
    groups: dict[str, list[slice]] = {}
    start = 0
    for name, p in named:
        groups.setdefault(module_group(name), []).append(slice(start, start + p.numel()))
        start += p.numel()
    return ParamSet(tuple(n for n, _ in named), tuple(p for _, p in named), groups)


def flat_grad(objective: Tensor, params: ParamSet, retain_graph: bool = False) -> Tensor:
    """∇_θ objective, flattened over ``params`` (float64; unused parameters contribute zeros)."""
    grads = torch.autograd.grad(objective, params.params, allow_unused=True, retain_graph=retain_graph)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1).double()
            for g, p in zip(grads, params.params, strict=True)
        ]
    )


def cosine(a: Tensor, b: Tensor) -> float:
    """cos(a, b) = <a, b> / (‖a‖ ‖b‖). Raises ``NoValidTraces``-style ``TheoryError`` on a zero vector
    instead of dividing by zero (a zero policy gradient has no direction)."""
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        raise TheoryError("cosine undefined: one of the gradients is the zero vector (no valid trace?)")
    return float(a.double() @ b.double()) / (na * nb)


def per_module_cosine(a: Tensor, b: Tensor, params: ParamSet) -> dict[str, float]:
    """cos(a, b) restricted to each module group (NaN where either restriction is zero)."""
    a, b = a.double(), b.double()
    ids = params.group_ids.to(a.device)
    sums = torch.zeros(3, len(params.groups), dtype=torch.float64, device=a.device)
    sums.index_add_(1, ids, torch.stack([a * b, a * a, b * b]))
    out: dict[str, float] = {}
    for group, (ab, aa, bb) in zip(params.groups, sums.T.tolist(), strict=True):
        out[group] = ab / math.sqrt(aa * bb) if aa > 0 and bb > 0 else float("nan")
    return out


@dataclass
class SequenceGradients:
    """g_u = ∇_θ log π(y_u|x_u) of a fixed list of sequences (rows of ``matrix``, float64), with their
    token log-probabilities (detached) for computing loss coefficients.

    Every loss in ``losses.py`` is Σ_u c_u Σ_t log π(y_u,t) with per-trace factors c_u (``weighted_nll``),
    so its ascent direction is Σ_u c_u g_u: ``direction(c) = c @ matrix``. ``coefficients`` finds c by
    differentiating the loss with respect to the token log-probabilities (chain rule; no formula copied)."""

    keys: list[tuple[int, tuple[int, ...]]]  # (prompt index, completion ids)
    matrix: Tensor  # (U, P)
    token_logps: Tensor  # (U, T)
    mask: Tensor  # (U, T)
    params: ParamSet

    @property
    def seq_logps(self) -> Tensor:
        return losses.sequence_logprobs(self.token_logps, self.mask)

    def direction(self, coefficients: Tensor) -> Tensor:
        return coefficients.double() @ self.matrix

    def coefficients(self, loss_of: Callable[[Tensor], Tensor]) -> Tensor:
        """c_u with −∇_θ loss = Σ_u c_u g_u, where ``loss_of(token_logps)`` builds the loss from the (U, T)
        token log-probabilities (index rows to build a batch; duplicates add up)."""
        leaf = self.token_logps.detach().clone().requires_grad_(True)
        loss = loss_of(leaf)
        (d,) = torch.autograd.grad(loss, leaf, allow_unused=True)
        if d is None:
            return torch.zeros(len(self.keys), dtype=torch.float64, device=leaf.device)
        d = -d.double() * self.mask
        per_row = d.sum(1) / self.mask.sum(1).clamp(min=1)
        spread = (d - per_row[:, None] * self.mask).abs().max()
        if float(spread) > 1e-9 * max(1.0, float(per_row.abs().max())):
            raise RuntimeError(
                "loss is not a per-trace weighted sum of token log-probs; use a direct backward"
            )
        return per_row


def sequence_gradients(
    policy: Policy, prompts: Sequence[PlanningPrompt], params: ParamSet
) -> SequenceGradients:
    """Per-sequence gradients of every canonical valid completion of ``prompts`` (one backward each)."""
    keys, rows, tls = [], [], []
    policy.model.eval()
    for k, prompt in enumerate(prompts):
        for ids in prompt.valid_ids:
            tl, m = completion_logprobs(policy, prompt.prompt_ids, [ids])
            rows.append(flat_grad(losses.sequence_logprobs(tl, m).sum(), params))
            tls.append(tl.detach()[0].double())
            keys.append((k, ids))
    t_max = max(len(t) for t in tls)
    token_logps = torch.zeros(len(tls), t_max, dtype=torch.float64, device=rows[0].device)
    mask = torch.zeros_like(token_logps)
    for i, t in enumerate(tls):
        token_logps[i, : len(t)] = t
        mask[i, : len(t)] = 1
    return SequenceGradients(keys, torch.stack(rows), token_logps, mask, params)


def total_valid_probability_gradient(
    policy: Policy, prompts: Sequence[PlanningPrompt], params: ParamSet
) -> Tensor:
    """∇_θ (1/|X|) Σ_x Σ_{valid y} π(y|x), by autograd through exp(log π) (independent of the per-sequence
    gradients): the exact expected-reward gradient ∇J."""
    total = None
    for prompt in prompts:
        tl, m = completion_logprobs(policy, prompt.prompt_ids, prompt.valid_ids)
        mass = losses.sequence_logprobs(tl, m).exp().sum() / len(prompts)
        total = mass if total is None else total + mass
    return flat_grad(total, params)


def weighted_sequences_gradient(
    policy: Policy, prompts: Sequence[PlanningPrompt], params: ParamSet, weights: Sequence[Tensor]
) -> Tensor:
    """(1/|X|) Σ_x Σ_{valid y} a(y) ∇ log π(y|x) for detached per-sequence factors a (one tensor per
    prompt), as −∇ of ``losses.policy_gradient_loss`` with advantages a: a direct backward."""
    total = None
    for prompt, a in zip(prompts, weights, strict=True):
        tl, m = completion_logprobs(policy, prompt.prompt_ids, prompt.valid_ids)
        loss = losses.policy_gradient_loss(tl, m, a.to(tl), "sequence_sum", num_items=len(prompts))
        total = loss if total is None else total + loss
    return -flat_grad(total, params)
