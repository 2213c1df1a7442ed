"""The pipeline checks of ``iterdeploy_trl.theory`` on the tiny pretrained model: the deployment backend's
recorded behaviour log-probs are the sampler's log β on the tokens the trainers train on (the sampled ids;
T = 1 and T = 0.6, top-p 0.95), and
``actual_update`` reads a real (tiny) run directory: the update it reports is the saved model minus the base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_config

from iterdeploy_trl import theory as th
from iterdeploy_trl.theory.pipeline import collate, sampler_sequence_logprobs, sft_trainer

torch.set_num_threads(1)


def test_recorded_behaviour_logprob_is_the_nucleus_logprob_on_trl_tokens(tiny_base_model, tmp_path) -> None:
    from iterdeploy_trl.deploy import TransformersBackend
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.models import load_model_and_tokenizer
    from iterdeploy_trl.prompts import build_prompt
    from iterdeploy_trl.tasks import generate_tasks

    model, tok = load_model_and_tokenizer(tiny_base_model, dtype=torch.float32)
    dom = domain_pddl("blocksworld")
    prompts = [
        build_prompt(dom, t.problem, "compact", domain="blocksworld")
        for t in generate_tasks("blocksworld", 3, 0, size=(2, 3))
    ]
    for temperature, top_p in ((1.0, 1.0), (0.6, 0.95)):
        samples = TransformersBackend(model, tok).generate(
            prompts, num_samples=4, temperature=temperature, top_p=top_p, max_new_tokens=40, seed=3
        )
        # the rows the loop trains on: sampled token ids, truncated samples included (no EOS appended to them)
        rows = [
            {"prompt_ids": tok(p)["input_ids"], "completion_ids": list(c.token_ids)}
            for p, row in zip(prompts, samples, strict=True)
            for c in row
        ]
        recorded = torch.tensor([c.behaviour_logprob for row in samples for c in row])
        assert len(rows) == 12
        trainer = sft_trainer(
            model, tok, rows, importance_weighted=False, normalization="sequence_sum", out_dir=str(tmp_path)
        )
        with torch.no_grad():
            seq, outside = sampler_sequence_logprobs(
                model, collate(trainer, model.device), temperature, top_p
            )
        assert int(outside.sum()) == 0
        assert torch.allclose(seq.double(), recorded.double(), atol=1e-3, rtol=0), (
            temperature,
            seq,
            recorded,
        )
        if temperature != 1.0:  # the T = 1 log-prob (what SFT trains) is a different number
            with torch.no_grad():
                pi, _ = sampler_sequence_logprobs(model, collate(trainer, model.device), 1.0, 1.0)
            assert float((pi.double() - recorded.double()).abs().max()) > 1e-2


def test_t_interval() -> None:
    s = th.t_interval([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["lo"] == pytest.approx(2 - 4.302653 / 3**0.5, rel=1e-5)
    assert th.t_interval([float("nan"), 1.0])["n"] == 1


@pytest.fixture(scope="module")
def tiny_run(tiny_base_model, tmp_path_factory):
    from iterdeploy_trl.config import config_from_dict
    from iterdeploy_trl.loop import run_loop

    cfg = config_from_dict(
        tiny_run_config(
            tiny_base_model,
            generations=1,
            method="uncurated-sft",
            curation="none",
            tasks={"n": 8, "heldout": 2, "size": [2, 2]},  # 2-block tasks: the tiny base solves a few
        )
    )
    out = tmp_path_factory.mktemp("run") / "run"
    run_loop(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def update_result(tiny_run):
    """The check on the tiny run: 2 fresh draws of 8 tasks × 32 samples (the base solves ~2% of them)."""
    return th.actual_update(th.UpdateConfig(run_dir=str(tiny_run), repeats=2, reference_samples_per_task=32))


def test_actual_update_on_a_run_directory(update_result) -> None:
    result = update_result
    assert {r.kind for r in result.rows} == {th.EMPIRICAL}
    gen = result.data["generations"][0]
    assert gen["generation"] == 0 and gen["train_rows"] > 0 and set(gen["origin_generations"]) == {0}
    assert gen["update_norm"] > 0
    # the recorded behaviour log-probs are the deployed sampler's on the trained tokens (curated traces and
    # the fresh draws alike)
    assert gen["behaviour_logprob_gap_max"] <= 1e-3
    # one generation: β_mix = β_0 = π_0 at T = 1, so Prop. 2's weights are all 1
    assert max(abs(gen["prop2_log_w"]["min"]), abs(gen["prop2_log_w"]["max"])) < 1e-3
    assert gen["cos_update_prop2"] == pytest.approx(gen["cos_update_sft"], abs=1e-4)
    # one epoch of Adam from the base moves along the first SFT step, not against it
    assert gen["cos_update_sft"] > 0
    # one cosine per independent fresh draw, the t-interval over them, and the shuffled-reward null beside it
    for key in ("cos_update_reinforce_base", "cos_sft_reinforce_base", "cos_prop2_reinforce_base"):
        c = gen[key]
        assert len(c["values"]) == 2 and c["n"] == 2 and c["lo"] <= c["mean"] <= c["hi"]
        assert len(c["null"]["values"]) == 2 and c["null"]["values"] != c["values"]
    assert gen["deployed_valid"] == sum(d["valid"] for d in result.data["reference_draws"])  # M_0 is the base
    json.dumps(result.data, allow_nan=True)


def test_actual_update_reference_samples_are_disjoint_from_the_curated_set(tiny_run, update_result) -> None:
    """The REINFORCE reference is drawn afresh: its sampling seeds are none of the seeds the run's samples (and
    so its curated sets) were drawn with. The run's seeds are derived as the loop derives them, and checked
    here to BE the run's: sampling again with gen 0's chunk seed reproduces the run's recorded samples."""
    from iterdeploy_trl.backends import make_backend
    from iterdeploy_trl.config import config_from_dict
    from iterdeploy_trl.deploy import batch_seed
    from iterdeploy_trl.deployment import deploy_chunk
    from iterdeploy_trl.runio import read_jsonl
    from iterdeploy_trl.tasks import load_task_set

    result = update_result
    cfg = config_from_dict(json.loads((tiny_run / "resolved_config.json").read_text())["config"], check_paths=False)
    sdir = tiny_run / "seed_0"
    run_seeds = {batch_seed(0, int(f.parent.parent.name.split("_")[1]), f.stem.rsplit("-", 1)[0],
                            int(f.stem.rsplit("-", 1)[1]) * cfg.chunk_size)
                 for f in sdir.glob("gen_*/traces/*.jsonl")}
    assert set(result.data["run_sample_seeds"]) == run_seeds
    draws = result.data["reference_draws"]
    ref_seeds = {d["sample_seed"] for d in draws}
    assert len(ref_seeds) == 2 and not ref_seeds & run_seeds
    assert all(d["samples"] == cfg.tasks.n * 32 for d in draws)
    # gen 0's pool chunk seed is the seed of the run's recorded samples, which the curated set was taken from
    ts = load_task_set(tiny_run / "tasks")
    backend = make_backend(cfg, Path(cfg.model.path), None)
    try:
        again = deploy_chunk(cfg, backend, ts.domain_pddl, list(ts.tasks)[: cfg.tasks.n], seed=0,
                             sample_seed=batch_seed(0, 0, "pool", 0), generation=0, split="pool", model_id="base",
                             run_name=cfg.name, method=cfg.method, validator={})
    finally:
        backend.close()
    recorded = read_jsonl(sdir / "gen_00" / "traces" / "pool-00000.jsonl")
    assert [r.completion for r in again] == [r["completion"] for r in recorded]
    train = read_jsonl(sdir / "gen_00" / "train.jsonl")
    assert {(r["task_id"], r["completion"]) for r in train} <= {(r["task_id"], r["completion"]) for r in recorded}


def test_actual_update_bad_run_dir_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(th.TheoryError, match="resolved_config.json"):
        th.actual_update(th.UpdateConfig(run_dir=str(tmp_path), repeats=2))
    with pytest.raises(th.TheoryError, match="at least 2 repeats"):
        th.actual_update(th.UpdateConfig(run_dir=str(tmp_path), repeats=1))


def test_pipeline_backend_option_and_bad_backends(tmp_path, capsys) -> None:
    """``--pipeline-backend`` reaches the check and is repeated in the reproducing command; an unknown backend,
    or vLLM where it cannot be imported, is a clear error before any model is loaded. (The check sampling with
    real vLLM: ``tests/test_vllm_real.py``.)"""
    import importlib.util

    from iterdeploy_trl.cli import build_parser, main
    from iterdeploy_trl.commands.theory import command_line

    args = build_parser().parse_args(
        ["theory", "--check", "pipeline", "--model", "M", "--pipeline-backend", "vllm"]
    )
    assert args.pipeline_backend == "vllm" and "--pipeline-backend vllm" in command_line(args)
    args = build_parser().parse_args(["theory", "--check", "pipeline", "--model", "M"])
    assert args.pipeline_backend == "transformers" and "--pipeline-backend" not in command_line(args)
    with pytest.raises(th.TheoryError, match="unknown backend 'sglang': use one of transformers, vllm"):
        th.pipeline(th.PipelineConfig(model_path=str(tmp_path), backend="sglang"))
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(th.TheoryError, match="backend 'vllm' needs vLLM, which cannot be imported here"):
            th.pipeline(th.PipelineConfig(model_path=str(tmp_path), backend="vllm"))
        assert (
            main(["theory", "--check", "pipeline", "--model", str(tmp_path), "--pipeline-backend", "vllm"])
            == 2
        )
        assert "needs vLLM" in capsys.readouterr().err


def test_pipeline_off_policy_weights_and_refusals(tiny_base_model, tiny_run, tmp_path) -> None:
    """``pipeline_off_policy``: with β = π (one model twice, LoRA B = 0) IW-SFT's weights are all equal (relative ESS 1) and
    its gradient is SFT's; with β the base and π the run's trained generation-1 model the weights are not 1
    (log w not all 0). Without a β model, or with another backend, it is a clear error."""
    common = dict(tasks=12, task_size=(2, 2), samples_per_task=8, repeats=2, settings=((1.0, 1.0),),
                  max_new_tokens=40)
    same = th.pipeline_off_policy(  # B = 0: the LoRA model is exactly β
        th.PipelineConfig(model_path=str(tiny_base_model), beta_model_path=str(tiny_base_model),
                          lora_init_scale=0.0, **common)
    )
    assert {r.kind for r in same.rows} == {th.EMPIRICAL}
    measured = [m for m in same.data["per_repeat"] if m["beta_valid"] > 0]
    assert measured, "the tiny model solved none of the 2-block tasks: nothing to weigh"
    for m in measured:
        assert m["relative_ess"] == pytest.approx(1.0, abs=1e-6)
        assert max(abs(m["log_w_min"]), abs(m["log_w_max"])) < 1e-3
        assert m["cos_sft_beta_iw_beta"] > 1 - 1e-6
    trained = tiny_run / "seed_0" / "gen_01" / "model"
    other = th.pipeline_off_policy(
        th.PipelineConfig(model_path=str(trained), beta_model_path=str(tiny_base_model), **common)
    )
    log_w = [max(abs(m["log_w_min"]), abs(m["log_w_max"])) for m in other.data["per_repeat"] if m["beta_valid"]]
    assert log_w and max(log_w) > 1e-2
    with pytest.raises(th.TheoryError, match="--beta-model"):
        th.pipeline_off_policy(th.PipelineConfig(model_path=str(trained)))
    with pytest.raises(th.TheoryError, match="transformers backend only"):
        th.pipeline_off_policy(
            th.PipelineConfig(model_path=str(trained), beta_model_path=str(trained), backend="vllm")
        )


def test_the_pipeline_checks_lora_adapter_is_the_same_in_every_process(tiny_base_model) -> None:
    """The checks' LoRA adapter (A as peft draws it, B drawn from the seed) is a function of the seed alone:
    the same in processes whose PYTHONHASHSEEDs differ (peft's A came from a global generator whose state
    differed between such processes, so a check's numbers did too)."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from iterdeploy_trl.models import load_model_and_tokenizer\n"
        "from iterdeploy_trl.theory.pipeline import PipelineConfig, lora_model\n"
        "m, _ = load_model_and_tokenizer(sys.argv[1], dtype=torch.float32)\n"
        "p = lora_model(m, PipelineConfig(), 3)\n"
        "print(repr([float(v.double().sum()) for k, v in p.named_parameters() if 'lora_' in k]))\n"
    )
    sums = set()
    for hash_seed in ("1", "2"):
        proc = subprocess.run([sys.executable, "-c", code, str(tiny_base_model)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        sums.add(proc.stdout.strip().splitlines()[-1])
    assert len(sums) == 1
