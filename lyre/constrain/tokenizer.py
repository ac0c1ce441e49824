"""A lyre Tokenizer as llguidance sees it: the bytes of every token and which one ends a text.

llguidance builds a byte trie over the vocabulary and walks it with the grammar, so all it
needs is `token_bytes(i)` for every id (char, bpe and gpt2 tokenizers all have it) and the EOS
token, which for lyre is `<|endoftext|>`. Special tokens are declared as such: llguidance never
lets a grammar spell them out of their text, and allows EOS only where the grammar may end.
The encode callback is used for fast-forward (forced text -> the tokens lyre would produce).
"""

from __future__ import annotations

import weakref
from threading import Lock

from llguidance import LLTokenizer, TokenizerWrapper

from lyre.constrain.constraint import ConstraintError
from lyre.core.errors import LyreError
from lyre.tokenizers import Tokenizer

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = Lock()


class _Vocabulary:
    """The duck-typed object llguidance's TokenizerWrapper reads (eos, tokens, encode)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eot_id
        self.bos_token_id = None
        self.special_token_ids = sorted(tokenizer.special_tokens.values())
        self.tokens = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]

    def __call__(self, text: str) -> list[int]:
        try:
            return self.tokenizer.encode_ordinary(text)
        except LyreError:  # a char model lacks a character: llguidance falls back to its trie
            return []


def ll_tokenizer(tokenizer: Tokenizer) -> LLTokenizer:
    """llguidance's tokenizer for `tokenizer`, built once per tokenizer object (~0.1 s for GPT-2)."""
    with _LOCK:
        found = _CACHE.get(tokenizer)
        if found is None:
            if tokenizer.eot_id is None:
                raise ConstraintError(
                    "constrained decoding needs a tokenizer with <|endoftext|> (to end a finished "
                    "answer); this run's char tokenizer predates it: retrain or re-prepare the run"
                )
            found = LLTokenizer(TokenizerWrapper(_Vocabulary(tokenizer)))
            _CACHE[tokenizer] = found
        return found
