"""The small local model: a word-level tokenizer over a domain's symbols, a small causal LM from a
stock ``transformers`` architecture, loading any local Hugging Face model, and pretraining the base
model on random legal action walks (never goal-directed plans).

Everything here is saved with ``save_pretrained`` so that downstream code loads the small model the
same way it loads a hub model (``AutoModelForCausalLM`` / ``AutoTokenizer``)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from iterdeploy_trl.domains import PLANNING_DOMAINS, domain_pddl

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
STRUCTURE_TOKENS: tuple[str, ...] = ("(", ")", "\n")
# Keywords of the compact prompt (see prompts.py) and the reasoning delimiters of thinking models.
KEYWORD_TOKENS: tuple[str, ...] = ("init:", "goal:", "plan:", "<think>", "</think>")

# Words of a domain file that are PDDL syntax, not domain symbols.
_PDDL_KEYWORDS = frozenset({"define", "domain", "and", "not", "or", "either", "increase", "number"})

# Context of the small model (RoPE: no parameters depend on it). The compact prompt and plan of a
# level-10 sokoban task take ~1400 tokens.
MODEL_MAX_LENGTH = 2048

# name -> (hidden, layers, heads, intermediate). "tiny" is for unit tests (~0.1 M parameters).
SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (64, 2, 4, 128),
    "small": (128, 4, 4, 512),
    "medium": (256, 6, 8, 1024),
}


def object_names(domain: str) -> list[str]:
    """Every object name of the fixed naming scheme of ``docs/ARCHITECTURE.md`` for ``domain``."""
    if domain == "blocksworld":
        return [f"b{i}" for i in range(1, 31)]
    if domain == "rovers":
        return (
            [f"rover{i}" for i in range(10)]
            + [f"rover{i}store" for i in range(10)]
            + [f"waypoint{i}" for i in range(60)]
            + [f"camera{i}" for i in range(15)]
            + [f"objective{i}" for i in range(15)]
            + ["colour", "high_res", "low_res", "general"]
        )
    if domain == "sokoban":
        return (
            [f"pos-{x:02d}-{y:02d}" for x in range(1, 15) for y in range(1, 15)]
            + ["dir-up", "dir-down", "dir-left", "dir-right", "player-01"]
            + [f"stone-{i:02d}" for i in range(1, 13)]
        )
    raise ValueError(f"unknown domain {domain!r}: choose one of {', '.join(PLANNING_DOMAINS)}")


def domain_symbols(pddl_text: str) -> list[str]:
    """Names declared in a domain file (actions, predicates, types, constants), lower-cased, sorted.

    A regex over the text rather than a parser: every non-variable, non-keyword word is a symbol,
    which is exactly what can appear in a ground atom or a ground action."""
    text = re.sub(r";[^\n]*", "", pddl_text).lower()
    words = re.findall(r"(?<![?:\w-])[a-z][a-z0-9_\-]*", text)
    return sorted(set(words) - _PDDL_KEYWORDS)


def vocabulary(domain: str) -> list[str]:
    """The tokenizer's vocabulary in id order; deterministic for a domain."""
    words: list[str] = [*SPECIAL_TOKENS, *STRUCTURE_TOKENS, *KEYWORD_TOKENS]
    for word in domain_symbols(domain_pddl(domain)) + object_names(domain):
        if word not in words:
            words.append(word)
    return words


def build_tokenizer(domain: str, model_max_length: int = MODEL_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """Word-level tokenizer whose vocabulary is the domain's symbols and object names.

    Spaces and tabs separate words and are dropped; "(", ")" and newlines are tokens of their own,
    so any well-formed plan encodes without ``<unk>``. The decoder rebuilds "(unstack b1 b2)" lines.
    A ``<bos>`` is prepended to every encoded text."""
    vocab = {word: i for i, word in enumerate(vocabulary(domain))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"[()\n]"), behavior="isolated"),
        ]
    )
    # WordPiece (with a prefix no token has) puts a space before every token; the replacements on
    # the fused string then remove the spaces that do not belong inside "(name a b)\n".
    tok.decoder = decoders.Sequence(
        [
            decoders.WordPiece(prefix="##", cleanup=False),
            decoders.Fuse(),
            decoders.Replace("( ", "("),
            decoders.Replace(" )", ")"),
            decoders.Replace(" \n", "\n"),
            decoders.Replace("\n ", "\n"),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",  # generation batches
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def make_small_model(
    tokenizer: PreTrainedTokenizerFast, size: str = "small", seed: int = 0
) -> Qwen3ForCausalLM:
    """A freshly initialised small Qwen3 causal LM over ``tokenizer``'s vocabulary (tied embeddings)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}: choose one of {', '.join(SIZES)}")
    hidden, layers, heads, intermediate = SIZES[size]
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def load_model_and_tokenizer(
    path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load any local Hugging Face causal LM and its tokenizer (no network).

    ``dtype`` is a ``torch.dtype`` or its name ("bfloat16"); ``None`` keeps the saved dtype."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model directory {path} does not exist: build a small base model with "
            f"`iterdeploy base-model --domain DOMAIN --out {path}`, or give the local directory of "
            f"a Hugging Face model (downloaded beforehand, e.g. with `hf download`)"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a model directory (no config.json): give the directory written by "
            f"`iterdeploy base-model --domain DOMAIN --out DIR` or by `save_pretrained`"
        )
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=dtype if dtype is not None else "auto"
    )
    if tokenizer.pad_token is None:
        # Many chat models ship without a pad token; eos is the usual stand-in for batched generation.
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    return model, tokenizer
