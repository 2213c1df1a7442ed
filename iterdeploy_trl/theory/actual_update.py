r"""Check ``actual_update`` (EMPIRICAL): the update a run's generation really made, against REINFORCE.

Each generation g of a run (``iterdeploy run``) trains the next model M_{g+1} *from the base model* θ₀ on
the accumulated curated set ``gen_g/train.jsonl`` (one trace per task, from the models M_0..M_g), with
its epochs and learning rate. Prop. 1 and 2 speak about one gradient at one point; this check measures
what the loop's training actually does, in the parameter space of the base model, per generation:

- ``update``: Δ_g = θ(M_{g+1}) − θ₀, the parameter difference after training (read from the run's saved
  model; a LoRA adapter is merged first, so Δ lives in weight space);
- ``sft_first_step``: the SFT gradient at θ₀ on the whole curated set (the package's trainer and loss
  normalisation; the direction of the first step in expectation over batches);
- ``prop2_corrected``: the same with each trace importance-weighted by π₀(y)/β_mix(y), Prop. 2's mixture
  β_mix = Σ_k λ_k β_k with λ_k = 1/(g+1) (every generation deployed the same number of samples) and
  β_k(y) the deployed sampler of generation k (temperature and top-p of the run); the recorded
  ``behaviour_logprob`` of each trace is checked against its own generation's recomputed value;
- ``reinforce_base`` (RL₀): REINFORCE (binary reward of the run's validator, no baseline) of the base
  sampler, where the retraining starts, from FRESH samples: ``repeats`` independent draws of every pool
  task × K samples by the run's deployment backend (``loop.deploy_chunk``: the run's prompts, T, top-p and
  VAL), each with its own sampling seed ``reference_seed``, none of them a seed the run deployed with
  (``run_sample_seeds``; checked), so the reference shares no sample with any curated set;
  ``reinforce_deployed`` the same for the deployed model M_g (fresh draws of it; M_0 is the base).

Reported per generation, for each vector v ∈ {Δ_g, SFT step, Prop. 2 step}: cos(v, RL) per draw, their
mean with a 95% t-interval over the independent draws, and cos(v, mean of the draws); beside each, its
NULL: the same cosine to REINFORCE of the same draw with the reward shuffled among its samples (a random
subset of them, as many as were valid, rewarded): what a direction reaches by being the likelihood gradient
of samples of the model at all, with no information on validity. cos(Δ, SFT step) involves no sampling (both
fixed by the run); its null is cos(Δ, shuffled-reward RL₀). The ceiling at this sample size: the cosine
between REINFORCE estimates of two independent draws (disjoint pairs of draws).
"""

from __future__ import annotations

import itertools
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from iterdeploy_trl import rundir
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.rundir import RunDirError
from iterdeploy_trl.theory.errors import TheoryError
from iterdeploy_trl.theory.pipeline_gradients import (
    collate,
    fmt_interval,
    safe_cosine,
    sampler_sequence_logprobs,
    sft_trainer,
    t_interval,
    trainer_gradient,
)
from iterdeploy_trl.theory.report import EMPIRICAL, CheckResult, Row, verdict


@dataclass
class UpdateConfig:
    """Settings of the ``actual_update`` check."""

    run_dir: str = ""
    seed: int | None = None  # the run's seed directory (seed_<s>); None: the first
    repeats: int = 5  # independent fresh draws (sampling seeds) of each REINFORCE reference, for the intervals
    reference_samples_per_task: int | None = None  # samples per pool task in each draw; None: the run's K
    sampling_seed: int = 0  # mixed into every reference draw's sampling seed (another value: other draws)
    generations: tuple[int, ...] | None = None  # None: every trained generation
    device: str = "cpu"


@dataclass
class _Params:
    """A fixed, named parameter set over which every vector of the check is flattened."""

    names: tuple[str, ...]

    def vector(self, tensors: dict[str, Tensor]) -> Tensor:
        return torch.cat([tensors[n].detach().reshape(-1).double().cpu() for n in self.names])


def _weights(model: torch.nn.Module) -> dict[str, Tensor]:
    """Weight-space parameters of a model (a peft model merged first), by base-model name."""
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    return {n: p.detach() for n, p in model.named_parameters()}


class RunView:
    """What the check reads from a run directory (through :func:`iterdeploy_trl.rundir.open_run`): config,
    base model, tasks, traces, curated sets, models."""

    def __init__(self, run_dir: str | Path, seed: int | None) -> None:
        from iterdeploy_trl.config import ConfigError, config_from_dict

        self.root = Path(run_dir)
        if not rundir.is_run(self.root):
            raise TheoryError(f"{self.root}: no {rundir.RESOLVED_CONFIG}; give a directory written by `iterdeploy run`")
        try:
            self.run = rundir.open_run(self.root)
        except RunDirError as exc:
            raise TheoryError(f"{exc}; is this a finished `iterdeploy run` directory?") from exc
        try:
            self.cfg = config_from_dict(self.run.config, check_paths=False)
        except ConfigError as exc:
            raise TheoryError(f"{rundir.resolved_config(self.root)}: {exc}") from exc
        seeds = self.run.seeds_on_disk()
        if not seeds:
            raise TheoryError(f"{self.root}: no seed directory; the run has not deployed anything yet")
        self.seed = seeds[0] if seed is None else seed
        if self.seed not in seeds:
            raise TheoryError(f"{self.root}: no {rundir.seed_dir(self.root, seed).name} (seeds: {seeds})")
        self.sdir = self.run.seed_dir(self.seed)
        if self.run.problems:
            raise TheoryError(f"{self.run.problems[0]}; is this a finished `iterdeploy run` directory?")
        if (self.run.summary or {}).get("base_model"):
            self.base = Path(self.run.summary["base_model"])
        elif self.cfg.model.path and self.cfg.model.path != "auto":
            self.base = Path(self.cfg.model.path)
        else:
            from iterdeploy_trl.basemodel import auto_base_model_path

            self.base = auto_base_model_path(self.cfg)
        if not (self.base / "config.json").is_file():
            raise TheoryError(f"{self.base}: the run's base model is not there (config.json missing)")
        from iterdeploy_trl.tasks import load_task_set

        tdir = Path(self.cfg.tasks.dir).expanduser() if self.cfg.tasks.dir else rundir.tasks_dir(self.root)
        task_set = load_task_set(tdir)
        self.domain_pddl = task_set.domain_pddl
        self.problems = {t.id: t.problem for t in task_set.tasks}
        self.pool_tasks = list(task_set.tasks)[: self.cfg.tasks.n]
        self.pool_ids = [t.id for t in self.pool_tasks]

    def traces(self, g: int) -> list[dict[str, Any]]:
        """The pool trace records of generation ``g``."""
        try:
            return self.run.traces(self.seed, g, "pool") or []
        except RunDirError as exc:
            raise TheoryError(str(exc)) from exc

    def train_rows(self, g: int) -> list[dict[str, Any]]:
        """The training set curated after generation ``g``."""
        path = rundir.train_set(self.run.gen_dir(self.seed, g))
        try:
            rows = self.run.train_rows(self.seed, g)
        except RunDirError as exc:
            raise TheoryError(f"{exc}" if str(path) in str(exc) else f"{path}: cannot read it ({exc})") from exc
        if rows is None:
            raise TheoryError(f"{path}: cannot read it (missing)")
        return rows

    def trained_generations(self) -> list[int]:
        """Generations g whose curated set trained a model M_{g+1} (not a copy of the previous one)."""
        out = []
        for g in itertools.count():
            gdir, nxt = self.run.gen_dir(self.seed, g), rundir.model(self.run.gen_dir(self.seed, g + 1))
            if not gdir.is_dir():
                break
            if rundir.train_set(gdir).is_file() and (
                (nxt / "config.json").is_file() or (nxt / "adapter_config.json").is_file()
            ):
                out.append(g)
        return out

    def model_dir(self, g: int) -> Path | None:
        try:
            return self.run.model(self.seed, g)
        except RunError as exc:
            raise TheoryError(str(exc)) from exc

    def load(self, model_dir: Path | None, device: str) -> tuple[torch.nn.Module, Any]:
        """A generation's model in float32 (base, full fine-tune, or base + adapter, unmerged)."""
        from iterdeploy_trl.models import load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(self.base, dtype=torch.float32, device=device)
        if model_dir is not None and (model_dir / "adapter_config.json").exists():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(model_dir))
        elif model_dir is not None:
            model, tok = load_model_and_tokenizer(model_dir, dtype=torch.float32, device=device)
        model.eval()
        return model, tok

    def prompt(self, task_id: str, tokenizer: Any) -> str:
        from iterdeploy_trl.deployment import prompt_for

        task = types.SimpleNamespace(id=task_id, problem=self.problems[task_id])
        return prompt_for(self.cfg, self.domain_pddl, task, tokenizer)


def _grad_vector(model: torch.nn.Module, loss: Tensor, params: _Params, retain_graph: bool = False) -> Tensor:
    named = dict(model.named_parameters())
    tensors = [named[n] for n in params.names]
    grads = torch.autograd.grad(loss, tensors, allow_unused=True, retain_graph=retain_graph)
    return -torch.cat([
        (torch.zeros_like(t) if g is None else g).reshape(-1).double().cpu()
        for g, t in zip(grads, tensors, strict=True)
    ])


def _trainable(model: torch.nn.Module, names: Sequence[str]) -> torch.nn.Module:
    """Gradients w.r.t. ``names`` (weight-space names; an unmerged adapter is merged for the gradient)."""
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    wanted = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in wanted)
    return model


def reference_seed(run_seed: int, sampling_seed: int, generation: int, repeat: int) -> int:
    """The sampling seed of one reference draw (of the model deployed in ``generation``): ``deploy.batch_seed``
    of parts no deployment of the loop uses (its chunks: ``batch_seed(seed, generation, split, start)``)."""
    from iterdeploy_trl.deploy import batch_seed

    return batch_seed(run_seed, "actual_update-reference", sampling_seed, generation, repeat)


def run_sample_seeds(view: RunView) -> set[int]:
    """The sampling seed of every trace chunk the run deployed in this seed directory, as
    ``loop.deploy_generation`` derived it from the chunk's file (``gen_XX/traces/<split>-<i>.jsonl``)."""
    from iterdeploy_trl.deploy import batch_seed

    seeds = set()
    for g, gdir in rundir.gen_dirs(view.sdir).items():
        for f in rundir.chunk_files(gdir):
            split, _, index = f.stem.rpartition("-")
            seeds.add(batch_seed(view.seed, g, split, int(index) * view.cfg.chunk_size))
    return seeds


@dataclass
class ReferenceDraw:
    """REINFORCE of one deployed sampler from one fresh draw: ``estimate`` = (1/n) Σ_valid ∇ log β(y),
    ``null`` = the same with the reward shuffled (as many samples rewarded as were valid, chosen at random),
    and where the samples came from."""

    generation: int  # the model sampled: the one deployed in this generation (0: the base)
    repeat: int
    sample_seed: int
    estimate: Tensor
    null: Tensor
    n: int
    valid: int
    samples: list[tuple[str, int]]  # (task, sample index) of every sample of the draw
    valid_same_text_as_curated: int  # valid samples whose text a curated row also has (independent draws)
    gap: float  # max |recorded − recomputed| behaviour log-prob over the valid samples

    def summary(self) -> dict[str, Any]:
        return {"model_generation": self.generation, "repeat": self.repeat, "sample_seed": self.sample_seed,
                "samples": self.n, "valid": self.valid, "valid_same_text_as_curated": self.valid_same_text_as_curated,
                "behaviour_logprob_gap_max": self.gap}


def _summed_gradients(model: torch.nn.Module, tok: Any, rows: list[dict[str, Any]], subsets: Sequence[Sequence[int]],
                      params: _Params, temperature: float, top_p: float, out_dir: str,
                      chunk: int = 64) -> tuple[list[Tensor], Tensor]:
    """For each subset of ``rows``: Σ_{i ∈ subset} ∇ log β_θ(y_i) (the sampler's T and top-p); and the
    sequence log-probs of every row in the subsets (NaN for the others), in chunks of ``chunk`` rows."""
    size = sum(_numel(model, n) for n in params.names)
    sums = [torch.zeros(size, dtype=torch.float64) for _ in subsets]
    logps = torch.full((len(rows),), float("nan"), dtype=torch.float64)
    used = sorted({i for sub in subsets for i in sub})
    if not used:
        return sums, logps
    batch = collate(sft_trainer(model, tok, [rows[i] for i in used], importance_weighted=False,
                                normalization="sequence_sum", out_dir=out_dir), model.device)
    member = [set(sub) for sub in subsets]
    for start in range(0, len(used), chunk):
        idx = used[start : start + chunk]
        sub = {k: v[start : start + len(idx)] for k, v in batch.items() if isinstance(v, Tensor)}
        seq, _ = sampler_sequence_logprobs(model, sub, temperature, top_p)
        logps[idx] = seq.detach().double().cpu()
        for j, mine in enumerate(member):
            pick = [m for m, i in enumerate(idx) if i in mine]
            if pick:
                sums[j] += _grad_vector(model, -seq[pick].sum(), params, retain_graph=True)
    return sums, logps


def fresh_reinforce(view: RunView, g: int, model: torch.nn.Module, tok: Any, params: _Params, backend: Any,
                    repeat: int, config: UpdateConfig, curated: set[tuple[str, str]], out_dir: str) -> ReferenceDraw:
    """One fresh draw of the model deployed in generation ``g`` (``backend`` samples it, ``model`` is the same
    weights, differentiated): every pool task × K samples through ``loop.deploy_chunk`` (the run's prompts,
    T, top-p and validator) with the seed :func:`reference_seed`, and its REINFORCE estimate and null."""
    import dataclasses

    from iterdeploy_trl.deployment import deploy_chunk

    s = view.cfg.sampling
    cfg = dataclasses.replace(view.cfg, sampling=dataclasses.replace(
        s, samples_per_task=config.reference_samples_per_task or s.samples_per_task))
    seed = reference_seed(view.seed, config.sampling_seed, g, repeat)
    recs = deploy_chunk(cfg, backend, view.domain_pddl, view.pool_tasks, seed=view.seed, sample_seed=seed,
                        generation=g, split="actual_update-reference", model_id=f"generation {g}'s model",
                        run_name=cfg.name, method=cfg.method, validator={"reference": "actual_update"})
    n = len(recs)
    valid = [i for i, r in enumerate(recs) if r.valid]
    shuffled = torch.randperm(n, generator=torch.Generator().manual_seed(seed % (2**63)))[: len(valid)].tolist()
    rows = [{"prompt": r.prompt, "completion": r.completion, "prompt_ids": r.prompt_ids,
             "completion_ids": r.completion_ids} for r in recs]  # the sampled tokens where recorded
    (valid_sum, null_sum), logps = _summed_gradients(model, tok, rows, (valid, shuffled), params, s.temperature,
                                                     s.top_p, out_dir)
    recorded = torch.tensor([float(recs[i].behaviour_logprob) for i in valid], dtype=torch.float64)
    gap = float((logps[valid] - recorded).abs().max()) if valid else 0.0
    # −∇L of losses.reinforce_loss with A = r is Σ_rewarded ∇ log β / N
    return ReferenceDraw(g, repeat, seed, valid_sum / n, null_sum / n, n, len(valid),
                         [(r.task_id, r.sample_index) for r in recs],
                         sum((recs[i].task_id, recs[i].completion) in curated for i in valid), gap)


def reference_draws(view: RunView, g: int, model: torch.nn.Module, tok: Any, params: _Params,
                    config: UpdateConfig, curated: set[tuple[str, str]], out_dir: str,
                    log: Callable[[str], None]) -> list[ReferenceDraw]:
    """``config.repeats`` independent fresh draws of the model deployed in generation ``g``, sampled by the
    run's backend (``loop.make_backend``); refused if a draw's seed is one the run deployed with."""
    from iterdeploy_trl.backends import make_backend

    taken = run_sample_seeds(view)
    draws = []
    backend = make_backend(view.cfg, view.base, view.model_dir(g))
    try:
        for r in range(config.repeats):
            if reference_seed(view.seed, config.sampling_seed, g, r) in taken:
                raise TheoryError(f"{view.sdir}: reference draw {r} of generation {g} would reuse a sampling seed "
                                  "of the run; pass another sampling_seed")
            draw = fresh_reinforce(view, g, model, tok, params, backend, r, config, curated, out_dir)
            log(f"  actual_update: fresh draw {r} of generation {g}'s model: {draw.valid}/{draw.n} valid")
            draws.append(draw)
    finally:
        backend.close()
    return draws


def _cosines(vec: Tensor, draws: Sequence[ReferenceDraw]) -> dict[str, Any]:
    """cos(vec, RL) of each independent draw with the mean and t-interval over draws, cos(vec, the draws'
    mean), and the same for the shuffled-reward nulls (``null``)."""
    out: dict[str, Any] = {}
    for key, vecs in (("", [d.estimate for d in draws]), ("null_", [d.null for d in draws])):
        values = [safe_cosine(vec, v) for v in vecs]
        out[f"{key}values"] = values
        out[f"{key}interval"] = t_interval(values)
        out[f"{key}pooled"] = safe_cosine(vec, torch.stack(vecs).mean(0))
    return {"values": out["values"], **out["interval"], "pooled": out["pooled"],
            "null": {"values": out["null_values"], **out["null_interval"], "pooled": out["null_pooled"]}}


def _ceiling(draws: Sequence[ReferenceDraw]) -> dict[str, Any]:
    """Cosine between the REINFORCE estimates of independent draws, over disjoint pairs (0, 1), (2, 3), …"""
    values = [safe_cosine(draws[i].estimate, draws[i + 1].estimate) for i in range(0, len(draws) - 1, 2)]
    return {"values": values, **t_interval(values)}


def _fmt(c: dict[str, Any]) -> str:
    return f"{fmt_interval(c)} (null {fmt_interval(c['null'])})"


def _numel(model: torch.nn.Module, name: str) -> int:
    return dict(model.named_parameters())[name].numel()


def _origins(view: RunView, rows: list[dict[str, Any]], g: int) -> list[int]:
    """The generation that sampled each curated row (matched on task, completion and behaviour log-prob)."""
    index: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for k in range(g + 1):
        for t in view.traces(k):
            index.setdefault((t["task_id"], t["completion"]), []).append((k, float(t["behaviour_logprob"])))
    out = []
    for r in rows:
        cands = index.get((r["task_id"], r["completion"]), [])
        match = [k for k, lp in cands if abs(lp - float(r["behaviour_logprob"])) <= 1e-6]
        if not match:
            raise TheoryError(f"{rundir.train_set(view.run.gen_dir(view.seed, g))}: task {r['task_id']}: no trace of generations "
                              f"0..{g} has this completion and behaviour log-prob; the run directory is inconsistent")
        out.append(match[0])
    return out


def actual_update(config: UpdateConfig, log: Callable[[str], None] | None = None) -> CheckResult:
    """Run the ``actual_update`` check on ``config.run_dir`` (module docstring)."""
    import tempfile

    import datasets

    datasets.disable_progress_bars()
    name = "actual_update"
    start = time.perf_counter()
    if config.repeats < 2:
        raise TheoryError(f"actual_update needs at least 2 repeats for an interval, got {config.repeats}")
    view = RunView(config.run_dir, config.seed)
    gens = view.trained_generations()
    if config.generations is not None:
        missing = sorted(set(config.generations) - set(gens))
        if missing:
            raise TheoryError(f"{view.sdir}: generation(s) {missing} trained no model (trained: {gens})")
        gens = sorted(config.generations)
    if not gens:
        raise TheoryError(f"{view.sdir}: no generation trained a model yet (no gen_XX/train.jsonl with a "
                          f"gen_XX+1/model); wait for the run or run more generations")
    s = view.cfg.sampling
    base_model, tok = view.load(None, config.device)
    base_w = _weights(base_model)

    def log_(msg: str) -> None:
        if log:
            log(msg)

    tmp = tempfile.TemporaryDirectory(prefix="iterdeploy-theory-")
    try:
        # Parameter set: every parameter a generation's training changed (all of them for a full fine-tune).
        deltas: dict[int, dict[str, Tensor]] = {}
        for g in gens:
            m, _ = view.load(view.model_dir(g + 1), config.device)
            w = _weights(m)
            deltas[g] = {n: w[n] - base_w[n] for n in base_w}
            del m
        changed = sorted({n for d in deltas.values() for n, t in d.items() if bool(t.abs().max() > 0)})
        if not changed:
            raise TheoryError(f"{view.sdir}: no generation's model differs from the base model")
        params = _Params(tuple(changed))
        base_model = _trainable(base_model, changed)
        curated = {(r["task_id"], r["completion"]) for g in gens
                   for r in view.train_rows(g)}
        rl0 = reference_draws(view, 0, base_model, tok, params, config, curated, tmp.name, log_)
        rows: list[Row] = []
        per_gen: list[dict[str, Any]] = []
        for g in gens:
            entry = _generation(view, g, base_model, tok, params, deltas[g], rl0, config, curated, tmp.name, log_)
            per_gen.append(entry)
            rows.append(Row(
                f"{name}: generation {g} → {g + 1} ({entry['train_rows']} curated traces from generations "
                f"{sorted(set(entry['origin_generations']))})",
                "Δ (retrain from base on the accumulated curated set), the first SFT step and the Prop. 2-weighted "
                "step vs REINFORCE of the deployed model M_g and of the base model, from fresh draws disjoint from "
                "the curated sets; mean [95% t-interval over the independent draws] (null: the same with the "
                "reward shuffled)",
                f"cos(Δ, RL at M_{g}) {_fmt(entry['cos_update_reinforce_deployed'])}; "
                f"cos(Δ, RL₀) {_fmt(entry['cos_update_reinforce_base'])}; cos(SFT step, RL₀) "
                f"{_fmt(entry['cos_sft_reinforce_base'])}; cos(Prop.2-weighted step, RL₀) "
                f"{_fmt(entry['cos_prop2_reinforce_base'])}; cos(Δ, SFT step) {entry['cos_update_sft']:.4f} "
                "(no sampling; null as cos(Δ, RL₀)'s)",
                verdict(entry["cos_update_reinforce_base"]["n"] >= 2),
                EMPIRICAL,
            ))
            gap = entry["behaviour_logprob_gap_max"]
            rows.append(Row(
                f"{name}: generation {g}: recorded behaviour log-probs = the deployed samplers' log β",
                "|recorded − recomputed under the generation's model| ≤ 1e-3 for every curated trace and every "
                "valid sample of the fresh draws",
                f"max |gap| {gap:.2e} ({entry['train_rows']} curated traces, fresh draws of M_{g}: "
                f"{entry['deployed_valid']} valid samples); Prop. 2 weights π₀/β_mix: log range "
                f"{entry['prop2_log_w']['min']:.2f}..{entry['prop2_log_w']['max']:.2f}, relative ESS "
                f"{entry['prop2_log_w']['relative_ess']:.3f}",
                verdict(gap <= 1e-3),
                EMPIRICAL,
            ))
        ceiling = _ceiling(rl0)
        rows.append(Row(
            f"{name}: reference: REINFORCE of the base model from two independent fresh draws",
            "cos(RL₀ of draw 2i, RL₀ of draw 2i+1): what two independent estimates reach at this sample size",
            f"{fmt_interval(ceiling)} ({sum(d.valid for d in rl0)} valid of {sum(d.n for d in rl0)} samples in "
            f"{len(rl0)} draws)",
            verdict(ceiling["n"] >= 1),
            EMPIRICAL,
        ))
        data = {
            "run_dir": str(view.root),
            "seed": view.seed,
            "base_model": str(view.base),
            "reinforce_samples": "fresh draws of each model by the run's backend, prompts, T, top-p and validator "
                                 "(loop.deploy_chunk), one sampling seed per draw, none of them a seed of the run",
            "sampling": {"temperature": s.temperature, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens,
                         "samples_per_task": config.reference_samples_per_task or s.samples_per_task,
                         "run_samples_per_task": s.samples_per_task, "backend": s.backend},
            "training": {"init": view.cfg.training.init, "epochs": view.cfg.training.epochs,
                         "learning_rate": view.cfg.training.learning_rate,
                         "loss_normalization": view.cfg.training.loss_normalization,
                         "lora": view.cfg.training.lora is not None},
            "pool_tasks": len(view.pool_ids),
            "repeats": config.repeats,
            "interval": "95% Student-t over the independent fresh draws",
            "null": "the same cosine to REINFORCE of the same draw with the reward shuffled among its samples",
            "parameters": sum(base_w[n].numel() for n in changed),
            "run_sample_seeds": sorted(run_sample_seeds(view)),
            "reference_draws": [d.summary() for d in rl0],
            "reference_independent_draws_base": ceiling,
            "generations": per_gen,
            "runtime_s": time.perf_counter() - start,
        }
    finally:
        tmp.cleanup()
    return CheckResult(name, rows, data)


def _generation(
    view: RunView, g: int, base_model: torch.nn.Module, tok: Any, params: _Params, delta: dict[str, Tensor],
    rl0: list[ReferenceDraw], config: UpdateConfig, curated: set[tuple[str, str]], out_dir: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    s, tcfg = view.cfg.sampling, view.cfg.training
    rows = view.train_rows(g)
    origins = _origins(view, rows, g)
    update = params.vector(delta)
    # SFT first step at θ₀ on the whole curated set, with the package's trainer and normalisation.
    trainer = sft_trainer(base_model, tok, rows, importance_weighted=False, normalization=tcfg.loss_normalization,
                          out_dir=out_dir)
    batch = collate(trainer, base_model.device)
    prec = "bfloat16" if view.cfg.model.dtype == "bfloat16" else "float32"
    named = dict(base_model.named_parameters())
    sft_step = trainer_gradient(trainer, batch, _as_paramset(named, params), prec, config.device)
    # log β_k(y) of every curated trace under every deployed sampler k ≤ g; log π₀(y) at T = 1.
    scores = []
    for k in range(g + 1):
        model_k = base_model if k == 0 else view.load(view.model_dir(k), config.device)[0]
        with torch.no_grad():
            seq, _ = sampler_sequence_logprobs(model_k, batch, s.temperature, s.top_p)
        scores.append(seq.double().cpu())
    beta = torch.stack(scores)  # (g+1, n)
    recorded = torch.tensor([float(r["behaviour_logprob"]) for r in rows], dtype=torch.float64)
    own = beta[torch.as_tensor(origins), torch.arange(len(rows))]
    gap = float((own - recorded).abs().max())
    with torch.no_grad():
        log_pi0, _ = sampler_sequence_logprobs(base_model, batch, 1.0, 1.0)
    log_mix = torch.logsumexp(beta, 0) - torch.log(torch.tensor(float(g + 1), dtype=torch.float64))
    log_w = log_pi0.double().cpu() - log_mix
    w = torch.exp(log_w - log_w.max())
    iw_rows = [{**r, "behaviour_logprob": float(lb)} for r, lb in zip(rows, log_mix.tolist(), strict=True)]
    iw = sft_trainer(base_model, tok, iw_rows, importance_weighted=True, normalization=tcfg.loss_normalization,
                     temperature=1.0, top_p=1.0, out_dir=out_dir)
    prop2_step = trainer_gradient(iw, collate(iw, base_model.device), _as_paramset(named, params), prec,
                                  config.device)
    entry: dict[str, Any] = {
        "generation": g,
        "train_rows": len(rows),
        "origin_generations": origins,
        "update_norm": float(update.norm()),
        "prop2_log_w": {"min": float(log_w.min()), "max": float(log_w.max()), "mean": float(log_w.mean()),
                        "relative_ess": float(w.sum() ** 2 / (w * w).sum() / len(w))},
        "cos_update_sft": safe_cosine(update, sft_step),
        "cos_update_prop2": safe_cosine(update, prop2_step),
    }
    for key, vec in (("update", update), ("sft", sft_step), ("prop2", prop2_step)):
        entry[f"cos_{key}_reinforce_base"] = _cosines(vec, rl0)
    if g >= 1:
        model_g, _ = view.load(view.model_dir(g), config.device)
        model_g = _trainable(model_g, params.names)
        rl_g = reference_draws(view, g, model_g, tok, params, config, curated, out_dir, log)
        entry["cos_update_reinforce_deployed"] = _cosines(update, rl_g)
        entry["cos_reinforce_deployed_reinforce_base"] = safe_cosine(
            torch.stack([d.estimate for d in rl_g]).mean(0), torch.stack([d.estimate for d in rl0]).mean(0))
        entry["reference_independent_draws_deployed"] = _ceiling(rl_g)
        entry["reference_draws"] = [d.summary() for d in rl_g]
    else:  # M_0 is the base model
        rl_g = rl0
        entry["cos_update_reinforce_deployed"] = entry["cos_update_reinforce_base"]
    entry["deployed_valid"] = sum(d.valid for d in rl_g)
    entry["deployed_samples"] = sum(d.n for d in rl_g)
    entry["behaviour_logprob_gap_max"] = max([gap, *(d.gap for d in rl_g)])
    return entry


def _as_paramset(named: dict[str, torch.nn.Parameter], params: _Params) -> Any:
    """A ``gradients.ParamSet`` over ``params.names`` (for ``trainer_gradient``)."""
    from iterdeploy_trl.theory.gradients import ParamSet, module_group

    tensors = tuple(named[n] for n in params.names)
    groups: dict[str, list[slice]] = {}
    start = 0
    for n, p in zip(params.names, tensors, strict=True):
        groups.setdefault(module_group(n), []).append(slice(start, start + p.numel()))
        start += p.numel()
    return ParamSet(params.names, tensors, groups)
