"""The small local model: a word-level tokenizer over a domain's symbols, a small causal LM from a
stock ``transformers`` architecture, loading any local Hugging Face model, and pretraining the base
model on random legal action walks (never goal-directed plans).

Everything here is saved with ``save_pretrained`` so that downstream code loads the small model the
same way it loads a hub model (``AutoModelForCausalLM`` / ``AutoTokenizer``)."""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from iterdeploy_trl.domains import Domain, domain_pddl
from iterdeploy_trl.domains import get as get_domain
from iterdeploy_trl.pddlio import read_domain, read_problem
from iterdeploy_trl.runio import machine_record
from iterdeploy_trl.sim import Simulator

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
STRUCTURE_TOKENS: tuple[str, ...] = ("(", ")", "\n")
# Keywords of the compact prompt (see prompts.py) and the reasoning delimiters of thinking models.
KEYWORD_TOKENS: tuple[str, ...] = ("init:", "goal:", "plan:", "<think>", "</think>")

# Context of the small model (RoPE: no parameters depend on it). The compact prompt and plan of a
# level-10 sokoban task take ~1400 tokens.
MODEL_MAX_LENGTH = 2048

# name -> (hidden, layers, heads, intermediate). "tiny" is for unit tests (~0.1 M parameters).
# "tiny-h64" is "tiny" with one attention head of dimension 64 instead of four of 16 (the same parameter
# count): vLLM's CPU attention refuses head_dim 16 ("Unsupported CPU attention configuration"), 64 runs.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (64, 2, 4, 128),
    "tiny-h64": (64, 2, 1, 128),
    "x64": (64, 4, 4, 256),
    "x96": (96, 4, 4, 384),
    "small": (128, 4, 4, 512),
    "medium": (256, 6, 8, 1024),
    # ~71 M parameters, head_dim 64: the model `iterdeploy gpu-check` makes on a GPU (gpucheck/runs.py)
    "gpu-check": (768, 10, 12, 2048),
}


def _spec(domain: str | Domain) -> Domain:
    return get_domain(domain) if isinstance(domain, str) else domain


def object_names(domain: str | Domain) -> list[str]:
    """The object names a registered domain's tasks can use: its generator's ``OBJECT_NAMES``, or else the
    objects of ten of its largest generated tasks (naturally sorted). Empty for a domain without a
    generator (its task set's objects are given to :func:`vocabulary` instead)."""
    from iterdeploy_trl.prompts import natural_key

    spec = _spec(domain)
    if spec.object_names is not None:
        return list(spec.object_names)
    if not spec.builtin:
        return []
    from iterdeploy_trl.tasks import generate_tasks

    top = spec.size_limits[1]
    names: set[str] = set()
    for task in generate_tasks(spec.name, 10, seed=PRETRAIN_SEED_OFFSET, size=(top, top)):
        names.update(read_problem(spec.pddl, task.problem, task.id).objects)
    return sorted(names, key=lambda n: natural_key((n,)))


def domain_symbols(pddl_text: str) -> list[str]:
    """Names declared in a domain file (its name, types, constants, predicates, functions, actions),
    lower-cased, sorted: what can appear in a ground atom or a ground action besides object names.
    Read by ``pddlio``, the one PDDL reader."""
    return read_domain(pddl_text).symbols()


def vocabulary(domain: str | Domain, objects: Iterable[str] = ()) -> list[str]:
    """The tokenizer's vocabulary in id order: special, structure and keyword tokens, the domain's symbols
    (with its ``VOCABULARY_EXTRAS``), its object names, ``objects`` (a task set's, naturally sorted) and
    its compact-prompt keywords. Deterministic for a domain and a set of objects."""
    from iterdeploy_trl.prompts import natural_key

    spec = _spec(domain)
    words: list[str] = [*SPECIAL_TOKENS, *STRUCTURE_TOKENS, *KEYWORD_TOKENS]
    symbols = sorted(set(domain_symbols(spec.pddl)) | set(spec.vocabulary_extras))
    extra = sorted(set(objects), key=lambda n: natural_key((n,)))
    seen = set(words)
    for word in symbols + object_names(spec) + extra + list(spec.compact_keywords):
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def tokenizer_for_task_set(task_set: Any, model_max_length: int = MODEL_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """The tokenizer of a task set's domain: a registered domain's own one when the task set's domain file
    declares the same names, else one built from the task set's domain file and its tasks' objects."""
    from iterdeploy_trl.domains import is_registered

    if is_registered(task_set.domain) and domain_symbols(get_domain(task_set.domain).pddl) == domain_symbols(
        task_set.domain_pddl
    ):
        return build_tokenizer(task_set.domain, model_max_length)
    spec = Domain.from_pddl(task_set.domain, task_set.domain_pddl, task_set.root)
    objects = {o for task in task_set.tasks for o in read_problem(task_set.domain_pddl, task.problem, task.id).objects}
    return build_tokenizer(spec, model_max_length, objects=objects)


def build_tokenizer(
    domain: str | Domain, model_max_length: int = MODEL_MAX_LENGTH, *, objects: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """Word-level tokenizer whose vocabulary is the domain's symbols and object names (:func:`vocabulary`;
    ``objects``: the objects of a task set, for a domain without fixed names).

    Spaces and tabs separate words and are dropped; "(", ")" and newlines are tokens of their own,
    so any well-formed plan encodes without ``<unk>``. The decoder rebuilds "(unstack b1 b2)" lines.
    A ``<bos>`` is prepended to every encoded text."""
    vocab = {word: i for i, word in enumerate(vocabulary(domain, objects))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"[()\n]"), behavior="isolated"),
        ]
    )
    # WordPiece (with a prefix no token has) puts a space before every token; the replacements on
    # the fused string then remove the spaces that do not belong inside "(name a b)\n".
    tok.decoder = decoders.Sequence(
        [
            decoders.WordPiece(prefix="##", cleanup=False),
            decoders.Fuse(),
            decoders.Replace("( ", "("),
            decoders.Replace(" )", ")"),
            decoders.Replace(" \n", "\n"),
            decoders.Replace("\n ", "\n"),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",  # generation batches
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def make_small_model(
    tokenizer: PreTrainedTokenizerFast, size: str = "small", seed: int = 0
) -> Qwen3ForCausalLM:
    """A freshly initialised small Qwen3 causal LM over ``tokenizer``'s vocabulary (tied embeddings)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}: choose one of {', '.join(SIZES)}")
    hidden, layers, heads, intermediate = SIZES[size]
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def load_model_and_tokenizer(
    path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load any local Hugging Face causal LM and its tokenizer (no network).

    ``dtype`` is a ``torch.dtype`` or its name ("bfloat16"); ``None`` keeps the saved dtype."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model directory {path} does not exist: build a small base model with "
            f"`iterdeploy base-model --domain DOMAIN --out {path}`, or give the local directory of "
            f"a Hugging Face model (downloaded beforehand, e.g. with `hf download`)"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a model directory (no config.json): give the directory written by "
            f"`iterdeploy base-model --domain DOMAIN --out DIR` or by `save_pretrained`"
        )
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # no "Loading weights" bar: a command (evaluate, audit, ...) loads many models and shows its own progress;
    # `--verbose` (console.is_verbose) leaves the library's bar as it is
    from transformers.utils import logging as hf_logging

    from iterdeploy_trl.console import is_verbose

    bar = hf_logging.is_progress_bar_enabled()
    if not is_verbose():
        hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype if dtype is not None else "auto"
        )
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        # Many chat models ship without a pad token; eos is the usual stand-in for batched generation.
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    return model, tokenizer


# ----------------------------------------------------------------------------- base-model pretraining

# Pretraining tasks are drawn from generator seeds far from those of deployment pools (0, 1, ...), so
# the base model never sees a pool task's initial state.
PRETRAIN_SEED_OFFSET = 1_000_003


def unrelated_goal(sim: Simulator, rng: random.Random) -> list[tuple[str, ...]]:
    """The task's goal with its objects permuted within their types: a goal of the same shape that
    has nothing to do with the walk it is paired with."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for obj, t in sorted(sim.objects.items()):
        by_type[t].append(obj)
    mapping: dict[str, str] = {}
    for objs in by_type.values():
        perm = objs[:]
        rng.shuffle(perm)
        mapping.update(zip(objs, perm, strict=True))
    return sorted({(a[0], *(mapping.get(x, x) for x in a[1:])) for a in sim.goal})


def walk_examples(
    domain: str,
    num_walks: int,
    *,
    seed: int = 0,
    task_size: tuple[int, int] | None = None,
    max_walk: int = 24,
    walks_per_task: int = 4,
    notes: bool = False,
    walk_length: str = "plan",
    task_set: Any = None,
) -> list[tuple[str, str]]:
    """``(prompt, completion)`` pairs for pretraining: the compact prompt of a generated task's initial
    state with an unrelated goal, and a uniformly random legal walk from that state, one action a
    line. The walk's length is uniform in ``1..min(max_walk, reference plan length)`` (``walk_length="plan"``:
    lengths follow the plans of tasks of that size) or in ``1..max_walk`` (``"uniform"``), and nothing in
    the walk aims at the goal shown. With ``notes``, the walk is written with the note of each state it
    passes (``prompts.annotated_plan``): the base model learns to say where it is before it acts.

    With ``task_set`` (a :class:`tasks.TaskSet`, e.g. an imported folder of a domain without a generator),
    the walks start from its tasks' initial states in turn instead of from generated tasks."""
    from iterdeploy_trl.domains import note_domains
    from iterdeploy_trl.prompts import annotated_plan, format_compact
    from iterdeploy_trl.tasks import generate_tasks

    if walk_length not in ("plan", "uniform"):
        raise ValueError(f"walk_length must be 'plan' or 'uniform', not {walk_length!r}")
    if notes and domain not in note_domains():
        raise ValueError(f"{domain} has no state notes (only {', '.join(note_domains())})")

    rng = random.Random(f"walks/{domain}/{seed}")
    n_tasks = -(-num_walks // walks_per_task)
    if task_set is not None:
        tasks = [task_set.tasks[i % len(task_set.tasks)] for i in range(n_tasks)]
        dom = task_set.domain_pddl
    else:
        tasks = generate_tasks(domain, n_tasks, seed=PRETRAIN_SEED_OFFSET + seed, size=task_size)
        dom = domain_pddl(domain)
    out: list[tuple[str, str]] = []
    for task in tasks:
        sim = Simulator(dom, task.problem)
        for _ in range(walks_per_task):
            if len(out) == num_walks:
                break
            cap = max_walk if walk_length == "uniform" else max(1, min(max_walk, len(task.reference_plan)))
            length = rng.randint(1, cap)
            walk, states = sim.random_walk_states(rng, length)
            prompt = format_compact(sim.init_state, unrelated_goal(sim, rng), domain)
            out.append((prompt, annotated_plan(domain, states, walk) if notes else "".join(a + "\n" for a in walk)))
    return out


def _batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels only on completion tokens (the prompt is given, not learned)."""
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        labels[i, len(p) : n] = torch.tensor(c)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pretrain_base_model(
    domain: str,
    out: str | Path,
    *,
    steps: int = 5000,
    seed: int = 0,
    size: str = "tiny",
    num_walks: int = 80000,
    batch_size: int = 32,
    lr: float = 3e-3,
    task_size: tuple[int, int] | None = None,
    max_walk: int = 10,
    walks_per_task: int = 4,
    notes: bool = False,
    walk_length: str = "plan",
    task_set: Any = None,
    threads: int | None = 1,
    log_every: int = 50,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain a small model on random legal walks of ``domain`` and save it (model, tokenizer and
    ``base_model.json``) to ``out``; returns the record written to ``base_model.json``.

    The model learns the compact format, legal moves and plausible plan lengths, never how to reach
    a goal: goals in its training prompts are unrelated to the walks. With ``task_set`` (a domain without a
    generator, e.g. an imported folder), the tokenizer is built from its domain file and objects and the walks
    start from its tasks (:func:`walk_examples`)."""
    if threads:
        torch.set_num_threads(threads)
    started = time.time()
    cpu_started = time.process_time()
    out = Path(out)
    rng = random.Random(seed)
    tok = build_tokenizer(domain) if task_set is None else tokenizer_for_task_set(task_set)
    examples = walk_examples(domain, num_walks, seed=seed, task_size=task_size, max_walk=max_walk,
                             walks_per_task=walks_per_task, notes=notes, walk_length=walk_length,
                             task_set=task_set)
    prompts = tok([p for p, _ in examples])["input_ids"]
    completions = tok([c + tok.eos_token for _, c in examples], add_special_tokens=False)["input_ids"]
    rows = sorted(zip(prompts, completions, strict=True), key=lambda r: len(r[0]) + len(r[1]))
    data_seconds = time.time() - started

    model = make_small_model(tok, size, seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 20)

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    losses: list[float] = []
    width = min(batch_size, len(rows))
    from iterdeploy_trl.console import step_reporter

    report = step_reporter("pretraining the base model", steps, enabled=progress)
    for step in range(steps):
        # Neighbours in length order: little padding, and a random window keeps batches varied.
        start = rng.randrange(len(rows) - width + 1)
        loss = model(**_batch(rows[start : start + width], tok.pad_token_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress and (step + 1) % log_every == 0:
            recent = sum(losses[-log_every:]) / len(losses[-log_every:])
            report(step + 1, f"[base-model] step {step + 1}/{steps} loss {recent:.4f} ({time.time() - started:.0f}s)",
                   loss=recent)
    report(None, "")

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    tail = losses[-min(len(losses), log_every) :]
    record = {
        "domain": domain,
        "size": size,
        "parameters": count_parameters(model),
        "steps": steps,
        "seed": seed,
        "num_walks": len(examples),
        "batch_size": batch_size,
        "lr": lr,
        "task_size": list(task_size) if task_size else None,
        "max_walk": max_walk,
        "walks_per_task": walks_per_task,
        "notes": notes,
        "walk_length": walk_length,
        **({"task_set": str(task_set.root), "task_set_tasks": len(task_set.tasks)} if task_set is not None else {}),
        "final_loss": sum(tail) / len(tail) if tail else None,
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(time.time() - started - data_seconds, 1),
        # CPU seconds over all threads: a load-independent measure on a shared machine.
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "threads": torch.get_num_threads(),
        "machine": machine_record(),
    }
    (out / "base_model.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# ----------------------------------------------------------------------------- measuring a small model


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
) -> list[tuple[str, bool]]:
    """One sampled completion per prompt (pure sampling: no top-k/top-p), with whether it ended in
    ``<eos>``. Prompts are batched in length order to waste little on padding."""
    torch.manual_seed(seed)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[tuple[str, bool]] = [("", False)] * len(prompts)
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True)
        gen = model.generate(
            **enc.to(model.device),
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row, i in zip(gen[:, enc["input_ids"].shape[1] :].tolist(), idx, strict=True):
            ended = tokenizer.eos_token_id in row
            if ended:
                row = row[: row.index(tokenizer.eos_token_id)]
            results[i] = (tokenizer.decode(row, skip_special_tokens=True), ended)
    return results


def illegal_reason(sim: Simulator, state: Any, action: str) -> str:
    """Why ``action`` is illegal in ``state``, with objects replaced by their types so that reasons can be
    counted across tasks: ``"move: precondition (clear location) does not hold"``. Raises ValueError if the
    action is legal."""
    from iterdeploy_trl.sim import IllegalAction, parse_action

    try:
        sim.check(state, action)
    except IllegalAction as exc:
        name = (parse_action(action) or ("?",))[0]
        reason = re.sub(r"'[^']*'", "(name)", exc.reason)  # an unknown object's or action's name
        words = re.split(r"([\s()])", reason)
        return name + ": " + "".join(f"<{sim.objects[w]}>" if w in sim.objects else w for w in words)
    raise ValueError(f"{action} is legal in the given state")


def measure_small_model(
    path: str | Path,
    domain: str,
    *,
    n: int = 200,
    pool_seed: int = 12345,
    task_size: tuple[int, int] | None = None,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    use_val: bool = True,
    task_set: Any = None,
) -> dict[str, Any]:
    """Sample one plan per task of a fresh ``n``-task pool with the compact prompt and measure: the
    fraction of actions in the legal prefix, plans fully legal, plans ended by ``<eos>``, tasks solved
    (simulator; confirmed by VAL when ``use_val``), solve rates per task size, and why the first illegal
    action of each plan was illegal (:func:`illegal_reason`), the place to look when a base model writes too
    many illegal actions."""
    from iterdeploy_trl.extract import extract_plan
    from iterdeploy_trl.prompts import build_prompt
    from iterdeploy_trl.tasks import generate_tasks

    model, tok = load_model_and_tokenizer(path)
    model.eval()
    if task_set is not None:  # a domain without a generator: its first n tasks
        dom, tasks = task_set.domain_pddl, list(task_set.tasks[:n])
        n = len(tasks)
    else:
        dom, tasks = domain_pddl(domain), generate_tasks(domain, n, seed=pool_seed, size=task_size)
    prompts = [build_prompt(dom, t.problem, "compact", domain=domain) for t in tasks]
    samples = sample_completions(
        model, tok, prompts, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed
    )
    actions = legal = full = ended = solved = 0
    by_size: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    reasons: dict[str, int] = defaultdict(int)
    first_illegal_at: dict[int, int] = defaultdict(int)
    solved_plans: list[tuple[str, list[str]]] = []
    for task, (text, eos) in zip(tasks, samples, strict=True):
        extraction = extract_plan(text)
        plan = list(extraction.actions)
        sim = Simulator(dom, task.problem)
        state, k = sim.run(plan)
        if k < len(plan):
            reasons[illegal_reason(sim, state, plan[k])] += 1
            first_illegal_at[k + 1] += 1
        actions += len(plan)
        legal += k
        full += k == len(plan)
        ended += eos
        ok = extraction.found and k == len(plan) and sim.is_goal(state)
        solved += ok
        by_size[task.params["size"]][0] += ok
        by_size[task.params["size"]][1] += 1
        if ok:
            solved_plans.append((task.problem, plan))
    report: dict[str, Any] = {
        "domain": domain,
        "tasks": n,
        "legal_action_fraction": legal / max(1, actions),
        "fully_legal_fraction": full / n,
        "eos_fraction": ended / n,
        "mean_plan_length": actions / n,
        "solved": solved,
        "solve_rate": solved / n,
        "solved_by_size": {s: f"{v[0]}/{v[1]}" for s, v in sorted(by_size.items())},
        # Why the first illegal action of each plan was illegal (objects replaced by their types), most
        # frequent first, and at which action of the plan (1 = the first action) it came.
        "first_illegal_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "first_illegal_position": dict(sorted(first_illegal_at.items())),
    }
    if use_val and solved_plans:
        from iterdeploy_trl.validate import validate_batch

        verdicts = validate_batch([(dom, p, plan) for p, plan in solved_plans], workers=2)
        report["val_confirmed"] = sum(v.valid for v in verdicts)
    return report
