"""The run hash: ``config_hash`` of everything that determines a run's results, and ``hash_matches`` (whether a
run directory holds a run of a config). Settings added after run directories existed are hashed so that those
runs keep their hash (``_ADDED_LATER``, ``_hash_layout``): the pinned hashes of ``tests/test_config.py`` hold."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from iterdeploy_trl import methods as registry
from iterdeploy_trl.config_schema import RunConfig, ValidatorConfig, _jsonable
from iterdeploy_trl.tasks.generate import GENERATOR_VERSION

# The comparison's methods when compare_methods left the run hash: every run is hashed with this list (a
# constant: registering a method changes no run's hash).
_HASHED_COMPARE_METHODS = ("valid-sft", "iw-sft", "uncurated-sft", "reinforce")

# Where the servers of sampling.backend vllm-server are: not what a run samples.
_NOT_IN_HASH = ("servers", "server_model", "server_timeout", "server_retries")

# Keys added after run directories existed: left out of the hash at their default, so that those runs
# (made when the key did not exist, i.e. with its default behaviour) still resume.
_ADDED_LATER: dict[tuple[str, str], Any] = {
    ("training", "validation_fraction"): 0.0,
    ("training", "reinforce_learning_rate"): None,  # reinforce.learning_rate, hashed at its old place
    ("model", "base_walks_per_task"): 4,
    ("model", "base_num_walks"): 8000,  # what every auto base model used before the key existed
    ("model", "base_notes"): False,
    ("model", "base_walk_length"): "plan",
    ("model", "base_task_size"): None,
    ("tasks", "distinct"): False,
}


def config_hash(cfg: RunConfig, *, _compare_methods: tuple[str, ...] | None = None) -> str:
    """Stable hash of everything that determines a run's results (the run name excluded)."""
    import hashlib

    data = _hash_layout(cfg.to_dict())
    data.pop("name", None)
    data.pop("report_to", None)  # where results are reported does not change them
    data.pop("drift", None)  # what the loop measures besides does not change the run (drift.kl_previous)
    # Which methods `iterdeploy compare` runs does not change what one method's run does: hashed at the
    # default for every run (a run made with the default keeps its hash), so that adding a method to a
    # comparison resumes the methods already run. Run directories hashed with another value before this
    # still resume (hash_matches).
    data["compare_methods"] = list(_HASHED_COMPARE_METHODS if _compare_methods is None else _compare_methods)
    for key in _NOT_IN_HASH:
        data["sampling"].pop(key, None)
    for (section, key), default in _ADDED_LATER.items():
        if data.get(section, {}).get(key) == default:
            del data[section][key]
    if data.get("validator") == _jsonable(dataclasses.asdict(ValidatorConfig())):
        del data["validator"]  # the exact validator, as every run before the section existed
    version = GENERATOR_VERSION.get(cfg.domain, 1)  # a domain without a generator: its tasks.dir is hashed
    if version > 1:  # a pool drawn by an older generator is another run (version 1 hashes as before)
        data["generator_version"] = version
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def hash_matches(cfg: RunConfig, stored: dict[str, Any]) -> bool:
    """Whether a run directory's ``resolved_config.json`` (``stored``) holds a run of ``cfg``: its hash is
    ``config_hash(cfg)``, or the hash this package made before ``compare_methods`` left the hash, with the
    stored config's ``compare_methods``."""
    old = stored.get("hash")
    if old == config_hash(cfg):
        return True
    methods = (stored.get("config") or {}).get("compare_methods")
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        return False
    return old == config_hash(cfg, _compare_methods=tuple(methods))


def _hash_layout(data: dict[str, Any]) -> dict[str, Any]:
    """``cfg.to_dict()`` in the layout run hashes were made with before the methods' own sections: each
    registered method's section goes where its ``Method.hash_layout`` puts it (iw_sft and reinforce: back under
    ``training`` with their old names, defaults when a section is left out, so that a run directory made before
    the sections existed still resumes); a section without a layout is hashed as it is, and left out while
    null (so that registering a method changes no run's hash)."""
    data.pop("tuning", None)  # how compare picks a rate, not what a run does
    for method in registry.with_section():
        section = data.pop(method.section, None)
        if method.hash_layout is not None:
            method.hash_layout(section, data)
        elif section is not None:
            data[method.section] = section
    return data
