"""The embedded index: one directory, no server.

    IDX/index.sqlite   chunks (text, source, offsets, page, heading, optional vector) and
                       sources (content hash); settings and a write generation in `meta`
    IDX/bm25/gNNN/     the BM25 matrix built from generation NNN (.npy arrays + JSON)
    IDX/lock           held (fcntl.flock) by the one process that writes

SQLite is the source of truth. Each source is replaced in ONE transaction (old chunks out, new
in, hash updated, generation + 1), in WAL mode so readers keep reading while a writer works.
A run killed halfway therefore leaves every source either fully old or fully new, and the
next run picks up where it stopped (unchanged hashes are skipped). batch() makes a whole run
one transaction instead: what lyre.rag.index does to update an index that holds something.

The BM25 matrix is derived data: it is rebuilt after a batch of writes (flush(), called once
at the end of an indexing run rather than after each file, which would make indexing
quadratic) from the terms analysed when each source was written (kept in memory for this
run; sources written by earlier runs are read back from SQLite and analysed again), and saved
under a directory named by the generation it was built from, written to a temporary name and
renamed (atomic; lyre/rag/bm25_files.py). A reader that finds no matrix for the current generation (a run was
interrupted before flush) rebuilds it in memory and saves it if no writer holds the lock.
Measured in bench/rag_speed.py: at 100,000 chunks opening the saved matrix takes 17 ms and
rebuilding it 2.6 s, which is why it is persisted at all.

Dense vectors (when an embedder is used) live in SQLite next to their chunk and are searched
exactly: one matrix-vector product over all of them (fast enough for 10^5 chunks; PostgreSQL +
pgvector's HNSW index is the way beyond one machine).
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np

import lyre.rag.bm25_files as bm25_files
from lyre.core.errors import LyreError
from lyre.rag.bm25_files import SavedMatrix
from lyre.rag.lexical import Analyzer, BM25Index, LexicalConfig, query_weights, top_k
from lyre.rag.types import Chunk, Hit

FORMAT = "lyre-rag-index"
VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    source TEXT PRIMARY KEY, hash TEXT NOT NULL, chunks INTEGER NOT NULL, indexed_at REAL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    chunk_id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    start INTEGER NOT NULL, "end" INTEGER NOT NULL,
    page INTEGER, heading TEXT,
    text TEXT NOT NULL,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source);
"""

_COLUMNS = 'id, chunk_id, source, start, "end", page, heading, text'


def _row_chunk(row) -> Chunk:
    _, chunk_id, source, start, end, page, heading, text = row
    return Chunk(text=text, source=source, start=start, end=end, page=page, heading=heading,
                 chunk_id=chunk_id)


def neighbour_mean(scores: np.ndarray, codes: np.ndarray, window: int) -> np.ndarray:
    """Mean score of the up-to-`window` chunks before and after each chunk of the same source
    (rows of one source are contiguous and in text order: each source is written at once)."""
    n = len(scores)
    csum = np.concatenate([[0.0], np.cumsum(scores, dtype=np.float64)])
    idx = np.arange(n)
    change = np.flatnonzero(np.diff(codes)) + 1  # first row of each run of one source
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [n]])
    run = np.repeat(np.arange(len(starts)), ends - starts)
    lo = np.maximum(idx - window, starts[run])
    hi = np.minimum(idx + window + 1, ends[run])
    total = csum[hi] - csum[lo] - scores
    count = np.maximum(hi - lo - 1, 1)
    return (total / count).astype(np.float32)


@dataclass
class _Analysed:
    """The terms of one source's chunks as this process wrote them (term ids of the store's
    analyser): flush() builds the matrix from these instead of reading the text back from
    SQLite and analysing it a second time."""

    rows: np.ndarray  # SQLite row ids, in order
    lengths: np.ndarray  # terms per chunk
    ids: np.ndarray  # every chunk's term ids, one after the other


class EmbeddedStore:
    """SQLite + BM25 matrix + numpy vectors: the embedded lyre.rag.types.Store."""

    def __init__(self, path: str | Path, create: bool = False) -> None:
        self.path = Path(path)
        self.db_path = self.path / "index.sqlite"
        creating = not self.db_path.exists()
        if creating:
            if not create:
                what = "is not a lyre index" if self.path.exists() else "does not exist"
                raise LyreError(f"index {self.path} {what}; build one with "
                                f"`lyre rag index DOCS --index {self.path}`")
            self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        self._in_batch = False  # inside batch(): writes join its one transaction
        self._lexical: SavedMatrix | None = None
        self._analyzer: Analyzer | None = None
        self._analysed: dict[str, _Analysed] = {}  # source -> its terms, written by us
        self._vectors: tuple[int, np.ndarray, np.ndarray, np.ndarray, list[str]] | None = None
        try:
            self.conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=30)
            # A new index holds nothing yet: its empty tables are created without waiting for
            # the disk (the switch to WAL and the schema cost ~7 fsyncs, 0.2-15 ms each on a
            # busy disk). Power lost right then leaves an empty, maybe corrupt index, which
            # says so; every write of chunks below runs with synchronous=NORMAL.
            self.conn.execute(f"PRAGMA synchronous={'OFF' if creating else 'NORMAL'}")
            self.conn.execute("PRAGMA journal_mode=WAL")
            fmt = self._meta_table_format()
            if fmt is None:
                if not create:
                    raise LyreError(f"index {self.path} is empty or not a lyre index")
                self._initialise()
            elif fmt != FORMAT:
                raise LyreError(f"{self.db_path} is not a lyre index")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            version = int(self.get_meta("version", "0"))
            if version != VERSION:
                raise LyreError(f"index {self.path} has format version {version}, this lyre "
                                f"reads {VERSION}; rebuild it with `lyre rag index`")
        except sqlite3.DatabaseError as e:
            raise LyreError(f"index {self.path} is corrupt ({e}); delete it and index again") from None

    # -- set-up and metadata ----------------------------------------------------------------------

    def _meta_table_format(self) -> str | None:
        row = self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if row is None:
            return None
        row = self.conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        return row[0] if row else ""

    def _initialise(self) -> None:
        self.acquire_write_lock()
        self.conn.executescript(SCHEMA)  # idempotent (IF NOT EXISTS)
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
            ("format", FORMAT), ("version", str(VERSION)), ("generation", "0"),
            ("settings", "{}")])
        self.conn.execute("COMMIT")

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def generation(self) -> int:
        return int(self.get_meta("generation", "0"))

    def settings(self) -> dict:
        """Chunking, lexical and embedder settings the index was built with."""
        return json.loads(self.get_meta("settings", "{}"))

    def set_settings(self, settings: dict) -> None:
        self._write(lambda c: c.execute("INSERT OR REPLACE INTO meta VALUES ('settings', ?)",
                                        (json.dumps(settings, sort_keys=True),)))
        self._analyzer = None
        self._analysed = {}  # term ids of the old analyser
        self._lexical = None

    def lexical_config(self) -> LexicalConfig:
        return LexicalConfig.from_dict(self.settings().get("lexical", {}))

    # -- the write lock -----------------------------------------------------------------------

    def acquire_write_lock(self) -> None:
        """Become the only writer of this index (held until close); LyreError if taken."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LyreError(f"index {self.path} is being written by another process (pid "
                            f"{holder}); wait for it to finish, then run again") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _release_write_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _write(self, body) -> None:
        """Run body(conn) in one IMMEDIATE transaction that also bumps the generation (inside
        batch(): as part of the batch's transaction)."""
        self.acquire_write_lock()
        if self._in_batch:
            body(self.conn)
            self.conn.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            body(self.conn)
            self.conn.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside is one transaction: all of them happen, or (an exception, a
        killed process) none. An update of an existing index runs in one (lyre.rag.index)."""
        self.acquire_write_lock()
        self.conn.execute("BEGIN IMMEDIATE")
        self._in_batch = True
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            self._forget_writes()
            raise
        else:
            self.conn.execute("COMMIT")
        finally:
            self._in_batch = False

    def _forget_writes(self) -> None:
        """What this process remembered of writes that were rolled back."""
        self._analysed = {}
        self._analyzer = None
        self._lexical = None
        self._vectors = None

    # -- the Store protocol: writes ----------------------------------------------------------------

    def sources(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT source, hash FROM sources ORDER BY source"))

    def replace_source(self, source: str, content_hash: str, chunks: list[Chunk],
                       vectors: np.ndarray | None) -> None:
        if vectors is not None and len(vectors) != len(chunks):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        blobs = ([np.asarray(v, dtype=np.float32).tobytes() for v in vectors]
                 if vectors is not None else [None] * len(chunks))
        ids, lengths = self.analyzer().term_id_arrays([ch.text for ch in chunks])
        first = []

        def body(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM chunks WHERE source=?", (source,))
            # Row ids given explicitly (SQLite's own choice, max + 1) so that we know them.
            first.append(c.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM chunks").fetchone()[0])
            c.executemany(
                'INSERT INTO chunks (id, chunk_id, source, start, "end", page, heading, text,'
                " vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(first[0] + i, ch.chunk_id, source, ch.start, ch.end, ch.page, ch.heading,
                  ch.text, blob) for i, (ch, blob) in enumerate(zip(chunks, blobs, strict=True))])
            c.execute("INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?)",
                      (source, content_hash, len(chunks), time.time()))

        self._write(body)
        self._analysed[source] = _Analysed(
            np.arange(first[0], first[0] + len(chunks), dtype=np.int64),
            lengths, ids)

    def delete_source(self, source: str) -> bool:
        if source not in self.sources():
            return False

        def body(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM chunks WHERE source=?", (source,))
            c.execute("DELETE FROM sources WHERE source=?", (source,))

        self._write(body)
        self._analysed.pop(source, None)
        return True

    # -- the Store protocol: reads --------------------------------------------------------------

    def chunk_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def get_chunks(self, chunk_ids: list[str]) -> list[Chunk]:
        found: dict[str, Chunk] = {}
        for i in range(0, len(chunk_ids), 500):  # SQLite caps the number of parameters
            batch = chunk_ids[i:i + 500]
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM chunks WHERE chunk_id IN ({','.join('?' * len(batch))})",
                batch)
            found.update((r[1], _row_chunk(r)) for r in rows)
        return [found[c] for c in chunk_ids if c in found]

    def _rows(self, rowids: list[int]) -> dict[int, Chunk]:
        out = {}
        for i in range(0, len(rowids), 500):
            batch = rowids[i:i + 500]
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM chunks WHERE id IN ({','.join('?' * len(batch))})", batch)
            out.update((r[0], _row_chunk(r)) for r in rows)
        return out

    def _hits(self, ranked: list[tuple[int, float]], rows: np.ndarray) -> list[Hit]:
        chunks = self._rows([int(rows[i]) for i, _ in ranked])
        hits = []
        for i, score in ranked:
            chunk = chunks.get(int(rows[i]))
            if chunk is not None:  # deleted since the matrix was built
                hits.append(Hit(chunk, score, rank=len(hits) + 1))
        return hits

    @staticmethod
    def _mask(codes: np.ndarray, names: list[str], source_glob: str | None) -> np.ndarray | None:
        if source_glob is None:
            return None
        allowed = np.array([fnmatch.fnmatchcase(n, source_glob) for n in names], dtype=bool)
        return allowed[codes]

    # -- lexical search -----------------------------------------------------------------------

    def analyzer(self) -> Analyzer:
        if self._analyzer is None:
            self._analyzer = Analyzer(self.lexical_config())
        return self._analyzer

    def analyze(self, text: str) -> list[str]:
        """The terms of `text` as this index sees them (stemmed, stopwords dropped)."""
        return self.analyzer()(text)

    def lexical_search(self, query: str, k: int, source_glob: str | None = None) -> list[Hit]:
        return self.lexical_search_terms(query_weights(self.analyze(query)), k, source_glob)

    def lexical_search_terms(self, weights: dict[str, float], k: int,
                             source_glob: str | None = None, context_weight: float = 0.0,
                             context_window: int = 0) -> list[Hit]:
        """BM25 search with a weight per (analysed) term: what query expansion needs.
        context_weight > 0 adds that share of the mean score of the `context_window` chunks
        on each side (same source): a chunk in a passage about the question scores higher."""
        lex = self._lexical_index()
        if not weights or lex.index.num_docs == 0:
            return []
        scores = lex.index.scores(weights)
        if context_weight > 0 and context_window > 0:
            scores = scores + context_weight * neighbour_mean(scores, lex.source_codes,
                                                              context_window)
        mask = self._mask(lex.source_codes, lex.source_names, source_glob)
        return self._hits(top_k(scores, k, mask), lex.rows)

    def term_document_frequency(self, terms: list[str]) -> dict[str, int]:
        """How many chunks contain each term (for weighting expansion terms)."""
        index = self._lexical_index().index
        return {t: index.document_frequency(t) for t in terms}

    def _lexical_index(self) -> SavedMatrix:
        generation = self.generation()
        if self._lexical is not None and self._lexical.generation == generation:
            return self._lexical
        self._lexical = self._load_or_build(generation)
        return self._lexical

    def _snapshot(self) -> tuple[int, np.ndarray, list[str], np.ndarray, np.ndarray]:
        """(generation, row ids, sources, term ids, terms per row) in one transaction: a
        consistent view. A source's terms are those analysed when this process wrote it, or
        else its chunks' text read back and analysed."""
        self.conn.execute("BEGIN")
        try:
            generation = self.generation()
            rows = self.conn.execute("SELECT id, source FROM chunks ORDER BY id").fetchall()
            rowids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            sources = [r[1] for r in rows]
            ids, lengths = [np.zeros(0, np.int32)], [np.zeros(0, np.int64)]
            first = 0
            for source, run in groupby(sources):  # a source's rows are contiguous
                end = first + sum(1 for _ in run)
                done = self._analysed.get(source)
                if done is None or not np.array_equal(done.rows, rowids[first:end]):
                    texts = [t for (t,) in self.conn.execute(
                        "SELECT text FROM chunks WHERE source=? AND id BETWEEN ? AND ? "
                        "ORDER BY id", (source, int(rowids[first]), int(rowids[end - 1])))]
                    run_ids, run_lengths = self.analyzer().term_id_arrays(texts)
                    done = _Analysed(rowids[first:end], run_lengths, run_ids)
                ids.append(done.ids)
                lengths.append(done.lengths)
                first = end
        finally:
            self.conn.execute("COMMIT")
        return generation, rowids, sources, np.concatenate(ids), np.concatenate(lengths)

    def _load_or_build(self, generation: int) -> SavedMatrix:
        saved = bm25_files.load(self.path, generation)
        if saved is not None and saved.index.config == self.lexical_config():
            return saved
        return self._build(save=self._can_write())

    def _can_write(self) -> bool:
        try:
            self.acquire_write_lock()
            return True
        except LyreError:
            return False

    def _build(self, save: bool) -> SavedMatrix:
        generation, rows, sources, ids, lengths = self._snapshot()
        index = BM25Index.from_term_ids(ids, lengths, self.analyzer().terms, self.lexical_config())
        names = sorted(set(sources))
        code_of = {n: i for i, n in enumerate(names)}
        codes = np.fromiter(map(code_of.__getitem__, sources), dtype=np.int32, count=len(sources))
        lex = SavedMatrix(generation, index, rows, codes, names)
        if save:
            bm25_files.save(self.path, lex)
        return lex

    def flush(self) -> None:
        """Bring the BM25 matrix up to date with SQLite and save it (after a batch of writes)."""
        if self._lock_fd is None:
            return
        generation = self.generation()
        if self._lexical is None or self._lexical.generation != generation:
            if not bm25_files.generation_dir(self.path, generation).is_dir():
                self._lexical = self._build(save=True)
        self._analysed = {}  # built and saved: ~4 bytes per word need not stay in memory

    # -- dense search -------------------------------------------------------------------------

    def _vector_matrix(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        generation = self.generation()
        if self._vectors is None or self._vectors[0] != generation:
            self.conn.execute("BEGIN")
            try:
                generation = self.generation()
                rows = self.conn.execute("SELECT id, source, vector FROM chunks "
                                         "WHERE vector IS NOT NULL ORDER BY id").fetchall()
            finally:
                self.conn.execute("COMMIT")
            names = sorted({r[1] for r in rows})
            code_of = {n: i for i, n in enumerate(names)}
            matrix = (np.stack([np.frombuffer(r[2], dtype=np.float32) for r in rows])
                      if rows else np.zeros((0, 0), dtype=np.float32))
            self._vectors = (generation, np.array([r[0] for r in rows], dtype=np.int64),
                             np.array([code_of[r[1]] for r in rows], dtype=np.int32),
                             matrix, names)
        _, rows, codes, matrix, names = self._vectors
        return rows, codes, matrix, names

    def vector_search(self, vector: np.ndarray, k: int,
                      source_glob: str | None = None) -> list[Hit]:
        rows, codes, matrix, names = self._vector_matrix()
        if len(rows) == 0:
            return []
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != matrix.shape[1]:
            raise LyreError(f"query vector has {vector.shape[0]} dimensions, the index "
                            f"{matrix.shape[1]}; use the embedder the index was built with")
        scores = matrix @ vector  # cosine similarity: both sides are unit vectors
        return self._hits(top_k(scores, k, self._mask(codes, names, source_glob),
                                min_score=-np.inf), rows)

    def has_vectors(self) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM chunks WHERE vector IS NOT NULL LIMIT 1").fetchone() is not None

    # -- the rest -------------------------------------------------------------------------------

    def info(self) -> dict:
        settings = self.settings()
        sources = self.conn.execute("SELECT COUNT(*) FROM sources").fetchone()[0]
        return {"store": "embedded", "path": str(self.path), "sources": sources,
                "chunks": self.chunk_count(), "generation": self.generation(),
                "embedder": settings.get("embedder"), "dim": settings.get("dim"),
                "chunking": settings.get("chunking"), "lexical": settings.get("lexical")}

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.conn.close()
            self._release_write_lock()

    def __enter__(self) -> EmbeddedStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
