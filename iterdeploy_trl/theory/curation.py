r"""Check ``curation`` (EMPIRICAL): the loop's curated update against REINFORCE, measured.

The loop does not train on every valid sample: it keeps ONE valid trace per solved task (``curate``:
``shortest``, the study's rule, or ``random-valid``). For a task x with solve probability J_x under π and K
samples, a random valid trace is kept with probability 1 − (1 − J_x)^K, and given that it is kept it is a
sample of π(· | valid), whose score has mean ∇J_x / J_x. So the expected random-valid update is

    E[Σ_x 1[x solved] ∇log π(y_x)] = Σ_x c(J_x) ∇J_x,   c(J) = (1 − (1 − J)^K) / J   (c(0) = K, c(1) = 1),

REINFORCE with each task re-weighted by c(J_x): at K = 8, c = 7.5 at J = 0.02 and 1.1 at J = 0.9, so hard
tasks weigh up to K times more than under REINFORCE (E[REINFORCE] ∝ Σ_x ∇J_x). The shortest-plan rule
is not a random valid trace: it adds a preference for short plans that no per-task weight expresses.

Per repeat the check draws TWO independent sets of K samples of every task (fresh sampling seeds,
``draw_seed``) from π through the package's deployment backend at (T, top-p) = (1, 1), validated by VAL
(``reward.check_completions``), recorded as the loop records them (``traces.TraceRecord``) and curated by
the loop's own ``curate.curate``. On each draw it forms, over the LoRA parameters of ``pipeline.lora_model``:

- ``shortest`` (a): Σ over the curated rows of ∇log π(y): −∇ of ``ValidTraceSFTTrainer.compute_loss``
  (``sequence_sum``) on ``curate.training_rows(curate(records, "shortest"))``, times the number of rows;
- ``random_valid`` (b): the same with ``curate(records, "random-valid")``;
- ``reinforce`` (c): (1/(nK)) Σ_i r_i ∇log π(y_i) over all samples (``losses.reinforce_loss``, binary VAL
  reward, no baseline);
- ``reinforce_cj`` (d): the same with reward r_i · c(Ĵ_x), Ĵ_x = (valid samples of x in this draw) / K;
- ``shuffled`` (the null): ``reinforce`` with the reward moved to a random subset of the draw's samples, as
  many as were valid: the likelihood gradient of as many samples of the model, with no information on
  validity.

Curated vectors of one draw are compared with the REINFORCE vectors of the OTHER draw (never with their own
samples: that compares a sample with itself); the same-draw cosine is reported beside it to show what the
overlap adds. Beside every cosine: the shuffled-reward null (cos to the other draw's ``shuffled``), the
ceilings cos(x₁, x₂) of every vector between the two draws, the 95% range of the cosine to a random
direction of the same LoRA space, and cos(E x, E y), the cosine between the two vectors' expectations
estimated from cross-draw inner products only (``expected_cosine``: sampling noise removed; its interval
a percentile bootstrap over the repeats). Every other interval is a 95% Student-t interval over the
repeats (independent sampling seeds).

Note on (d): c(Ĵ) is a plug-in. E[(d)] = Σ_x E[1 − (1 − Ĵ_x)^K] ∇J_x / J_x, and since 1 − (1 − J)^K is
concave this is below c(J_x) ∇J_x, most for hard tasks (at J = 0.02, K = 8: 0.10 against 0.15): (d) is
close to but not an unbiased estimate of the curated expectation; (b) itself is.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from iterdeploy_trl import stats
from iterdeploy_trl.theory.errors import TheoryError
from iterdeploy_trl.theory.gradients import ParamSet, flat_grad
from iterdeploy_trl.theory.pipeline_gradients import (
    collate,
    fmt_interval,
    safe_cosine,
    sampler_sequence_logprobs,
    sft_trainer,
    t_interval,
    trainer_gradient,
)
from iterdeploy_trl.theory.pipeline_sampling import (
    PipelineConfig,
    lora_record,
    sampling_backend,
    sampling_setup,
)
from iterdeploy_trl.theory.report import EMPIRICAL, CheckResult, Row, verdict
from iterdeploy_trl.traces import TraceRecord
from iterdeploy_trl.trainers import losses

VECTORS = ("shortest", "random_valid", "reinforce", "reinforce_cj", "shuffled")
# (curated or reference vector, reference vector): the cosines the check reports, with their labels
PAIRS: tuple[tuple[str, str], ...] = (
    ("shortest", "reinforce"),
    ("shortest", "reinforce_cj"),
    ("random_valid", "reinforce"),
    ("random_valid", "reinforce_cj"),
    ("shortest", "random_valid"),
    ("reinforce", "reinforce_cj"),  # how much the re-weighting itself turns REINFORCE
)
LABELS = {
    "shortest": "shortest (a)",
    "random_valid": "random-valid (b)",
    "reinforce": "REINFORCE (c)",
    "reinforce_cj": "c(Ĵ)-REINFORCE (d)",
    "shuffled": "shuffled-reward REINFORCE",
}
DRAWS_PER_REPEAT = 2


@dataclass
class CurationConfig(PipelineConfig):
    """Settings of the ``curation`` check: the pipeline check's (model, tasks, K = ``samples_per_task``,
    LoRA, backend, repeats, seed) at one sampling setting."""

    temperature: float = 1.0
    top_p: float = 1.0
    settings: tuple[tuple[float, float], ...] = field(default=((1.0, 1.0),))

    @classmethod
    def from_pipeline(cls, config: PipelineConfig, **over: Any) -> CurationConfig:
        """The pipeline check's settings as a curation config (``over`` replaces fields)."""
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(PipelineConfig)}
        values.pop("settings")
        return cls(**{**values, **over})


# ------------------------------------------------------------------------------------------ formulas


def c_weight(j: float, k: int) -> float:
    """c(J) = (1 − (1 − J)^K) / J: the weight of a task with solve probability J in the expected update of
    one valid trace per task kept out of K samples, relative to REINFORCE; c(0) = K (the limit), c(1) = 1."""
    if k < 1:
        raise TheoryError(f"c(J) needs K >= 1 samples per task, got K = {k}")
    if not 0.0 <= j <= 1.0:
        raise TheoryError(f"c(J) needs a probability J in [0, 1], got J = {j}")
    if j == 0.0:
        return float(k)
    return (1.0 - (1.0 - j) ** k) / j


def solve_rates(records: Sequence[TraceRecord], k: int) -> dict[str, float]:
    """Ĵ_x = (valid samples of task x) / K for every task of ``records`` (K samples per task each)."""
    counts: dict[str, list[int]] = {}
    for rec in records:
        counts.setdefault(rec.task_id, []).append(int(rec.valid))
    wrong = {t: len(v) for t, v in counts.items() if len(v) != k}
    if wrong:
        task, n = next(iter(wrong.items()))
        raise TheoryError(f"task {task!r} has {n} samples in the draw, expected K = {k}")
    return {t: sum(v) / k for t, v in counts.items()}


def reward_vectors(records: Sequence[TraceRecord], k: int, shuffle_seed: int) -> dict[str, Tensor]:
    """Per-sample rewards (float64, aligned with ``records``) of the three REINFORCE vectors: ``reinforce``
    r_i, ``reinforce_cj`` r_i · c(Ĵ of i's task), ``shuffled`` 1 on a random subset of as many samples as
    were valid (``shuffle_seed``)."""
    rates = solve_rates(records, k)
    r = torch.tensor([float(rec.valid) for rec in records], dtype=torch.float64)
    cj = torch.tensor([c_weight(rates[rec.task_id], k) for rec in records], dtype=torch.float64)
    picked = random.Random(shuffle_seed).sample(range(len(records)), int(r.sum()))
    shuffled = torch.zeros_like(r)
    shuffled[picked] = 1.0
    return {"reinforce": r, "reinforce_cj": r * cj, "shuffled": shuffled}


def inner_products(
    x: Sequence[tuple[Tensor, Tensor]], y: Sequence[tuple[Tensor, Tensor]]
) -> list[tuple[float, float, float]]:
    """Per repeat, from the two independent draws' vectors (x₁, x₂) and (y₁, y₂) (x_i, y_i of draw i): the
    cross-draw products (⟨x₁, y₂⟩ + ⟨x₂, y₁⟩)/2, ⟨x₁, x₂⟩ and ⟨y₁, y₂⟩. No same-draw product enters."""
    if not x or len(x) != len(y):
        raise TheoryError(f"expected_cosine needs as many x as y pairs (at least one), got {len(x)} and {len(y)}")
    return [
        (float(x1 @ y2 + x2 @ y1) / 2, float(x1 @ x2), float(y1 @ y2))
        for (x1, x2), (y1, y2) in zip(x, y, strict=True)
    ]


def _ratio(products: Sequence[tuple[float, float, float]]) -> float:
    n = len(products)
    cross, xx, yy = (sum(p[i] for p in products) / n for i in range(3))
    if xx <= 0 or yy <= 0:
        return float("nan")
    return cross / (xx * yy) ** 0.5


def expected_cosine(x: Sequence[tuple[Tensor, Tensor]], y: Sequence[tuple[Tensor, Tensor]]) -> float:
    """cos(E x, E y) from pairs of independent draws (x₁, x₂), (y₁, y₂) per repeat, x_i and y_i from the same
    draw i: E⟨x₁, y₂⟩ = ⟨E x, E y⟩ and E⟨x₁, x₂⟩ = |E x|² exactly (independent draws), so

        cos(E x, E y) ≈ mean(⟨x₁, y₂⟩ + ⟨x₂, y₁⟩) / 2 / √(mean⟨x₁, x₂⟩ · mean⟨y₁, y₂⟩),

    means over the repeats: the cosine of the expectations, with the sampling noise that pulls a cosine of
    two noisy vectors towards 0 removed (no same-draw product enters). NaN when a squared norm estimate is
    not positive (too little signal)."""
    return _ratio(inner_products(x, y))


def expected_cosine_interval(
    x: Sequence[tuple[Tensor, Tensor]], y: Sequence[tuple[Tensor, Tensor]]
) -> dict[str, float]:
    """``expected_cosine`` over all repeats (``mean``) and the percentile interval of its bootstrap over the
    repeats (repeats resampled with replacement; ``stats.percentile_interval``); NaN bounds from one repeat."""
    products = inner_products(x, y)
    n = len(products)
    out = {"n": n, "mean": _ratio(products), "std": float("nan"), "lo": float("nan"), "hi": float("nan")}
    if n < 2:
        return out
    rng = random.Random(stats.BOOTSTRAP_SEED)
    reps = []
    for _ in range(stats.BOOTSTRAP_REPLICATES):
        value = _ratio([products[rng.randrange(n)] for _ in range(n)])
        if value == value:
            reps.append(value)
    if len(reps) >= 2:
        out["lo"], out["hi"] = stats.percentile_interval(reps)
        out["std"] = float(torch.tensor(reps).std())
    return out


def random_direction_bound(size: int, level: float = 0.95) -> float:
    """The ``level`` quantile of |cos(v, u)| for u uniform on the sphere of R^size (Gaussian u), the same for
    every v ≠ 0: the cosine a direction with no relation to v reaches. Exact: (cos + 1)/2 ~ Beta((P−1)/2,
    (P−1)/2)."""
    from scipy.stats import beta

    if size < 2:
        raise TheoryError(f"random-direction null needs a parameter space of size >= 2, got {size}")
    a = (size - 1) / 2
    return float(2 * beta.ppf(0.5 + level / 2, a, a) - 1)


# ------------------------------------------------------------------------------------------ sampling


def draw_seed(seed: int, repeat: int, draw: int) -> int:
    """The sampling seed of draw ``draw`` of repeat ``repeat``: a different seed for every draw."""
    from iterdeploy_trl.deploy import batch_seed

    return batch_seed(seed, "theory-curation", repeat, draw) % (2**31)


def sample_records(
    backend: Any,
    dom: str,
    tasks: Sequence[Any],
    prompts: Sequence[str],
    prompt_ids: dict[str, list[int]],
    config: CurationConfig,
    seed: int,
    label: str,
) -> list[TraceRecord]:
    """K samples of every task from ``backend`` at ``seed``, validated by VAL, as the loop records them
    (``run`` = ``label``, so that every record names its draw; one record per sample, tasks in order)."""
    from iterdeploy_trl.reward import check_completions

    samples = backend.generate(
        list(prompts),
        num_samples=config.samples_per_task,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=seed,
    )
    flat = [(t, p, k, c) for t, p, row in zip(tasks, prompts, samples, strict=True) for k, c in enumerate(row)]
    extractions, verdicts = check_completions(
        [dom] * len(flat), [t.problem for t, *_ in flat], [c.text for *_, c in flat], timeout=30.0, workers=None
    )
    sampling = {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "samples_per_task": config.samples_per_task,
        "backend": config.backend,
        "seed": seed,
    }
    return [
        TraceRecord(
            run=label, method="theory-curation", generation=0, seed=seed, split="pool", task_id=task.id,
            sample_index=k, domain=config.domain, prompt=prompt, completion=comp.text,
            plan="\n".join(ext.actions), plan_length=v.plan_length, valid=bool(v.valid), reason=v.reason,
            reasoning_tokens=comp.reasoning_tokens, completion_tokens=comp.completion_tokens,
            truncated=comp.truncated, behaviour_logprob=comp.behaviour_logprob,
            reference_length=getattr(task, "reference_length", None), model=config.model_path,
            sampling=sampling, validator={}, completion_ids=list(comp.token_ids) or None,
            stop_token_id=comp.stop_token_id, prompt_ids=prompt_ids[prompt],
        )
        for (task, prompt, k, comp), ext, v in zip(flat, extractions, verdicts, strict=True)
    ]


# ----------------------------------------------------------------------------------------- gradients


def curated_gradient(
    model: torch.nn.Module, tok: Any, chosen: Sequence[TraceRecord], params: ParamSet, config: CurationConfig,
    out_dir: str,
) -> Tensor:
    """Σ over ``chosen`` of ∇log π(y|x): the package's valid-trace SFT trainer (``sequence_sum``, the loop's
    rows via ``curate.training_rows``) times the number of rows; zeros when nothing was curated."""
    from iterdeploy_trl.curate import training_rows

    if not chosen:
        return torch.zeros(params.size, dtype=torch.float64)
    trainer = sft_trainer(
        model, tok, training_rows(chosen), importance_weighted=False, normalization="sequence_sum",
        out_dir=out_dir,
    )
    return trainer_gradient(trainer, collate(trainer, model.device), params, "float32", config.device).cpu() * len(
        chosen
    )


def reinforce_gradients(
    model: torch.nn.Module, tok: Any, records: Sequence[TraceRecord], rewards: dict[str, Tensor],
    params: ParamSet, config: CurationConfig, out_dir: str,
) -> dict[str, Tensor]:
    """−∇ ``losses.reinforce_loss`` (no baseline: (1/N) Σ_i A_i ∇log β_θ(y_i), N = all samples) for each
    reward vector of ``rewards`` (aligned with ``records``), from one forward pass over every sample (the
    loop's rows, TRL-collated; β_θ the sampler at the config's T and top-p)."""
    from iterdeploy_trl.curate import training_rows

    trainer = sft_trainer(
        model, tok, training_rows(records), importance_weighted=False, normalization="sequence_sum",
        out_dir=out_dir,
    )
    batch = collate(trainer, model.device)
    model.eval()
    seq, _ = sampler_sequence_logprobs(model, batch, config.temperature, config.top_p)
    seq = seq.double()
    if seq.shape[0] != len(records):
        raise TheoryError(f"the trainer kept {seq.shape[0]} of {len(records)} rows: cannot align the rewards")
    out: dict[str, Tensor] = {}
    names = list(rewards)
    for i, name in enumerate(names):
        loss = losses.reinforce_loss(seq, rewards[name].to(seq), "none")
        out[name] = -flat_grad(loss, params, retain_graph=i < len(names) - 1).cpu()
    return out


@dataclass
class CurationDraw:
    """One draw (K samples of every task): its records, the curated choices and the five vectors."""

    repeat: int
    draw: int
    seed: int
    records: list[TraceRecord]
    chosen: dict[str, list[TraceRecord]]  # "shortest" / "random_valid" -> curated records
    vectors: dict[str, Tensor] = field(default_factory=dict)

    @property
    def n_valid(self) -> int:
        return sum(r.valid for r in self.records)

    def summary(self, k: int) -> dict[str, Any]:
        rates = solve_rates(self.records, k)
        solved = [j for j in rates.values() if j > 0]
        valid_lengths = [r.plan_length for r in self.records if r.valid]
        pairs = list(zip(self.chosen["shortest"], self.chosen["random_valid"], strict=True))
        distinct = [len({tuple(r.completion_ids or ()) for r in self.records if r.valid and r.task_id == t})
                    for t in sorted({r.task_id for r in self.records if r.valid})]
        return {
            "repeat": self.repeat,
            "draw": self.draw,
            "seed": self.seed,
            "samples": len(self.records),
            "valid": self.n_valid,
            "solved_tasks": len(solved),
            "j_hat": sorted(rates.values()),
            "mean_c_solved": sum(c_weight(j, k) for j in solved) / len(solved) if solved else float("nan"),
            "mean_plan_length": {
                "all_valid": _mean(valid_lengths),
                "shortest": _mean([r.plan_length for r in self.chosen["shortest"]]),
                "random_valid": _mean([r.plan_length for r in self.chosen["random_valid"]]),
            },
            # solved tasks where both rules kept the same token sequence (the same plan, maybe another sample)
            "same_plan_chosen": sum(a.completion_ids == b.completion_ids for a, b in pairs),
            "shorter_plan_chosen": sum(a.plan_length < b.plan_length for a, b in pairs),
            "distinct_valid_completions_per_solved_task": distinct,
        }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def measure_draw(
    model: torch.nn.Module, tok: Any, draw: CurationDraw, params: ParamSet, config: CurationConfig, out_dir: str
) -> None:
    """The five vectors of ``draw`` (``VECTORS``), on CPU in float64."""
    draw.vectors["shortest"] = curated_gradient(model, tok, draw.chosen["shortest"], params, config, out_dir)
    draw.vectors["random_valid"] = curated_gradient(model, tok, draw.chosen["random_valid"], params, config, out_dir)
    rewards = reward_vectors(draw.records, config.samples_per_task, draw.seed + 1)
    draw.vectors.update(reinforce_gradients(model, tok, draw.records, rewards, params, config, out_dir))


def curate_draw(records: list[TraceRecord], seed: int) -> dict[str, list[TraceRecord]]:
    """The loop's curation of one draw: ``shortest`` and ``random-valid`` (seeded) over its records."""
    from iterdeploy_trl.curate import curate

    return {"shortest": curate(records, "shortest"), "random_valid": curate(records, "random-valid", seed=seed)}


# ---------------------------------------------------------------------------------------------- check


def curation(config: CurationConfig, log: Callable[[str], None] | None = None) -> CheckResult:
    """Run the ``curation`` check (module docstring): rows per compared pair, with intervals and nulls."""
    import tempfile

    start = time.perf_counter()
    if config.samples_per_task < 2:
        raise TheoryError(f"the curation check needs K >= 2 samples per task, got {config.samples_per_task}")
    model, tok, dom, tasks, prompts, params, prompt_ids = sampling_setup(config, "curation")
    draws: list[CurationDraw] = []
    tmp = tempfile.TemporaryDirectory(prefix="iterdeploy-theory-")
    backend = None
    try:
        backend, backend_info = sampling_backend(config, model, tok, tmp.name, prompts[0])
        for r in range(config.repeats):
            for d in range(DRAWS_PER_REPEAT):
                seed = draw_seed(config.seed, r, d)
                records = sample_records(
                    backend, dom, tasks, prompts, prompt_ids, config, seed, f"theory-curation/r{r}/d{d}"
                )
                draw = CurationDraw(r, d, seed, records, curate_draw(records, seed))
                measure_draw(model, tok, draw, params, config, tmp.name)
                draws.append(draw)
                if log:
                    log(
                        f"  curation repeat {r} draw {d}: {draw.n_valid}/{len(records)} valid, "
                        f"{len(draw.chosen['shortest'])} tasks solved"
                    )
    finally:
        if backend is not None:
            backend.close()
        tmp.cleanup()
    return report(draws, config, params, backend_info, time.perf_counter() - start)


def pair_cosines(draws: Sequence[CurationDraw], x: str, y: str, repeats: int) -> dict[str, Any]:
    """Per repeat: the cross-draw cosine (mean of cos(x₁, y₂) and cos(x₂, y₁)), the same-draw cosine (mean of
    cos(x₁, y₁) and cos(x₂, y₂)) and the shuffled null (mean of cos(x₁, s₂) and cos(x₂, s₁)); each with its
    t-interval over the repeats; and ``expected_cosine`` with its bootstrap interval."""
    by_repeat = pairs_by_repeat(draws, repeats)
    cross, same, null = [], [], []
    for d1, d2 in by_repeat:
        v1, v2 = d1.vectors, d2.vectors
        cross.append(_nanmean([safe_cosine(v1[x], v2[y]), safe_cosine(v2[x], v1[y])]))
        same.append(_nanmean([safe_cosine(v1[x], v1[y]), safe_cosine(v2[x], v2[y])]))
        null.append(_nanmean([safe_cosine(v1[x], v2["shuffled"]), safe_cosine(v2[x], v1["shuffled"])]))
    expected = expected_cosine_interval(
        [(d1.vectors[x], d2.vectors[x]) for d1, d2 in by_repeat],
        [(d1.vectors[y], d2.vectors[y]) for d1, d2 in by_repeat],
    )
    return {
        "cross_draw": {"values": cross, **t_interval(cross)},
        "same_draw": {"values": same, **t_interval(same)},
        "shuffled_null": {"values": null, **t_interval(null)},
        "expected": expected,
    }


def ceiling(draws: Sequence[CurationDraw], x: str, repeats: int) -> dict[str, Any]:
    """cos(x₁, x₂) between the two draws of each repeat, with its t-interval over the repeats."""
    values = [safe_cosine(d1.vectors[x], d2.vectors[x]) for d1, d2 in pairs_by_repeat(draws, repeats)]
    return {"values": values, **t_interval(values)}


def pairs_by_repeat(draws: Sequence[CurationDraw], repeats: int) -> list[tuple[CurationDraw, CurationDraw]]:
    """The two draws of every repeat, in repeat order."""
    out = []
    for r in range(repeats):
        mine = sorted((d for d in draws if d.repeat == r), key=lambda d: d.draw)
        if len(mine) != DRAWS_PER_REPEAT:
            raise TheoryError(f"repeat {r} has {len(mine)} draws, expected {DRAWS_PER_REPEAT}")
        out.append((mine[0], mine[1]))
    return out


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if v == v]
    return sum(kept) / len(kept) if kept else float("nan")


def report(
    draws: Sequence[CurationDraw], config: CurationConfig, params: ParamSet, backend: dict[str, Any], runtime: float
) -> CheckResult:
    """Rows (one per pair of ``PAIRS``, one for the ceilings) and the numbers behind them."""
    name = "curation"
    repeats = config.repeats
    k = config.samples_per_task
    random_bound = random_direction_bound(params.size)
    ceilings = {v: ceiling(draws, v, repeats) for v in VECTORS}
    pairs = {f"{x}|{y}": pair_cosines(draws, x, y, repeats) for x, y in PAIRS}
    summaries = [d.summary(k) for d in draws]
    valid = f"{sum(s['valid'] for s in summaries)}/{sum(s['samples'] for s in summaries)} valid over {len(draws)} draws"
    rows: list[Row] = []
    for x, y in PAIRS:
        p = pairs[f"{x}|{y}"]
        ok = p["cross_draw"]["n"] >= 2
        rows.append(
            Row(
                f"{name}: cos({LABELS[x]}, {LABELS[y]})",
                "measured: cross-draw (independent samples) against its nulls; equal expectations would give "
                "cos(E·, E·) = 1",
                f"cross-draw {fmt_interval(p['cross_draw'], 3)}; same-draw {fmt_interval(p['same_draw'], 3)}; "
                f"shuffled-reward null {fmt_interval(p['shuffled_null'], 3)}; cos(E·, E·) "
                f"{fmt_interval(p['expected'], 3)}; random |cos| < {random_bound:.3f} ({valid}, K = {k})",
                verdict(ok),
                EMPIRICAL,
            )
        )
    rows.append(
        Row(
            f"{name}: ceilings cos(x₁, x₂) between independent draws",
            "measured: how parallel two independent estimates of one vector are at this sample size",
            "; ".join(f"{LABELS[v]} {fmt_interval(ceilings[v], 3)}" for v in VECTORS),
            verdict(all(ceilings[v]["n"] >= 2 for v in VECTORS)),
            EMPIRICAL,
        )
    )
    data = {
        "model": config.model_path,
        "backend": backend,
        "tasks": config.tasks,
        "task_dir": config.task_dir,
        "samples_per_task": k,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "repeats": repeats,
        "draws_per_repeat": DRAWS_PER_REPEAT,
        "seed": config.seed,
        "lora": lora_record(config),
        "parameters": params.size,
        "random_direction_bound_95": random_bound,
        "pairs": pairs,
        "ceilings": ceilings,
        "draws": summaries,
        "runtime_s": runtime,
    }
    return CheckResult(name, rows, data)
