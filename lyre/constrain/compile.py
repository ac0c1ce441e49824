"""Constraint -> a checked llguidance grammar and a matcher to copy per row; cached and bounded.

Compiling is the expensive part (a JSON schema becomes a grammar, its lexer is built over the
vocabulary's trie); starting a row is a cheap `deep_copy` of the compiled prototype. Compiled
constraints live in an LRU keyed by (tokenizer, constraint), so a server that sees the same
schema on every request compiles it once.

Bounds: the text of a constraint is at most MAX_CONSTRAINT_CHARS, and llguidance's parser limits
(LIMITS: grammar size, lexer states, lexer "fuel") stop a pathological schema or grammar with an
error instead of a long build; either becomes a ConstraintError, never a hang.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock

import numpy as np
from llguidance import LLMatcher, LLParserLimits, LLTokenizer
from llguidance.gbnf_to_lark import any_to_lark

from lyre.constrain.constraint import Constraint, ConstraintError
from lyre.constrain.tokenizer import ll_tokenizer
from lyre.tokenizers import Tokenizer

MAX_CONSTRAINT_CHARS = 256_000
CACHE_SIZE = 128
# llguidance's defaults, halved where they bound the build: a pathological schema fails in well
# under a second instead of several.
LIMITS = dict(
    max_grammar_size=250_000,
    max_lexer_states=100_000,
    initial_lexer_fuel=500_000,
    step_lexer_fuel=200_000,
    step_max_items=50_000,
    verbose_errors=False,
)
# JSON is written compactly with a space after ',' and ':' (as json.dumps writes it); free
# whitespace would let a small model pad its answer with newlines until max_tokens.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# The request field a server names in its 400 for each kind of constraint (vLLM's names).
PARAM = {"json": "response_format", "regex": "regex", "choice": "choice", "lark": "grammar",
         "gbnf": "grammar"}


@dataclass
class Compiled:
    """A checked constraint for one tokenizer: `new_matcher()` starts a row."""

    constraint: Constraint
    tokenizer: LLTokenizer
    prototype: LLMatcher

    def new_matcher(self) -> LLMatcher:
        return self.prototype.deep_copy()


_CACHE: OrderedDict = OrderedDict()
_LOCK = Lock()


def compile_constraint(constraint: Constraint, tokenizer: Tokenizer) -> Compiled:
    """The compiled constraint (from the cache when seen before) or a ConstraintError."""
    if not isinstance(constraint, Constraint):
        raise ConstraintError(f"constraint must be a lyre.constrain.Constraint; got {type(constraint).__name__}")
    llt = ll_tokenizer(tokenizer)
    key = (id(llt), constraint)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    compiled = Compiled(constraint, llt, _build(constraint, llt))
    with _LOCK:
        _CACHE[key] = compiled
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return compiled


def grammar_text(constraint: Constraint) -> str:
    """llguidance's grammar for a constraint (not yet checked)."""
    param = PARAM[constraint.kind]
    if len(constraint.key()) > MAX_CONSTRAINT_CHARS:
        raise ConstraintError(f"the {constraint.kind} constraint is longer than "
                              f"{MAX_CONSTRAINT_CHARS:,} characters", param)
    kind, value = constraint.kind, constraint.value
    if kind == "json":
        schema = value if value not in (None, {}) else {"type": "object"}  # OpenAI's json_object
        try:
            return LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)
        except (ValueError, TypeError) as e:
            raise ConstraintError(f"invalid JSON schema: {_one_line(e)}", param) from e
    if kind == "regex":
        return LLMatcher.grammar_from_regex(value)
    if kind == "choice":
        return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(o) for o in value))
    if kind == "gbnf":
        try:
            value = any_to_lark(value)
        except Exception as e:  # the converter raises plain exceptions of several kinds
            raise ConstraintError(f"invalid GBNF grammar: {_one_line(e)}", param) from e
    return LLMatcher.grammar_from_lark(value)


def _build(constraint: Constraint, llt: LLTokenizer) -> LLMatcher:
    param = PARAM[constraint.kind]
    grammar = grammar_text(constraint)
    limits = LLParserLimits(**LIMITS)
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, llt, limits=limits)
    if is_error:
        raise ConstraintError(f"invalid {_NAMES[constraint.kind]}: {_one_line(messages[0])}", param)
    matcher = LLMatcher(llt, grammar, log_level=0, limits=limits)
    if matcher.is_error():
        raise ConstraintError(f"invalid {_NAMES[constraint.kind]}: {_one_line(matcher.get_error())}", param)
    if matcher.is_error() or not (matcher.is_accepting() or _can_start(matcher, llt)):
        raise ConstraintError(f"the {_NAMES[constraint.kind]} accepts no text this model's "
                              f"vocabulary can write", param)
    return matcher


def _can_start(matcher: LLMatcher, llt: LLTokenizer, tries: int = 64) -> bool:
    """Whether some token can begin the text. The mask alone is not proof: when the grammar
    forces bytes that no token spells (a `{` for a char vocabulary without one), the mask can
    still let a token through that the matcher then refuses. So try the allowed tokens."""
    if matcher.compute_ff_tokens():
        return True
    words = np.frombuffer(matcher.compute_bitmask(), dtype="<u4")
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")[: llt.vocab_size]
    candidates = [int(t) for t in np.flatnonzero(bits) if t != llt.eos_token][:tries]
    return any(matcher.validate_tokens([t]) == 1 for t in candidates)


_NAMES = {"json": "JSON schema", "regex": "regex", "choice": "choice list",
          "lark": "Lark grammar", "gbnf": "GBNF grammar"}


def _one_line(e: BaseException | str) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")
