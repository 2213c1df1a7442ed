"""The sampler's distribution, in one place: what a deployment draws each token from at temperature T and
top-p p, read by every module that needs it (the transformers backend as it samples,
``deploy.SampledLogProbs``; the trainers' losses, REINFORCE's log q and IW-SFT's π under the sampler's
transformation; the theory checks), and ``score_logprobs``: a trace's log-probability under a model with
that distribution applied (the audit's re-scoring, the drift KL of ``iterdeploy drift`` and ``drift.kl_previous``).

q_T(v) = softmax(z / T)_v for logits z. With top-p = p < 1 the nucleus keeps, in order of decreasing q_T,
every token whose predecessors carry less than p of the mass (at least the most probable one), and
q(v) = q_T(v) / q_T(nucleus) on it, 0 elsewhere. These are the operations of transformers'
``TemperatureLogitsWarper`` then ``TopPLogitsWarper`` (ascending sort, cumulative softmax, drop while the
mass is at most 1 − p), in float32, so the numbers are those of ``generate`` with those warpers.

Bottom layer: imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def sampler_scores(logits: Tensor, temperature: float, top_p: float, keep: Tensor | None = None) -> Tensor:
    """float32 logits / T, with the tokens off the top-p nucleus set to −inf (``keep``: labels never dropped,
    one per row of ``logits``' leading dimensions)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    scores = logits.float()
    if temperature != 1.0:
        scores = scores / temperature
    if top_p < 1.0:
        ascending, order = scores.sort(-1)
        # a token is dropped when it and every less probable one together hold at most 1 − p of the mass
        drop_sorted = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
        drop_sorted[..., -1] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        if keep is not None:
            drop = drop.scatter(-1, keep.long().unsqueeze(-1), False)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def sampling_logprobs(
    logits: Tensor, labels: Tensor, temperature: float = 1.0, top_p: float = 1.0, *, keep_labels: bool = False
) -> Tensor:
    """log q(labels[j]) under the distribution a sampler with this temperature and top-p draws from (module
    docstring). A label outside the nucleus gets −inf (that sampler could not have drawn it).

    ``keep_labels=True`` never drops a label from its row's nucleus (q renormalised over nucleus ∪ {label}):
    for a gradient (REINFORCE's ∇ log q), where a sampled token that float rounding puts just outside the
    recomputed nucleus must give a finite log-prob, not −inf.

    ``logits`` (M, V) and ``labels`` (M,) are aligned rows (one position each), not a causal-LM pair."""
    scores = sampler_scores(logits, temperature, top_p, labels if keep_labels else None)
    return torch.log_softmax(scores, -1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def sampling_log_distribution(logits: Tensor, temperature: float = 1.0, top_p: float = 1.0) -> Tensor:
    """log q(v) for every token v of each row (−inf off the nucleus): the distribution ``sampling_logprobs``
    reads one entry of. ``logits`` (…, V)."""
    return torch.log_softmax(sampler_scores(logits, temperature, top_p), -1)


def completion_ids(tok: Any, rec: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of a trace: the recorded ones where the trace has them, else the text
    tokenised as the deployment backend and the SFT trainer do (prompt with special tokens, completion
    without, the end-of-sequence token appended to a completion that was not cut by max_new_tokens)."""
    p = rec.get("prompt_ids")
    c = rec.get("completion_ids")
    if p and c is not None:
        return list(p), list(c)
    prompt = tok(rec["prompt"])["input_ids"]
    comp = tok(rec["completion"], add_special_tokens=False)["input_ids"]
    if not rec.get("truncated") and tok.eos_token_id is not None:
        comp = comp + [tok.eos_token_id]
    return list(prompt), list(comp)


def score_logprobs(model: Any, tok: Any, recs: Sequence[dict[str, Any]], *, temperature: float = 1.0,
                   top_p: float = 1.0, batch_size: int = 32) -> list[float]:
    """log π(y|x) of each trace's completion under ``model``, summed over the completion's tokens, with the
    sampling temperature and top-p applied as the deployment backend applied them."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    out: list[float] = []
    model.eval()
    for start in range(0, len(recs), batch_size):
        pairs = [completion_ids(tok, r) for r in recs[start : start + batch_size]]
        seqs = [p + c for p, c in pairs]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        for i, (p, c) in enumerate(pairs):
            if not c:
                out.append(0.0)
                continue
            pos = torch.arange(len(p) - 1, len(p) + len(c) - 1)
            logq = sampling_log_distribution(logits[i, pos], temperature, top_p)
            lp = logq.gather(-1, torch.tensor(c).unsqueeze(-1).to(logq.device))
            out.append(float(lp.sum()))
    return out
