"""The Store contract: behaviour every lyre.rag store must have, embedded or PostgreSQL.

Each check takes `make_store`, a function returning a NEW, EMPTY store, and asserts through the
Store protocol only (lyre.rag.types.Store). A test module runs them against its store:

    from tests.rag_store_contract import CONTRACT

    @pytest.mark.parametrize("check", CONTRACT, ids=lambda c: c.__name__)
    def test_store_contract(check, tmp_path):
        check(lambda: EmbeddedStore(tmp_path / "idx", create=True))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lyre.rag.types import Chunk, Store

MakeStore = Callable[[], Store]

TEXT_A = ("The lighthouse keeper trimmed the lamp at dusk.\n\n"
          "Ships passed the rocks safely all winter long.")
TEXT_B = ("Bees gather nectar from clover in the meadow.\n\n"
          "The beekeeper harvests honey in late summer.")


def chunks_of(source: str, text: str) -> list[Chunk]:
    """One chunk per paragraph, with exact offsets."""
    out, start = [], 0
    for para in text.split("\n\n"):
        start = text.index(para, start)
        out.append(Chunk(text=para, source=source, start=start, end=start + len(para)))
        start += len(para)
    return out


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def filled(make_store: MakeStore, vectors: bool = False) -> Store:
    store = make_store()
    va = np.stack([unit(1, 0, 0, 0), unit(1, 1, 0, 0)]) if vectors else None
    vb = np.stack([unit(0, 0, 1, 0), unit(0, 0, 1, 1)]) if vectors else None
    store.replace_source("docs/sea.txt", "hash-a", chunks_of("docs/sea.txt", TEXT_A), va)
    store.replace_source("notes/bees.md", "hash-b", chunks_of("notes/bees.md", TEXT_B), vb)
    return store


def check_empty(make_store: MakeStore) -> None:
    store = make_store()
    try:
        assert store.sources() == {}
        assert store.chunk_count() == 0
        assert store.lexical_search("anything", 3) == []
        assert store.get_chunks(["nope#0"]) == []
        assert store.delete_source("nope") is False
        assert isinstance(store.info(), dict)
    finally:
        store.close()


def check_replace_and_read(make_store: MakeStore) -> None:
    store = filled(make_store)
    try:
        assert store.sources() == {"docs/sea.txt": "hash-a", "notes/bees.md": "hash-b"}
        assert store.chunk_count() == 4
        wanted = ["notes/bees.md#47", "docs/sea.txt#0", "missing#1"]
        got = store.get_chunks(wanted)
        assert [c.chunk_id for c in got] == wanted[:2]  # requested order, missing left out
        bees = got[0]
        assert bees.text == "The beekeeper harvests honey in late summer."
        assert (bees.start, bees.end) == (47, 47 + len(bees.text))
        assert TEXT_B[bees.start:bees.end] == bees.text
    finally:
        store.close()


def check_replace_is_a_replacement(make_store: MakeStore) -> None:
    store = filled(make_store)
    try:
        new = chunks_of("docs/sea.txt", "A storm closed the harbour for a week.")
        store.replace_source("docs/sea.txt", "hash-a2", new, None)
        assert store.sources()["docs/sea.txt"] == "hash-a2"
        assert store.chunk_count() == 3  # 2 old chunks out, 1 new in; bees untouched
        assert store.lexical_search("lighthouse", 3) == []
        hits = store.lexical_search("storm harbour", 3)
        assert hits and hits[0].chunk.source == "docs/sea.txt"
    finally:
        store.close()


def check_delete(make_store: MakeStore) -> None:
    store = filled(make_store)
    try:
        assert store.delete_source("docs/sea.txt") is True
        assert store.delete_source("docs/sea.txt") is False
        assert list(store.sources()) == ["notes/bees.md"]
        assert store.chunk_count() == 2
        assert store.lexical_search("lighthouse keeper", 3) == []
    finally:
        store.close()


def check_lexical_search(make_store: MakeStore) -> None:
    store = filled(make_store)
    try:
        hits = store.lexical_search("who harvests the honey?", 2)
        assert hits[0].chunk.text.startswith("The beekeeper")
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
        assert len(store.lexical_search("the", 10)) <= 4
        assert store.lexical_search("zzzunknownword", 3) == []
    finally:
        store.close()


def check_source_glob(make_store: MakeStore) -> None:
    store = filled(make_store)
    try:
        # "summer" is only in bees.md, "winter" only in sea.txt
        assert store.lexical_search("winter summer", 5, source_glob="notes/*")[0].chunk.source \
            == "notes/bees.md"
        assert all(h.chunk.source == "docs/sea.txt"
                   for h in store.lexical_search("winter summer", 5, source_glob="*.txt"))
        assert store.lexical_search("winter summer", 5, source_glob="nothing/*") == []
    finally:
        store.close()


def check_vector_search(make_store: MakeStore) -> None:
    store = filled(make_store, vectors=True)
    try:
        hits = store.vector_search(unit(1, 0.9, 0, 0), 2)
        assert [h.chunk.chunk_id for h in hits] == [
            "docs/sea.txt#49", "docs/sea.txt#0"]
        assert hits[0].score > hits[1].score
        assert abs(hits[0].score - float(unit(1, 0.9, 0, 0) @ unit(1, 1, 0, 0))) < 1e-4
        only = store.vector_search(unit(1, 0, 0, 0), 4, source_glob="notes/*")
        assert {h.chunk.source for h in only} == {"notes/bees.md"}
    finally:
        store.close()


CONTRACT = [check_empty, check_replace_and_read, check_replace_is_a_replacement, check_delete,
            check_lexical_search, check_source_glob, check_vector_search]
