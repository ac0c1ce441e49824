"""`lyre prepare`'s worker processes: each loads the tokenizer once and turns batches of
documents into token arrays; the main process reads the results back in input order.

    with worker_pool(n, tokenizer_dir) as pool:
        for batch, (train, val) in in_order(batches, pool, n, tokenizer, dtype): ...

Workers ignore Ctrl-C (the main process handles it and keeps what is finished) and leave by
themselves when the main process is killed outright.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lyre.core.errors import LyreError
from lyre.tokenizers import Tokenizer, load_tokenizer

if TYPE_CHECKING:
    from lyre.data.prepare import Batch

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    # A main process killed outright (SIGKILL, SIGTERM) cannot stop its workers: they notice
    # they were orphaned and leave, instead of waiting forever for work.
    parent = os.getppid()
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    # One process per core already: the tokenizers' own thread pools would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    _worker_tokenizer = load_tokenizer(tokenizer_dir)


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def encode_pieces(pieces: list[tuple[str, int, bool]], dtype: str,
                  tokenizer: Tokenizer | None = None) -> list[np.ndarray]:
    """One batch -> [train tokens, val tokens]: each piece's ids, <|endoftext|> first where the
    piece says so. Runs in a worker (tokenizer None: the worker's)."""
    tok = tokenizer or _worker_tokenizer
    assert tok is not None
    texts = [text for text, _, _ in pieces]
    # tiktoken's batch call starts a pool of 8 threads per call, which measured no faster than
    # one thread here (docs/log.md); a worker is one core already. HF tokenizers batch natively.
    ids = [tok.encode_ordinary(t) for t in texts] if tok.kind == "gpt2" else tok.encode_batch(texts)
    out = []
    eot = [tok.eot_id] if tok.eot_id is not None else []
    for split in (0, 1):
        lists = [part for (_, s, first), piece in zip(pieces, ids, strict=True) if s == split
                 for part in ((eot, piece) if first else (piece,))]
        n = sum(map(len, lists))
        out.append(np.fromiter(chain.from_iterable(lists), dtype=dtype, count=n))
    return out


class _InProcess(Executor):
    """workers=1: the same calls, in this process (no start-up cost, easy to debug)."""

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # delivered by result(), like a pool's
            future.set_exception(e)
        return future


def worker_pool(workers: int, tokenizer_dir: Path) -> Executor:
    """N spawned processes that each load the tokenizer once; workers=1: this process."""
    if workers == 1:
        return _InProcess()
    import multiprocessing

    # spawn: a clean process (no copy of a parent's threads or torch state), any platform.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(str(tokenizer_dir),))


def in_order(batches: Iterator[Batch], pool: Executor, workers: int, tokenizer: Tokenizer,
             dtype: np.dtype) -> Iterator[tuple[Batch, list[np.ndarray]]]:
    """Results in input order with at most 2 batches per worker in flight (flat memory)."""
    own = tokenizer if isinstance(pool, _InProcess) else None
    inflight: deque[tuple[Batch, Future]] = deque()
    for batch in batches:
        inflight.append((batch, pool.submit(encode_pieces, batch.pieces, dtype.str, own)))
        if len(inflight) >= 2 * workers:
            done, future = inflight.popleft()
            yield done, _result(future)
    while inflight:
        done, future = inflight.popleft()
        yield done, _result(future)


def _result(future: Future) -> list[np.ndarray]:
    try:
        return future.result()
    except LyreError as e:  # e.g. a character the (saved) char tokenizer does not have
        raise LyreError(f"the tokenizer does not cover the text: {e}") from None
