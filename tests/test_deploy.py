"""The transformers backend: behaviour log-probs equal the trainer's log pi(y|x) for beta = pi
(temperature 1, no top-p), sampling is seeded, and flags are right."""

from __future__ import annotations

import torch

from iterdeploy_trl.deploy import TransformersBackend, _reasoning_tokens, batch_seed, prompt_opens_reasoning
from iterdeploy_trl.models import build_tokenizer, make_small_model


def _trainer_logprob(model, tok, prompt: str, completion: str) -> float:
    """log pi(completion + eos | prompt), tokenised as TRL's SFT tokenises prompt-completion rows."""
    p = tok(prompt)["input_ids"]
    c = tok(completion + tok.eos_token, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logits = model(ids).logits.float()
    logp = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return float(logp[len(p) - 1 :].sum())


def test_behaviour_logprob_matches_the_trainers_context():
    torch.manual_seed(0)
    tok = build_tokenizer("blocksworld")
    model = make_small_model(tok, "tiny", seed=3)
    backend = TransformersBackend(model, tok, batch_size=4)
    prompts = ["init: (clear b1) (handempty) (ontable b1)\ngoal: (holding b1)\nplan:\n",
               "init: (clear b2) (handempty) (on b2 b1) (ontable b1)\ngoal: (on b1 b2)\nplan:\n"]
    out = backend.generate(prompts, num_samples=3, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=7)
    checked = 0
    for prompt, row in zip(prompts, out, strict=True):
        assert len(row) == 3
        for c in row:
            assert c.behaviour_logprob <= 0
            if c.truncated:
                assert c.completion_tokens == 12
                continue
            assert abs(_trainer_logprob(model, tok, prompt, c.text) - c.behaviour_logprob) < 1e-4
            checked += 1
    assert checked >= 1
    again = backend.generate(prompts, num_samples=3, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=7)
    assert [[c.text for c in r] for r in again] == [[c.text for c in r] for r in out]


def test_tempered_logprob_is_of_the_sampling_distribution():
    tok = build_tokenizer("blocksworld")
    model = make_small_model(tok, "tiny", seed=1)
    prompt = "init: (clear b1) (handempty) (ontable b1)\ngoal: (holding b1)\nplan:\n"
    cold = TransformersBackend(model, tok).generate([prompt], num_samples=4, temperature=0.5, top_p=1.0,
                                                    max_new_tokens=8, seed=0)[0]
    for c in cold:
        # Under temperature 0.5 the sampled sequence is more likely than under the raw model.
        if not c.truncated:
            assert c.behaviour_logprob >= _trainer_logprob(model, tok, prompt, c.text) - 1e-6


def test_reasoning_tokens_and_seeds():
    assert _reasoning_tokens([5, 6, 7, 8, 9], [7, 8]) == 2
    assert _reasoning_tokens([5, 6], [7, 8]) == 0
    assert _reasoning_tokens([5, 6], []) == 0
    # <think> opened by the completion (3) or by the prompt (Qwen3-Thinking's template); never closed: to the end
    assert _reasoning_tokens([3, 5, 6, 7, 8, 9], [7, 8], [3]) == 2
    assert _reasoning_tokens([3, 5, 6], [7, 8], [3]) == 2
    assert _reasoning_tokens([5, 6, 4], [7, 8], [3], opened=True) == 3
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>\n") and not prompt_opens_reasoning("plan:\n")
    assert batch_seed(0, 1, "pool", 0) == batch_seed(0, 1, "pool", 0) != batch_seed(0, 1, "pool", 64)


def test_sampled_logprobs_equal_generates_processed_scores():
    """The streaming recorder gives the same tokens and log-probs as generate(output_scores=True) with
    generate's own temperature/top-p warpers, while holding one step's distribution at a time."""
    from iterdeploy_trl.deploy import SampledLogProbs

    tok = build_tokenizer("blocksworld")
    model = make_small_model(tok, "tiny", seed=5).eval()
    enc = tok(["init: (clear b1) (handempty) (ontable b1)\ngoal: (holding b1)\nplan:\n",
               "init: (clear b2) (handempty) (on b2 b1) (ontable b1)\ngoal: (on b1 b2)\nplan:\n"],
              return_tensors="pt", padding=True)
    width = enc["input_ids"].shape[1]
    for temperature, top_p in [(1.0, 1.0), (0.7, 0.9), (1.5, 0.5)]:
        torch.manual_seed(11)
        ref = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                             max_new_tokens=10, output_scores=True, return_dict_in_generate=True,
                             pad_token_id=tok.pad_token_id)
        new = ref.sequences[:, width:]
        want = torch.log_softmax(torch.stack(ref.scores, 1).float(), -1).gather(-1, new[..., None]).squeeze(-1)
        torch.manual_seed(11)
        recorder = SampledLogProbs(temperature, top_p)
        seq = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=10,
                             logits_processor=[recorder], pad_token_id=tok.pad_token_id)
        assert torch.equal(seq, ref.sequences)
        got = recorder.result(seq[:, width:])
        assert got.shape == want.shape and torch.equal(got, want)
        assert recorder._last is None and len(recorder._steps) == new.shape[1]
