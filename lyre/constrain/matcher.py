"""RowMatcher: the grammar state of one generated row, and the masks of a batch of them.

The engine's whole interface to constrained decoding (lyre/engine/rows.py, sampling.py):

    matcher = RowMatcher(compile_constraint(c, tokenizer))
    allowed_masks([m1, m2], vocab_size, device)  # bool [n, V]: may row i pick token t?
    matcher.accept(token)                        # advance the grammar by a chosen token
    matcher.next_forced()                        # a token the grammar forces (fast-forward), or None
    matcher.stopped / matcher.accepting          # must end / may end here

Fast-forward: after each accepted token, llguidance tells which tokens the grammar forces next
(`{"name": "` after the `{` of a schema with one required key). The engine takes them without
masking or sampling, all at once right after the sampled token, and feeds them together in the
next step's forward (jump-forward: lyre/engine/batch.py, `Batch._jump_forward`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lyre.constrain.compile import Compiled


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

    def fill(self, words: np.ndarray) -> None:
        """Write the allowed-token bits into `words`, a C-contiguous int32 array of
        ceil(vocab / 32) words (llguidance's bitmask: bit b of word w is token 32 * w + b)."""
        self.matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)


def allowed_masks(matchers: Sequence[RowMatcher], vocab_size: int, device: torch.device) -> torch.Tensor:
    """bool [n, vocab_size]: True where row i's grammar allows token t. Ids the tokenizer does not
    have (a model vocabulary padded past the tokenizer's) are never allowed."""
    n, known = len(matchers), matchers[0].vocab_size
    bitmask = np.empty((n, (known + 31) // 32), dtype=np.int32)
    for i, m in enumerate(matchers):
        m.fill(bitmask[i])
    # One bit per token, in token order: the words are little-endian, so bytes then bits in
    # little-endian order give tokens 0, 1, 2, ...
    little = bitmask.astype("<i4", copy=False)  # (a no-op on little-endian machines)
    bits = np.unpackbits(little.view(np.uint8), axis=1, count=known, bitorder="little")
    allowed = np.zeros((n, vocab_size), dtype=bool)
    width = min(known, vocab_size)
    allowed[:, :width] = bits[:, :width]
    return torch.from_numpy(allowed).to(device)
