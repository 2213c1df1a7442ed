"""``run_checks``: run the checks in ``CHECKS``; the enumeration setting is built only when an enumeration
check is asked for (``pipeline`` and ``actual_update`` bring their own models)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from iterdeploy_trl.theory.actual_update import actual_update
from iterdeploy_trl.theory.curation import CurationConfig, curation
from iterdeploy_trl.theory.enumeration import ExactContext, exact_context
from iterdeploy_trl.theory.errors import TheoryError
from iterdeploy_trl.theory.exact_gradient import exact_gradient
from iterdeploy_trl.theory.mixture import mixture
from iterdeploy_trl.theory.off_policy import off_policy
from iterdeploy_trl.theory.on_policy import on_policy_same_samples
from iterdeploy_trl.theory.pipeline import pipeline
from iterdeploy_trl.theory.pipeline_off_policy import pipeline_off_policy
from iterdeploy_trl.theory.report import CheckResult, TheoryReport
from iterdeploy_trl.theory.setting import Setting, TheoryConfig, build_setting

ENUMERATION_CHECKS: tuple[str, ...] = ("on_policy_same_samples", "exact_gradient", "off_policy", "mixture")
PIPELINE_CHECKS: tuple[str, ...] = ("pipeline", "pipeline_off_policy", "actual_update", "curation")
CHECKS: tuple[str, ...] = ENUMERATION_CHECKS + PIPELINE_CHECKS


def run_checks(
    config: TheoryConfig | None = None,
    checks: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    setting: Setting | None = None,
) -> TheoryReport:
    """Run ``checks`` (default: the enumeration checks, ``ENUMERATION_CHECKS``). The enumeration setting
    (``build_setting``) is made only for an enumeration check; ``pipeline`` and ``curation`` read
    ``config.pipeline``, ``actual_update`` ``config.update``."""
    config = config or TheoryConfig()
    checks = list(checks or ENUMERATION_CHECKS)
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise TheoryError(f"unknown check {unknown[0]!r}: choose from {', '.join(CHECKS)}")
    start = time.perf_counter()
    if any(c in ENUMERATION_CHECKS for c in checks):
        setting = setting or build_setting(config, log)
    results: list[CheckResult] = []
    ctx: ExactContext | None = None
    for check in checks:
        if log:
            log(f"running {check} ...")
        if check == "pipeline":
            results.append(pipeline(config.pipeline, log))
            continue
        if check == "pipeline_off_policy":
            results.append(pipeline_off_policy(config.pipeline, log))
            continue
        if check == "actual_update":
            results.append(actual_update(config.update, log))
            continue
        if check == "curation":
            results.append(curation(CurationConfig.from_pipeline(config.pipeline), log))
            continue
        assert setting is not None
        if check == "on_policy_same_samples":
            results.append(on_policy_same_samples(setting, config))
            continue
        ctx = ctx or exact_context(setting)
        results.append(
            {"exact_gradient": exact_gradient, "off_policy": off_policy, "mixture": mixture}[check](
                setting, config, ctx
            )
        )
    setup = dict(setting.info) if setting is not None else {}
    if setting is not None:
        setup["warmup_runtime_s"] = round(
            time.perf_counter() - start - sum(r.data.get("runtime_s", 0) for r in results), 2
        )
    from iterdeploy_trl.runio import machine_record

    # The machine (CPU model, torch's CPU capability, library versions): the empirical magnitudes depend on it.
    return TheoryReport(results, setup, time.perf_counter() - start, machine=machine_record())
