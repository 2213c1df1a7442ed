"""How a generation trains: what each kind of method trains on (``curated_rows``: the curated traces;
``prompt_rows``: the pool's prompts as deployed) and the three training paths the methods' plug-ins call
(``train_generation``: SFT on curated rows with the method's trainer; ``train_reinforce``: online REINFORCE;
``train_grpo``: TRL's GRPO). Every path builds its trainer from the same arguments (``common_args``), counts how
often ``max_grad_norm`` clips (``GradClipCallback``), saves the model as it will be deployed and writes
``train_stats.json`` (``save_generation``).

This module does not import the config layer (the method plug-ins that the config reads call it), so the
config is typed by name only.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl import dist, rundir, tracking
from iterdeploy_trl.console import quiet_trainer
from iterdeploy_trl.curate import curate, training_rows, validation_split
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.faults import disk_write, fault
from iterdeploy_trl.methods.registry import get as get_method
from iterdeploy_trl.runio import machine_id, read_json, replace_dir, write_json
from iterdeploy_trl.traces import TraceRecord

# iterdeploy_trl.config.RunConfig, named only: the config layer imports the method plug-ins, which call this module
RunConfig = Any


def torch_dtype(name: str) -> Any:
    """The torch dtype of ``model.dtype``."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def curated_rows(cfg: RunConfig, *, records: Sequence[TraceRecord], history: Sequence[TraceRecord],
                  pool: Sequence[Any], domain_pddl: str, seed: int) -> list[dict[str, Any]]:
    """The data of the methods that train on curated traces: the curated traces (of every generation so far
    with ``accumulate``)."""
    traces = history if cfg.accumulate else records
    return training_rows(curated_traces(traces, cfg.curation, cfg.validator.counter_reward, seed=seed))


def curated_traces(traces: Sequence[TraceRecord], curation: str, counter_reward: str | None, *,
                   seed: int) -> list[TraceRecord]:
    """The traces a curation rule keeps: the counter-reward (``validator.counter_reward``) removes traces
    before ``curate`` sees them. The loop's curation, and the audit's replay of it."""
    from iterdeploy_trl.blindspot import apply_counter_reward

    return curate(apply_counter_reward(traces, counter_reward), curation, seed=seed)


def prompt_rows(cfg: RunConfig, *, records: Sequence[TraceRecord], history: Sequence[TraceRecord],
                 pool: Sequence[Any], domain_pddl: str, seed: int) -> list[dict[str, Any]]:
    """The online methods' data (REINFORCE, RLOO, GRPO): each pool task's prompt as this generation deployed it, and its PDDL for the
    reward; the trainer samples K completions of each (n·K, the deployment's budget)."""
    prompts = {r.task_id: r.prompt for r in records if r.split == "pool"}
    return [{"prompt": prompts[t.id], "domain_pddl": domain_pddl, "problem_pddl": t.problem, "task_id": t.id}
            for t in pool]


def training_data(method: Any, cfg: RunConfig, *, records: Sequence[TraceRecord], history: Sequence[TraceRecord],
                  pool: Sequence[Any], domain_pddl: str, seed: int) -> list[dict[str, Any]]:
    """The rows the next generation of ``method`` (a registered ``Method``) trains on: the curated traces, or
    the pool's prompts as deployed (``Method.trains_on``)."""
    rows = curated_rows if method.curates else prompt_rows
    return rows(cfg, records=records, history=history, pool=pool, domain_pddl=domain_pddl, seed=seed)


def process_batch(batch_size: int, accumulation: int) -> tuple[int, int]:
    """(per-process batch size, accumulation steps) under this launch: the global batch of the config is
    kept whatever the number of processes, so that adding GPUs does not change the experiment."""
    try:
        return dist.split_batch(batch_size, accumulation, dist.world_size())
    except ValueError as exc:
        raise RunError(f"{exc}: set training.batch_size or training.gradient_accumulation_steps to a multiple of "
                       f"{dist.world_size()} (a different experiment), or launch fewer processes") from None


def online_settings(cfg: RunConfig) -> Any:
    """The run's method's section (REINFORCE, RLOO, GRPO): ``baseline``, ``prompts_per_step``, ``learning_rate``
    where it has them."""
    return get_method(cfg.method).settings_of(cfg)


def reinforce_batch(cfg: RunConfig) -> tuple[int, int, int]:
    """(completions per optimizer-step micro-batch over all processes, per-process batch, per-process
    accumulation) of an online method. Its section's ``prompts_per_step`` P (set): one generation batch of P·K
    completions per optimizer step (``trainers.reinforce_step_batch``), in micro-batches of
    ``training.batch_size`` completions where that divides each process's share, else one. Unset (null): the
    study's layout, ``training.batch_size`` rounded down to whole groups of K samples (at least one group),
    ``training.gradient_accumulation_steps`` micro-batches a step."""
    tcfg, s = cfg.training, cfg.sampling
    prompts = getattr(online_settings(cfg), "prompts_per_step", None)
    if prompts is None:
        per_step = max(s.samples_per_task, (tcfg.batch_size // s.samples_per_task) * s.samples_per_task)
        return (per_step, *process_batch(per_step, tcfg.gradient_accumulation_steps))
    from iterdeploy_trl.trainers.reinforce import reinforce_step_batch

    total, n = prompts * s.samples_per_task, dist.world_size()
    share = total // n if total % n == 0 else total
    micro = tcfg.batch_size if share % tcfg.batch_size == 0 else None
    try:
        layout = reinforce_step_batch(prompts, s.samples_per_task, world_size=n, micro_batch=micro)
    except ValueError as exc:
        raise RunError(f"{cfg.method}.prompts_per_step: {exc}") from None
    return micro or share, layout["per_device_train_batch_size"], layout["gradient_accumulation_steps"]


def online_steps(cfg: RunConfig, n_rows: int) -> int:
    """Optimizer steps of one online segment: n·K completions (the deployment's budget) in steps of P·K
    (``prompts_per_step`` P), or of the study's layout (``reinforce_batch``)."""
    k = cfg.sampling.samples_per_task
    prompts = getattr(online_settings(cfg), "prompts_per_step", None)
    if prompts is not None:
        return max(1, math.ceil(n_rows / prompts))
    per_step = reinforce_batch(cfg)[0]
    return max(1, math.ceil(n_rows * k / (per_step * cfg.training.gradient_accumulation_steps)))


def _trainable_model(cfg: RunConfig, base: Path, init_from: Path | None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config) to train: the base, or ``init_from`` (a full model, or the base
    with ``init_from``'s LoRA adapter, trainable); with ``training.lora`` and no adapter yet, a fresh LoRA
    config for the trainer to apply. The same for every method."""
    from iterdeploy_trl.models import load_model_and_tokenizer

    tcfg = cfg.training
    adapter = init_from is not None and (init_from / "adapter_config.json").exists()
    start_dir = init_from if (init_from is not None and not adapter) else base
    model, tok = load_model_and_tokenizer(start_dir, dtype=torch_dtype(cfg.model.dtype), device=dist.device())
    peft_config = None
    if tcfg.lora is not None:
        from peft import LoraConfig, PeftModel

        if adapter:
            model = PeftModel.from_pretrained(model, str(init_from), is_trainable=True)
        else:
            peft_config = LoraConfig(r=tcfg.lora.r, lora_alpha=tcfg.lora.alpha, lora_dropout=tcfg.lora.dropout,
                                     target_modules=tcfg.lora.target_modules, task_type="CAUSAL_LM")
    return model, tok, peft_config


def common_args(cfg: RunConfig, tmp: Path, *, seed: int, batch_size: int, accumulation: int,
                 learning_rate: float) -> dict[str, Any]:
    """TrainingArguments every method's trainer takes from the config alike."""
    tcfg = cfg.training
    return dict(
        output_dir=str(tmp / "trainer"), learning_rate=learning_rate, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, seed=seed, data_seed=seed, save_strategy="no",
        **tracking.trainer_kwargs(cfg, tmp),
        warmup_steps=tcfg.warmup_ratio, weight_decay=tcfg.weight_decay,
        # bf16 autocast wherever the model is bf16, CPU too (transformers wants use_cpu for that), so that
        # CPU runs take the GPU configs' code path.
        bf16=cfg.model.dtype == "bfloat16", use_cpu=not dist.device().startswith("cuda"),
        loss_normalization=tcfg.loss_normalization, lr_scheduler_type="constant_with_warmup",
        disable_tqdm=False, dataloader_num_workers=0,
    )


def save_generation(trainer: Any, tok: Any, tmp: Path, out_dir: Path, stats: dict[str, Any]) -> dict[str, Any]:
    """Save the trained model as it will be deployed (a LoRA as its adapter, unmerged: merged into bf16
    weights a small update is mostly rounded away), with ``train_stats.json``, then move it into place."""
    if dist.is_main():  # DDP: every process holds the same weights
        tmp.mkdir(parents=True, exist_ok=True)
        trainer.model.save_pretrained(str(tmp))
        disk_write("model-save", tmp)
        tok.save_pretrained(str(tmp))
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        write_json(rundir.train_stats(tmp), {**stats, "machine": machine_id()})
        replace_dir(tmp, out_dir)
    dist.barrier()  # the model is in place before any process deploys it
    return read_json(rundir.train_stats(out_dir))


def valid_trace_trainer(cfg: RunConfig, common: dict[str, Any]) -> tuple[Any, type, tuple[str, ...]]:
    """The SFT trainer of a method without its own (``Method.build_trainer``): valid-trace SFT."""
    from iterdeploy_trl.trainers import ValidTraceSFTConfig, ValidTraceSFTTrainer

    return ValidTraceSFTConfig(**common), ValidTraceSFTTrainer, ()


def train_generation(cfg: RunConfig, base: Path, rows: list[dict[str, Any]], out_dir: Path, *, seed: int,
                     init_from: Path | None = None, method: str | None = None) -> dict[str, Any]:
    """Fine-tune the next generation with an SFT method on ``rows`` and save it to ``out_dir`` (moved into
    place when done).

    ``init_from``: start from this generation's model instead of the base (``training.init: previous``).
    ``trainer_rows`` converts the rows for the trainer and leaves out those longer than ``training.max_length``
    tokens (a cut trace would teach a cut plan; counted in ``overlong_skipped``);
    ``training.validation_fraction`` of the tasks are held out and their eval loss logged each epoch.
    Under several processes every process trains (DDP, the config's global batch split over them) and
    the main process saves. Returns training statistics (traces, steps, tokens, losses, seconds), also in
    ``train_stats.json``."""
    from datasets import Dataset

    from iterdeploy_trl.trainers import GradClipCallback

    method = get_method(method or cfg.method)
    if not rows:
        raise RunError("no traces to train on: the curated training set is empty (no valid plan yet). "
                       "Sample more completions per task, add easier tasks, or use a stronger base model.")
    t0 = time.time()
    tcfg = cfg.training
    batch_size, accumulation = process_batch(tcfg.batch_size, tcfg.gradient_accumulation_steps)
    model, tok, peft_config = _trainable_model(cfg, base, init_from)
    fitting, overlong = trainer_rows(rows, tok, tcfg.max_length)
    if not fitting:
        raise RunError(f"every one of the {len(rows)} training traces is longer than training.max_length="
                       f"{tcfg.max_length} tokens (prompt + completion + EOS): raise training.max_length")
    train_rows, eval_rows, split_note = validation_split(fitting, tcfg.validation_fraction, seed=seed)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    common = dict(
        common_args(cfg, tmp, seed=seed, batch_size=batch_size, accumulation=accumulation,
                     learning_rate=tcfg.learning_rate),
        # training.max_length was applied once, by trainer_rows: the trainer neither filters nor truncates again
        num_train_epochs=tcfg.epochs, max_length=None,
        logging_steps=max(1, len(rows) // (tcfg.batch_size * 4) or 1),
    )
    if eval_rows:
        common.update(eval_strategy="epoch", per_device_eval_batch_size=tcfg.batch_size)
    args, trainer_cls, extra = (method.build_trainer or valid_trace_trainer)(cfg, common)
    columns = [k for k in fitting[0] if k in (*TRAINER_INPUTS, *extra)]  # the model's inputs and the method's own

    def dataset(part: list[dict[str, Any]]) -> Dataset:
        return Dataset.from_list([{k: r[k] for k in columns} for r in part])

    clip = GradClipCallback()
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset(train_rows),
                          eval_dataset=dataset(eval_rows) if eval_rows else None, processing_class=tok,
                          peft_config=peft_config, callbacks=[clip])
    quiet_trainer(trainer, out_dir)
    dist.check_trainer(trainer)
    result = trainer.train()
    fault("training")
    eval_losses = [round(float(h["eval_loss"]), 6) for h in trainer.state.log_history if "eval_loss" in h]
    stats = {"train_traces": len(train_rows), "train_steps": int(result.global_step),
             "train_loss": float(result.training_loss), "train_seconds": round(time.time() - t0, 2),
             "train_completion_tokens": int(sum(completion_tokens(tok, train_rows)) * tcfg.epochs),
             "overlong_skipped": overlong, "eval_traces": len(eval_rows),
             "eval_loss": eval_losses[-1] if eval_losses else None, "eval_loss_per_epoch": eval_losses,
             "validation": split_note, "grad_clip": clip.summary()}
    if method.trained_stats is not None:
        stats.update(method.trained_stats(trainer))
    stats = save_generation(trainer, tok, tmp, out_dir, stats)
    del trainer, model
    return stats


class _CountingReward:
    """A reward function that counts the completions it scores and their tokens (the sampled ids GRPO
    trains on, EOS included), then defers to ``reward``."""

    def __init__(self, reward: Any) -> None:
        self.reward = reward
        self.__name__ = reward.__name__  # TRL names the reward's metrics after it
        self.completions = 0
        self.tokens = 0

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None,
                 **kwargs: Any) -> list[float]:
        self.completions += len(completions)
        self.tokens += sum(len(ids) for ids in completion_ids or [])
        return self.reward(prompts, completions, completion_ids=completion_ids, **kwargs)


def _sum_over_processes(values: list[int]) -> list[int]:
    """Element-wise sum of per-process counts (the values themselves under one process)."""
    import torch

    if dist.world_size() == 1 or not torch.distributed.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.long, device=dist.device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def train_reinforce(cfg: RunConfig, base: Path, rows: list[dict[str, Any]], out_dir: Path, *, seed: int,
                    init_from: Path | None) -> dict[str, Any]:
    """One segment of online REINFORCE (``ReinforceTrainer``) from ``init_from`` (the deployed model; None: the
    base): K fresh samples of each row's prompt, n·K in all (the budget an SFT generation learns from), scored
    by VAL, with the baseline, prompts per step and learning rate of the run's method's section; the model is
    saved as :func:`train_generation` saves it. ``train_stats.json`` records every setting that TRL's GRPO
    would use to reweight, clip or rescale (``reinforce_settings_record``: off for the plain estimator)."""
    from iterdeploy_trl.trainers import ReinforceConfig, ReinforceTrainer
    from iterdeploy_trl.trainers.reinforce import importance_sampling_record, reinforce_settings_record

    settings = online_settings(cfg)

    def build(common: dict[str, Any], prompts: int | None) -> Any:
        return ReinforceConfig(**common, baseline=settings.baseline, prompts_per_step=prompts,
                               vllm_importance_sampling_correction=getattr(
                                   settings, "vllm_importance_sampling_correction", False))

    def record(args: Any) -> dict[str, Any]:
        # GRPO's vLLM importance-sampling correction, explicitly off unless configured (plain REINFORCE)
        return {"importance_sampling": importance_sampling_record(args), "rl_settings": reinforce_settings_record(args)}

    return _train_online(cfg, base, rows, out_dir, seed=seed, init_from=init_from, build=build,
                         trainer_cls=ReinforceTrainer, record=record)


def train_grpo(cfg: RunConfig, base: Path, rows: list[dict[str, Any]], out_dir: Path, *, seed: int,
               init_from: Path | None) -> dict[str, Any]:
    """One segment of TRL's GRPO at its defaults (``ReferenceGRPOTrainer``, ``grpo_reference_config``), laid out
    as :func:`train_reinforce` (n·K fresh samples, P prompts × K a step, the VAL reward); ``train_stats.json``
    records its objective's settings as TRL ran them (``grpo_settings_record``: clip range, std scaling, the
    vLLM importance-sampling correction)."""
    from iterdeploy_trl.trainers import ReferenceGRPOTrainer, grpo_reference_config, grpo_settings_record
    from iterdeploy_trl.trainers.reinforce import importance_sampling_record

    def build(common: dict[str, Any], prompts: int | None) -> Any:
        common = {k: v for k, v in common.items() if k != "loss_normalization"}  # a field of this package's configs
        return grpo_reference_config(common.pop("output_dir"), **common)

    def record(args: Any) -> dict[str, Any]:
        return {"importance_sampling": importance_sampling_record(args), "rl_settings": grpo_settings_record(args)}

    return _train_online(cfg, base, rows, out_dir, seed=seed, init_from=init_from, build=build,
                         trainer_cls=ReferenceGRPOTrainer, record=record)


def _train_online(cfg: RunConfig, base: Path, rows: list[dict[str, Any]], out_dir: Path, *, seed: int,
                  init_from: Path | None, build: Any, trainer_cls: type, record: Any) -> dict[str, Any]:
    """The online methods' training path: ``build(common, prompts_per_step)`` makes the trainer config from the
    arguments every online trainer takes, ``record(args)`` the settings written to ``train_stats.json``.
    Training tokens are counted from the sampled completions."""
    from datasets import Dataset

    from iterdeploy_trl.reward import ValidPlanReward
    from iterdeploy_trl.trainers import GradClipCallback

    t0 = time.time()
    tcfg, s, settings = cfg.training, cfg.sampling, online_settings(cfg)
    model, tok, peft_config = _trainable_model(cfg, base, init_from)
    # The global batch (completions per micro-batch x accumulation) is the same whatever the processes.
    _, batch_size, accumulation = reinforce_batch(cfg)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    common = dict(
        common_args(cfg, tmp, seed=seed, batch_size=batch_size, accumulation=accumulation,
                    learning_rate=getattr(settings, "learning_rate", None) or tcfg.learning_rate),
        max_steps=online_steps(cfg, len(rows)), logging_steps=1, num_generations=s.samples_per_task,
        temperature=s.temperature, top_p=s.top_p, max_completion_length=s.max_new_tokens,
        use_vllm=s.backend == "vllm")
    args = build(common, getattr(settings, "prompts_per_step", None))
    reward = _CountingReward(ValidPlanReward(timeout=cfg.validation_timeout, workers=cfg.validation_workers))
    data = Dataset.from_list([{k: r[k] for k in ("prompt", "domain_pddl", "problem_pddl")} for r in rows])
    clip = GradClipCallback()
    trainer = trainer_cls(model=model, reward_funcs=[reward], args=args, train_dataset=data,
                          processing_class=tok, peft_config=peft_config, callbacks=[clip])
    quiet_trainer(trainer, out_dir)
    dist.check_trainer(trainer)
    result = trainer.train()
    fault("training")
    sampled, tokens = _sum_over_processes([reward.completions, reward.tokens])
    hist = trainer.state.log_history
    stats = {"train_traces": sampled, "train_steps": int(result.global_step),
             "train_loss": float(result.training_loss), "train_seconds": round(time.time() - t0, 2),
             "train_completion_tokens": tokens, "reward_mean": [h.get("reward") for h in hist if "reward" in h],
             **record(args), "grad_clip": clip.summary()}
    stats = save_generation(trainer, tok, tmp, out_dir, stats)
    del trainer, model
    return stats


# The columns of trainer_rows' rows the trainers read as model inputs: TRL's pre-tokenised form, or the text
TRAINER_INPUTS = ("input_ids", "completion_mask", "prompt", "completion")
_TEXT_AND_IDS = ("prompt", "completion", "prompt_ids", "completion_ids")


def trainer_rows(rows: Sequence[dict[str, Any]], tok: Any, max_length: int) -> tuple[list[dict[str, Any]], int]:
    """The one conversion of a generation's training set (``curate.training_rows``' rows, as written to
    ``train.jsonl``) into the rows of the trainer's dataset, and the one place ``training.max_length`` is
    applied: ``(rows that fit, how many did not)``. A row longer than ``max_length`` tokens is left out (a cut
    trace would teach a cut plan); the trainer is given ``max_length=None`` and neither filters nor truncates.

    Where every row has the sampled tokens, a row becomes TRL's pre-tokenised form: ``input_ids`` =
    ``prompt_ids`` + ``completion_ids`` (trained on as sampled: no re-tokenisation, no EOS appended; a sample
    that ended with EOS has it) and ``completion_mask`` (1 on the completion), its length that of
    ``input_ids``. Otherwise (trace files from before the ids were recorded) each row keeps ``prompt`` and
    ``completion`` for TRL to tokenise, its length counted as TRL tokenises it (prompt + completion + EOS).
    The row's other fields (``task_id``: the validation split's key; ``behaviour_logprob``: IW-SFT's) are kept."""
    with_ids = bool(rows) and all(r.get("prompt_ids") is not None and r.get("completion_ids") is not None
                                  for r in rows)
    out = []
    for r, n in zip(rows, _ids_tokens(rows) if with_ids else _text_tokens(tok, rows), strict=True):
        if n > max_length:
            continue
        other = {k: v for k, v in r.items() if k not in _TEXT_AND_IDS}
        if with_ids:
            prompt, completion = list(r["prompt_ids"]), list(r["completion_ids"])
            if not prompt or not completion:
                raise RunError(f"the training row of task {r.get('task_id')} has prompt_ids={prompt!r} and "
                               f"completion_ids={completion!r}: a trace's token ids must be non-empty lists; "
                               "delete its train.jsonl and the traces it came from to sample them again")
            out.append({**other, "input_ids": prompt + completion,
                        "completion_mask": [0] * len(prompt) + [1] * len(completion)})
        else:
            out.append({"prompt": r["prompt"], "completion": r["completion"], **other})
    return out, len(rows) - len(out)


def _ids_tokens(rows: Sequence[dict[str, Any]]) -> list[int]:
    return [len(r["prompt_ids"]) + len(r["completion_ids"]) for r in rows]


def _text_tokens(tok: Any, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Tokens of each text row as TRL's SFT tokenises it: prompt + completion + EOS (none added twice)."""
    if not rows:
        return []
    eos = tok.eos_token or ""
    texts = [r["prompt"] + r["completion"] + ("" if r["completion"].endswith(eos) else eos) for r in rows]
    return [len(ids) for ids in tok(texts)["input_ids"]]


def completion_tokens(tok: Any, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Completion tokens of each of ``trainer_rows``' rows: its sampled completion's (``completion_mask``, EOS
    included when sampled), else the re-tokenised completion text."""
    return [sum(r["completion_mask"]) if "completion_mask" in r
            else len(tok(r["completion"], add_special_tokens=False)["input_ids"]) for r in rows]
