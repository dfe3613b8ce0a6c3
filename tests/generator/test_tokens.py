"""CLIP's tokenizer, loaded without torch."""

from __future__ import annotations

from generator import tokens


def test_tokenizer_memo_stays_bounded(monkeypatch):
    monkeypatch.setattr(tokens, "MAX_MEMOISED_WORDS", 20)
    for number in range(60):
        tokens.count_tokens(f"word{number}x")
    tokenizer, _ = tokens._clip_tokenizer()
    assert len(tokenizer.cache) <= 21 + 2
    assert tokens.count_tokens("a bowl of cherries") == 4
