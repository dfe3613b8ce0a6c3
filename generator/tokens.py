"""CLIP's tokenizer without torch, so the bot can check prompt length before it queues anything.

The `clip` package's __init__ imports torch; its tokenizer module itself only needs ftfy and regex, so we
load that one file directly from the installed package.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from generator.protocol import SpecError, split_prompts

CONTEXT_LENGTH = 77
# CLIP's tokenizer memoises the BPE split of every word it has seen, forever; a long-running bot sees every
# word its users type. Start the memo afresh once it holds this many words.
MAX_MEMOISED_WORDS = 50_000
# Start-of-text and end-of-text take two of the 77 positions.
MAX_PROMPT_TOKENS = CONTEXT_LENGTH - 2


@lru_cache(maxsize=1)
def _clip_tokenizer():
    package = importlib.util.find_spec("clip")
    if package is None or not package.submodule_search_locations:
        raise RuntimeError("OpenAI CLIP is not installed (pip package clip-anytorch).")
    module_path = Path(next(iter(package.submodule_search_locations))) / "simple_tokenizer.py"
    spec = importlib.util.spec_from_file_location("_bigsleep_clip_tokenizer", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tokenizer = module.SimpleTokenizer()
    return tokenizer, dict(tokenizer.cache)


def _encode(text: str):
    tokenizer, initial_memo = _clip_tokenizer()
    if len(tokenizer.cache) > MAX_MEMOISED_WORDS:
        tokenizer.cache = dict(initial_memo)
    return tokenizer, tokenizer.encode(text)


def count_tokens(text: str) -> int:
    """Number of CLIP tokens in one prompt, not counting start and end markers."""
    return len(_encode(text)[1])


def encode_prompt(text: str) -> list[int]:
    """Token ids of one prompt with start and end markers, as CLIP's text encoder expects them."""
    tokenizer, tokens = _encode(text)
    if len(tokens) > MAX_PROMPT_TOKENS:
        raise SpecError(
            f"The prompt “{_shorten(text)}” is {len(tokens)} CLIP tokens long; CLIP reads at most "
            f"{MAX_PROMPT_TOKENS}. Shorten it by about {len(tokens) - MAX_PROMPT_TOKENS} words."
        )
    return [tokenizer.encoder["<|startoftext|>"], *tokens, tokenizer.encoder["<|endoftext|>"]]


def check_prompt_lengths(prompt: str, negative: str = "") -> None:
    """Raise SpecError naming the first prompt (of those split on `|`) that CLIP cannot read whole."""
    for piece in split_prompts(prompt) + split_prompts(negative):
        encode_prompt(piece)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
