"""One generation of ``iterdeploy run`` with ``method: reinforce`` and ``sampling.backend: vllm`` (REINFORCE's
samples drawn by TRL's colocated vLLM engine) on the real vLLM engine, in a process of its own, with vLLM's
repacking linear kernels switched off (as in ``vllm_reinforce_case.py --plain-dispatch``: test support only; it
stands for a CPU where vLLM keeps the plain weights, so the loop does not refuse the run). Used by
``tests/test_vllm_reinforce.py``:

    python tests/vllm_reinforce_loop_case.py BASE_DIR OUT_DIR CONFIG_JSON

Prints one JSON line: generation 1's ``train_stats.json`` as the run wrote it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vllm_reinforce_case import switch_off_repacking_kernels  # its import sets the engine's environment


def main(out: str, config: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    switch_off_repacking_kernels()
    from iterdeploy_trl import rundir
    from iterdeploy_trl.config import config_from_dict
    from iterdeploy_trl.loop import run_loop
    from iterdeploy_trl.runio import read_json

    run_loop(config_from_dict(config), Path(out), progress=False, log=lambda m: None)
    gen1 = rundir.gen_dir(rundir.seed_dir(Path(out), 0), 1)
    return read_json(rundir.train_stats(rundir.model(gen1)))


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[2], json.loads(sys.argv[3]))), flush=True)
