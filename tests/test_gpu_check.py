"""``iterdeploy gpu-check``: its CPU mode end to end (every step but the GPU-only ones, which it reports as
skipped with the reason), the GPU mode's refusal of a machine without a GPU, and the run-directory schema
comparison it relies on. The check runs once for the module (tiny model, 4 pool tasks; ~30 s of CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from iterdeploy_trl.cli import main
from iterdeploy_trl.gpucheck import (
    BF16_TOLERANCE_PER_TOKEN,
    EXPECTED_STEPS,
    IS_FIELD,
    RESULT_FILE,
    GpuCheckError,
    run_dir_schema,
    run_gpu_check,
    schema_differences,
)


@pytest.fixture(scope="module")
def check(tmp_path_factory) -> tuple[Path, dict, int, str]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["gpu-check", "--cpu", "--out", str(out)])
    return out, json.loads((out / RESULT_FILE).read_text()), code, printed.getvalue()


def _step(result: dict, name: str) -> dict:
    [step] = [s for s in result["steps"] if s["name"] == name]
    return step


def test_cpu_mode_runs_every_step_and_writes_one_json(check):
    out, result, code, printed = check
    assert code == 0 and result["ok"] and result["mode"] == "cpu" and result["device"] == "cpu"
    assert [s["name"] for s in result["steps"]] == list(EXPECTED_STEPS)
    assert all(s["status"] == "pass" for s in result["steps"]), [(s["name"], s["reason"]) for s in result["steps"]]
    for step in result["steps"]:  # one line a step, with its status
        assert f"[pass   ] {step['name']}" in printed
    assert f"{out / RESULT_FILE}" in printed.splitlines()[-1]


def test_gpu_only_parts_are_reported_skipped_with_the_reason(check):
    _, result, _, printed = check
    skipped = {(s["step"], s["what"]): s["reason"] for s in result["skipped"]}
    for step, what in (("valid_sft", "deployment with vLLM in bf16 (LoRA served unmerged)"),
                       ("throughput", "vLLM throughput"),
                       ("reinforce", "REINFORCE through TRL's vLLM integration (use_vllm, colocate)")):
        assert skipped[(step, what)].startswith("CPU mode: "), skipped
        assert f"{what} skipped: CPU mode" in printed
    assert "CUDA" in skipped[("machine", "GPU checks (CUDA, bf16 on a GPU, vLLM on CUDA)")]
    machine = _step(result, "machine")["data"]
    assert machine["torch"] == torch.__version__ and machine["gpu"] is None and machine["trl"]


def test_model_is_a_local_qwen3_and_the_runs_are_the_loops(check):
    out, result, _, _ = check
    model = _step(result, "model")["data"]
    assert model["architecture"] == "Qwen3ForCausalLM" and model["head_dim"] == 64
    assert (Path(model["path"]) / "config.json").exists() and (out / "model" / "config.json").exists()
    sft = _step(result, "valid_sft")["data"]
    assert (sft["backend"], sft["dtype"], sft["lora_r"]) == ("transformers", "bfloat16", 8)
    assert [g["generation"] for g in sft["generations"]] == [0, 1] and sft["generations"][1]["train_traces"] >= 1
    adapter = out / "valid-sft" / "seed_0" / "gen_01" / "model"
    assert (adapter / "adapter_config.json").exists() and not (adapter / "config.json").exists()
    assert _step(result, "reference_run")["data"]["dtype"] == "float32"
    assert _step(result, "schema")["data"]["differences"] == []


def test_logprobs_and_lora_checks_measure_within_the_stated_tolerance(check):
    _, result, _, _ = check
    lp = _step(result, "logprobs")["data"]
    assert lp["tolerance"] == {"per_token": BF16_TOLERANCE_PER_TOKEN}
    for g in ("generation_0", "generation_1"):
        assert lp[g]["bfloat16"]["sequences"] > 0
        assert lp[g]["bfloat16"]["max_abs_gap_per_token"] <= BF16_TOLERANCE_PER_TOKEN
        assert lp[g]["float32"]["sequences"] == lp[g]["bfloat16"]["sequences"]
    lora = _step(result, "lora")["data"]
    assert lora["samples_changed_by_adapter"] >= 1
    assert lora["adapter_vs_merged"]["max_abs_gap_per_token"] <= BF16_TOLERANCE_PER_TOKEN
    assert lora["adapter_vs_base"]["mean_abs_gap_per_token"] > BF16_TOLERANCE_PER_TOKEN


def test_reinforce_step_records_the_importance_sampling_setting(check):
    _, result, _, _ = check
    rf = _step(result, "reinforce")["data"]
    assert rf["train_steps"] == 1 and rf["use_vllm"] is False and rf["train_traces"] == 4 * 4
    setting = rf["importance_sampling"]
    assert setting["recorded"]["use_vllm"] is False and setting["recorded"][IS_FIELD] is False
    assert setting["reinforce_config_default"] is False and setting["trl_grpo_default"][IS_FIELD] is True


def test_throughput_ratios_come_from_this_run(check):
    _, result, _, _ = check
    tp = _step(result, "throughput")["data"]
    hf = tp["deploy"]["transformers"]
    assert hf["completions"] == tp["prompts"] * tp["samples_per_task"] >= 4
    assert hf["completions_per_s"] > 0 and hf["tokens_per_s"] > 0
    assert "vllm" not in tp["deploy"]
    assert result["ratios"] == tp["ratios"]
    assert result["ratios"]["sft_train_over_deploy_tokens_per_s"] == pytest.approx(
        tp["train"]["sft_lora_tokens_per_s"] / hf["tokens_per_s"])


def test_schema_differences_names_a_missing_trace_field_and_file(check):
    out, _, _, _ = check
    want = run_dir_schema(out / "reference")
    got = run_dir_schema(out / "valid-sft")
    assert schema_differences(got, want) == []
    fields = dict(got["trace_fields"])
    fields.pop("behaviour_logprob")
    fields["completion_ids"] = ["str"]
    broken = {**got, "trace_fields": fields, "files": [f for f in got["files"] if f != "summary.json"]}
    diffs = schema_differences(broken, want)
    assert "files: missing summary.json" in diffs
    assert "trace field behaviour_logprob: only in the reference" in diffs
    assert "trace field completion_ids: types ['str'], the reference's ['list']" in diffs


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is of a machine without a CUDA GPU")
def test_gpu_mode_refuses_a_machine_without_a_gpu_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["gpu-check", "--gpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("iterdeploy gpu-check: this machine cannot run the GPU check: CUDA GPU")
    assert "--cpu" in err[0]
    assert not out.exists() or not any(p.name != "run.log" for p in out.iterdir())
    with pytest.raises(GpuCheckError, match="CUDA GPU"):
        run_gpu_check(tmp_path / "again", mode="gpu")
    assert not (tmp_path / "again").exists()


def test_a_used_out_directory_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["gpu-check", "--cpu", "--out", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err and (tmp_path / "keep.txt").read_text() == "x"


def test_gap_stats_counts_what_trls_sequence_mask_would_drop():
    """TRL's ratio is pi_trainer / beta_vLLM per sequence; ``sequence_mask`` drops a sequence above clip_max 3."""
    import math

    from iterdeploy_trl.gpucheck import TRL_IS_CLIP_MAX, gap_stats

    recorded = [-10.0, -10.0, -10.0]
    recomputed = [-10.0 + math.log(TRL_IS_CLIP_MAX) + 0.01, -10.0 + math.log(TRL_IS_CLIP_MAX) - 0.01, -10.5]
    stats = gap_stats(recorded, recomputed, [4, 4, 1])
    assert stats["trl_is_sequence_mask_would_drop"] == 1
    assert stats["max_abs_gap"] == pytest.approx(math.log(TRL_IS_CLIP_MAX) + 0.01)
    assert stats["max_abs_gap_per_token"] == pytest.approx(0.5)
