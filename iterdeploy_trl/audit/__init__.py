"""Reward audit of a run directory (``iterdeploy audit``): what each generation's selection rewarded.

Everything is read from the run directory alone (its config, tasks, trace records, curated training sets,
models and metrics):

- **funnel**: per seed and generation, the pool traces sampled → valid → curated (returned to training at
  that generation), and how their features differ along the way: plan length (actions, and relative to the
  task's reference plan), reasoning and completion tokens, task size, action-type frequencies, repeated
  actions (an action written a second time in one plan), undone actions (an action whose successor puts
  the state back to what it was before it, e.g. ``(pick-up a)`` then ``(put-down a)``; found with the
  simulator on the plan's legal prefix, so it holds for any domain) and novelty (a plan never written for
  that task in an earlier generation of the seed);
- **implicit reward** (Prop. 2): SFT on a training set whose rows were sampled by several models β_k (a
  share λ_k of the rows from generation k) is REINFORCE of π with the per-trace effective reward
  ``r · Σ_k λ_k β_k(y|x) / π(y|x)``, the mixture density over every source generation. Here r = 1 for
  every trace curation returned to training (the selection *is* the reward), β_k is the model that
  deployed generation k (its sampling temperature and top-p), scored on EVERY trace of the set, and π is
  the model the generation's training starts from (the base model under ``training.init: base``, the
  deployed model otherwise), at temperature 1; each model is loaded from the run directory. λ_k are shares
  of the curated rows, so the density is that of the samples before curation (the valid mass of each
  source, which conditioning on curation would add, is not in it);
- **drift and regressions**: features of every deployed output per generation (pool and held-out), tasks
  solved earlier and lost later;
- **lineage and completeness**: validator identity, curation rule, base model, training set per generation,
  and checks that the directory is complete and consistent (trace counts, metrics recomputed from traces,
  the training set recomputed with the run's curation rule).

A section that cannot be computed says why in the report; bad input (not a run directory, unreadable
config) raises :class:`AuditError` with the path.

The package, one module a concept: :mod:`.reading` (the run directory as the audit reads it),
:mod:`.features` (trace features and funnel stages), :mod:`.reward` (Prop. 2's effective reward and the
scoring of traces), :mod:`.checks` (the audit of a run, its checks, :func:`write_audit`, the blind-spot
experiment) and :mod:`.markdown` (the report).
"""

from iterdeploy_trl.audit.checks import (
    AuditReport,
    Check,
    audit_run,
    blind_spot_experiment,
    recompute_curation,
    write_audit,
)
from iterdeploy_trl.audit.features import (
    UndoCounter,
    action_type,
    plan_actions,
    repeated_actions,
    stage_summary,
    trace_features,
)
from iterdeploy_trl.audit.markdown import audit_markdown, blind_spot_markdown
from iterdeploy_trl.audit.reading import (
    SCHEMA,
    STAGES,
    AuditError,
    RunDir,
    load_run_config,
    open_run,
    read_traces,
    read_train_rows,
)
from iterdeploy_trl.audit.reward import (
    PER_TRACE_MAX,
    TraceScorer,
    effective_rewards,
    log_effective_weights,
    mixture_logprob,
    score_logprobs,
    source_shares,
    start_generation,
    weight_statistics,
)

__all__ = [
    "PER_TRACE_MAX", "SCHEMA", "STAGES", "AuditError", "AuditReport", "Check", "RunDir", "TraceScorer",
    "UndoCounter", "action_type", "audit_markdown", "audit_run", "blind_spot_experiment", "blind_spot_markdown",
    "effective_rewards", "load_run_config", "log_effective_weights", "mixture_logprob", "open_run", "plan_actions",
    "read_traces", "read_train_rows", "recompute_curation", "repeated_actions", "score_logprobs", "source_shares",
    "stage_summary", "start_generation", "trace_features", "weight_statistics", "write_audit",
]
