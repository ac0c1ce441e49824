"""Cache views: what the model sees as its cache (lyre.model.contract.Cache) in one forward pass.

A Batch owns one KVCache [layers, rows, heads, max_length, head_dim] for all its rows; row i's
keys and values sit in slots 0..len_i - 1 of cache row i. A view tells the model, for one
forward pass, where to write and what to attend to, and carries the ragged-batch details the
model's signature does not have: per-row `positions`, an `attn_mask`, and `logits_at`.
PrefillView writes whole windows, DecodeView one token per row, ExtendView a few tokens per row
(jump-forward over the tokens a grammar forces).

`storage` is None for a model without a KV cache (capabilities(model).uses_kv_cache False): it never calls
`update`, and the views still say which logits to compute.

A model whose generation state is not a KV cache (a recurrent one: lyre/model/recurrent.py)
allocates its own storage through `model.new_cache(rows, max_length, device, dtype)`; such a
storage makes its own views (`prefill_view(slots, logits_at)`, `decode_view(lengths, device)`)
and copies its own rows (`copy_row(src, dst, length)`, `nbytes()`). The functions at the end
of this module are what the Batch calls, whichever kind of storage it holds.
"""

from __future__ import annotations

import torch

from lyre.model.contract import capabilities
from lyre.model.gpt import KVCache


class PrefillView:
    """Fill cache rows `slots` from position 0 with one window each (their old content is dropped).

    The windows are right-padded to the longest: causal attention keeps real tokens from seeing
    the padding, `logits_at` [n] picks each window's last real token, and the padded slots are
    overwritten or masked by later decode steps.
    """

    length = 0  # nothing cached before: positions 0 .. T-1
    positions = None
    attn_mask = None  # plain causal attention over the new tokens

    def __init__(self, storage: KVCache | None, slots: list[int], logits_at: torch.Tensor | None) -> None:
        self.storage, self.logits_at = storage, logits_at
        if slots == list(range(slots[0], slots[0] + len(slots))):
            self.rows: slice | torch.Tensor = slice(slots[0], slots[0] + len(slots))  # a plain slice
        else:  # scattered rows (windows re-prefilled after a slide)
            device = storage.keys.device if storage is not None else "cpu"
            self.rows = torch.tensor(slots, device=device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.size(2)
        self.storage.keys[layer][self.rows, :, :T] = k
        self.storage.values[layer][self.rows, :, :T] = v
        return k, v  # nothing cached before: attend to the new positions only

    def advance(self, n: int) -> None:
        pass


class DecodeView:
    """Append one position to each of rows 0..n-1, row i at slot lengths[i].

    When all rows stand at the same length this is a plain cache append (no positions, no mask).
    Otherwise each row's token takes position lengths[i], and a mask hides the slots beyond it
    that a shorter row has not filled.
    """

    logits_at = None  # one token per row: its logits

    def __init__(self, storage: KVCache | None, lengths: list[int], device: torch.device) -> None:
        self.storage = storage
        self.n = len(lengths)
        self.length = max(lengths)  # what the model checks against its context
        self.span = self.length + 1  # slots any row may attend to after the write
        self.uniform = all(n == self.length for n in lengths)
        self.positions: torch.Tensor | None = None
        self.attn_mask: torch.Tensor | None = None
        if not self.uniform:
            slots = torch.tensor(lengths, device=device)
            self.rows = torch.arange(self.n, device=device)
            self.slots = slots
            self.positions = slots.unsqueeze(1)  # [n, 1]
            self.attn_mask = (torch.arange(self.span, device=device) <= self.positions)[:, None, None, :]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.storage.keys[layer], self.storage.values[layer]
        if self.uniform:  # all rows at the same length: a plain slice write
            keys[: self.n, :, self.length] = k[:, :, 0]
            values[: self.n, :, self.length] = v[:, :, 0]
        else:
            keys[self.rows, :, self.slots] = k[:, :, 0]
            values[self.rows, :, self.slots] = v[:, :, 0]
        return keys[: self.n, :, : self.span], values[: self.n, :, : self.span]

    def advance(self, n: int) -> None:
        pass


class ExtendView:
    """Append counts[i] positions to each of rows 0..n-1, row i from slot lengths[i]: a decode
    step in which some rows feed several tokens at once (the tokens a grammar forced, see
    Batch._jump_forward).

    The chunks are right-padded to the longest, T. Query t of row i takes position
    lengths[i] + t and sees keys 0..lengths[i] + t; a padded query repeats its row's last real
    position (a valid position embedding) and its key and value are never written; `logits_at`
    picks each row's last real token.
    """

    def __init__(self, storage: KVCache, lengths: list[int], counts: list[int], device: torch.device) -> None:
        self.storage = storage
        self.n = len(lengths)
        T = max(counts)
        start = torch.tensor(lengths, device=device).unsqueeze(1)  # [n, 1]
        last = start + torch.tensor(counts, device=device).unsqueeze(1) - 1
        self.positions = torch.minimum(start + torch.arange(T, device=device), last)  # [n, T]
        self.span = int(last.max()) + 1  # slots any row may attend to after the writes
        # What the model checks against its context: the furthest row's end is length + T.
        self.length = self.span - T
        self.attn_mask = (torch.arange(self.span, device=device) <= self.positions[..., None])[:, None]
        self.logits_at = torch.tensor(counts, device=device) - 1
        real = torch.arange(T, device=device) < torch.tensor(counts, device=device).unsqueeze(1)
        self.real = real  # [n, T]: True where a query is a real token, not padding
        self.rows = torch.arange(self.n, device=device).unsqueeze(1).expand(-1, T)[real]
        self.slots = self.positions[real]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.storage.keys[layer], self.storage.values[layer]
        # k, v: [n, H, T, D] -> the real tokens' [R, H, D], written at (row, slot) pairs.
        keys[self.rows, :, self.slots] = k.transpose(1, 2)[self.real]
        values[self.rows, :, self.slots] = v.transpose(1, 2)[self.real]
        return keys[: self.n, :, : self.span], values[: self.n, :, : self.span]

    def advance(self, n: int) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# The Batch's storage, whichever kind: a KVCache, a model's own state (new_cache), or none


def new_storage(model, rows: int, max_length: int, device: torch.device, dtype: torch.dtype):
    """The generation state of `rows` rows: the model's own (new_cache) if it has one, else a
    KVCache if it uses one, else None."""
    able = capabilities(model)
    if able.own_state:
        return model.new_cache(rows, max_length, device, dtype)
    if able.uses_kv_cache:
        return KVCache(model.config, rows, max_length, device, dtype)
    return None


def prefill_view(storage, slots: list[int], logits_at: torch.Tensor | None):
    if hasattr(storage, "prefill_view"):
        return storage.prefill_view(slots, logits_at)
    return PrefillView(storage, slots, logits_at)


def decode_view(storage, lengths: list[int], device: torch.device):
    if hasattr(storage, "decode_view"):
        return storage.decode_view(lengths, device)
    return DecodeView(storage, lengths, device)


def copy_row(storage, src: int, dst: int, length: int) -> None:
    """Make row `dst` hold what row `src` holds (its first `length` positions)."""
    if storage is None or not length:
        return
    if hasattr(storage, "copy_row"):
        storage.copy_row(src, dst, length)
        return
    storage.keys[:, dst, :, :length] = storage.keys[:, src, :, :length]
    storage.values[:, dst, :, :length] = storage.values[:, src, :, :length]


def storage_bytes(storage) -> int:
    if storage is None:
        return 0
    if hasattr(storage, "nbytes"):
        return storage.nbytes()
    return 2 * storage.keys.numel() * storage.keys.element_size()
