"""The run configuration's schema: one frozen dataclass per YAML section (``tasks``, ``model``, ``sampling``,
``training``, ``tuning``, ``validator``) and ``RunConfig``, the whole tree, with one more section per registered
method (``iterdeploy_trl/methods/``). Each ``check`` names the dotted key and the value it refuses.

Reading a file into this tree is ``config_reading`` (and ``config.load_config``); the run hash is
``config_hashing``; ``iterdeploy_trl.config`` re-exports every name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterdeploy_trl import methods as registry
from iterdeploy_trl.domains import note_domains
from iterdeploy_trl.errors import ConfigError
from iterdeploy_trl.errors import check_learning_rate as _learning_rate
from iterdeploy_trl.errors import finite as _finite
from iterdeploy_trl.errors import require as _require
from iterdeploy_trl.tasks.generate import GENERATOR_VERSION, SIZE_LIMITS

# Every registered method (iterdeploy_trl/methods/: one module each), in the registry's order.
METHODS = registry.names()
# The methods `iterdeploy compare` runs by default (Method.in_comparison).
DEFAULT_COMPARE_METHODS = tuple(m.name for m in registry.all_methods() if m.in_comparison)
CURATIONS = ("shortest", "shortest-plan", "all-valid", "random-valid", "none")
BACKENDS = ("transformers", "vllm", "vllm-server")
INITS = ("base", "previous")
NORMALIZATIONS = ("sequence_sum", "batch_tokens", "sequence_mean")

# Bounds of values that are legal numbers but no experiment: past them a run fails late (a learning rate of
# 1e300 turns the logits into NaN at the first generation) or sits silent for hours allocating (a pool of 1e9
# tasks, 1e9 samples a task). The study: 1000 tasks, 8 samples, learning rates 1e-5..3e-3.
MAX_TASKS = 100_000  # tasks.n, tasks.heldout
MAX_SAMPLES_PER_TASK = 1024  # sampling.samples_per_task

@dataclass(frozen=True)
class TasksConfig:
    """The task pool and the held-out split."""

    n: int = 200  # tasks in the deployment pool (the study: 1000)
    heldout: int = 50  # extra tasks never trained on, evaluated every generation
    size: tuple[int, int] | None = (2, 5)  # generator size range (blocks, levels); None: generator default
    seed: int = 0  # seed of the task generator (the pool is shared by all run seeds)
    dir: str | None = None  # an existing task directory (IPC layout) instead of generating
    # true: no problem drawn twice, so the held-out split never repeats a pool problem (small sizes repeat
    # problems otherwise; false keeps the draws of runs made before the key existed)
    distinct: bool = False

    def check(self) -> None:
        _require(1 <= self.n <= MAX_TASKS, "tasks.n", self.n, f"must be in 1..{MAX_TASKS:,}")
        _require(0 <= self.heldout <= MAX_TASKS, "tasks.heldout", self.heldout, f"must be in 0..{MAX_TASKS:,}")
        if self.size is not None:
            _require(len(self.size) == 2 and 1 <= self.size[0] <= self.size[1], "tasks.size", self.size,
                     "must be [low, high] with 1 <= low <= high")


@dataclass(frozen=True)
class ModelConfig:
    """The base model: a local path to any HF causal LM, or ``auto`` for the small local model."""

    path: str = "auto"  # "auto": pretrain (or reuse from the cache) the small base model of the domain
    prompt_style: str = "compact"  # "compact" for the small model, "paper" for chat LLMs
    dtype: str = "float32"  # float32 | bfloat16 | float16
    size: str = "tiny"  # small-model size when path is auto (tiny: 0.1 M parameters)
    base_steps: int = 5000  # pretraining steps of the auto base model
    base_num_walks: int = 80000  # random legal walks in its pretraining data (4 per generated task)
    base_batch_size: int = 32  # walks per pretraining step
    base_learning_rate: float = 3e-3
    base_max_walk: int = 10  # longest random legal walk in the auto base model's pretraining data
    base_walks_per_task: int = 4  # walks from each generated task's initial state (more: less PDDL parsing)
    # Each pretraining walk carries a state note (a ``;`` comment, prompts.state_note) before its first
    # action and after every action (rovers and sokoban; blocksworld has no notes), so the model writes them too.
    base_notes: bool = False
    # Length of each walk, uniform in 1..L: "plan": L = min(base_max_walk, the task's reference plan length),
    # so lengths follow the plans of tasks of that size; "uniform": L = base_max_walk (longer walks reach more
    # goals by chance).
    base_walk_length: str = "plan"
    # Size range of the generated tasks the pretraining walks start from; None: the run's ``tasks.size``.
    # Wider than ``tasks.size`` (e.g. [1, 8] for a pool of 1-4), the base model sees larger states than the
    # pool's (the way to a base model that knows the rules beyond the pool's sizes).
    base_task_size: tuple[int, int] | None = None
    cache_dir: str | None = None  # where auto base models are kept; default ~/.cache/iterdeploy_trl

    def check(self, paths: bool = True) -> None:
        _require(self.prompt_style in ("compact", "paper"), "model.prompt_style", self.prompt_style,
                 "must be compact or paper")
        _require(self.dtype in ("float32", "bfloat16", "float16"), "model.dtype", self.dtype,
                 "must be float32, bfloat16 or float16")
        _require(self.base_steps >= 1, "model.base_steps", self.base_steps, "must be >= 1")
        _require(self.base_num_walks >= 1, "model.base_num_walks", self.base_num_walks, "must be >= 1")
        _require(self.base_batch_size >= 1, "model.base_batch_size", self.base_batch_size, "must be >= 1")
        _learning_rate("model.base_learning_rate", self.base_learning_rate)
        _require(self.base_max_walk >= 1, "model.base_max_walk", self.base_max_walk, "must be >= 1")
        _require(self.base_walk_length in ("plan", "uniform"), "model.base_walk_length", self.base_walk_length,
                 "must be plan or uniform")
        _require(self.base_walks_per_task >= 1, "model.base_walks_per_task", self.base_walks_per_task,
                 "must be >= 1")
        if self.base_task_size is not None:
            _require(len(self.base_task_size) == 2 and 1 <= self.base_task_size[0] <= self.base_task_size[1],
                     "model.base_task_size", self.base_task_size, "must be [low, high] with 1 <= low <= high")
        if paths and self.path != "auto" and not Path(self.path).expanduser().exists():
            raise ConfigError(f"model.path: {self.path!r} does not exist; give a local model directory "
                              "(nothing is downloaded) or 'auto' for the small local model")


@dataclass(frozen=True)
class SamplingConfig:
    """How the deployed model is sampled."""

    backend: str = "transformers"
    samples_per_task: int = 8  # K completions per task and generation
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 100  # the small model's plans: 5 tokens an action
    batch_size: int = 128  # sequences per generate() call (transformers backend)
    gpu_memory_utilization: float = 0.85  # vLLM only
    # vllm-server only (docs/scale-out.md). Where and how to reach the servers, not what they sample: left
    # out of the run hash, so a run resumes on other servers.
    servers: tuple[str, ...] = ()  # base URLs of running `vllm serve` servers, e.g. http://10.0.0.2:8000
    server_model: str | None = None  # the name the servers serve the base model under; None: its path
    server_timeout: float = 600.0  # seconds for one request (K completions of one prompt)
    server_retries: int = 2  # further tries of a failed request, each on the next server

    def check(self) -> None:
        _require(self.backend in BACKENDS, "sampling.backend", self.backend, f"must be one of {BACKENDS}")
        if self.backend == "vllm-server":
            _require(bool(self.servers), "sampling.servers", list(self.servers),
                     "is empty: give the URL of at least one running `vllm serve` (docs/scale-out.md)")
        for url in self.servers:
            _require(url.startswith(("http://", "https://")), "sampling.servers", url,
                     "must be an http:// or https:// URL, e.g. http://127.0.0.1:8000")
        _require(_finite(self.server_timeout) and self.server_timeout > 0, "sampling.server_timeout",
                 self.server_timeout, "must be a finite number > 0")
        _require(self.server_retries >= 0, "sampling.server_retries", self.server_retries, "must be >= 0")
        _require(1 <= self.samples_per_task <= MAX_SAMPLES_PER_TASK, "sampling.samples_per_task",
                 self.samples_per_task, f"must be in 1..{MAX_SAMPLES_PER_TASK}")
        _require(_finite(self.temperature) and self.temperature > 0, "sampling.temperature", self.temperature,
                 "must be a finite number > 0")
        _require(0 < self.top_p <= 1, "sampling.top_p", self.top_p, "must be in (0, 1]")
        _require(self.max_new_tokens >= 1, "sampling.max_new_tokens", self.max_new_tokens, "must be >= 1")
        _require(self.batch_size >= 1, "sampling.batch_size", self.batch_size, "must be >= 1")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapter; the study: r=16, alpha=32, dropout=0.05."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def check(self) -> None:
        _require(self.r >= 1, "training.lora.r", self.r, "must be >= 1")
        _require(0 <= self.dropout < 1, "training.lora.dropout", self.dropout, "must be in [0, 1)")


@dataclass(frozen=True)
class TrainingConfig:
    """Fine-tuning of each new generation. Every method reads ``learning_rate`` (REINFORCE: unless
    ``reinforce.learning_rate``), ``batch_size``, ``gradient_accumulation_steps``, ``max_length``,
    ``loss_normalization``, ``lora``, ``warmup_ratio`` and ``weight_decay``; ``init``, ``epochs`` and
    ``validation_fraction`` are read by the SFT methods only (REINFORCE trains online, from the
    deployed model, on n·K fresh samples a generation)."""

    init: str = "base"  # base: fresh model from the base each generation (the study); previous: continue
    learning_rate: float = 1e-3  # the small model, full fine-tuning; the study's LoRA used 1e-5
    epochs: float = 3.0
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 512  # prompt + completion tokens
    loss_normalization: str = "sequence_sum"
    lora: LoraConfig | None = None  # None: full fine-tuning (the small model)
    warmup_ratio: float = 0.0  # fraction of the steps with a linear learning-rate warmup
    weight_decay: float = 0.0
    # Fraction of each generation's curated tasks held out of training, their eval loss logged every epoch
    # (the study: 0.1). 0 trains on everything; fewer than 10 rows are never split.
    validation_fraction: float = 0.0

    def check(self) -> None:
        _require(self.init in INITS, "training.init", self.init, f"must be one of {INITS}")
        _learning_rate("training.learning_rate", self.learning_rate)
        _require(_finite(self.epochs) and self.epochs > 0, "training.epochs", self.epochs, "must be a finite number > 0")
        _require(self.batch_size >= 1, "training.batch_size", self.batch_size, "must be >= 1")
        _require(self.gradient_accumulation_steps >= 1, "training.gradient_accumulation_steps",
                 self.gradient_accumulation_steps, "must be >= 1")
        _require(self.max_length >= 8, "training.max_length", self.max_length, "must be >= 8")
        _require(self.loss_normalization in NORMALIZATIONS, "training.loss_normalization",
                 self.loss_normalization, f"must be one of {NORMALIZATIONS}")
        _require(0 <= self.warmup_ratio < 1, "training.warmup_ratio", self.warmup_ratio, "must be in [0, 1)")
        _require(0 <= self.validation_fraction < 1, "training.validation_fraction", self.validation_fraction,
                 "must be in [0, 1)")
        if self.lora is not None:
            self.lora.check()


# The methods that train on the deployment's (curated) traces.
SFT_METHODS = tuple(m.name for m in registry.all_methods() if m.curates)


def split_arm(arm: str) -> tuple[str, str | None]:
    """An arm of ``compare_methods``: a registered method (``valid-sft``), or a method with its own curation
    rule (``valid-sft@random-valid``: the curation-sensitivity arms, every other setting shared)."""
    method, _, curation = arm.partition("@")
    return method, (curation or None)


# The batch knob each tuning grid may hold besides learning_rate: a method section's field (prompts_per_step of
# the RL arms) or a training field (batch_size of the SFT arms); checked against the arm's method in compare.
GRID_LEARNING_RATE = "learning_rate"


@dataclass(frozen=True)
class TuningConfig:
    """Tuning of ``iterdeploy compare`` (section ``tuning``; read by compare only): each arm runs once per
    grid point on the tuning ``seeds`` (never the result seeds) and, with ``task_seed``, on a tuning task pool
    of its own (generated from that seed; compare refuses it, before any work, where one of its tasks equals a
    reported pool or held-out task). The grid point with the most tuning-pool tasks solved at the full budget
    (mean over the tuning seeds; ties: the earlier point) is the one the comparison uses for that arm.

    ``grids`` (per arm: ``{learning_rate: [...], <batch knob>: [...]}``, the batch knob ``prompts_per_step``
    for the RL arms, ``batch_size`` for the SFT arms; every arm the same number of grid points) replaces the
    older per-kind rate lists for the arms it names."""

    seeds: tuple[int, ...] = (99,)
    sft_learning_rates: tuple[float, ...] = ()  # training.learning_rate candidates, each SFT method tuned alone
    reinforce_learning_rates: tuple[float, ...] = ()  # reinforce.learning_rate candidates
    task_seed: int | None = None  # the tuning pool's own task seed (null: tuning on the reported pool, as before)
    n: int | None = None  # tuning pool tasks (null: tasks.n)
    heldout: int | None = None  # tuning held-out tasks (null: tasks.heldout)
    grids: dict[str, dict[str, tuple[float, ...]]] | None = None  # arm -> knob -> candidate values
    # Draw the tuning pool from task_seed past every problem of the reported pool and held-out split (and past
    # repeats), written once to OUT/tuning/tasks: small tasks repeat (blocksworld 2-5 blocks: 182 distinct of
    # 250 drawn), so a plain second draw shares tasks with the reported ones and is refused.
    exclude_reported: bool = False

    def check(self, result_seeds: tuple[int, ...], task_seed: int | None = None) -> None:
        _require(len(self.seeds) >= 1, "tuning.seeds", self.seeds, "needs at least one seed")
        both = sorted(set(self.seeds) & set(result_seeds))
        _require(not both, "tuning.seeds", self.seeds, f"must not hold a result seed (seeds: {both})")
        for key in ("sft_learning_rates", "reinforce_learning_rates"):
            for lr in getattr(self, key):
                _learning_rate(f"tuning.{key}", lr)
        _require(not self.exclude_reported or self.task_seed is not None, "tuning.exclude_reported", True,
                 "needs tuning.task_seed (the draw it filters)")
        _require(self.task_seed is None or self.task_seed != task_seed, "tuning.task_seed", self.task_seed,
                 "must differ from tasks.seed (the tuning pool is its own)")
        for key in ("n", "heldout"):
            value = getattr(self, key)
            _require(value is None or value >= (1 if key == "n" else 0), f"tuning.{key}", value,
                     "must be >= 1" if key == "n" else "must be >= 0")
        sizes = {}
        for arm, grid in (self.grids or {}).items():
            _require(isinstance(grid, dict) and GRID_LEARNING_RATE in grid, f"tuning.grids.{arm}", grid,
                     "must be a mapping with a learning_rate list (and its batch knob's list)")
            for knob, values in grid.items():
                _require(len(values) >= 1 and len(set(values)) == len(values), f"tuning.grids.{arm}.{knob}",
                         list(values), "needs distinct values")
                for v in values:
                    if knob == GRID_LEARNING_RATE:
                        _learning_rate(f"tuning.grids.{arm}.{knob}", v)
                    else:
                        _require(v >= 1 and float(v).is_integer(), f"tuning.grids.{arm}.{knob}", v,
                                 "must be a whole number >= 1")
            sizes[arm] = math.prod(len(v) for v in grid.values())
        _require(len(set(sizes.values())) <= 1, "tuning.grids", sizes,
                 "every arm needs the same number of tuning runs (grid points)")


@dataclass(frozen=True)
class BlindSpotConfig:
    """What the training validator does not check (``blindspot.py``); VAL still decides, on a changed task."""

    precondition: str | None = None  # "ACTION: (LITERAL)" removed from that action, e.g. "stack: (clear ?y)"
    goal_atoms: int | None = None  # only the first N atoms of each goal are checked

    def check(self) -> None:
        _require(self.goal_atoms is None or self.goal_atoms >= 1, "validator.blind_spot.goal_atoms",
                 self.goal_atoms, "must be >= 1 or null")
        if self.precondition is not None:
            from iterdeploy_trl.blindspot import BlindSpotError, parse_precondition_spec

            try:
                parse_precondition_spec(self.precondition)
            except BlindSpotError as exc:
                raise ConfigError(str(exc)) from exc


@dataclass(frozen=True)
class ValidatorConfig:
    """The reward the loop trains on: VAL's verdict, optionally with a declared blind spot (every trace is
    then also checked exactly, both verdicts recorded), and a counter-reward curation applies."""

    kind: str = "val"  # VAL decides (the only kind)
    blind_spot: BlindSpotConfig | None = None  # None: the exact validator
    counter_reward: str | None = None  # "exact": a trace returns to training only if the exact validator accepts it

    def check(self) -> None:
        _require(self.kind == "val", "validator.kind", self.kind, "must be val")
        _require(self.counter_reward in (None, "exact"), "validator.counter_reward", self.counter_reward,
                 "must be exact or null")
        if self.blind_spot is not None:
            self.blind_spot.check()


@dataclass(frozen=True)
class DriftConfig:
    """What the loop measures of the model's drift beyond the model-free measures every metrics row carries
    (``drift_measures``). Not in the run hash: it measures a run, it does not change what the run does."""

    # true: each generation g > 0's metrics row gets kl_prev_heldout and kl_prev_heldout_se, KL(β_g ‖ β_{g-1})
    # on the held-out samples with generation g-1's deployed model loaded (``drift.kl_to_previous``, as
    # `iterdeploy drift` computes it); one more model load and scoring pass a generation
    kl_previous: bool = False


@dataclass(frozen=True)
class _RunFields:
    """One iterative-deployment run (or several seeds of it). ``RunConfig`` adds one section per registered
    method with settings of its own (``Method.section``: ``iw_sft``, ``reinforce``, ...; null: its defaults)."""

    domain: str = "blocksworld"
    name: str = "cpu-default"
    generations: int = 4  # trained generations; generation 0 is the base model
    seeds: tuple[int, ...] = (0,)
    method: str = "valid-sft"
    curation: str = "shortest"
    accumulate: bool = True  # train on the traces of all earlier generations (the study)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    validator: ValidatorConfig = field(default_factory=ValidatorConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)  # drift measures written by the loop; not hashed
    tuning: TuningConfig | None = None  # iterdeploy compare's learning-rate tuning; null: none
    validation_timeout: float = 30.0  # seconds per VAL call
    validation_workers: int | None = None  # default: all cores
    chunk_size: int = 64  # tasks per resumable deployment chunk
    # torch CPU threads. The small model's matrices are tiny: one thread avoids OpenMP spin-waiting, which
    # on a busy 2-core machine cost 50x the CPU time of a step (measured); null leaves torch's default.
    threads: int | None = 1
    compare_methods: tuple[str, ...] = DEFAULT_COMPARE_METHODS  # methods run by `iterdeploy compare`
    # Experiment trackers (as TRL's report_to): trackio, tensorboard, wandb. They receive every trainer's logs
    # and the loop's per-generation metrics (iterdeploy_trl.tracking); not part of the run hash.
    report_to: tuple[str, ...] = ()

    def check(self, *, paths: bool = True) -> _RunFields:
        """Check every value; ``paths=False`` skips whether ``model.path`` exists on this machine (to check
        a GPU config elsewhere)."""
        from iterdeploy_trl.domains import PLANNING_DOMAINS

        # Any other domain comes with its own task set (an imported folder: `iterdeploy tasks --from`).
        _require(self.domain in PLANNING_DOMAINS or bool(self.tasks.dir), "domain", self.domain,
                 f"must be one of {PLANNING_DOMAINS}, or name the domain of the task set given as tasks.dir")
        _require(self.generations >= 0, "generations", self.generations, "must be >= 0")
        _require(len(self.seeds) >= 1, "seeds", self.seeds, "needs at least one seed")
        _require(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "must be distinct")
        _require(self.method in METHODS, "method", self.method, f"must be one of {METHODS}")
        _require(self.curation in CURATIONS, "curation", self.curation, f"must be one of {CURATIONS}")
        _require(_finite(self.validation_timeout) and self.validation_timeout > 0, "validation_timeout",
                 self.validation_timeout, "must be a finite number > 0")
        _require(self.chunk_size >= 1, "chunk_size", self.chunk_size, "must be >= 1")
        _require(self.threads is None or self.threads >= 1, "threads", self.threads, "must be >= 1 or null")
        from iterdeploy_trl.tracking import check_report_to

        problem = check_report_to(self.report_to)
        if problem:
            raise ConfigError(f"report_to: {problem}")
        for m in self.compare_methods:
            method, arm_curation = split_arm(m)
            _require(method in METHODS, "compare_methods", m, f"must be one of {METHODS} (or METHOD@CURATION)")
            if arm_curation is not None:
                _require(arm_curation in CURATIONS and "curation" in registry.get(method).reads
                         and registry.get(method).required_curation is None, "compare_methods", m,
                         f"METHOD@CURATION needs a method that reads curation and one of {CURATIONS}")
        required = registry.get(self.method).required_curation
        if required is not None and self.curation != required:
            raise ConfigError(f"method: {self.method} trains on {registry.get(self.method).summary.split(' (')[0]}; "
                              f"set curation: {required}")
        if self.model.base_notes:
            _require(self.domain in note_domains(), "model.base_notes", True,
                     f"{self.domain} has no state notes (only {', '.join(note_domains())})")
        self.tasks.check()
        if self.tasks.size is not None and not self.tasks.dir and self.domain in GENERATOR_VERSION:
            lim_lo, lim_hi = SIZE_LIMITS[self.domain]
            _require(lim_lo <= self.tasks.size[0] <= self.tasks.size[1] <= lim_hi, "tasks.size", list(self.tasks.size),
                     f"must lie within {self.domain}'s sizes {lim_lo}..{lim_hi}")
        self.model.check(paths=paths)
        if self.model.base_task_size is not None:
            _require(self.model.path == "auto", "model.base_task_size", self.model.base_task_size,
                     f"is the auto base model's pretraining range, but model.path is {self.model.path!r}; remove it")
            _require(self.domain in GENERATOR_VERSION, "model.base_task_size", self.model.base_task_size,
                     f"needs a domain with a generator; {self.domain}'s base model walks from its task set (tasks.dir)")
            lim_lo, lim_hi = SIZE_LIMITS[self.domain]
            lo, hi = self.model.base_task_size
            _require(lim_lo <= lo <= hi <= lim_hi, "model.base_task_size", self.model.base_task_size,
                     f"must lie within {self.domain}'s sizes {lim_lo}..{lim_hi}")
        self.sampling.check()
        self.training.check()
        for method in registry.with_section():  # a method's own section (null: its defaults)
            section = getattr(self, method.section)
            if section is not None:
                section.check()
        self.validator.check()
        if self.tuning is not None:
            self.tuning.check(self.seeds, self.tasks.seed)
        return self

    def __getattr__(self, name: str) -> Any:
        """``<section>_settings`` (``cfg.iw_sft_settings``, ``cfg.reinforce_settings``, ...): a method's section,
        or its defaults when left out."""
        method = registry.reader_of(name[: -len("_settings")]) if name.endswith("_settings") else None
        if method is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return method.settings_of(self)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _with_method_sections(base: type) -> type:
    """``RunConfig``: ``base``'s fields, then one field per registered method with a section of its own
    (``Method.section``, typed ``Method.settings | None``, null by default)."""
    fields = [(m.section, m.settings | None, field(default=None)) for m in registry.with_section()]
    cls = dataclasses.make_dataclass("RunConfig", fields, bases=(base,), frozen=True)
    cls.__module__, cls.__qualname__, cls.__doc__ = __name__, "RunConfig", base.__doc__
    return cls


RunConfig = _with_method_sections(_RunFields)
