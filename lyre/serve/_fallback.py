"""TEMPORARY stand-in for the engine's step-level batch API, built on lyre.generate.

Each row advances its own generate_tokens iterator by one token per step (no batching). To be
replaced by lyre.engine once it lands.
"""

from __future__ import annotations

import codecs
import itertools
from dataclasses import dataclass

from lyre.generate import SamplingConfig, generate_tokens


@dataclass
class RowUpdate:
    row: int
    text: str
    new_tokens: int
    tokens: int
    logprobs: list | None
    finish_reason: str | None


class _Row:
    def __init__(self, it, tokenizer, stop, max_new):
        self.it = it
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.tokenizer = tokenizer
        self.stop = stop
        self.max_new = max_new
        self.count = 0
        self.held = ""


class GeneratorBatch:
    def __init__(self, model, tokenizer, device, capacity):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.rows: dict[int, _Row] = {}
        self.ids = itertools.count()

    def add(self, prompt, *, n, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
            seed, stop, logprobs):
        out = []
        stop_ids = [self.tokenizer.eot_id] if self.tokenizer.eot_id is not None else []
        for i in range(n):
            cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                 top_p=top_p, seed=None if seed is None else seed + i)
            it = generate_tokens(self.model, prompt, cfg, stop_ids=stop_ids, device=self.device)
            rid = next(self.ids)
            self.rows[rid] = _Row(it, self.tokenizer, stop, max_new_tokens)
            out.append(rid)
        return out

    def remove(self, row):
        self.rows.pop(row, None)

    def step(self):
        updates = []
        for rid, r in list(self.rows.items()):
            try:
                tok = next(r.it)
            except StopIteration:
                updates.append(RowUpdate(rid, r.held + r.decoder.decode(b"", final=True), 0, r.count,
                                         None, "stop" if r.count < r.max_new else "length"))
                continue
            r.count += 1
            text = r.held + r.decoder.decode(self.tokenizer.token_bytes(tok))
            finish = None
            for s in r.stop:
                at = text.find(s)
                if at >= 0:
                    text, finish = text[:at], "stop"
            r.held = ""
            if finish is None:
                for s in r.stop:
                    for k in range(min(len(s) - 1, len(text)), 0, -1):
                        if text.endswith(s[:k]):
                            r.held = text[-k:] if len(text[-k:]) > len(r.held) else r.held
                            break
                if r.held:
                    text = text[: len(text) - len(r.held)]
            if finish is None and r.count >= r.max_new:
                finish = "length"
                text += r.held + r.decoder.decode(b"", final=True)
            updates.append(RowUpdate(rid, text, 1, r.count, None, finish))
        return updates
