"""``kvcache.PreallocatedCache``: the transformers backend's cache, written in place. It must give the same
samples and log-probabilities as transformers' default cache, bit for bit, and the same keys and values as
``DynamicLayer`` whatever is done to the layer from outside."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from iterdeploy_trl.kvcache import PreallocatedCache, PreallocatedLayer


def _steps(seed: int, batch: int = 3, heads: int = 2, dim: int = 4, lengths=(5, 1, 1, 3, 1)):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, heads, n, dim, generator=g), torch.randn(batch, heads, n, dim, generator=g))
            for n in lengths]


@pytest.mark.parametrize("capacity", [0, 6, 64])
def test_the_layer_holds_what_dynamic_layer_holds(capacity):
    """Each update returns DynamicLayer's keys and values exactly, with room too small (it grows), exact or
    ample; after a crop, a batch selection or a beam reorder from outside, the next updates still agree."""
    ours, theirs = PreallocatedLayer(capacity), DynamicLayer()
    for k, v in _steps(0):
        a, b = ours.update(k, v), theirs.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for outside in (lambda layer: layer.crop(-2), lambda layer: layer.batch_select_indices(torch.tensor([2, 0])),
                    lambda layer: layer.reorder_cache(torch.tensor([1, 1]))):
        outside(ours), outside(theirs)
        for k, v in _steps(1, batch=ours.keys.shape[0], lengths=(1, 2)):
            a, b = ours.update(k, v), theirs.update(k, v)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            assert ours.get_seq_length() == theirs.get_seq_length()
    ours.reset(), theirs.reset()
    k, v = _steps(2)[0]
    assert torch.equal(ours.update(k, v)[0], theirs.update(k, v)[0])


def test_the_backend_samples_what_generates_default_cache_samples(tiny_base_model, monkeypatch):
    """The transformers backend with the in-place cache and with generate's default cache (the cache argument
    dropped): the same completions, token counts and behaviour log-probs, bit for bit, at two temperatures and
    a top-p, with batches of prompts of different lengths (left padding)."""
    from iterdeploy_trl import deploy, kvcache
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.models import load_model_and_tokenizer
    from iterdeploy_trl.prompts import build_prompt
    from iterdeploy_trl.tasks import generate_tasks

    torch.set_num_threads(1)
    model, tok = load_model_and_tokenizer(tiny_base_model, dtype=torch.float32, device="cpu")
    dom = domain_pddl("blocksworld")
    prompts = [build_prompt(dom, t.problem, "compact", domain="blocksworld")
               for t in generate_tasks("blocksworld", 6, 3, size=(2, 5))]
    made = []
    monkeypatch.setattr(kvcache.PreallocatedCache, "__init__", _counting(kvcache.PreallocatedCache.__init__, made))
    backend = deploy.TransformersBackend(model, tok, batch_size=8)

    def sample(temperature, top_p):
        out = backend.generate(prompts, num_samples=4, temperature=temperature, top_p=top_p, max_new_tokens=40, seed=5)
        return [(c.text, c.completion_tokens, c.behaviour_logprob) for row in out for c in row]

    settings = [(1.0, 1.0), (0.7, 0.9)]
    ours = [sample(*s) for s in settings]
    assert len(made) == 2 * 3  # 24 samples in batches of 8, per setting: the backend used the in-place cache
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, past_key_values=None, cache=None, **k: original(*a, **k))
    default = [sample(*s) for s in settings]
    assert ours == default
    assert len({text for text, _, _ in ours[0]}) > 4  # samples that differ: a real comparison


def _counting(init, made):
    def wrapped(self, *args, **kwargs):
        made.append(kwargs.get("capacity"))
        init(self, *args, **kwargs)
    return wrapped


def test_only_plain_layers_are_replaced(tiny_base_model):
    """Sliding-window layers keep transformers' own; the cache goes under the name this transformers takes."""
    import inspect

    from transformers import AutoConfig, Qwen3ForCausalLM

    from iterdeploy_trl.kvcache import cache_keyword

    params = inspect.signature(Qwen3ForCausalLM.forward).parameters
    assert cache_keyword(Qwen3ForCausalLM(AutoConfig.from_pretrained(tiny_base_model))) == (
        "cache" if "cache" in params else "past_key_values")

    cfg = AutoConfig.from_pretrained(tiny_base_model)
    cache = PreallocatedCache(config=cfg, capacity=10)
    assert cache.layers and all(type(layer) is PreallocatedLayer and layer.capacity == 10 for layer in cache.layers)
    cfg.layer_types = ["sliding_attention"] + ["full_attention"] * (len(cfg.layer_types) - 1)
    cfg.sliding_window = 4
    mixed = PreallocatedCache(config=cfg, capacity=10)
    assert type(mixed.layers[0]) is not PreallocatedLayer and isinstance(mixed.layers[0], DynamicLayer)
    assert all(type(layer) is PreallocatedLayer for layer in mixed.layers[1:])
