r"""Empirical checks of the theory: valid-trace SFT is binary-reward REINFORCE (Prop. 1 and 2).

Notation as in ``DESIGN.md``: π the policy being trained, β an earlier (behaviour) policy, x a prompt,
y a completion (token sequence, eos included), r(x, y) ∈ {0, 1} the binary reward, N samples per prompt
of which N⁺ are valid, g_y = ∇_θ log π(y|x) with log π summed over the completion's tokens, and
J(θ) = (1/|X|) Σ_x Σ_y π(y|x) r(x, y) the expected reward, whose gradient is ∇J = E_π[r ∇ log π].

Every "gradient" below is an ascent direction g = −∇_θ L of a loss from ``trainers/losses.py`` (the
loss formulas are never re-implemented here), flattened over the trainable parameters (only the LoRA
parameters of a ``peft`` model), and compared by cosine similarity, overall and per module.

Four checks, each returning rows ``{check, expected, measured, verdict}`` and data for plots:

- ``on_policy_same_samples``: N samples of π per prompt, real VAL rewards; SFT on the valid ones under
  each normalisation and REINFORCE under each baseline, on the same samples. Expected: cosine 1 for
  ``sequence_sum`` and ``batch_tokens`` with the norm ratio N/N⁺ (resp. N/T⁺); below 1 for
  ``sequence_mean`` when valid lengths differ; not parallel in general with a baseline.
- ``exact_gradient``: every valid plan of ≤ L actions is enumerated with the simulator and tokenised in
  the canonical completion format; ∇J = Σ_{valid y} π(y|x) g_y is compared with autograd of the total
  valid probability, and Monte-Carlo SFT-on-valid and REINFORCE estimates with N samples converge to it.
  Reward here: r(y) = 1 iff y is one of those canonical completions (VAL accepts each of them; a VAL-valid
  sample that is not canonical — longer than L actions, different spacing — scores 0).
- ``off_policy``: valid samples of β used to train π. Plain SFT converges to Σ β r g (reward r·β/π);
  importance-weighted SFT (w = π/β; truncated; self-normalised) to π's on-policy direction (truncation:
  to Σ β r min(w, c) g).
- ``mixture`` (Prop. 2): a fraction λ of the samples from π and 1 − λ from β, SFT on the valid ones, has
  expected gradient λ E_π[r g] + (1 − λ) E_β[r g] = E_π[r (λ + (1 − λ) β/π) g]; checked exactly by
  enumeration and by Monte Carlo.

``theory.json`` (``TheoryReport.to_json``; ``SCHEMA`` names the version)::

    {
      "schema": "iterdeploy-theory/1",
      "created": ISO time, "runtime_s": float, "command": str | null,
      "setup": {model, dtype, device, seed, repeats, sample_sizes, max_actions, warmup: {...},
                tasks: {on_policy: [...], exact: [{id, prompt, valid_plans, valid_mass_pi, valid_mass_beta}]}},
      "rows": [{"check", "expected", "measured", "verdict": "pass" | "fail"}],
      "checks": {name: {"runtime_s": float, ...check-specific numbers...}},
      "plots": [{
        "id": str, "check": str, "title": str,
        "x_label": str, "y_label": str, "x": [N, ...],        # samples per prompt
        "series": [{"name": str, "label": str,
                    "values": [[cosine of repeat r at x[i] for r] for i],   # raw, for custom bands
                    "mean": [...], "std": [...], "p10": [...], "p50": [...], "p90": [...],
                    "per_module_mean": {module: [...]}}],               # mean cosine per module group
        "reference_lines": [{"name": str, "label": str, "y": float}]   # exact limits (1 = on-policy)
      }]
    }
"""

from __future__ import annotations

import copy
import math
import re
import statistics
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from iterdeploy_trl.tasks.taskset import plan_text
from iterdeploy_trl.trainers import losses

SCHEMA = "iterdeploy-theory/1"
CHECKS: tuple[str, ...] = ("on_policy_same_samples", "exact_gradient", "off_policy", "mixture")
PASS, FAIL = "pass", "fail"


class TheoryError(ValueError):
    """Bad input to a theory check (no trainable parameters, mismatched tokenizers, ...)."""


class NoValidTraces(TheoryError):
    """A batch without a valid trace: the REINFORCE gradient is exactly 0 and SFT has no data."""


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    check: str
    expected: str
    measured: str
    verdict: str  # "pass" | "fail"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class CheckResult:
    """Rows of one check, the numbers behind them, and the curves to plot."""

    name: str
    rows: list[Row]
    data: dict[str, Any] = field(default_factory=dict)
    plots: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TheoryReport:
    """All checks of a run (see the module docstring for the JSON schema)."""

    results: list[CheckResult]
    setup: dict[str, Any]
    runtime_s: float = 0.0
    command: str | None = None

    @property
    def rows(self) -> list[Row]:
        return [row for result in self.results for row in result.rows]

    @property
    def passed(self) -> bool:
        return all(row.verdict == PASS for row in self.rows)

    def to_json(self) -> dict[str, Any]:
        """The ``theory.json`` object; NaN (no valid sample in a draw) becomes null."""
        return _json_safe(
            {
                "schema": SCHEMA,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "runtime_s": round(self.runtime_s, 2),
                "command": self.command,
                "setup": self.setup,
                "rows": [row.to_dict() for row in self.rows],
                "checks": {r.name: r.data for r in self.results},
                "plots": [plot for r in self.results for plot in r.plots],
            }
        )


def _json_safe(value: Any) -> Any:
    """Replace NaN and infinities by None (strict JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def verdict(ok: bool) -> str:
    return PASS if ok else FAIL


# ------------------------------------------------------------------------------------- parameters


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


# --------------------------------------------------------------------------------------- policies


@dataclass
class Policy:
    """A causal LM as a sampling distribution: softmax(logits / temperature), token by token."""

    model: torch.nn.Module
    tokenizer: Any
    temperature: float = 1.0
    name: str = "π"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eos_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise TheoryError("the tokenizer has no eos token: completions need an end-of-sequence token")
        return int(eos)


def _rmsnorm_in_input_dtype(self: torch.nn.Module, hidden_states: Tensor) -> Tensor:
    """w ⊙ x / sqrt(mean(x²) + ε) in x's own dtype when x is float64; the layer's own forward otherwise."""
    if hidden_states.dtype != torch.float64:
        return type(self).forward(self, hidden_states)
    eps = getattr(self, "variance_epsilon", None) or self.eps
    return self.weight * (hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + eps))


def to_precision(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast ``model`` to ``dtype``; in float64 also make its RMSNorm layers compute in float64.

    Hugging Face RMSNorm layers compute in float32 (an upcast for half precision, a DOWNcast for float64),
    so in float64 two losses that differ by a constant factor would give gradients whose ratio is off by
    ~1e-8. A layer is patched only if the float64 formula reproduces its output on a probe (so a variant
    such as Gemma's (1 + w) scale is left alone)."""
    model.to(dtype)
    if dtype != torch.float64:
        return model
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (
            not type(module).__name__.endswith("RMSNorm")
            or not isinstance(weight, Tensor)
            or weight.dim() != 1
        ):
            continue
        if getattr(module, "variance_epsilon", None) is None and getattr(module, "eps", None) is None:
            continue
        patched = types.MethodType(_rmsnorm_in_input_dtype, module)
        probe = torch.randn(3, weight.shape[0], dtype=torch.float64, device=weight.device)
        with torch.no_grad():
            ok = torch.allclose(patched(probe), type(module).forward(module, probe), rtol=1e-5, atol=1e-6)
        if ok:
            module.forward = patched
    return model


def check_same_tokenizer(a: Any, b: Any) -> None:
    """β and π must tokenise identically: an importance weight π(y)/β(y) compares probabilities of the
    same token sequence. Raises ``TheoryError`` naming the first difference."""
    if a is b:
        return
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id"):
        if getattr(a, attr, None) != getattr(b, attr, None):
            raise TheoryError(
                f"β and π have different tokenizers ({attr}: {getattr(b, attr, None)} vs "
                f"{getattr(a, attr, None)}): importance weights π(y)/β(y) need the same token sequences; "
                f"load both models with the same tokenizer"
            )
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        diff = sorted(set(va.items()) ^ set(vb.items()))[:3]
        raise TheoryError(
            f"β and π have different tokenizers (vocabularies of {len(vb)} and {len(va)} tokens differ, e.g. "
            f"{diff}): importance weights π(y)/β(y) need the same token sequences; load both models with the "
            f"same tokenizer"
        )


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a prompt as TRL's SFT tokenises it (the tokenizer's special tokens included)."""
    return list(tokenizer(prompt)["input_ids"])


def canonical_completion(plan: Sequence[str]) -> str:
    """The plan as the model writes it: one action a line, ``(name a b)\\n`` each (``plan_text``)."""
    return plan_text(plan)


def encode_completion(tokenizer: Any, prompt: str, completion: str) -> tuple[int, ...]:
    """Completion token ids as TRL's SFT makes them: tokenise prompt + completion + eos and keep what
    follows the tokenised prompt. Raises ``TheoryError`` if the prompt's tokens are not a prefix."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    full = list(tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"])
    if full[: len(prompt_ids)] != prompt_ids:
        raise TheoryError(
            "the tokenised prompt is not a prefix of the tokenised prompt + completion (tokens merge across "
            "the boundary): end the prompt on a token boundary, e.g. with a newline"
        )
    ids = full[len(prompt_ids) :]
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    return tuple(ids)


def completion_logprobs(
    policy: Policy, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]]
) -> tuple[Tensor, Tensor]:
    """Per-token log-probabilities of completions of one prompt, (n, T) each, T the longest completion.

    token_logps[i, t] = log softmax(logits/τ)[y_i,t] given (x, y_i,<t), by ``losses.token_logprobs``;
    mask[i, t] = 1 on y_i's own tokens. Differentiable (call under ``torch.no_grad()`` to avoid a graph)."""
    if not completions:
        raise TheoryError("no completions to score")
    device = policy.device
    n, p = len(completions), len(prompt_ids)
    t_max = max(len(c) for c in completions)
    pad = policy.tokenizer.pad_token_id if policy.tokenizer.pad_token_id is not None else policy.eos_id
    ids = torch.full((n, p + t_max), pad, dtype=torch.long, device=device)
    attention = torch.zeros_like(ids)
    ids[:, :p] = torch.as_tensor(list(prompt_ids), device=device)
    mask = torch.zeros(n, t_max, device=device)
    for i, c in enumerate(completions):
        ids[i, p : p + len(c)] = torch.as_tensor(list(c), device=device)
        attention[i, : p + len(c)] = 1
        mask[i, : len(c)] = 1
    logits = policy.model(input_ids=ids, attention_mask=attention).logits[:, p - 1 : p - 1 + t_max]
    if policy.temperature != 1.0:
        logits = logits / policy.temperature
    token_logps = losses.token_logprobs(logits, ids[:, p:], mask)
    return token_logps, mask.to(token_logps.dtype)


def sequence_logprobs(
    policy: Policy, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]], batch_size: int = 256
) -> Tensor:
    """log policy(y|x) summed over each completion's tokens (no gradient), (n,)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(completions), batch_size):
            tl, m = completion_logprobs(policy, prompt_ids, completions[start : start + batch_size])
            out.append(losses.sequence_logprobs(tl, m).double())
    return torch.cat(out)


@torch.no_grad()
def sample_completions(
    policy: Policy,
    prompt_ids: Sequence[int],
    n: int,
    *,
    max_new_tokens: int,
    generator: torch.Generator,
) -> list[tuple[int, ...]]:
    """n i.i.d. ancestral samples y ~ policy(·|x), each cut after its first eos (kept) or at
    ``max_new_tokens``; returned in random order.

    Exactly the distribution ``completion_logprobs`` scores (softmax(logits/τ), no top-k/top-p), so a
    sample's log-probability is that of the event "these tokens", truncated or not. The n samples are drawn
    jointly: every distinct prefix with k samples behind it draws k next tokens and splits into one child
    per distinct token (a multinomial split, which is the joint law of k i.i.d. samples). The model runs
    once per distinct prefix and step, not once per sample, so a peaked policy is cheap to sample."""
    model, eos = policy.model, policy.eos_id
    model.eval()
    if n <= 0:
        return []
    device = policy.device
    res = model(input_ids=torch.as_tensor(list(prompt_ids), device=device)[None], use_cache=True)
    cache, logits = res.past_key_values, res.logits[:, -1]
    prefixes: list[tuple[int, ...]] = [()]
    counts = torch.tensor([n], device=device)
    done: list[tuple[tuple[int, ...], int]] = []
    for step in range(max_new_tokens):
        probs = torch.softmax(logits.double() / policy.temperature, -1)
        row = torch.repeat_interleave(torch.arange(len(prefixes), device=device), counts)
        token = torch.multinomial(probs[row], 1, generator=generator).squeeze(1)
        keys, sizes = torch.unique(row * probs.shape[-1] + token, return_counts=True)
        parent, token = (keys // probs.shape[-1]).tolist(), (keys % probs.shape[-1]).tolist()
        keep = []
        for i, (p, t, k) in enumerate(zip(parent, token, sizes.tolist(), strict=True)):
            if t == eos:
                done.append(((*prefixes[p], t), k))
            else:
                keep.append(i)
        if not keep or step == max_new_tokens - 1:
            done += [((*prefixes[parent[i]], token[i]), int(sizes[i])) for i in keep]
            break
        index = torch.as_tensor([parent[i] for i in keep], device=device)
        cache.reorder_cache(index)  # each child row starts from its parent's keys and values
        prefixes = [(*prefixes[parent[i]], token[i]) for i in keep]
        counts = sizes[keep]
        last = torch.as_tensor([token[i] for i in keep], device=device)[:, None]
        logits = model(input_ids=last, past_key_values=cache, use_cache=True).logits[:, -1]
    samples = [y for y, k in done for _ in range(k)]
    order = torch.randperm(
        len(samples),
        generator=torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        ),
    )
    return [samples[i] for i in order.tolist()]


# ------------------------------------------------------------------------------ tasks and rewards


@dataclass(frozen=True)
class PlanningPrompt:
    """A task as the model sees it, with its canonical valid completions (for the exact checks)."""

    task_id: str
    problem: str
    prompt: str
    prompt_ids: tuple[int, ...]
    blocks: int
    reference_plan: tuple[str, ...]
    valid_plans: tuple[tuple[str, ...], ...] = ()
    valid_ids: tuple[tuple[int, ...], ...] = ()  # canonical completion of each valid plan


def enumerate_valid_plans(domain_pddl: str, problem: str, max_actions: int) -> list[tuple[str, ...]]:
    """Every plan of 1..``max_actions`` actions, each applicable in turn, whose last state is a goal state
    (what VAL calls valid), by depth-first search with the simulator; sorted by length, then text."""
    from iterdeploy_trl.sim import Simulator

    sim = Simulator(domain_pddl, problem)
    found: list[tuple[str, ...]] = []

    def extend(state: Any, plan: list[str]) -> None:
        if plan and sim.is_goal(state):
            found.append(tuple(plan))
        if len(plan) == max_actions:
            return
        for action in sim.applicable(state):
            extend(sim.apply(state, action), [*plan, action])

    extend(sim.init_state, [])
    return sorted(found, key=lambda p: (len(p), p))


def planning_prompts(
    tokenizer: Any,
    domain: str,
    blocks: int,
    count: int,
    seed: int,
    *,
    max_actions: int | None = None,
    domain_pddl: str | None = None,
) -> list[PlanningPrompt]:
    """``count`` blocksworld-style tasks of ``blocks`` blocks with distinct prompts (compact style), from
    ``tasks.generate_tasks(domain, ·, seed, size=(blocks, blocks))``; with ``max_actions``, each with
    every valid plan of at most that many actions in canonical completion format."""
    from iterdeploy_trl.domains import domain_pddl as shipped_domain
    from iterdeploy_trl.prompts import build_prompt
    from iterdeploy_trl.tasks import generate_task

    dom = domain_pddl or shipped_domain(domain)
    seen: dict[str, PlanningPrompt] = {}
    for index in range(200):
        task = generate_task(domain, seed, index, (blocks, blocks))
        prompt = build_prompt(dom, task.problem, "compact", domain=domain)
        if prompt in seen:
            continue
        plans: tuple[tuple[str, ...], ...] = ()
        ids: tuple[tuple[int, ...], ...] = ()
        if max_actions is not None:
            plans = tuple(enumerate_valid_plans(dom, task.problem, max_actions))
            if not plans:
                continue  # no plan within the bound: useless for the exact checks
            ids = tuple(encode_completion(tokenizer, prompt, canonical_completion(p)) for p in plans)
        seen[prompt] = PlanningPrompt(
            task.id,
            task.problem,
            prompt,
            tuple(encode_prompt(tokenizer, prompt)),
            blocks,
            tuple(task.reference_plan),
            plans,
            ids,
        )
        if len(seen) == count:
            break
    return list(seen.values())


def val_rewards(domain_pddl: str, problems: Sequence[str], texts: Sequence[str]) -> Tensor:
    """Binary rewards r = 1[VAL accepts the plan extracted from the completion], one per text (float64).

    Each distinct (problem, plan) is validated once (``extract.extract_plan`` then
    ``validate.validate_batch``); a completion without a readable plan scores 0."""
    from iterdeploy_trl.extract import extract_plan
    from iterdeploy_trl.validate import validate_batch

    keys: list[tuple[str, tuple[str, ...]] | None] = []
    for problem, text in zip(problems, texts, strict=True):
        extraction = extract_plan(text)
        keys.append((problem, extraction.actions) if extraction.found and extraction.actions else None)
    distinct = sorted({k for k in keys if k is not None})
    verdicts = validate_batch([(domain_pddl, p, list(a)) for p, a in distinct])
    valid = {k: v.valid for k, v in zip(distinct, verdicts, strict=True)}
    return torch.tensor(
        [float(valid.get(k, False)) if k is not None else 0.0 for k in keys], dtype=torch.float64
    )


# --------------------------------------------------------------------------- estimators (losses.py)


def sft_on_valid_gradient_loss(
    token_logps: Tensor, mask: Tensor, rewards: Tensor, normalization: losses.Normalization
) -> Tensor:
    """SFT on the valid traces only: ``losses.sft_loss`` on the rows with r = 1.

    sequence_sum: L = −(1/N⁺) Σ_valid log π(y_i|x_i). Raises ``NoValidTraces`` if N⁺ = 0."""
    valid = rewards > 0.5
    if not bool(valid.any()):
        raise NoValidTraces(no_valid_message(len(rewards)))
    return losses.sft_loss(token_logps[valid], mask[valid], normalization)


def reinforce_gradient_loss(
    token_logps: Tensor,
    mask: Tensor,
    rewards: Tensor,
    baseline: losses.Baseline = "none",
    group_size: int | None = None,
) -> Tensor:
    """REINFORCE surrogate ``losses.reinforce_loss``: L = −(1/N) Σ_i A_i log π(y_i|x_i), A = r − b."""
    return losses.reinforce_loss(losses.sequence_logprobs(token_logps, mask), rewards, baseline, group_size)


def iw_sft_gradient_loss(
    token_logps: Tensor,
    mask: Tensor,
    seq_logp_beta: Tensor,
    *,
    truncate: float | None = None,
    self_normalize: bool = False,
    per_token: bool = False,
    plain: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Importance-weighted SFT on valid β-samples: ``losses.iw_sft_loss`` with
    ``losses.importance_weights(log π, log β)`` (w = π/β, detached; optionally truncated, self-normalised,
    or the per-token geometric mean w^(1/T)).
    ``plain=True`` gives plain SFT (w = 1). Returns the loss and the weight statistics."""
    if plain:
        return losses.sft_loss(token_logps, mask, "sequence_sum"), {}
    seq_pi = losses.sequence_logprobs(token_logps, mask)
    iw = losses.importance_weights(
        seq_pi,
        seq_logp_beta.to(seq_pi),
        truncate=truncate,
        self_normalize=self_normalize,
        per_token=per_token,
        lengths=mask.sum(1),
    )
    return losses.iw_sft_loss(token_logps, mask, iw.weights, "sequence_sum"), iw.stats


def no_valid_message(n: int) -> str:
    return (
        f"no valid trace among the {n} samples (N⁺ = 0): the REINFORCE gradient (1/N) Σ r_i ∇log π is "
        f"exactly 0 and SFT on valid traces has no data, so their cosine is undefined; sample more "
        f"completions or use a model that solves some tasks"
    )


# ------------------------------------------------------------------- per-sequence gradients (exact)


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


# ------------------------------------------------------------------------------------------ setup


@dataclass
class TheoryConfig:
    """Settings of ``run_checks``; the defaults run every check on 2 CPU cores in a few minutes."""

    domain: str = "blocksworld"
    model_path: str | None = None  # a local HF causal LM; None: a fresh small model (``model_size``)
    beta_model_path: str | None = (
        None  # β from a local HF causal LM (same tokenizer); None: a warm-up checkpoint
    )
    model_size: str = "tiny"
    device: str = "cpu"
    dtype: str = "float64"  # exactness: cosines of 1 to ~1e-15
    seed: int = 0
    # on_policy_same_samples
    on_policy_blocks: tuple[int, ...] = (2, 3)
    on_policy_prompts_per_size: int = 2
    on_policy_samples: int = 32  # per prompt
    on_policy_max_new_tokens: int = 64
    # exact_gradient / off_policy / mixture
    exact_blocks: int = 2
    exact_prompts: int = 3
    max_actions: int = 6  # L: valid plans of at most L actions are enumerated
    sample_sizes: tuple[int, ...] = (4, 16, 64, 256)  # N, samples per prompt
    repeats: int = 10
    truncate: float = 2.0  # weight cap c of truncated importance weights
    lambdas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    mixture_lambda: float = 0.5  # the Monte-Carlo mixture
    # warm-up: a few SFT steps on canonical valid plans, until the exact valid mass reaches the targets
    warmup_max_actions: int = 4  # train on the enumerated valid plans of at most this many actions
    warmup_max_steps: int = 600
    warmup_lr: float = 1e-2
    beta_mass: float = 0.05  # β = the first checkpoint whose valid mass reaches this on every prompt
    pi_mass: float = 0.5  # π = the first checkpoint whose mean valid mass reaches this
    beta_temperature: float = 1.5  # β = π at this temperature when no earlier checkpoint exists


@dataclass
class Setting:
    """What the checks run on: π, β, parameters, prompts."""

    pi: Policy
    beta: Policy
    params: ParamSet
    exact_prompts: list[PlanningPrompt]
    on_policy_prompts: list[PlanningPrompt]
    domain_pddl: str
    info: dict[str, Any]


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TheoryError(f"unknown dtype {name!r}: use float64 (exact) or float32")
    return dtype


def tolerance(dtype: torch.dtype) -> float:
    """1 − cosine allowed for vectors that theory says are parallel."""
    return 1e-9 if dtype == torch.float64 else 1e-4


def valid_mass(policy: Policy, prompts: Sequence[PlanningPrompt]) -> list[float]:
    """Σ_{valid y} policy(y|x) per prompt (canonical completions of ≤ L actions), exactly."""
    return [float(sequence_logprobs(policy, p.prompt_ids, p.valid_ids).exp().sum()) for p in prompts]


def warm_up(
    model: torch.nn.Module,
    tokenizer: Any,
    train: Sequence[tuple[Sequence[int], Sequence[int]]],
    eval_prompts: Sequence[PlanningPrompt],
    *,
    beta_mass: float,
    pi_mass: float,
    max_steps: int,
    lr: float,
    check_every: int = 5,
    log: Callable[[str], None] | None = None,
) -> tuple[torch.nn.Module | None, torch.nn.Module, dict[str, Any]]:
    """A few full-batch Adam steps (gradient norm clipped at 1) of SFT (``losses.sft_loss``, sequence_sum)
    on (prompt, completion) pairs, until the MEAN exact valid mass over ``eval_prompts`` reaches ``pi_mass``
    (or ``max_steps``), checked every ``check_every`` steps.

    Returns (β, π, log). π is the model when training stopped. β is a copy of the model at the first
    check where EVERY prompt's valid mass reached ``beta_mass`` (so that β's valid samples cover every
    prompt) while the mean was still below ``pi_mass``; failing that, the last checkpoint before π; None if
    training took no step (the caller then uses π at a higher temperature)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr) if trainable and max_steps > 0 else None
    by_prompt: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for prompt_ids, completion in train:
        by_prompt.setdefault(tuple(prompt_ids), []).append(tuple(completion))
    history: list[dict[str, Any]] = []
    beta: torch.nn.Module | None = None
    previous: tuple[int, torch.nn.Module] | None = None
    beta_step: int | None = None
    step = 0

    def masses() -> list[float]:
        model.eval()
        value = valid_mass(Policy(model, tokenizer), eval_prompts)
        history.append({"step": step, "valid_mass": [round(v, 6) for v in value]})
        return value

    current = masses()
    while optimizer is not None and statistics.fmean(current) < pi_mass and step < max_steps:
        previous = (step, copy.deepcopy(model))
        if beta is None and min(current) >= beta_mass:
            beta, beta_step = previous[1], step
        model.train()
        for _ in range(check_every):
            tls, masks = [], []
            for prompt_ids, completions in by_prompt.items():
                tl, m = completion_logprobs(Policy(model, tokenizer), prompt_ids, completions)
                tls.append(tl)
                masks.append(m)
            loss = losses.sft_loss(_pad_cat(tls), _pad_cat(masks), "sequence_sum")
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)  # Adam at this rate spikes without it
            optimizer.step()
            step += 1
        current = masses()
        if log:
            log(
                f"  warm-up step {step}: loss {loss.item():.2f}, valid mass per prompt "
                + " ".join(f"{m:.3f}" for m in current)
            )
    model.eval()
    if beta is None and previous is not None:
        beta_step, beta = previous
    info = {
        "steps": step,
        "lr": lr,
        "beta_step": beta_step,
        "beta_mass_target": beta_mass,
        "pi_mass_target": pi_mass,
        "history": history,
        "train_pairs": len(train),
    }
    return beta, model, info


def _pad_cat(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate (n_i, T_i) tensors along dim 0, right-padding with zeros to the longest T."""
    t_max = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, t_max - t.shape[1])) for t in tensors])


def build_setting(config: TheoryConfig, log: Callable[[str], None] | None = None) -> Setting:
    """Load or make π, warm it up on canonical valid plans, pick β, enumerate the valid plans."""
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.models import build_tokenizer, load_model_and_tokenizer, make_small_model

    dtype = _dtype(config.dtype)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise TheoryError(
            f"--device {config.device}: CUDA is not available on this machine; use --device cpu"
        )
    if config.repeats < 1 or not config.sample_sizes or min(config.sample_sizes) < 1:
        raise TheoryError("repeats and sample sizes must be positive")
    if config.model_path:
        try:
            model, tokenizer = load_model_and_tokenizer(config.model_path, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise TheoryError(str(exc)) from exc
        model_name = str(config.model_path)
    else:
        tokenizer = build_tokenizer(config.domain)
        model = make_small_model(tokenizer, config.model_size, seed=config.seed)
        model_name = f"make_small_model(size={config.model_size!r}, seed={config.seed}) (fresh)"
    trainable_parameters(model)  # fails early on a frozen model
    model.to(config.device)
    dom = domain_pddl(config.domain)
    exact = planning_prompts(
        tokenizer,
        config.domain,
        config.exact_blocks,
        config.exact_prompts,
        config.seed,
        max_actions=config.max_actions,
    )
    if not exact:
        raise TheoryError(
            f"no {config.exact_blocks}-block task has a plan of at most {config.max_actions} actions"
        )
    on_policy: list[PlanningPrompt] = []
    for blocks in config.on_policy_blocks:
        on_policy += planning_prompts(
            tokenizer, config.domain, blocks, config.on_policy_prompts_per_size, config.seed + 1
        )
    # Warm-up data: the short canonical valid plans of the exact prompts, the reference plans of the others.
    train = [
        (p.prompt_ids, ids)
        for p in exact
        for plan, ids in zip(p.valid_plans, p.valid_ids, strict=True)
        if len(plan) <= config.warmup_max_actions
    ]
    train += [
        (p.prompt_ids, encode_completion(tokenizer, p.prompt, canonical_completion(p.reference_plan)))
        for p in on_policy
        if p.prompt not in {e.prompt for e in exact}
    ]
    torch.manual_seed(config.seed)
    beta_model, pi_model, warm = warm_up(
        model,
        tokenizer,
        train,
        exact,
        beta_mass=config.beta_mass,
        pi_mass=config.pi_mass,
        max_steps=config.warmup_max_steps,
        lr=config.warmup_lr,
        log=log,
    )
    to_precision(pi_model, dtype)
    pi = Policy(pi_model, tokenizer, 1.0, "π")
    if config.beta_model_path:
        beta = _load_beta(config, tokenizer, dtype)
        warm["beta"] = f"loaded from {config.beta_model_path}"
    elif beta_model is None:
        beta = Policy(
            pi_model, tokenizer, config.beta_temperature, f"β = π at temperature {config.beta_temperature}"
        )
        warm["beta"] = (
            f"π at temperature {config.beta_temperature} (no earlier checkpoint reached the β mass)"
        )
    else:
        to_precision(beta_model, dtype).eval()
        for p in beta_model.parameters():
            p.requires_grad_(False)
        beta = Policy(beta_model, tokenizer, 1.0, f"β = π after {warm['beta_step']} warm-up steps")
        warm["beta"] = f"checkpoint after {warm['beta_step']} warm-up steps"
    params = trainable_parameters(pi_model)
    pi_mass, beta_mass = valid_mass(pi, exact), valid_mass(beta, exact)
    info = {
        "model": model_name,
        "parameters": params.size,
        "dtype": config.dtype,
        "device": config.device,
        "seed": config.seed,
        "repeats": config.repeats,
        "sample_sizes": list(config.sample_sizes),
        "max_actions": config.max_actions,
        "warmup": warm,
        "pi": pi.name,
        "beta": beta.name,
        "module_groups": list(params.groups),
        "tasks": {
            "on_policy": [{"id": p.task_id, "blocks": p.blocks, "prompt": p.prompt} for p in on_policy],
            "exact": [
                {
                    "id": p.task_id,
                    "blocks": p.blocks,
                    "prompt": p.prompt,
                    "valid_plans": len(p.valid_plans),
                    "valid_plan_lengths": sorted({len(v) for v in p.valid_plans}),
                    "valid_mass_pi": round(m_pi, 6),
                    "valid_mass_beta": round(m_b, 6),
                }
                for p, m_pi, m_b in zip(exact, pi_mass, beta_mass, strict=True)
            ],
        },
    }
    return Setting(pi, beta, params, exact, on_policy, dom, info)


def _load_beta(config: TheoryConfig, tokenizer: Any, dtype: torch.dtype) -> Policy:
    """β from ``config.beta_model_path``; its tokenizer must be π's."""
    from iterdeploy_trl.models import load_model_and_tokenizer

    try:
        model, beta_tokenizer = load_model_and_tokenizer(config.beta_model_path, device=config.device)
    except (OSError, ValueError) as exc:
        raise TheoryError(str(exc)) from exc
    check_same_tokenizer(tokenizer, beta_tokenizer)
    to_precision(model, dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Policy(model, tokenizer, 1.0, f"β = {config.beta_model_path}")


# ------------------------------------------------------------------ check 1: on-policy, same samples


def on_policy_same_samples(
    setting: Setting,
    config: TheoryConfig,
    samples: list[list[tuple[int, ...]]] | None = None,
    rewards: Tensor | None = None,
) -> CheckResult:
    """SFT-on-valid vs REINFORCE gradients on the same N samples of π per prompt (VAL rewards).

    ``samples`` (per prompt) and ``rewards`` (flat, prompt-major) replace sampling and VAL (tests)."""
    name = "on_policy_same_samples"
    start = time.perf_counter()
    pi, params, prompts = setting.pi, setting.params, setting.on_policy_prompts
    tol = tolerance(_dtype(config.dtype))
    if samples is None:
        gen = torch.Generator(device=pi.device).manual_seed(config.seed + 101)
        samples = [
            sample_completions(
                pi,
                p.prompt_ids,
                config.on_policy_samples,
                max_new_tokens=config.on_policy_max_new_tokens,
                generator=gen,
            )
            for p in prompts
        ]
    group = len(samples[0])
    if any(len(s) != group for s in samples):
        raise TheoryError("every prompt needs the same number of samples (baselines are per prompt group)")
    if rewards is None:
        texts = [pi.tokenizer.decode(list(y), skip_special_tokens=True) for s in samples for y in s]
        problems = [p.problem for p, s in zip(prompts, samples, strict=True) for _ in s]
        rewards = val_rewards(setting.domain_pddl, problems, texts)
    rewards = rewards.double().to(pi.device)
    n, n_valid = len(rewards), int(rewards.sum())
    # One forward per distinct completion; rows of the batch index into them (same gradient exactly).
    token_logps, mask = _batch_logprobs(pi, prompts, samples)
    lengths = mask.sum(1)
    valid_lengths = sorted(
        {int(t) for t, r in zip(lengths.tolist(), rewards.tolist(), strict=True) if r > 0.5}
    )
    data: dict[str, Any] = {
        "samples": n,
        "valid": n_valid,
        "prompts": len(prompts),
        "group_size": group,
        "valid_fraction_per_prompt": rewards.view(-1, group).mean(1).tolist(),
        "valid_lengths": valid_lengths,
    }

    def ascent(loss: Tensor) -> Tensor:
        return -flat_grad(loss, params, retain_graph=True)

    g_rl = {
        b: ascent(reinforce_gradient_loss(token_logps, mask, rewards, b, group)) for b in losses.BASELINES
    }
    rows: list[Row] = []
    if n_valid == 0:
        zero = float(g_rl["none"].norm())
        rows.append(
            Row(
                f"{name}: no valid trace",
                "N⁺ = 0 ⇒ REINFORCE gradient exactly 0 (nothing to compare)",
                f"N⁺ = 0 of N = {n}: ‖g_RL‖ = {zero:g}; " + no_valid_message(n),
                verdict(zero == 0.0),
            )
        )
        for norm in losses.NORMALIZATIONS:
            rows.append(
                Row(f"{name}: SFT[{norm}] ∥ REINFORCE", "cosine measurable", "not measurable: N⁺ = 0", FAIL)
            )
        data["runtime_s"] = time.perf_counter() - start
        return CheckResult(name, rows, data)
    g_sft = {
        norm: ascent(sft_on_valid_gradient_loss(token_logps, mask, rewards, norm))
        for norm in losses.NORMALIZATIONS
    }
    t_valid = float(lengths[rewards > 0.5].sum())
    expected_ratio = {"sequence_sum": n / n_valid, "batch_tokens": n / t_valid}
    comparisons = []
    for norm in losses.NORMALIZATIONS:
        cos = cosine(g_sft[norm], g_rl["none"])
        ratio = float(g_sft[norm].norm() / g_rl["none"].norm())
        entry = {
            "a": f"sft[{norm}]",
            "b": "reinforce[none]",
            "cosine": cos,
            "one_minus_cosine": 1 - cos,
            "norm_ratio": ratio,
            "per_module": per_module_cosine(g_sft[norm], g_rl["none"], params),
        }
        if norm in expected_ratio:
            want = expected_ratio[norm]
            entry["expected_norm_ratio"] = want
            ok = 1 - cos <= tol and abs(ratio - want) <= 1e3 * tol * want
            what = "N/N⁺" if norm == "sequence_sum" else "N/T⁺ (T⁺ valid tokens)"
            rows.append(
                Row(
                    f"{name}: SFT[{norm}] ∥ REINFORCE",
                    f"cosine = 1 (1−cos ≤ {tol:.0e}); ‖g_SFT‖/‖g_RL‖ = {what} = {want:.6g}",
                    f"1−cos = {1 - cos:.1e}; ratio {ratio:.6g} (N = {n}, N⁺ = {n_valid})",
                    verdict(ok),
                )
            )
        else:
            differ = len(valid_lengths) > 1
            ok = (1 - cos > 1e-6) if differ else (1 - cos <= tol)
            rows.append(
                Row(
                    f"{name}: SFT[{norm}] ∥ REINFORCE",
                    "cosine < 1 when valid lengths differ (trace i weighted by 1/T_i)"
                    if differ
                    else "cosine = 1 (all valid traces have the same length)",
                    f"cos = {cos:.6f} (1−cos = {1 - cos:.2e}); valid lengths {valid_lengths[0]}..{valid_lengths[-1]} "
                    f"tokens",
                    verdict(ok),
                )
            )
        comparisons.append(entry)
    per_group = rewards.view(-1, group).sum(1)
    degenerate = bool(((per_group == 0) | (per_group == group)).all())
    for b in ("mean", "leave_one_out"):
        norm_b = float(g_rl[b].norm())
        if norm_b == 0.0:
            cos_text, cos, ok = "g = 0 (every group all-valid or all-invalid)", float("nan"), degenerate
        else:
            cos = cosine(g_rl[b], g_rl["none"])
            cos_text, ok = f"cos = {cos:.6f} (1−cos = {1 - cos:.2e})", (1 - cos > 1e-6) or degenerate
        comparisons.append(
            {
                "a": f"reinforce[{b}]",
                "b": "reinforce[none]",
                "cosine": cos,
                "one_minus_cosine": 1 - cos if cos == cos else None,
                "norm_ratio": norm_b / float(g_rl["none"].norm()),
                "per_module": per_module_cosine(g_rl[b], g_rl["none"], params) if norm_b else {},
            }
        )
        expected = (
            "not parallel on the same samples (adds −(1/N) Σ_i b_i ∇log π(y_i), b_i = mean reward of y_i's "
            "prompt group); same direction in expectation ((1 − 1/G) ∇J)"
        )
        if b == "leave_one_out":
            expected = (
                "not parallel on the same samples (b_i = mean reward of the others in the group); unbiased; "
                "parallel to the mean-baseline vector: A_LOO = G/(G−1) · A_mean"
            )
            if norm_b > 0:
                to_mean = cosine(g_rl[b], g_rl["mean"])
                cos_text += f"; cos to mean-baseline vector = {to_mean:.12f}"
                ok = ok and 1 - to_mean <= tol
        rows.append(Row(f"{name}: REINFORCE[{b} baseline] vs SFT", expected, cos_text, verdict(ok)))
    data["comparisons"] = comparisons
    data["runtime_s"] = time.perf_counter() - start
    return CheckResult(name, rows, data)


def _batch_logprobs(
    policy: Policy, prompts: Sequence[PlanningPrompt], samples: Sequence[Sequence[tuple[int, ...]]]
) -> tuple[Tensor, Tensor]:
    """Token log-probs (with graph) of every sample, prompt-major, (N, T): one forward per distinct
    completion, rows indexed out of it (duplicates share a row, so the gradient is the same)."""
    tls, masks = [], []
    for prompt, ys in zip(prompts, samples, strict=True):
        distinct = sorted(set(ys))
        where = {y: i for i, y in enumerate(distinct)}
        tl, m = completion_logprobs(policy, prompt.prompt_ids, distinct)
        index = torch.as_tensor([where[y] for y in ys], device=tl.device)
        tls.append(tl[index])
        masks.append(m[index])
    return _pad_cat(tls), _pad_cat(masks)


# --------------------------------------------------- checks 2–4: exact gradient, off-policy, mixture


@dataclass
class ExactContext:
    """Shared by the exact checks: per-sequence gradients of every canonical valid completion, log π and
    log β of each, and the exact on-policy gradient ∇J."""

    grads: SequenceGradients
    logp_pi: Tensor  # (U,)
    logp_beta: Tensor  # (U,)
    prompt_of: Tensor  # (U,) prompt index of each sequence
    index: list[dict[tuple[int, ...], int]]  # per prompt: completion ids -> row
    exact_direction: Tensor  # ∇J
    max_new_tokens: int

    def per_prompt(self, values: Tensor) -> list[Tensor]:
        """A (U,) tensor over the sequences split into one tensor per prompt (rows are prompt-major)."""
        return list(values.split(torch.bincount(self.prompt_of, minlength=len(self.index)).tolist()))


def exact_context(setting: Setting) -> ExactContext:
    prompts = setting.exact_prompts
    grads = sequence_gradients(setting.pi, prompts, setting.params)
    prompt_of = torch.as_tensor([k for k, _ in grads.keys])
    index: list[dict[tuple[int, ...], int]] = [{} for _ in prompts]
    for u, (k, ids) in enumerate(grads.keys):
        index[k][ids] = u
    logp_pi = grads.seq_logps
    logp_beta = torch.cat([sequence_logprobs(setting.beta, p.prompt_ids, p.valid_ids) for p in prompts])
    # ∇J = (1/|X|) Σ_x Σ_valid π(y|x) g_y
    exact = grads.direction(logp_pi.exp() / len(prompts))
    longest = max(len(ids) for p in prompts for ids in p.valid_ids)
    return ExactContext(grads, logp_pi, logp_beta.to(logp_pi), prompt_of, index, exact, longest)


class SamplePool:
    """Samples of a policy for the exact prompts, drawn in one batch per prompt and handed out in disjoint
    consecutive blocks, so that every estimate uses its own independent samples.

    A sample is stored as its row in the per-sequence gradients (−1: not a canonical valid completion,
    reward 0)."""

    def __init__(
        self, policy: Policy, setting: Setting, ctx: ExactContext, per_prompt: int, generator: torch.Generator
    ) -> None:
        self.rows: list[Tensor] = []
        for k, prompt in enumerate(setting.exact_prompts):
            ys = (
                sample_completions(
                    policy,
                    prompt.prompt_ids,
                    per_prompt,
                    max_new_tokens=ctx.max_new_tokens,
                    generator=generator,
                )
                if per_prompt
                else []
            )
            self.rows.append(torch.as_tensor([ctx.index[k].get(y, -1) for y in ys], dtype=torch.long))
        self.position = 0

    def take(self, n: int) -> tuple[Tensor, int]:
        """The next n samples of every prompt: (rows of the valid ones, total number of samples)."""
        block = torch.cat([r[self.position : self.position + n] for r in self.rows])
        if len(block) != n * len(self.rows):
            raise RuntimeError("sample pool exhausted")
        self.position += n
        return block[block >= 0], len(block)


def _sft_coefficients(ctx: ExactContext, rows: Tensor) -> Tensor:
    """SFT on the valid samples ``rows`` (sequence_sum), as coefficients over the sequences."""
    return ctx.grads.coefficients(lambda tl: losses.sft_loss(tl[rows], ctx.grads.mask[rows], "sequence_sum"))


def _reinforce_coefficients(ctx: ExactContext, rows: Tensor, n_total: int) -> Tensor:
    """REINFORCE without baseline on n_total samples of which ``rows`` are valid: the invalid ones have
    A = r = 0, so only the valid rows' log-probs carry gradient (their values are irrelevant)."""

    def loss_of(tl: Tensor) -> Tensor:
        seq = losses.sequence_logprobs(tl[rows], ctx.grads.mask[rows])
        padded = torch.cat([seq, seq.new_zeros(n_total - len(rows))])
        rewards = torch.cat([torch.ones(len(rows)), torch.zeros(n_total - len(rows))]).to(seq)
        return losses.reinforce_loss(padded, rewards, "none")

    return ctx.grads.coefficients(loss_of)


def _iw_coefficients(ctx: ExactContext, rows: Tensor, **kwargs: Any) -> tuple[Tensor, dict[str, float]]:
    stats: dict[str, float] = {}

    def loss_of(tl: Tensor) -> Tensor:
        loss, s = iw_sft_gradient_loss(tl[rows], ctx.grads.mask[rows], ctx.logp_beta[rows], **kwargs)
        stats.update({k: float(v) for k, v in s.items()})
        return loss

    return ctx.grads.coefficients(loss_of), stats


def _summary(values: list[float]) -> dict[str, float]:
    v = torch.tensor(values, dtype=torch.float64)
    q = torch.quantile(v, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)) if len(values) else v
    return {
        "mean": float(v.mean()),
        "std": float(v.std()) if len(values) > 1 else 0.0,
        "p10": float(q[0]),
        "p50": float(q[1]),
        "p90": float(q[2]),
    }


@dataclass
class _Series:
    name: str
    label: str
    values: list[list[float]] = field(default_factory=list)  # per N, per repeat
    modules: list[list[dict[str, float]]] = field(default_factory=list)

    def add(self, i: int, value: float, per_module: dict[str, float]) -> None:
        while len(self.values) <= i:
            self.values.append([])
            self.modules.append([])
        self.values[i].append(value)
        self.modules[i].append(per_module)

    def add_nan(self, i: int, groups: Iterable[str]) -> None:
        """A draw without a valid sample: no estimate, NaN everywhere."""
        self.add(i, float("nan"), dict.fromkeys(groups, float("nan")))

    def to_json(self) -> dict[str, Any]:
        stats = [_summary(v) for v in self.values]
        groups = list(self.modules[0][0]) if self.modules and self.modules[0] else []
        return {
            "name": self.name,
            "label": self.label,
            "values": self.values,
            **{k: [s[k] for s in stats] for k in ("mean", "std", "p10", "p50", "p90")},
            "per_module_mean": {g: [_nanmean([m[g] for m in ms]) for ms in self.modules] for g in groups},
        }


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v == v]
    return statistics.fmean(kept) if kept else float("nan")


def _record(
    series: _Series, i: int, ctx: ExactContext, coef: Tensor, target: Tensor, params: ParamSet
) -> None:
    """Cosine of the estimate Σ c_u g_u to ``target``; NaN when the estimate is 0 (no valid sample)."""
    if not bool(coef.abs().sum() > 0):
        series.add_nan(i, params.groups)
        return
    vec = ctx.grads.direction(coef)
    series.add(i, cosine(vec, target), per_module_cosine(vec, target, params))


def _fmt_curve(series: _Series, sizes: Sequence[int]) -> str:
    return ", ".join(
        f"N={n}: {_nanmean(series.values[i]):.3f}±{_nanstd(series.values[i]):.3f}"
        for i, n in enumerate(sizes)
    )


def _nanstd(values: list[float]) -> float:
    kept = [v for v in values if v == v]
    return statistics.stdev(kept) if len(kept) > 1 else 0.0


def _plot(
    pid: str,
    check: str,
    title: str,
    sizes: Sequence[int],
    series: Sequence[_Series],
    y_label: str = "cosine to the exact on-policy gradient ∇J",
    reference: Sequence[tuple[str, str, float]] = (),
) -> dict[str, Any]:
    return {
        "id": pid,
        "check": check,
        "title": title,
        "x_label": "N (samples per prompt)",
        "y_label": y_label,
        "x": list(sizes),
        "series": [s.to_json() for s in series],
        "reference_lines": [{"name": n, "label": lab, "y": y} for n, lab, y in reference],
    }


def _converges(series: _Series, threshold: float) -> bool:
    """Mean cosine at the largest N at least ``threshold`` and above the mean at the smallest N."""
    first, last = _nanmean(series.values[0]), _nanmean(series.values[-1])
    return last >= threshold and (last > first or first >= threshold)


def exact_gradient(setting: Setting, config: TheoryConfig, ctx: ExactContext | None = None) -> CheckResult:
    """∇J by enumeration vs autograd; VAL on the enumerated plans; MC SFT / REINFORCE converging to ∇J."""
    from iterdeploy_trl.validate import validate_batch

    name = "exact_gradient"
    start = time.perf_counter()
    ctx = ctx or exact_context(setting)
    prompts, params, pi = setting.exact_prompts, setting.params, setting.pi
    tol = tolerance(_dtype(config.dtype))
    rows: list[Row] = []
    # 1. VAL accepts every enumerated plan (the canonical reward is VAL validity on canonical outputs).
    jobs = [(setting.domain_pddl, p.problem, list(plan)) for p in prompts for plan in p.valid_plans]
    verdicts = validate_batch(jobs)
    accepted = sum(v.valid for v in verdicts)
    roundtrip = sum(
        _roundtrip(pi.tokenizer, ids) == plan
        for p in prompts
        for plan, ids in zip(p.valid_plans, p.valid_ids, strict=True)
    )
    rows.append(
        Row(
            f"{name}: VAL accepts every enumerated plan",
            f"all {len(jobs)} plans of ≤ {config.max_actions} actions valid; canonical text round-trips",
            f"VAL: {accepted}/{len(jobs)} valid; extract(decode(ids)) = plan for {roundtrip}/{len(jobs)}",
            verdict(accepted == len(jobs) == roundtrip),
        )
    )
    # 2. Σ π g (per-sequence gradients) = ∇ Σ π (autograd of the total valid probability).
    auto = total_valid_probability_gradient(pi, prompts, params)
    rel = float((auto - ctx.exact_direction).norm() / auto.norm())
    cos = cosine(auto, ctx.exact_direction)
    rows.append(
        Row(
            f"{name}: Σ_valid π(y)∇log π(y) = ∇ Σ_valid π(y)",
            f"equal to float precision (relative error ≤ {1e3 * tol:.0e})",
            f"relative error {rel:.1e}, 1−cos {1 - cos:.1e} ({len(ctx.grads.keys)} sequences, "
            f"{len(prompts)} prompts)",
            verdict(rel <= 1e3 * tol),
        )
    )
    # 3. Monte Carlo: SFT-on-valid and REINFORCE, each on its own samples, converge to ∇J.
    sizes = list(config.sample_sizes)
    sft = _Series("sft_on_valid", "SFT on valid samples of π (sequence_sum)")
    rl = _Series("reinforce", "REINFORCE, binary reward, no baseline")
    none_valid = {"sft_on_valid": 0, "reinforce": 0}
    gen = torch.Generator(device=pi.device).manual_seed(config.seed + 202)
    pool = SamplePool(pi, setting, ctx, 2 * config.repeats * sum(sizes), gen)
    agree = _val_agreement(setting, ctx, sizes[-1], gen)
    estimators = (
        (sft, lambda rows_, tot: _sft_coefficients(ctx, rows_)),
        (rl, lambda rows_, tot: _reinforce_coefficients(ctx, rows_, tot)),
    )
    for _ in range(config.repeats):
        for i, n in enumerate(sizes):
            for series, make in estimators:
                valid_rows, total = pool.take(n)
                if len(valid_rows) == 0:
                    none_valid[series.name] += 1
                    series.add_nan(i, params.groups)
                    continue
                _record(series, i, ctx, make(valid_rows, total), ctx.exact_direction, params)
    threshold = 0.9
    for series in (sft, rl):
        rows.append(
            Row(
                f"{name}: {series.label} → ∇J",
                f"cosine to ∇J → 1 as N grows (mean ≥ {threshold} at N = {sizes[-1]}; {config.repeats} repeats)",
                _fmt_curve(series, sizes)
                + (
                    f"; {none_valid[series.name]} draws without a valid sample (NaN)"
                    if none_valid[series.name]
                    else ""
                ),
                verdict(_converges(series, threshold)),
            )
        )
    ok = agree["canonical_not_val_valid"] == 0
    rows.append(
        Row(
            f"{name}: canonical reward vs VAL on samples",
            "every canonical-valid sample is VAL-valid (VAL may also accept non-canonical samples)",
            f"{agree['samples']} samples: canonical-valid {agree['canonical_valid']}, VAL-valid "
            f"{agree['val_valid']}, canonical but VAL-invalid {agree['canonical_not_val_valid']}",
            verdict(ok),
        )
    )
    data = {
        "sequences": len(ctx.grads.keys),
        "enumeration_vs_autograd": {"relative_error": rel, "cosine": cos},
        "val_enumerated": {"plans": len(jobs), "valid": accepted},
        "val_agreement_on_samples": agree,
        "exact_gradient_norm": float(ctx.exact_direction.norm()),
        "valid_mass_pi": valid_mass(pi, prompts),
        "draws_without_valid": none_valid,
        "runtime_s": time.perf_counter() - start,
    }
    plot = _plot(
        "exact_gradient_convergence",
        name,
        "On-policy Monte-Carlo estimates vs the exact gradient ∇J",
        sizes,
        [sft, rl],
        reference=[("on_policy", "∇J", 1.0)],
    )
    return CheckResult(name, rows, data, [plot])


def _roundtrip(tokenizer: Any, ids: Sequence[int]) -> tuple[str, ...]:
    from iterdeploy_trl.extract import extract_plan

    return extract_plan(tokenizer.decode(list(ids), skip_special_tokens=True)).actions


def _val_agreement(setting: Setting, ctx: ExactContext, n: int, gen: torch.Generator) -> dict[str, int]:
    """VAL verdicts vs the canonical reward on n fresh samples of π per exact prompt."""
    texts, problems, canonical = [], [], []
    for k, prompt in enumerate(setting.exact_prompts):
        for y in sample_completions(
            setting.pi, prompt.prompt_ids, n, max_new_tokens=ctx.max_new_tokens, generator=gen
        ):
            texts.append(setting.pi.tokenizer.decode(list(y), skip_special_tokens=True))
            problems.append(prompt.problem)
            canonical.append(y in ctx.index[k])
    val = val_rewards(setting.domain_pddl, problems, texts)
    can = torch.tensor(canonical)
    return {
        "samples": len(texts),
        "canonical_valid": int(can.sum()),
        "val_valid": int(val.sum()),
        "canonical_not_val_valid": int((can & (val < 0.5)).sum()),
        "val_valid_not_canonical": int((~can & (val > 0.5)).sum()),
    }


def off_policy(setting: Setting, config: TheoryConfig, ctx: ExactContext | None = None) -> CheckResult:
    """Valid samples of β training π: plain SFT vs importance-weighted SFT, cosine to π's ∇J.

    Exact limits (N → ∞) of each estimator's direction, Σ_valid β(y) a(y) g_y / |X| with a = 1 (plain),
    w (IW; = ∇J), min(w, c) (truncated), w^(1/T) (per-token geometric mean), are computed by enumeration.
    Self-normalisation rescales every weight of a batch by one factor: the direction of IW-SFT is unchanged
    (its cosines equal those of plain w; only the step size differs)."""
    name = "off_policy"
    start = time.perf_counter()
    ctx = ctx or exact_context(setting)
    params, beta, prompts = setting.params, setting.beta, setting.exact_prompts
    check_same_tokenizer(setting.pi.tokenizer, beta.tokenizer)
    sizes = list(config.sample_sizes)
    target = ctx.exact_direction
    log_w = ctx.logp_pi - ctx.logp_beta  # log π(y)/β(y) on the valid sequences
    lengths = ctx.grads.mask.sum(1)
    beta_p = ctx.logp_beta.exp() / len(prompts)
    c = config.truncate
    limits = {
        "plain_sft": cosine(ctx.grads.direction(beta_p), target),
        "iw": cosine(ctx.grads.direction(beta_p * log_w.exp()), target),
        "iw_truncated": cosine(ctx.grads.direction(beta_p * log_w.exp().clamp(max=c)), target),
        "iw_per_token": cosine(ctx.grads.direction(beta_p * (log_w / lengths).exp()), target),
    }
    variants: dict[str, tuple[str, dict[str, Any]]] = {  # name: (label, iw_sft_gradient_loss options)
        "plain_sft": ("plain SFT on valid β-samples", {"plain": True}),
        "iw": ("IW-SFT, w = π/β", {}),
        "iw_self_normalized": ("IW-SFT, self-normalised w", {"self_normalize": True}),
        "iw_truncated": (f"IW-SFT, w = min(π/β, {c:g})", {"truncate": c}),
        "iw_per_token": ("IW-SFT, per-token geometric mean of π/β", {"per_token": True}),
    }
    series = {key: _Series(key, label) for key, (label, _) in variants.items()}
    ess: list[list[float]] = [[] for _ in sizes]
    gen = torch.Generator(device=beta.device).manual_seed(config.seed + 303)
    pool = SamplePool(beta, setting, ctx, config.repeats * sum(sizes), gen)
    empty = 0
    for _ in range(config.repeats):
        for i, n in enumerate(sizes):
            rows_, _total = pool.take(n)  # every variant on the same β-samples (paired comparison)
            if len(rows_) == 0:
                empty += 1
                for s in series.values():
                    s.add_nan(i, params.groups)
                continue
            for key, s in series.items():
                coef, stats = _iw_coefficients(ctx, rows_, **variants[key][1])
                if key == "iw":
                    ess[i].append(stats["ess"] / len(rows_))
                _record(s, i, ctx, coef, target, params)
    last = len(sizes) - 1
    plain_last = _nanmean(series["plain_sft"].values[last])
    iw, sn = series["iw"], series["iw_self_normalized"]
    same = max(
        (
            abs(a - b)
            for va, vb in zip(iw.values, sn.values, strict=True)
            for a, b in zip(va, vb, strict=True)
            if a == a and b == b
        ),
        default=0.0,
    )
    rows = [
        Row(
            f"{name}: plain SFT on β-samples",
            "converges to E_β[r ∇log π] (reward r·β/π), not to ∇J: exact limit cosine < 1",
            f"{_fmt_curve(series['plain_sft'], sizes)}; exact limit {limits['plain_sft']:.4f}",
            verdict(limits["plain_sft"] < 1 - 1e-3 and abs(plain_last - limits["plain_sft"]) < 0.1),
        ),
        Row(
            f"{name}: {iw.label}",
            f"→ 1 (unbiased for ∇J); closer to ∇J than plain SFT at N = {sizes[-1]}",
            _fmt_curve(iw, sizes),
            verdict(_nanmean(iw.values[last]) > plain_last and _converges(iw, 0.9)),
        ),
        Row(
            f"{name}: {sn.label}",
            "same direction as w (one scale factor per batch): equal cosines; only the step size differs",
            f"max |cos_SN − cos_w| = {same:.1e} over all draws",
            verdict(same <= 1e3 * tolerance(_dtype(config.dtype))),
        ),
    ]
    for key in ("iw_truncated", "iw_per_token"):
        s = series[key]
        rows.append(
            Row(
                f"{name}: {s.label}",
                f"→ its own biased limit, exact cosine {limits[key]:.4f} (lower variance than w)",
                _fmt_curve(s, sizes),
                verdict(abs(_nanmean(s.values[last]) - limits[key]) < 0.1),
            )
        )
    data = {
        "limits": limits,
        "truncate": c,
        "weights": {
            "min": float(log_w.exp().min()),
            "max": float(log_w.exp().max()),
            "truncated_beta_mass": float((beta_p * (log_w.exp() > c)).sum() / beta_p.sum()),
        },
        "relative_ess_mean": [_nanmean(v) for v in ess],
        "draws_without_valid": empty,
        "valid_mass_beta": [float(lb.exp().sum()) for lb in ctx.per_prompt(ctx.logp_beta)],
        "runtime_s": time.perf_counter() - start,
    }
    plot = _plot(
        "off_policy_convergence",
        name,
        "Valid traces of β training π: plain vs importance-weighted SFT",
        sizes,
        list(series.values()),
        reference=[
            ("on_policy", "∇J (IW limit)", 1.0),
            ("plain_sft_limit", "plain SFT limit", limits["plain_sft"]),
            ("iw_truncated_limit", f"truncated-IW limit (c = {c:g})", limits["iw_truncated"]),
            ("iw_per_token_limit", "per-token IW limit", limits["iw_per_token"]),
        ],
    )
    return CheckResult(name, rows, data, [plot])


def mixture(setting: Setting, config: TheoryConfig, ctx: ExactContext | None = None) -> CheckResult:
    """Prop. 2: SFT on a λ : 1−λ mixture of π- and β-samples = REINFORCE with reward r(λ + (1−λ)β/π)."""
    name = "mixture"
    start = time.perf_counter()
    ctx = ctx or exact_context(setting)
    params, pi, beta, prompts = setting.params, setting.pi, setting.beta, setting.exact_prompts
    tol = tolerance(_dtype(config.dtype))
    # Exact, by enumeration, with direct backward passes through the model:
    #   LHS = λ ∇ Σ_valid π  +  (1−λ) Σ_valid β ∇log π          (the mixture's expected SFT-on-valid gradient)
    #   RHS = Σ_valid π · r(λ + (1−λ) β/π) ∇log π               (REINFORCE with the effective reward)
    on_policy_part = total_valid_probability_gradient(pi, prompts, params)
    per_prompt_beta = ctx.per_prompt(ctx.logp_beta)
    per_prompt_pi = [sequence_logprobs(pi, p.prompt_ids, p.valid_ids) for p in prompts]
    off_policy_part = weighted_sequences_gradient(pi, prompts, params, [lb.exp() for lb in per_prompt_beta])
    exact_rows = []
    worst = 0.0
    for lam in config.lambdas:
        lhs = lam * on_policy_part + (1 - lam) * off_policy_part
        advantages = [
            lp.exp() * (lam + (1 - lam) * (lb - lp).exp())
            for lp, lb in zip(per_prompt_pi, per_prompt_beta, strict=True)
        ]
        rhs = weighted_sequences_gradient(pi, prompts, params, advantages)
        rel = float((lhs - rhs).norm() / rhs.norm())
        worst = max(worst, rel)
        exact_rows.append(
            {
                "lambda": lam,
                "relative_error": rel,
                "cosine": cosine(lhs, rhs),
                "cosine_to_on_policy": cosine(rhs, on_policy_part),
            }
        )
    rows = [
        Row(
            f"{name}: E[SFT on λ·π + (1−λ)·β samples] = REINFORCE with r(λ + (1−λ)β/π)",
            f"equal to float precision for λ ∈ {{{', '.join(f'{x:g}' for x in config.lambdas)}}} "
            f"(relative error ≤ {1e3 * tol:.0e})",
            f"max relative error {worst:.1e}; cos to ∇J of the mixture direction: "
            + ", ".join(f"λ={e['lambda']:g}: {e['cosine_to_on_policy']:.4f}" for e in exact_rows),
            verdict(worst <= 1e3 * tol),
        )
    ]
    # Monte Carlo: round(λN) samples of π and N − round(λN) of β per prompt, SFT on the valid ones.
    lam = config.mixture_lambda
    p_pi, p_beta = ctx.logp_pi.exp() / len(prompts), ctx.logp_beta.exp() / len(prompts)
    target = ctx.grads.direction(lam * p_pi + (1 - lam) * p_beta)
    sizes = list(config.sample_sizes)
    mc = _Series("mixture_sft", f"SFT on valid samples, λ = {lam:g} from π, {1 - lam:g} from β")
    gen = torch.Generator(device=pi.device).manual_seed(config.seed + 404)
    from_pi = [round(lam * n) for n in sizes]
    pool_pi = SamplePool(pi, setting, ctx, config.repeats * sum(from_pi), gen)
    pool_beta = SamplePool(beta, setting, ctx, config.repeats * (sum(sizes) - sum(from_pi)), gen)
    for _ in range(config.repeats):
        for i, n in enumerate(sizes):
            valid_rows = torch.cat([pool_pi.take(from_pi[i])[0], pool_beta.take(n - from_pi[i])[0]])
            if len(valid_rows) == 0:
                mc.add_nan(i, params.groups)
                continue
            _record(mc, i, ctx, _sft_coefficients(ctx, valid_rows), target, params)
    rows.append(
        Row(
            f"{name}: Monte-Carlo mixture SFT → effective-reward REINFORCE direction",
            f"cosine → 1 as N grows (λ = {lam:g}; mean ≥ 0.9 at N = {sizes[-1]})",
            _fmt_curve(mc, sizes),
            verdict(_converges(mc, 0.9)),
        )
    )
    data = {"exact": exact_rows, "mc_lambda": lam, "runtime_s": time.perf_counter() - start}
    plot = _plot(
        "mixture_convergence",
        name,
        f"Mixture (λ = {lam:g}) SFT vs the effective-reward gradient",
        sizes,
        [mc],
        y_label="cosine to E_π[r(λ + (1−λ)β/π)∇log π]",
        reference=[
            ("effective_reward", "effective-reward gradient", 1.0),
            ("on_policy", "cos(effective-reward gradient, ∇J)", cosine(target, ctx.exact_direction)),
        ],
    )
    return CheckResult(name, rows, data, [plot])


# ----------------------------------------------------------------------------------------- driver


def run_checks(
    config: TheoryConfig | None = None,
    checks: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    setting: Setting | None = None,
) -> TheoryReport:
    """Build the setting (``build_setting``) and run ``checks`` (default: all of ``CHECKS``)."""
    config = config or TheoryConfig()
    checks = list(checks or CHECKS)
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise TheoryError(f"unknown check {unknown[0]!r}: choose from {', '.join(CHECKS)}")
    start = time.perf_counter()
    setting = setting or build_setting(config, log)
    results: list[CheckResult] = []
    ctx: ExactContext | None = None
    for check in checks:
        if log:
            log(f"running {check} ...")
        if check == "on_policy_same_samples":
            results.append(on_policy_same_samples(setting, config))
            continue
        ctx = ctx or exact_context(setting)
        results.append(
            {"exact_gradient": exact_gradient, "off_policy": off_policy, "mixture": mixture}[check](
                setting, config, ctx
            )
        )
    setup = dict(setting.info)
    setup["warmup_runtime_s"] = round(
        time.perf_counter() - start - sum(r.data.get("runtime_s", 0) for r in results), 2
    )
    return TheoryReport(results, setup, time.perf_counter() - start)


def format_table(rows: Sequence[Row], width: int = 120) -> str:
    """A plain-text table: check | expected | measured | verdict (long cells wrapped)."""
    import textwrap

    cols = [("check", 34), ("expected", 38), ("measured", 44), ("verdict", 7)]
    scale = max(0.5, width / sum(w for _, w in cols))
    widths = [max(7, int(w * scale)) for _, w in cols]
    lines = [
        " | ".join(name.ljust(w) for (name, _), w in zip(cols, widths, strict=True)),
        "-+-".join("-" * w for w in widths),
    ]
    for row in rows:
        cells = [
            textwrap.wrap(str(getattr(row, name)), w) or [""]
            for (name, _), w in zip(cols, widths, strict=True)
        ]
        for k in range(max(len(c) for c in cells)):
            lines.append(
                " | ".join(
                    (c[k] if k < len(c) else "").ljust(w) for c, w in zip(cells, widths, strict=True)
                ).rstrip()
            )
    return "\n".join(lines)


__all__ = [
    "CHECKS",
    "SCHEMA",
    "CheckResult",
    "NoValidTraces",
    "ParamSet",
    "PlanningPrompt",
    "Policy",
    "Row",
    "SamplePool",
    "SequenceGradients",
    "Setting",
    "TheoryConfig",
    "TheoryError",
    "TheoryReport",
    "build_setting",
    "canonical_completion",
    "check_same_tokenizer",
    "completion_logprobs",
    "cosine",
    "encode_completion",
    "encode_prompt",
    "enumerate_valid_plans",
    "exact_context",
    "exact_gradient",
    "flat_grad",
    "format_table",
    "iw_sft_gradient_loss",
    "mixture",
    "module_group",
    "off_policy",
    "on_policy_same_samples",
    "per_module_cosine",
    "planning_prompts",
    "reinforce_gradient_loss",
    "run_checks",
    "sample_completions",
    "sequence_gradients",
    "sequence_logprobs",
    "sft_on_valid_gradient_loss",
    "to_precision",
    "total_valid_probability_gradient",
    "trainable_parameters",
    "val_rewards",
    "valid_mass",
    "warm_up",
    "weighted_sequences_gradient",
]
