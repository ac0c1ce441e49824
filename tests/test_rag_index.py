"""The embedded index: the store contract, incremental indexing, crash safety, the write lock,
bad input (missing or corrupt index)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lyre.core.errors import LyreError
from lyre.rag.index import index_paths, list_sources, open_store, remove_source
from lyre.rag.splitter import SplitConfig
from lyre.rag.store import EmbeddedStore
from tests.rag_store_contract import CONTRACT

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("check", CONTRACT, ids=lambda c: c.__name__)
def test_embedded_store_contract(check, tmp_path):
    check(lambda: EmbeddedStore(tmp_path / "idx", create=True))


def write_docs(folder: Path, n: int = 6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"doc{i}.txt").write_text(
            f"Document number {i} talks about topic{i}.\n\n" + f"Filler sentence {i}. " * 40)


def test_incremental_reindex(tmp_path):
    docs = tmp_path / "docs"
    write_docs(docs, 3)
    (docs / "notes.md").write_text("# Title\n\nThe quartz crystal hums.\n")
    store = open_store(tmp_path / "idx", create=True)
    report = index_paths([docs], store, split=SplitConfig(200, 20))
    assert sorted(report.added) == sorted(f"{docs.as_posix()}/{n}" for n in
                                          ["doc0.txt", "doc1.txt", "doc2.txt", "notes.md"])
    count = store.chunk_count()
    assert count == len(store.lexical_search("filler document", 1000)) + 1  # + notes.md

    again = index_paths([docs], store)  # nothing changed: nothing parsed or written
    assert len(again.unchanged) == 4 and again.chunks_written == 0
    assert store.chunk_count() == count

    (docs / "notes.md").write_text("# Title\n\nThe obsidian mirror is dark.\n")
    (docs / "doc2.txt").unlink()
    third = index_paths([docs], store)
    assert third.updated == [f"{docs.as_posix()}/notes.md"]
    assert third.removed == [f"{docs.as_posix()}/doc2.txt"]
    assert store.lexical_search("quartz", 3) == []
    hit = store.lexical_search("obsidian mirror", 3)[0]
    assert hit.chunk.heading == "Title" and hit.chunk.source.endswith("notes.md")
    assert f"{docs.as_posix()}/doc2.txt" not in list_sources(store)
    store.close()

    reopened = open_store(tmp_path / "idx")  # persisted: a new process sees the same index
    assert reopened.lexical_search("obsidian", 1)[0].chunk.source.endswith("notes.md")
    remove_source(reopened, f"{docs.as_posix()}/notes.md")
    assert reopened.lexical_search("obsidian", 1) == []
    with pytest.raises(LyreError, match="not in the index"):
        remove_source(reopened, "no/such/source.txt")
    reopened.close()


def test_changed_settings_need_rebuild(tmp_path):
    write_docs(tmp_path / "docs", 2)
    store = open_store(tmp_path / "idx", create=True)
    index_paths([tmp_path / "docs"], store, split=SplitConfig(200, 20))
    with pytest.raises(LyreError, match="--rebuild"):
        index_paths([tmp_path / "docs"], store, split=SplitConfig(300, 20))
    report = index_paths([tmp_path / "docs"], store, split=SplitConfig(300, 20), rebuild=True)
    assert len(report.updated) == 2
    assert store.settings()["chunking"]["chunk_size"] == 300
    store.close()


def test_skipped_files_are_reported_and_the_rest_indexed(tmp_path):
    docs = tmp_path / "docs"
    write_docs(docs, 1)
    (docs / "empty.txt").write_text("")
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (docs / "image.png").write_bytes(b"\x89PNG")
    store = open_store(tmp_path / "idx", create=True)
    report = index_paths([docs], store)
    reasons = {Path(s.source).name: s.reason for s in report.skipped}
    assert reasons["empty.txt"] == "empty file"
    assert "binary" in reasons["blob.txt"]
    assert "PDF" in reasons["broken.pdf"]
    assert "unsupported" in reasons["image.png"]
    assert [Path(s).name for s in report.added] == ["doc0.txt"]
    store.close()


def test_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "docs").mkdir()
    store = open_store(tmp_path / "idx", create=True)
    with pytest.raises(LyreError, match="no files found"):
        index_paths([tmp_path / "docs"], store)
    (tmp_path / "docs" / "empty.md").write_text("  \n")
    with pytest.raises(LyreError, match="no readable file"):
        index_paths([tmp_path / "docs"], store)
    with pytest.raises(LyreError, match="no such file"):
        index_paths([tmp_path / "nope"], store)
    store.close()


def test_missing_and_corrupt_index(tmp_path):
    with pytest.raises(LyreError, match="does not exist"):
        open_store(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LyreError, match="not a lyre index"):
        open_store(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.sqlite").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(LyreError, match="corrupt"):
        open_store(bad)


def test_bm25_matrix_rebuilt_when_stale_or_damaged(tmp_path):
    write_docs(tmp_path / "docs", 2)
    store = open_store(tmp_path / "idx", create=True)
    index_paths([tmp_path / "docs"], store)
    store.close()
    [saved] = (tmp_path / "idx" / "bm25").iterdir()
    (saved / "lyre.json").write_text("{not json")  # derived data: damage is repaired
    reader = open_store(tmp_path / "idx")
    assert reader.lexical_search("topic1", 1)[0].chunk.source.endswith("doc1.txt")
    reader.close()


def test_two_writers_get_a_clear_error(tmp_path):
    write_docs(tmp_path / "docs", 2)
    first = open_store(tmp_path / "idx", create=True)
    index_paths([tmp_path / "docs"], first)
    second = open_store(tmp_path / "idx")
    assert second.lexical_search("topic0", 1)  # readers are never blocked
    with pytest.raises(LyreError, match="being written by another process"):
        index_paths([tmp_path / "docs"], second)
    first.close()
    assert index_paths([tmp_path / "docs"], second).unchanged  # the lock went with `first`
    second.close()


KILLER = textwrap.dedent("""
    import os, signal, sys
    from lyre.rag.index import index_paths
    from lyre.rag.store import EmbeddedStore

    class Conn:  # the real connection, except that the 3rd source's COMMIT never happens
        def __init__(self, conn):
            self.conn, self.commits = conn, 0
        def __getattr__(self, name):
            return getattr(self.conn, name)
        def execute(self, sql, *args):
            if sql == "COMMIT" and self.in_source:
                self.commits += 1
                if self.commits == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
            return self.conn.execute(sql, *args)

    class Store(EmbeddedStore):
        def replace_source(self, *a, **kw):
            self.conn.in_source = True
            try:
                return super().replace_source(*a, **kw)
            finally:
                self.conn.in_source = False

    store = Store(sys.argv[2], create=True)
    store.conn = Conn(store.conn)
    store.conn.in_source = False
    index_paths([sys.argv[1]], store)
""")


def test_killed_indexing_leaves_a_consistent_index(tmp_path):
    docs = tmp_path / "docs"
    write_docs(docs, 6)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), str(docs), str(tmp_path / "idx")],
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # killed inside the third transaction

    store = open_store(tmp_path / "idx")
    sources = store.sources()
    assert len(sources) == 2  # two committed sources, the third rolled back entirely
    per_source = dict(store.conn.execute("SELECT source, chunks FROM sources"))
    actual = dict(store.conn.execute("SELECT source, COUNT(*) FROM chunks GROUP BY source"))
    assert per_source == actual
    # the BM25 matrix was never saved for this generation: rebuilt on first search
    assert {h.chunk.source for h in store.lexical_search("document number", 10)} == set(sources)
    report = index_paths([docs], store)
    assert len(report.unchanged) == 2 and len(report.added) == 4
    assert len(store.sources()) == 6
    store.close()


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire", "bm25+"])
def test_bm25_scores_match_bm25s(method):
    bm25s = pytest.importorskip("bm25s")
    from lyre.rag.lexical import Analyzer, BM25Index, LexicalConfig

    words = "ship sea storm harbour sail wind wave rock light keeper".split()
    docs = [[words[(i * j + j) % len(words)] for j in range(3 + i % 7)] for i in range(40)]
    config = LexicalConfig(method=method, k1=1.3, b=0.6)
    ours = BM25Index.build(docs, config)
    ref = bm25s.BM25(method=method, k1=1.3, b=0.6)
    ref.index(docs, show_progress=False)
    for query in (["storm", "rock"], ["keeper"], ["ship", "ship", "light"]):
        weights = {t: 1.0 for t in query}
        expected = ref.get_scores(sorted(set(query)))
        np.testing.assert_allclose(ours.scores(weights), expected, rtol=1e-5, atol=1e-6)
    assert Analyzer(LexicalConfig())("The Stormy seas, and storms!") == ["stormi", "sea", "storm"]


# -- the fast analyser and matrix build give what the plain definitions give ------------------

TRICKY = ["word", "Word", "WORDS", "naïve", "Café", "ÉCOLE", "holmes’s", "l'île", "x_y", "_", "42",
          "3.14", "ΟΔΥΣΣΕΥΣ", "Σ", "İstanbul", "\u212a", "straße", "日本語", "é", "🙂", "--",
          "“quoted”", "a\u00a0b", "a\u2028b", "co-op", "the", "and", "Ⅻ", "x²", "٣"]


def tricky_text(rng) -> str:
    seps = [" ", "\n", "\n\n", ", ", ". ", "—", "\t", "", "’", "...", "\u3000"]
    return "".join(rng.choice(TRICKY) + rng.choice(seps) for _ in range(rng.randint(0, 60)))


@pytest.mark.parametrize("stemmer,stopwords", [("english", "en_plus"), (None, None), (None, "en")])
def test_analyser_is_the_regex_definition(stemmer, stopwords):
    """Tokens cut with bytes.translate + split, analysed once per distinct token, must be
    exactly `\\w+` over the lowercased text, minus stopwords, stemmed."""
    import random
    import re

    from lyre.rag.lexical import Analyzer, LexicalConfig, _stopwords

    config = LexicalConfig(stemmer=stemmer, stopwords=stopwords)
    stop = _stopwords(stopwords)
    stem = None
    if stemmer:
        import Stemmer

        stem = Stemmer.Stemmer(stemmer)  # PyStemmer as it comes (its own cache on)
    rng = random.Random(3)
    texts = [tricky_text(rng) for _ in range(300)]
    analyser = Analyzer(config)
    for text in texts:
        words = [w for w in re.findall(r"\w+", text.lower()) if w not in stop]
        assert analyser(text) == (stem.stemWords(words) if stem else words), text
    # Many texts at once (as the index does): the same ids, text by text.
    fresh = Analyzer(config)
    ids, lengths = fresh.term_id_arrays(texts)
    assert lengths.sum() == len(ids)
    ends = np.cumsum(lengths)
    for text, end, n in zip(texts, ends, lengths, strict=True):
        assert [fresh.terms[i] for i in ids[end - n:end]] == analyser(text)


def test_matrix_from_term_ids_is_the_matrix_from_terms():
    from lyre.rag.lexical import Analyzer, BM25Index, LexicalConfig

    config = LexicalConfig()
    texts = ["The storm broke on the rocks.", "", "Storms and more storms; the keeper's light.",
             "the and of", "A ship, a sail, a storm."]
    analyser = Analyzer(config)
    analyser("words met only in a query first")  # ids that no document uses
    ids, lengths = analyser.term_id_arrays(texts)
    fast = BM25Index.from_term_ids(ids, lengths, analyser.terms, config)
    plain = BM25Index.build([analyser(t) for t in texts], config)
    assert fast.vocab.keys() == plain.vocab.keys()
    for term in plain.vocab:
        np.testing.assert_array_equal(fast.scores({term: 1.0}), plain.scores({term: 1.0}))


def test_incremental_matrix_equals_a_fresh_build(tmp_path):
    """flush() mixes chunks analysed while writing with chunks read back from SQLite (sources
    written by an earlier run): the matrix must be the one a fresh index builds."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"d{i}.txt").write_text(f"Document {i} about ships and storms. " * (20 + i))
    with open_store(tmp_path / "idx", create=True) as store:
        index_paths([docs], store)
    (docs / "d2.txt").write_text("A changed document: lighthouses, keepers and the storm. " * 30)
    (docs / "d4.txt").write_text("A new one, about harbours. " * 25)
    with open_store(tmp_path / "idx") as store:
        report = index_paths([docs], store)
        assert len(report.unchanged) == 3
    with open_store(tmp_path / "fresh", create=True) as fresh:
        index_paths([docs], fresh)
    old, new = open_store(tmp_path / "idx"), open_store(tmp_path / "fresh")
    for query in ["storm", "document ships", "keepers of the lighthouse", "harbours"]:
        got = {h.chunk.chunk_id: h.score for h in old.lexical_search(query, 1000)}
        want = {h.chunk.chunk_id: h.score for h in new.lexical_search(query, 1000)}
        assert got and got == pytest.approx(want)  # rows are in another order: ties may move
    old.close()
    new.close()


def test_indexing_puts_the_cycle_collector_back(tmp_path):
    """index_paths pauses Python's cycle collector (a speed trick) and must restore it as it
    was, also when it fails."""
    import gc

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Ships and storms. " * 50)
    with open_store(tmp_path / "idx", create=True) as store:
        assert gc.isenabled()
        index_paths([docs], store)
        assert gc.isenabled()
        with pytest.raises(LyreError):
            index_paths([tmp_path / "missing"], store)
        assert gc.isenabled()
        gc.disable()
        try:
            index_paths([docs], store)
            assert not gc.isenabled()  # left off: it was off
        finally:
            gc.enable()


# ----------------------------------------------------------------------------------------------
# Issue 19.14 and 19.15: one source of the chunking defaults; failed runs leave nothing behind


class FlakyEmbedder:
    """Unit vectors, until call number `fail_at` raises (an embedding server that went away)."""

    name, dim = "flaky", 4

    def __init__(self, fail_at: int) -> None:
        self.calls, self.fail_at = 0, fail_at

    def embed(self, texts):
        self.calls += 1
        if self.calls == self.fail_at:
            raise LyreError("embedding endpoint http://x unreachable (cannot connect)")
        return np.tile(np.array([1.0, 0, 0, 0], np.float32), (len(texts), 1))


def test_split_config_defaults_come_from_split_config():
    from lyre.rag.index import split_config

    default = SplitConfig()
    assert split_config() is None  # the index's own, or SplitConfig's for a new index
    assert split_config(300) == SplitConfig(300, min(default.chunk_overlap, 60))
    assert split_config(chunk_overlap=7) == SplitConfig(default.chunk_size, 7)
    stored = {"chunking": {"chunk_size": 80, "chunk_overlap": 10, "sentences": False}}
    assert split_config(chunk_overlap=5, stored=stored) == SplitConfig(80, 5)
    assert split_config(chunk_size=90, stored=stored) == SplitConfig(90, 18)


def test_a_failed_first_index_leaves_nothing(tmp_path):
    from lyre.rag.index import index_documents

    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (binary / "fake.txt").write_bytes(b"\x00\x01\x02\xff" * 50)
    with pytest.raises(LyreError, match="no readable file to index"):
        index_documents([binary], tmp_path / "idx")
    assert not (tmp_path / "idx").exists()
    made = tmp_path / "made-by-the-user"
    made.mkdir()
    with pytest.raises(LyreError, match="no readable file to index"):
        index_documents([binary], made)
    assert made.is_dir() and list(made.iterdir()) == []  # the folder stays, the index files go
    docs = tmp_path / "docs"
    write_docs(docs, 3)
    with pytest.raises(LyreError, match="unreachable"):  # fails after the first source
        index_paths_through_documents(docs, tmp_path / "idx2", FlakyEmbedder(fail_at=2))
    assert not (tmp_path / "idx2").exists()


def index_paths_through_documents(docs, idx, embedder):
    from unittest import mock

    from lyre.rag.index import index_documents

    with mock.patch("lyre.rag.embedders.index_embedder", lambda spec, stored: embedder):
        return index_documents([docs], idx)


def test_a_failed_update_leaves_the_index_as_it_was(tmp_path):
    docs = tmp_path / "docs"
    write_docs(docs, 4)
    with open_store(tmp_path / "idx", create=True) as store:
        index_paths([docs], store, split=SplitConfig(200, 20))
        before = (store.sources(), store.settings(), store.chunk_count(), store.generation())
        # a rebuild whose embedder fails at the third source: nothing of it stays
        with pytest.raises(LyreError, match="unreachable"):
            index_paths([docs], store, split=SplitConfig(300, 30), embedder=FlakyEmbedder(3),
                        rebuild=True)
        assert (store.sources(), store.settings(), store.chunk_count(), store.generation()) == before
        assert not store.has_vectors()
        # every file now unreadable: not an empty index, the old one
        for f in docs.iterdir():
            f.write_bytes(b"\x00\xff" * 100)
        with pytest.raises(LyreError, match="no readable file to index"):
            index_paths([docs], store)
        assert (store.sources(), store.settings(), store.chunk_count(), store.generation()) == before
    with open_store(tmp_path / "idx") as reopened:  # and it reads as before, BM25 included
        assert reopened.sources() == before[0]
        assert {h.chunk.source for h in reopened.lexical_search("topic2", 1)} == \
            {s for s in before[0] if s.endswith("doc2.txt")}
