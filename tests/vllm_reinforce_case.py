"""One REINFORCE step through TRL's vLLM integration (``ReinforceTrainer(use_vllm=True)``, colocate mode) on the
real vLLM engine, in a process of its own (TRL's colocated engine joins a process group; one engine a
process keeps the cases apart). Used by ``tests/test_vllm_reinforce.py``:

    python tests/vllm_reinforce_case.py BASE_DIR OUT_DIR [--plain-dispatch]

``--plain-dispatch`` switches vLLM's repacking linear kernels (oneDNN, and the AMX kernel its bfloat16 engine
takes on an AMX CPU) off in this process before the engine loads the model (test support only: it stands
for a CPU where vLLM's CPU build keeps the plain weights, as seen on an AVX2 EPYC). Prints one JSON line: what ``deploy.vllm_cpu_keeps_linear_weights`` said, and what the engine did
(``trained`` with the number of samples the reward scored, or ``failed`` with the error and whether TRL's
``sync_weights`` raised it)."""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # TRL's colocate sets them
    os.environ.pop(key, None)


def switch_off_repacking_kernels() -> None:
    """vLLM's repacking linear kernels (oneDNN, the AMX kernel) off in this process, before an engine loads a model."""
    import vllm._custom_ops as ops
    import vllm.model_executor.layers.utils as layer_utils

    ops._supports_onednn = False
    layer_utils.check_cpu_sgl_kernel = lambda *_: False


def main(base: str, out: str, plain_dispatch: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    if plain_dispatch:
        switch_off_repacking_kernels()
    from datasets import Dataset
    from peft import LoraConfig

    from iterdeploy_trl.deploy import vllm_cpu_keeps_linear_weights
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.models import load_model_and_tokenizer
    from iterdeploy_trl.prompts import build_prompt
    from iterdeploy_trl.tasks import generate_tasks
    from iterdeploy_trl.trainers import ReinforceConfig, ReinforceTrainer

    result: dict = {"keeps_weights": vllm_cpu_keeps_linear_weights("float32"), "cpu": torch.backends.cpu.get_cpu_capability()}
    dom = domain_pddl("blocksworld")
    data = Dataset.from_list([{"prompt": build_prompt(dom, t.problem, "compact", domain="blocksworld")}
                              for t in generate_tasks("blocksworld", 4, 5, size=(2, 3))])
    model, tok = load_model_and_tokenizer(base, dtype=torch.float32, device="cpu")
    args = ReinforceConfig(output_dir=out, use_vllm=True, num_generations=4, per_device_train_batch_size=4,
                           max_steps=1, learning_rate=1e-3, logging_steps=1, max_completion_length=14, seed=0,
                           save_strategy="no", report_to="none", use_cpu=True, bf16=False,
                           vllm_max_model_length=512, disable_tqdm=True)
    scored: list[int] = []

    def reward(prompts, completions, **kwargs):
        scored.append(len(completions))
        return [float(len(c) % 2) for c in completions]  # any non-constant reward: a step that moves the weights

    trainer = ReinforceTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok,
                               peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                      task_type="CAUSAL_LM"))
    import vllm

    result["colocated_engine"] = bool(trainer.use_vllm and trainer.vllm_mode == "colocate"
                                      and isinstance(trainer.vllm_generation.llm, vllm.LLM))
    try:
        trainer.train()
        result.update(outcome="trained", samples_scored=sum(scored),
                      loss_logged=any("loss" in row for row in trainer.state.log_history))
    except Exception as exc:  # the outcome is the test's to judge
        result.update(outcome="failed", error=f"{type(exc).__name__}: {exc}", samples_scored=sum(scored),
                      in_sync_weights=any(f.name == "sync_weights" for f in traceback.extract_tb(exc.__traceback__)))
    return result


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], sys.argv[2], "--plain-dispatch" in sys.argv[3:])), flush=True)
