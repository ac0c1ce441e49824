"""The PostgreSQL store: the same Store as the embedded index, on a database server.

    lyre rag index docs/ --index books --store postgresql://user@host/db
    lyre rag ask "postgresql://user@host/db#books" "Who is Hector?" --model RUN

When one machine is not enough (many users, millions of chunks, several writers and readers),
the chunks move to PostgreSQL with the pgvector extension:

    dense side    pgvector `vector(dim)` column with an HNSW index (inner product: the vectors
                  are unit length, so that is cosine similarity), built by flush() after the
                  first load; filtered searches use pgvector's iterative index scans so a
                  source filter still returns k hits
    lexical side  a generated `tsvector` column (the 'english' text search configuration:
                  Snowball stemming and stop words, as the embedded BM25) with a GIN index;
                  chunks holding any query term (OR, as BM25, not plainto_tsquery's AND),
                  ranked by Σ idf(term) * ts_rank(term) with the idf from PostgreSQL's own
                  column statistics (see lexical_search)
    filters       a source glob (fnmatch rules: `*` also crosses '/') becomes a regex on the
                  source column
    writes        replace_source / delete_source are single transactions; one writer per
                  index at a time (a PostgreSQL advisory lock; a second gets a clear error),
                  readers never wait

Each index is one schema, `lyre_<name>`, holding three tables: meta (settings), sources
(content hashes) and chunks. The name comes from `--index NAME` with `--store URL`, or from the
URL's fragment (`postgresql://.../db#NAME`); the default is `default`. Nothing is created until
the first write, so a read-only replica can serve `ask` and `search` (see docs/rag.md).
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from lyre.core.errors import LyreError
from lyre.rag.types import Chunk, Hit

TEXT_CONFIG = "english"  # PostgreSQL's text search configuration for the lexical side
COMMON_TERM = 0.05  # terms in more than this share of chunks do not select candidates
STATS_TTL_S = 60.0  # how long the term statistics are reused
DEFAULT_COLLECTION = "default"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.sources (
    source text PRIMARY KEY, hash text NOT NULL, chunks integer NOT NULL, indexed_at double precision
);
CREATE TABLE IF NOT EXISTS {s}.chunks (
    id bigserial PRIMARY KEY,
    chunk_id text NOT NULL UNIQUE,
    source text NOT NULL REFERENCES {s}.sources (source) ON DELETE CASCADE,
    start integer NOT NULL, "end" integer NOT NULL,
    page integer, heading text,
    text text NOT NULL,
    embedding vector,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('{cfg}', text)) STORED
);
CREATE INDEX IF NOT EXISTS chunks_source ON {s}.chunks (source);
CREATE INDEX IF NOT EXISTS chunks_tsv ON {s}.chunks USING gin (tsv);
"""

_COLUMNS = 'chunk_id, source, start, "end", page, heading, text'


def split_url(url: str, collection: str | None = None) -> tuple[str, str]:
    """(connection URL without the fragment, collection name) of `postgresql://...#name`."""
    parts = urlsplit(url)
    name = collection or parts.fragment or DEFAULT_COLLECTION
    if not _NAME.match(name):
        raise LyreError(f"index name {name!r} for PostgreSQL must be lower-case letters, digits "
                        "and _ (at most 40, starting with a letter)")
    return urlunsplit(parts._replace(fragment="")), name


def masked(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def glob_regex(pattern: str) -> str:
    """An fnmatch glob as an anchored PostgreSQL regular expression (same matches)."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i + (1 if i < len(pattern) and pattern[i] in "!]" else 0)
            j = pattern.find("]", j + (1 if j < len(pattern) and pattern[j] == "]" else 0))
            if j < 0:  # no closing bracket: a literal '[' (as fnmatch)
                out.append(r"\[")
                continue
            body = pattern[i:j].replace("\\", "\\\\").replace("[", "\\[")
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = j + 1
        else:
            out.append(re.escape(c) if not c.isalnum() else c)
    return "^" + "".join(out) + "$"


def _idf(share: float) -> float:
    """BM25's idf from the share of chunks holding a term: ln(1 + (1 - p) / p)."""
    p = min(max(share, 1e-9), 0.99)
    return math.log(1 + (1 - p) / p)


def _tsquery_term(lexeme: str) -> str:
    """One lexeme as a tsquery literal ('it''s'): already normalised, so matched as is."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def _vector_text(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(v, dtype=np.float32).tolist()) + "]"


class PgStore:
    """lyre.rag.types.Store on PostgreSQL + pgvector (psycopg 3)."""

    def __init__(self, url: str, collection: str | None = None, *, connect_timeout: int = 10) -> None:
        try:
            import psycopg
        except ImportError:
            raise LyreError("the PostgreSQL store needs psycopg: pip install 'lyre[postgres]'") from None
        self.url, self.collection = split_url(url, collection)
        self.schema = f"lyre_{self.collection}"
        self._psycopg = psycopg
        try:
            # prepare_threshold=None: no server-side prepared statements, so the store also
            # works through a transaction-mode connection pooler (PgBouncer).
            self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=connect_timeout,
                                        prepare_threshold=None)
        except psycopg.Error as e:
            raise LyreError(f"cannot connect to PostgreSQL at {masked(self.url)}: "
                            f"{_first_line(e)}") from None
        self._locked = False
        self._exists = self._schema_exists()
        self.existed = self._exists  # before this process: a failed first index drops it
        self._dim: int | None = None
        self._stats: tuple[float, tuple[dict[str, float], float]] | None = None

    # -- set-up --------------------------------------------------------------------------------

    def _q(self, sql: str) -> str:
        return sql.replace("{s}", f'"{self.schema}"')

    def _run(self, sql: str, params=(), *, fetch: bool = True):
        try:
            cur = self.conn.execute(self._q(sql), params)
            return cur.fetchall() if fetch and cur.description else None
        except self._psycopg.OperationalError as e:
            raise LyreError(f"lost the connection to PostgreSQL at {masked(self.url)}: "
                            f"{_first_line(e)}") from None

    def _schema_exists(self) -> bool:
        rows = self._run("SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
                         "AND table_name = 'chunks'", (self.schema,))
        return bool(rows)

    def _create(self) -> None:
        if self._exists:
            return
        psycopg = self._psycopg
        try:
            with self.conn.transaction():
                for statement in _SCHEMA.format(s="{s}", cfg=TEXT_CONFIG).split(";"):
                    if statement.strip():
                        self.conn.execute(self._q(statement))
        except psycopg.errors.FeatureNotSupported as e:
            raise LyreError(f"PostgreSQL at {masked(self.url)} lacks the pgvector extension "
                            f"({_first_line(e)}); install pgvector on the server") from None
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFile) as e:
            raise LyreError(f"cannot set up the index in {masked(self.url)} ({_first_line(e)}); "
                            "an admin must run CREATE EXTENSION vector in this database, and "
                            "you need CREATE rights on it") from None
        except psycopg.errors.ReadOnlySqlTransaction:
            raise LyreError(f"{masked(self.url)} is read-only (a replica?); index through the "
                            "primary's URL") from None
        self._exists = True

    def acquire_write_lock(self) -> None:
        """Become the only writer of this index until close(); LyreError if another holds it."""
        self._create()
        if self._locked:
            return
        (got,), = self._run("SELECT pg_try_advisory_lock(hashtext(%s))", (f"lyre:{self.schema}",))
        if not got:
            raise LyreError(f"index {self.collection} in {masked(self.url)} is being written by "
                            "another process; wait for it to finish, then run again")
        self._locked = True

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside is one transaction (the inner ones become savepoints): all of
        them happen, or none. An update of an existing index runs in one (lyre.rag.index)."""
        self.acquire_write_lock()
        try:
            with self.conn.transaction():
                yield
        except BaseException:
            self._dim = None
            self._stats = None
            raise

    # -- metadata ------------------------------------------------------------------------------

    def settings(self) -> dict:
        if not self._exists:
            return {}
        rows = self._run("SELECT value FROM {s}.meta WHERE key = 'settings'")
        return json.loads(rows[0][0]) if rows else {}

    def set_settings(self, settings: dict) -> None:
        self.acquire_write_lock()
        self._run("INSERT INTO {s}.meta VALUES ('settings', %s) "
                  "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                  (json.dumps(settings, sort_keys=True),), fetch=False)

    def _vector_dim(self) -> int | None:
        if self._dim is None and self._exists:
            rows = self._run("SELECT value FROM {s}.meta WHERE key = 'vector_dim'")
            self._dim = int(rows[0][0]) if rows else None
        return self._dim

    def _ensure_vector_column(self, dim: int) -> None:
        """Fix the column to vector(dim) the first time vectors come (HNSW needs a dimension)."""
        have = self._vector_dim()
        if have == dim:
            return
        if have is not None:
            raise LyreError(f"index {self.collection} holds {have}-dimensional vectors, these "
                            f"have {dim}; use the embedder the index was built with (or --rebuild)")
        with self.conn.transaction():
            self.conn.execute(self._q(f"ALTER TABLE {{s}}.chunks ALTER COLUMN embedding TYPE vector({dim})"))
            self.conn.execute(self._q("INSERT INTO {s}.meta VALUES ('vector_dim', %s)"), (str(dim),))
        self._dim = dim

    # -- the Store protocol: writes ------------------------------------------------------------

    def sources(self) -> dict[str, str]:
        if not self._exists:
            return {}
        return dict(self._run("SELECT source, hash FROM {s}.sources ORDER BY source"))

    def replace_source(self, source: str, content_hash: str, chunks: list[Chunk],
                       vectors: np.ndarray | None) -> None:
        if vectors is not None and len(vectors) != len(chunks):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        self.acquire_write_lock()
        if vectors is not None and len(chunks):
            self._ensure_vector_column(int(np.asarray(vectors).shape[1]))
        texts = [_vector_text(v) for v in vectors] if vectors is not None else [None] * len(chunks)
        with self.conn.transaction():  # all or nothing: old chunks out, new chunks in
            self.conn.execute(self._q("DELETE FROM {s}.sources WHERE source = %s"), (source,))
            self.conn.execute(self._q("INSERT INTO {s}.sources VALUES (%s, %s, %s, %s)"),
                              (source, content_hash, len(chunks), time.time()))
            with self.conn.cursor().copy(self._q(
                    f"COPY {{s}}.chunks ({_COLUMNS}, embedding) FROM STDIN")) as copy:
                for ch, vec in zip(chunks, texts, strict=True):
                    copy.write_row((ch.chunk_id, source, ch.start, ch.end, ch.page, ch.heading,
                                    ch.text.replace("\x00", ""), vec))

    def delete_source(self, source: str) -> bool:
        if not self._exists:
            return False
        self.acquire_write_lock()
        rows = self._run("DELETE FROM {s}.sources WHERE source = %s RETURNING 1", (source,))
        return bool(rows)  # its chunks go with it (ON DELETE CASCADE), in the same statement

    def flush(self) -> None:
        """After a batch of writes (index_paths calls it once at the end): build the HNSW index
        if there are vectors and none yet (one build over all rows is much faster than growing
        the graph row by row; later writes update it), and refresh the planner's statistics,
        which the lexical ranking reads its term frequencies from."""
        if not self._locked or not self._exists:  # nothing written, or dropped
            return
        if self._vector_dim() is not None:
            self._run("CREATE INDEX IF NOT EXISTS chunks_hnsw ON {s}.chunks "
                      "USING hnsw (embedding vector_ip_ops)", fetch=False)
        self._run("ANALYZE {s}.chunks", fetch=False)
        self._stats = None

    # -- the Store protocol: reads -------------------------------------------------------------

    def chunk_count(self) -> int:
        if not self._exists:
            return 0
        return self._run("SELECT count(*) FROM {s}.chunks")[0][0]

    def get_chunks(self, chunk_ids: list[str]) -> list[Chunk]:
        if not self._exists or not chunk_ids:
            return []
        rows = self._run(f"SELECT {_COLUMNS} FROM {{s}}.chunks WHERE chunk_id = ANY(%s)",
                         (list(chunk_ids),))
        found = {r[0]: _chunk(r) for r in rows}
        return [found[c] for c in chunk_ids if c in found]

    def lexical_search(self, query: str, k: int, source_glob: str | None = None) -> list[Hit]:
        """Chunks holding any of the query's terms, ranked by Σ idf(term) * ts_rank(term).

        ts_rank alone weighs every word alike (PostgreSQL keeps no document frequencies), so
        "Hector" would count no more than "man"; the idf comes from the planner's statistics of
        the tsvector column (the ~1000 most common lexemes and the share of chunks holding each,
        refreshed by ANALYZE in flush()). Terms in over COMMON_TERM of the chunks still score but
        do not select candidates, which keeps the rows ranked (and the latency) small.
        """
        if not self._exists or k < 1 or not query.strip():
            return []
        rows = self._run(f"SELECT unnest(tsvector_to_array(to_tsvector('{TEXT_CONFIG}', %s)))",
                         (query,))
        terms = [r[0] for r in rows]
        if not terms:
            return []  # only stop words
        share, floor = self._term_shares()
        idf = [_idf(share.get(t, floor / 2)) for t in terms]
        selective = [t for t in terms if share.get(t, 0.0) < COMMON_TERM] or terms
        where, params = self._filter(source_glob)
        sql = (f"WITH terms AS (SELECT t.term::tsquery AS q, t.idf "
               f"FROM unnest(%s::text[], %s::float8[]) AS t(term, idf)) "
               f"SELECT {_COLUMNS}, (SELECT sum(terms.idf * ts_rank(c.tsv, terms.q, 1)) FROM terms) "
               f"AS score FROM {{s}}.chunks c WHERE c.tsv @@ %s::tsquery {where} "
               f"ORDER BY score DESC, c.id LIMIT %s")
        quoted = [_tsquery_term(t) for t in terms]
        filter_query = " | ".join(_tsquery_term(t) for t in selective)
        return _hits(self._run(sql, (quoted, idf, filter_query, *params, k)))

    def _term_shares(self) -> tuple[dict[str, float], float]:
        """({lexeme: share of chunks holding it} for the most common lexemes, the smallest share
        listed); ({}, 1.0) before the first ANALYZE. Cached for STATS_TTL_S seconds."""
        now = time.monotonic()
        if self._stats is not None and now - self._stats[0] < STATS_TTL_S:
            return self._stats[1]
        rows = self._run("SELECT most_common_elems::text::text[], most_common_elem_freqs "
                         "FROM pg_stats WHERE schemaname = %s AND tablename = 'chunks' "
                         "AND attname = 'tsv'", (self.schema,))
        if rows and rows[0][0]:
            elems, freqs = rows[0]
            # the last three numbers are the smallest and largest share and the null share
            result = (dict(zip(elems, freqs, strict=False)), float(freqs[-3]))
        else:
            result = ({}, 1.0)
        self._stats = (now, result)
        return result

    def vector_search(self, vector: np.ndarray, k: int, source_glob: str | None = None) -> list[Hit]:
        if not self._exists or k < 1:
            return []
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        dim = self._vector_dim()
        if dim is None:
            return []
        if vector.shape[0] != dim:
            raise LyreError(f"query vector has {vector.shape[0]} dimensions, the index {dim}; "
                            "use the embedder the index was built with")
        where, params = self._filter(source_glob)
        # <#> is the negative inner product; the vectors are unit length, so -<#> is the cosine.
        # Iterative scans (pgvector 0.8) let a filtered HNSW search go on until it has k rows;
        # relaxed order may return them slightly out of order, so they are sorted again.
        sql = (f"WITH hits AS MATERIALIZED (SELECT {_COLUMNS}, id, embedding <#> %s::vector AS d "
               f"FROM {{s}}.chunks WHERE embedding IS NOT NULL {where} ORDER BY d LIMIT %s) "
               f"SELECT {_COLUMNS}, -d FROM hits ORDER BY d, id")
        with self.conn.transaction():
            self.conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            self.conn.execute(f"SET LOCAL hnsw.ef_search = {max(40, min(1000, 2 * k))}")
            return _hits(self._run(sql, (_vector_text(vector), *params, k)))

    def has_vectors(self) -> bool:
        return self._vector_dim() is not None

    def _filter(self, source_glob: str | None) -> tuple[str, tuple]:
        if source_glob is None:
            return "", ()
        fnmatch.translate(source_glob)  # same validation as the embedded store
        return "AND source ~ %s", (glob_regex(source_glob),)

    def info(self) -> dict:
        settings = self.settings()
        sources = self._run("SELECT count(*) FROM {s}.sources")[0][0] if self._exists else 0
        return {"store": "postgresql", "url": masked(self.url), "index": self.collection,
                "schema": self.schema, "sources": sources, "chunks": self.chunk_count(),
                "embedder": settings.get("embedder"), "dim": settings.get("dim"),
                "chunking": settings.get("chunking"), "lexical": settings.get("lexical"),
                "text_search": TEXT_CONFIG}

    def drop(self) -> None:
        """Delete this index (its schema) from the database."""
        self.acquire_write_lock()
        self._run("DROP SCHEMA IF EXISTS {s} CASCADE", fetch=False)
        self._exists = False
        self._dim = None

    def close(self) -> None:
        if self.conn.closed:
            return
        try:
            self.flush()
            if self._locked:  # also released by the server when the connection closes
                self._run("SELECT pg_advisory_unlock(hashtext(%s))", (f"lyre:{self.schema}",))
        except LyreError:
            pass
        finally:
            self._locked = False
            self.conn.close()

    def __enter__(self) -> PgStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _chunk(row) -> Chunk:
    chunk_id, source, start, end, page, heading, text = row[:7]
    return Chunk(text=text, source=source, start=start, end=end, page=page, heading=heading,
                 chunk_id=chunk_id)


def _hits(rows) -> list[Hit]:
    return [Hit(_chunk(r), float(r[7]), rank=i + 1) for i, r in enumerate(rows or [])]


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
