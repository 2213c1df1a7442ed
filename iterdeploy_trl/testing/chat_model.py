"""A tiny chat/thinking model for tests (test fixture, not used by production code): :func:`make_chat_test_model`,
its tokenizer (:func:`build_chat_tokenizer`) and chat template (:data:`CHAT_TEMPLATE`)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from iterdeploy_trl.domains import STUDY_DOMAINS, domain_pddl
from iterdeploy_trl.models import PRETRAIN_SEED_OFFSET, _batch, count_parameters
from iterdeploy_trl.sim import Simulator

# The GPU path (the paper prompt through a chat template, a thinking model, LoRA, bf16) run on CPU needs a
# model that *looks like* Qwen3-4B-Thinking-2507 to the code: a byte-level BPE tokenizer whose special
# tokens, eos, pad, missing BOS and chat template follow that model's conventions, and a causal LM over it.
# It tests the plumbing, never planning.

CHAT_PAD = "<|endoftext|>"
CHAT_TURN_START = "<|im_start|>"
CHAT_TURN_END = "<|im_end|>"  # eos: a generation ends with the assistant turn
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CHAT_REASONING = "I move the blocks one at a time."  # the reasoning the tiny chat model is taught to write

# Pre-tokenisation of Qwen2/3's byte-level BPE (GPT-4-style word pieces, one digit a piece).
_CHAT_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Written for this package after the documented behaviour of Qwen3-Thinking-2507's template: ChatML turns
# (<|im_start|>role\n...<|im_end|>\n), no BOS, and a generation prompt that already opens the reasoning
# with "<think>\n", so the model's completion holds only "reasoning</think>\n\nanswer". An assistant turn
# in the history is rendered with its reasoning in <think>...</think>.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- set content = message.content %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
)


def _small_tasks(domain: str, n: int, seed: int = PRETRAIN_SEED_OFFSET) -> list[Any]:
    from iterdeploy_trl.tasks import generate_tasks

    lo = 2 if domain == "blocksworld" else 1  # the smallest tasks of each generator
    return generate_tasks(domain, n, seed=seed, size=(lo, lo + 2))


def chat_corpus(tasks_per_domain: int = 3) -> list[str]:
    """Texts the tiny chat tokenizer is trained on: paper prompts of small tasks of every planning
    domain (they hold the example domains and plans) and answers in the paper's format."""
    from iterdeploy_trl.prompts import SYSTEM_PROMPT, paper_answer, paper_prompt

    texts = [SYSTEM_PROMPT]
    for domain in STUDY_DOMAINS:
        dom = domain_pddl(domain)
        for task in _small_tasks(domain, tasks_per_domain):
            texts.append(paper_prompt(dom, task.problem))
            texts.append(paper_answer(task.reference_plan, CHAT_REASONING))
    return texts


def build_chat_tokenizer(vocab_size: int = 1024, model_max_length: int = 8192) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on :func:`chat_corpus`, with Qwen3-Thinking's conventions:
    ``<|im_end|>`` is eos, ``<|endoftext|>`` pad, no BOS, ``<think>``/``</think>`` single (non-special)
    tokens, and :data:`CHAT_TEMPLATE`. Any text encodes (every byte is in the vocabulary)."""
    from tokenizers import normalizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CHAT_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[CHAT_PAD, CHAT_TURN_START, CHAT_TURN_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(chat_corpus(), trainer)
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=CHAT_TURN_END,
        pad_token=CHAT_PAD,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    # As in Qwen's tokenizer: added tokens, not special ones, so decoding with skip_special_tokens keeps them.
    out.add_tokens([THINK_OPEN, THINK_CLOSE])
    return out


def make_chat_test_model(
    out: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 1024,
    hidden: int = 32,
    layers: int = 2,
    short_steps: int = 120,
    long_steps: int = 8,
    threads: int | None = 1,
) -> Path:
    """Save a tiny Qwen3 chat/thinking model and its tokenizer (:func:`build_chat_tokenizer`) to ``out``;
    returns ``out``. For tests of the paper path on CPU; nothing is downloaded.

    Configured like Qwen3-4B-Thinking-2507 where the code can tell: tied embeddings, grouped-query
    attention, ``eos_token_id`` the end of turn, and a generation config that ends on ``<|im_end|>`` or
    ``<|endoftext|>`` and samples with temperature 0.6, top-p 0.95, top-k 20 (the backends must override
    these with the run's sampling parameters). It is then trained for a few seconds (``short_steps`` on
    the last 48 prompt tokens, ``long_steps`` on whole paper prompts) to answer Blocksworld paper prompts
    in the format: ``CHAT_REASONING``, ``</think>``, a fenced plan holding a random *legal* walk from the
    task's initial state, end of turn. So its completions end and re-tokenise like a real model's, while
    the plans it writes aim at no goal (as the CPU base model's)."""
    from iterdeploy_trl.prompts import build_messages, paper_answer

    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    tok = build_chat_tokenizer(vocab_size)
    pad, eos = tok.convert_tokens_to_ids([CHAT_PAD, CHAT_TURN_END])
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=tok.model_max_length,
        tie_word_embeddings=True,
        bos_token_id=pad,  # Qwen's config names <|endoftext|> as bos; its tokenizer adds none
        eos_token_id=eos,
        pad_token_id=pad,
        use_cache=True,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)

    rng = random.Random(f"chat/{seed}")
    dom = domain_pddl("blocksworld")
    rows: list[tuple[list[int], list[int]]] = []
    for task in _small_tasks("blocksworld", 32):
        prompt = tok.apply_chat_template(build_messages(dom, task.problem), add_generation_prompt=True, tokenize=False)
        prompt_ids = tok(prompt)["input_ids"]
        sim = Simulator(dom, task.problem)
        for _ in range(4):
            walk = sim.random_walk(rng, rng.randint(1, 4))
            completion = paper_answer(walk, CHAT_REASONING) + tok.eos_token
            rows.append((prompt_ids, tok(completion, add_special_tokens=False)["input_ids"]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(short_steps + long_steps):
        context, width = (48, 16) if step < short_steps else (None, 2)
        batch = [(p[-context:] if context else p, c) for p, c in rng.sample(rows, width)]
        model(**_batch(batch, pad)).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()

    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = pad, [eos, pad], pad
    gen.do_sample, gen.temperature, gen.top_p, gen.top_k = True, 0.6, 0.95, 20
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    record = {"seed": seed, "vocab": len(tok), "hidden": hidden, "layers": layers, "short_steps": short_steps,
              "long_steps": long_steps, "parameters": count_parameters(model)}
    (out / "chat_test_model.json").write_text(json.dumps(record, indent=2) + "\n")
    return out
