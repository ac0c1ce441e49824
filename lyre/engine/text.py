"""Token bytes -> text pieces that are safe to show as they are generated.

Each row turns token bytes into text incrementally, so a UTF-8 character split across BPE
tokens is never cut, and it holds back a tail that could still become a stop string, so what
was streamed is never taken back. Joined, the streamed pieces equal the final text.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from collections.abc import Sequence as Seq


class TextStream:
    """Token bytes in, text out, without ever splitting a UTF-8 character or leaking a stop string.

    `_pending` holds decoded text not yet released: at most a tail that is the start of a stop
    string. Released text is final; `take()` hands it out. A stop string can only begin inside
    `_pending` (any earlier start would have been held back), so only it is searched.
    """

    def __init__(self, token_bytes: Callable[[int], bytes] | None, stop: Seq[str] = ()) -> None:
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(stop)
        self._pending = ""
        self._done: list[str] = []  # all released text
        self._ready: list[str] = []  # released, not yet taken
        self.stopped_by: str | None = None
        self.closed = False

    def push(self, token_id: int) -> bool:
        """Add one token's bytes; True when a stop string appeared (the text now ends before it)."""
        if self._token_bytes is None or self.closed:
            return False
        return self._add(self._decoder.decode(self._token_bytes(token_id)))

    def close(self) -> bool:
        """No more tokens: bytes of an unfinished character become U+FFFD, everything is released."""
        if self.closed:
            return False
        stopped = self._add(self._decoder.decode(b"", final=True))
        self._release(len(self._pending))
        self.closed = True
        return stopped

    def take(self) -> str:
        """Text released since the last call."""
        piece = "".join(self._ready)
        self._ready.clear()
        return piece

    @property
    def text(self) -> str:
        return "".join(self._done) + self._pending

    def _add(self, new: str) -> bool:
        if not new:
            return False
        searched = len(self._pending)  # no stop string ends inside what was already searched
        self._pending += new
        hit = self._first_stop(searched)
        if hit is not None:
            cut, self.stopped_by = hit
            self._pending = self._pending[:cut]
            self._release(cut)
            self.closed = True
            return True
        self._release(len(self._pending) - self._stop_prefix_len())
        return False

    def _first_stop(self, searched: int) -> tuple[int, str] | None:
        hits = []
        for s in self._stop:
            i = self._pending.find(s, max(0, searched - len(s) + 1))
            if i >= 0:
                hits.append((i, s))
        return min(hits) if hits else None

    def _stop_prefix_len(self) -> int:
        """Length of the longest tail of the pending text that is a proper prefix of a stop string."""
        longest = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def _release(self, n: int) -> None:
        if n > 0:
            piece, self._pending = self._pending[:n], self._pending[n:]
            self._done.append(piece)
            self._ready.append(piece)
