"""The checks' own exact ancestral sampler (float64, softmax(logits/τ), no top-p): a prefix-tree sampler."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from iterdeploy_trl.theory.policies import Policy


@torch.no_grad()
def sample_completions(
    policy: Policy,
    prompt_ids: Sequence[int],
    n: int,
    *,
    max_new_tokens: int,
    generator: torch.Generator,
) -> list[tuple[int, ...]]:
    """n i.i.d. ancestral samples y ~ policy(·|x), each cut after its first eos (kept) or at
    ``max_new_tokens``; returned in random order.

    Exactly the distribution ``completion_logprobs`` scores (softmax(logits/τ), no top-k/top-p), so a
    sample's log-probability is that of the event "these tokens", truncated or not. The n samples are drawn
    jointly: every distinct prefix with k samples behind it draws k next tokens and splits into one child
    per distinct token (a multinomial split, which is the joint law of k i.i.d. samples). The model runs
    once per distinct prefix and step, not once per sample, so a peaked policy is cheap to sample."""
    model, eos = policy.model, policy.eos_id
    model.eval()
    if n <= 0:
        return []
    device = policy.device
    res = model(input_ids=torch.as_tensor(list(prompt_ids), device=device)[None], use_cache=True)
    cache, logits = res.past_key_values, res.logits[:, -1]
    prefixes: list[tuple[int, ...]] = [()]
    counts = torch.tensor([n], device=device)
    done: list[tuple[tuple[int, ...], int]] = []
    for step in range(max_new_tokens):
        probs = torch.softmax(logits.double() / policy.temperature, -1)
        row = torch.repeat_interleave(torch.arange(len(prefixes), device=device), counts)
        token = torch.multinomial(probs[row], 1, generator=generator).squeeze(1)
        keys, sizes = torch.unique(row * probs.shape[-1] + token, return_counts=True)
        parent, token = (keys // probs.shape[-1]).tolist(), (keys % probs.shape[-1]).tolist()
        keep = []
        for i, (p, t, k) in enumerate(zip(parent, token, sizes.tolist(), strict=True)):
            if t == eos:
                done.append(((*prefixes[p], t), k))
            else:
                keep.append(i)
        if not keep or step == max_new_tokens - 1:
            done += [((*prefixes[parent[i]], token[i]), int(sizes[i])) for i in keep]
            break
        index = torch.as_tensor([parent[i] for i in keep], device=device)
        cache.reorder_cache(index)  # each child row starts from its parent's keys and values
        prefixes = [(*prefixes[parent[i]], token[i]) for i in keep]
        counts = sizes[keep]
        last = torch.as_tensor([token[i] for i in keep], device=device)[:, None]
        logits = model(input_ids=last, past_key_values=cache, use_cache=True).logits[:, -1]
    samples = [y for y, k in done for _ in range(k)]
    order = torch.randperm(
        len(samples),
        generator=torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        ),
    )
    return [samples[i] for i in order.tolist()]
