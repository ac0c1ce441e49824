"""RowMatcher: the grammar state of one generated row, and the masks of a batch of them.

The engine's whole interface to constrained decoding (lyre/engine/rows.py, sampling.py):

    matcher = RowMatcher(compile_constraint(c, tokenizer))
    allowed_masks([m1, m2], vocab_size, device)  # bool [n, V]: may row i pick token t?
    matcher.accept(token)                        # advance the grammar by a chosen token
    matcher.next_forced()                        # a token the grammar forces (fast-forward), or None
    matcher.stopped / matcher.accepting          # must end / may end here

Fast-forward: after each accepted token, llguidance tells which tokens the grammar forces next
(`{"name": "` after the `{` of a schema with one required key). The engine takes them one per
step without masking or sampling; they still go through the model, in the batch's decode step,
so the KV cache stays right (see docs/structured.md for why one per step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lyre.constrain.compile import Compiled

_BITS = torch.arange(32, dtype=torch.int32)


class RowMatcher:
    """One row's position in its grammar."""

    def __init__(self, compiled: Compiled) -> None:
        self.matcher = compiled.new_matcher()
        self.eos = compiled.tokenizer.eos_token
        self.vocab_size = compiled.tokenizer.vocab_size  # the tokenizer's; a model's may be larger
        self.forced_count = 0  # tokens taken by fast-forward, not sampled
        self.dead_end = False  # set by the sampler when the grammar allowed no token at all
        self._forced: list[int] = self.matcher.compute_ff_tokens()

    @property
    def accepting(self) -> bool:
        """The text so far is complete: the row may end here."""
        return self.matcher.is_accepting()

    @property
    def stopped(self) -> bool:
        """Nothing may follow: the grammar is complete (or in error)."""
        return self.matcher.is_stopped()

    @property
    def error(self) -> str:
        return self.matcher.get_error()

    def next_forced(self) -> int | None:
        """The next fast-forward token, or None when the model must choose."""
        return self._forced[0] if self._forced else None

    def accept(self, token: int) -> bool:
        """Advance by `token`; False if the grammar refuses it (the matcher is then in error)."""
        if self._forced and self._forced[0] == token:
            self._forced.pop(0)
            self.forced_count += 1
            return self.matcher.consume_token(token)
        ok = self.matcher.consume_token(token)
        self._forced = self.matcher.compute_ff_tokens() if ok and not self.stopped else []
        return ok

    def fill(self, bitmask: torch.Tensor, index: int) -> None:
        """Write the allowed-token bits into row `index` of an int32 [n, words] CPU tensor (what
        llguidance.torch.fill_next_token_bitmask does; that module imports torch.compile, 2 s)."""
        row = bitmask[index]
        self.matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())


def allowed_masks(matchers: Sequence[RowMatcher], vocab_size: int, device: torch.device) -> torch.Tensor:
    """bool [n, vocab_size]: True where row i's grammar allows token t. Ids the tokenizer does not
    have (a model vocabulary padded past the tokenizer's) are never allowed."""
    n, known = len(matchers), matchers[0].vocab_size
    bitmask = torch.full((n, (known + 31) // 32), -1, dtype=torch.int32)
    for i, m in enumerate(matchers):
        m.fill(bitmask, i)
    # Unpack 32 bits per int32 word: bit b of word w is token 32 * w + b.
    bits = ((bitmask.unsqueeze(-1) >> _BITS) & 1).reshape(n, -1)[:, :known].bool()
    if vocab_size > known:
        bits = torch.cat([bits, bits.new_zeros(n, vocab_size - known)], dim=1)
    return bits[:, :vocab_size].to(device)
