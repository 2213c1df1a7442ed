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
- ``reinforce_deployed``: REINFORCE (binary VAL reward, no baseline) of the deployed sampler M_g, from the
  run's own samples of it (``gen_g/traces``: every pool task, the run's K samples, T and top-p, VAL's
  verdicts) — exactly the on-policy samples the loop drew, so no new sampling; ``reinforce_base`` the same
  for M_0 = θ₀, where the retraining starts.

Reported per generation: cos(Δ_g, reinforce_deployed), cos(Δ_g, reinforce_base), cos(sft_first_step,
reinforce_base), cos(prop2_corrected, reinforce_base), each as the point estimate and the mean and 95%
percentile interval of bootstrap replicates (pool tasks resampled with replacement: the run drew each
task's samples once; ``pipeline.bootstrap_interval``, never a t-interval over replicates), and a
reference: the cosine between the REINFORCE estimates from the even and from the odd sample indices (two
independent halves: what two estimates of one gradient reach at this sample size).
"""

from __future__ import annotations

import itertools
import json
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from iterdeploy_trl.theory.errors import TheoryError
from iterdeploy_trl.theory.pipeline import (
    bootstrap_interval,
    collate,
    fmt_interval,
    safe_cosine,
    sampler_sequence_logprobs,
    sft_trainer,
    trainer_gradient,
)
from iterdeploy_trl.theory.report import EMPIRICAL, CheckResult, Row, verdict


@dataclass
class UpdateConfig:
    """Settings of the ``actual_update`` check."""

    run_dir: str = ""
    seed: int | None = None  # the run's seed directory (seed_<s>); None: the first
    repeats: int = 5  # bootstrap replicates (tasks resampled) of each REINFORCE estimate, for the intervals
    bootstrap_seed: int = 0
    generations: tuple[int, ...] | None = None  # None: every trained generation
    device: str = "cpu"


@dataclass
class _Params:
    """A fixed, named parameter set over which every vector of the check is flattened."""

    names: tuple[str, ...]

    def vector(self, tensors: dict[str, Tensor]) -> Tensor:
        return torch.cat([tensors[n].detach().reshape(-1).double().cpu() for n in self.names])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TheoryError(f"{path}: cannot read it ({exc}); is this a finished `iterdeploy run` directory?") from exc


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise TheoryError(f"{path}: cannot read it ({exc})") from exc


def _weights(model: torch.nn.Module) -> dict[str, Tensor]:
    """Weight-space parameters of a model (a peft model merged first), by base-model name."""
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    return {n: p.detach() for n, p in model.named_parameters()}


class RunView:
    """What the check reads from a run directory: config, base model, tasks, traces, curated sets."""

    def __init__(self, run_dir: str | Path, seed: int | None) -> None:
        from iterdeploy_trl.config import config_from_dict

        self.root = Path(run_dir)
        if not (self.root / "resolved_config.json").is_file():
            raise TheoryError(f"{self.root}: no resolved_config.json; give a directory written by `iterdeploy run`")
        from iterdeploy_trl.config import ConfigError

        resolved = _read_json(self.root / "resolved_config.json")
        try:
            self.cfg = config_from_dict(resolved.get("config", resolved), check_paths=False)
        except ConfigError as exc:
            raise TheoryError(f"{self.root}/resolved_config.json: {exc}") from exc
        seeds = sorted(int(p.name.split("_")[1]) for p in self.root.glob("seed_*") if p.is_dir())
        if not seeds:
            raise TheoryError(f"{self.root}: no seed_* directory; the run has not deployed anything yet")
        self.seed = seeds[0] if seed is None else seed
        if self.seed not in seeds:
            raise TheoryError(f"{self.root}: no seed_{seed} (seeds: {seeds})")
        self.sdir = self.root / f"seed_{self.seed}"
        summary = self.root / "summary.json"
        if summary.is_file() and _read_json(summary).get("base_model"):
            self.base = Path(_read_json(summary)["base_model"])
        elif self.cfg.model.path and self.cfg.model.path != "auto":
            self.base = Path(self.cfg.model.path)
        else:
            from iterdeploy_trl.loop import auto_base_model_path

            self.base = auto_base_model_path(self.cfg)
        if not (self.base / "config.json").is_file():
            raise TheoryError(f"{self.base}: the run's base model is not there (config.json missing)")
        from iterdeploy_trl.tasks import load_task_set

        tdir = Path(self.cfg.tasks.dir).expanduser() if self.cfg.tasks.dir else self.root / "tasks"
        task_set = load_task_set(tdir)
        self.domain_pddl = task_set.domain_pddl
        self.problems = {t.id: t.problem for t in task_set.tasks}
        self.pool_ids = [t.id for t in list(task_set.tasks)[: self.cfg.tasks.n]]

    def traces(self, g: int) -> list[dict[str, Any]]:
        files = sorted((self.sdir / f"gen_{g:02d}" / "traces").glob("pool-*.jsonl"))
        return [r for f in files for r in _read_jsonl(f)]

    def trained_generations(self) -> list[int]:
        """Generations g whose curated set trained a model M_{g+1} (not a copy of the previous one)."""
        out = []
        for g in itertools.count():
            nxt = self.sdir / f"gen_{g + 1:02d}" / "model"
            if not (self.sdir / f"gen_{g:02d}").is_dir():
                break
            if (self.sdir / f"gen_{g:02d}" / "train.jsonl").is_file() and (
                (nxt / "config.json").is_file() or (nxt / "adapter_config.json").is_file()
            ):
                out.append(g)
        return out

    def model_dir(self, g: int) -> Path | None:
        from iterdeploy_trl.loop import generation_model

        return generation_model(self.sdir, g)

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
        from iterdeploy_trl.loop import prompt_for

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


@dataclass
class RecordedReinforce:
    """REINFORCE of a deployed sampler from the run's own samples of it: ``per_task[t]`` = Σ over task t's
    valid samples of ∇ log β(y) (one row per pool task, zeros where none is valid), ``n`` all its samples;
    the estimate is Σ_t per_task[t] / n. ``halves`` are the same from the even and the odd sample indices."""

    per_task: Tensor  # (tasks, P)
    n: int
    halves: tuple[Tensor, Tensor]
    valid: int
    gap: float  # max |recorded − recomputed| behaviour log-prob over the valid samples

    @property
    def estimate(self) -> Tensor:
        return self.per_task.sum(0) / self.n

    def bootstrap(self, replicates: int, seed: int) -> list[Tensor]:
        """Estimates on tasks resampled with replacement (the run drew each task's samples once)."""
        gen = torch.Generator().manual_seed(seed)
        tasks = self.per_task.shape[0]
        return [self.per_task[torch.randint(0, tasks, (tasks,), generator=gen)].sum(0) / self.n
                for _ in range(replicates)]


def recorded_reinforce(
    view: RunView, g: int, model: torch.nn.Module, tok: Any, params: _Params, out_dir: str
) -> RecordedReinforce:
    """(1/N) Σ r ∇ log β_θ(y) over generation g's recorded pool samples (VAL's verdicts, the run's T and
    top-p), per task. Invalid samples have A = r = 0 and no baseline: only the valid ones are run."""
    s = view.cfg.sampling
    traces = view.traces(g)
    valid = [t for t in traces if t["valid"]]
    task_index = {tid: i for i, tid in enumerate(view.pool_ids)}
    per_task = torch.zeros(len(view.pool_ids), sum(_numel(model, n) for n in params.names), dtype=torch.float64)
    halves = [torch.zeros(per_task.shape[1], dtype=torch.float64) for _ in range(2)]
    gap = 0.0
    if valid:
        rows = [{"prompt": t["prompt"], "completion": t["completion"]} for t in valid]
        batch = collate(sft_trainer(model, tok, rows, importance_weighted=False, normalization="sequence_sum",
                                    out_dir=out_dir), model.device)
        by_task: dict[str, list[int]] = {}
        for i, t in enumerate(valid):
            by_task.setdefault(t["task_id"], []).append(i)
        for tid, idx in by_task.items():
            sub = {k: v[idx] for k, v in batch.items() if isinstance(v, Tensor)}
            seq, _ = sampler_sequence_logprobs(model, sub, s.temperature, s.top_p)
            recorded = torch.tensor([float(valid[i]["behaviour_logprob"]) for i in idx], dtype=torch.float64)
            gap = max(gap, float((seq.detach().double().cpu() - recorded).abs().max()))
            for h in (0, 1):
                mine = [j for j, i in enumerate(idx) if valid[i]["sample_index"] % 2 == h]
                if mine:
                    halves[h] += _grad_vector(model, -seq[mine].sum(), params, retain_graph=True)
            per_task[task_index[tid]] = _grad_vector(model, -seq.sum(), params)
    n = len(traces)
    # −∇L of losses.reinforce_loss with A = r is Σ_valid ∇ log β / N: the per-task sums above, scaled once.
    return RecordedReinforce(per_task, n, (halves[0] / (n / 2), halves[1] / (n / 2)), len(valid), gap)


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
            raise TheoryError(f"{view.sdir}/gen_{g:02d}/train.jsonl: task {r['task_id']}: no trace of generations "
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
        rl0 = recorded_reinforce(view, 0, base_model, tok, params, tmp.name)
        log_(f"  actual_update: REINFORCE of the base model from generation 0's samples: {rl0.valid}/{rl0.n} valid")
        rl0_boot = rl0.bootstrap(config.repeats, config.bootstrap_seed)
        rows: list[Row] = []
        per_gen: list[dict[str, Any]] = []
        for g in gens:
            entry = _generation(view, g, base_model, tok, params, deltas[g], rl0, rl0_boot, config, tmp.name, log_)
            per_gen.append(entry)
            deployed = entry.get("cos_update_reinforce_deployed")
            rows.append(Row(
                f"{name}: generation {g} → {g + 1} ({entry['train_rows']} curated traces from generations "
                f"{sorted(set(entry['origin_generations']))})",
                "Δ (retrain from base on the accumulated curated set) vs the on-policy REINFORCE gradient of the "
                "deployed model M_g and of the base model; measured (reference: two halves of the samples)",
                (f"cos(Δ, RL at M_{g}) {fmt_interval(deployed)}; " if deployed else "")
                + f"cos(Δ, RL₀) {fmt_interval(entry['cos_update_reinforce_base'])}; cos(SFT step, RL₀) "
                f"{fmt_interval(entry['cos_sft_reinforce_base'])}; cos(Prop.2-weighted step, RL₀) "
                f"{fmt_interval(entry['cos_prop2_reinforce_base'])}; cos(Δ, SFT step) {entry['cos_update_sft']:.4f}",
                verdict(entry["cos_update_reinforce_base"]["n"] >= 2),
                EMPIRICAL,
            ))
            gap = entry["behaviour_logprob_gap_max"]
            rows.append(Row(
                f"{name}: generation {g}: recorded behaviour log-probs = the deployed samplers' log β",
                "|recorded − recomputed under the generation's model| ≤ 1e-3 for every curated and every valid "
                "deployed trace",
                f"max |gap| {gap:.2e} ({entry['train_rows']} curated traces, {entry.get('deployed_valid', 0)} valid "
                f"samples of M_{g}); Prop. 2 weights π₀/β_mix: log range {entry['prop2_log_w']['min']:.2f}.."
                f"{entry['prop2_log_w']['max']:.2f}, relative ESS {entry['prop2_log_w']['relative_ess']:.3f}",
                verdict(gap <= 1e-3),
                EMPIRICAL,
            ))
        half = safe_cosine(*rl0.halves)
        rows.append(Row(
            f"{name}: reference: REINFORCE from two halves of the base model's samples",
            "cos(RL₀ even sample indices, RL₀ odd): what two independent estimates reach at this sample size",
            f"{half:.4f} ({rl0.valid} valid of {rl0.n} samples)",
            verdict(half == half),
            EMPIRICAL,
        ))
        data = {
            "run_dir": str(view.root),
            "seed": view.seed,
            "base_model": str(view.base),
            "reinforce_samples": "the run's own deployment samples of each generation (gen_XX/traces, pool)",
            "sampling": {"temperature": s.temperature, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens,
                         "samples_per_task": s.samples_per_task, "backend": s.backend},
            "training": {"init": view.cfg.training.init, "epochs": view.cfg.training.epochs,
                         "learning_rate": view.cfg.training.learning_rate,
                         "loss_normalization": view.cfg.training.loss_normalization,
                         "lora": view.cfg.training.lora is not None},
            "pool_tasks": len(view.pool_ids),
            "bootstrap_replicates": config.repeats,
            "parameters": sum(base_w[n].numel() for n in changed),
            "reinforce_base": {"samples": rl0.n, "valid": rl0.valid, "behaviour_logprob_gap_max": rl0.gap},
            "reference_half_vs_half_base": half,
            "generations": per_gen,
            "runtime_s": time.perf_counter() - start,
        }
    finally:
        tmp.cleanup()
    return CheckResult(name, rows, data)


def _generation(
    view: RunView, g: int, base_model: torch.nn.Module, tok: Any, params: _Params, delta: dict[str, Tensor],
    rl0: RecordedReinforce, rl0_boot: list[Tensor], config: UpdateConfig, out_dir: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    s, tcfg = view.cfg.sampling, view.cfg.training
    rows = _read_jsonl(view.sdir / f"gen_{g:02d}" / "train.jsonl")
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
        "behaviour_logprob_gap_max": gap,
        "prop2_log_w": {"min": float(log_w.min()), "max": float(log_w.max()), "mean": float(log_w.mean()),
                        "relative_ess": float(w.sum() ** 2 / (w * w).sum() / len(w))},
        "cos_update_sft": safe_cosine(update, sft_step),
        "cos_update_prop2": safe_cosine(update, prop2_step),
    }
    for key, vec in (("update", update), ("sft", sft_step), ("prop2", prop2_step)):
        values = [safe_cosine(vec, r) for r in rl0_boot]
        entry[f"cos_{key}_reinforce_base"] = {"point": safe_cosine(vec, rl0.estimate), "values": values,
                                              **bootstrap_interval(values)}
    if g >= 1:
        model_g, _ = view.load(view.model_dir(g), config.device)
        model_g = _trainable(model_g, params.names)
        rl_g = recorded_reinforce(view, g, model_g, tok, params, out_dir)
        log(f"  actual_update: REINFORCE of M_{g} from generation {g}'s samples: {rl_g.valid}/{rl_g.n} valid")
        values = [safe_cosine(update, r) for r in rl_g.bootstrap(config.repeats, config.bootstrap_seed + g)]
        entry["cos_update_reinforce_deployed"] = {"point": safe_cosine(update, rl_g.estimate), "values": values,
                                                  **bootstrap_interval(values)}
        entry["cos_reinforce_deployed_reinforce_base"] = safe_cosine(rl_g.estimate, rl0.estimate)
        entry["reference_half_vs_half_deployed"] = safe_cosine(*rl_g.halves)
        entry["deployed_valid"] = rl_g.valid
        entry["deployed_samples"] = rl_g.n
        entry["behaviour_logprob_gap_max"] = max(gap, rl_g.gap)
    else:  # M_0 is the base model
        entry["cos_update_reinforce_deployed"] = entry["cos_update_reinforce_base"]
        entry["deployed_valid"] = rl0.valid
        entry["behaviour_logprob_gap_max"] = max(gap, rl0.gap)
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
