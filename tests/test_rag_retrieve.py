"""Retriever (lexical, dense, hybrid), embedders and the retrieval metrics."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from lyre.core.errors import LyreError
from lyre.rag.embedders import OpenAIEmbedder, RunEmbedder, make_embedder
from lyre.rag.evaluate import (
    QARecord,
    covered_within_budget,
    evaluate_retrieval,
    is_relevant,
    load_qa,
)
from lyre.rag.index import index_paths, open_store
from lyre.rag.retrieve import (
    Retriever,
    RetrieverConfig,
    fill_budget,
    fuse,
    fuse_scores,
    merge_adjacent,
)
from lyre.rag.splitter import SplitConfig
from lyre.rag.types import Chunk, Hit

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

FACTS = {
    "tides.txt": "The moon pulls the ocean and makes the tides rise twice a day.",
    "bread.txt": "Yeast ferments the dough so the bread rises in a warm oven.",
    "stars.md": "Astronomers measure the distance to stars with parallax.",
}


class WordHashEmbedder:
    """A deterministic toy embedder: bag of hashed words, so shared words mean similarity."""

    name, dim = "toy", 64

    def embed(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                out[i, sum(map(ord, w)) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@pytest.fixture
def facts_index(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in FACTS.items():
        (docs / name).write_text(text)
    store = open_store(tmp_path / "idx", create=True)
    index_paths([docs], store, embedder=WordHashEmbedder())
    yield store
    store.close()


def test_lexical_search_with_stemming(facts_index):
    retriever = Retriever(facts_index)  # no embedder: BM25 only
    assert retriever.mode == "lexical"
    hits = retriever.search("why does the tide rise?", k=2)
    assert hits[0].chunk.source.endswith("tides.txt")  # 'tide' meets 'tides' via the stemmer
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    only_md = retriever.search("rise measure", k=3, source_glob="*.md")
    assert [h.chunk.source.rsplit("/", 1)[-1] for h in only_md] == ["stars.md"]


def test_empty_query_and_bad_mode(facts_index):
    with pytest.raises(LyreError, match="empty"):
        Retriever(facts_index).search("   ")
    with pytest.raises(LyreError, match="unknown retrieval mode"):
        Retriever(facts_index, mode="magic")
    with pytest.raises(LyreError, match="needs an embedder"):
        Retriever(facts_index, mode="dense")


def test_dense_and_hybrid(facts_index):
    embedder = WordHashEmbedder()
    dense = Retriever(facts_index, embedder, mode="dense")
    assert dense.search("yeast dough oven", k=1)[0].chunk.source.endswith("bread.txt")
    auto = Retriever(facts_index, embedder)
    assert auto.mode == "hybrid" and auto.config.fusion == "convex"
    assert auto.search("parallax astronomers", k=3)[0].chunk.source.endswith("stars.md")
    rrf = Retriever(facts_index, embedder, config=RetrieverConfig(fusion="rrf", dense_weight=1.0))
    hits = rrf.search("parallax astronomers", k=3)
    assert hits[0].chunk.source.endswith("stars.md")
    assert hits[0].score == pytest.approx(2 / 61)  # first in both rankings: 1/61 + 1/61
    with pytest.raises(LyreError, match="unknown fusion"):
        Retriever(facts_index, embedder, config=RetrieverConfig(fusion="max"))


def test_convex_fusion_standardises_each_ranking():
    def hit(cid, score):
        return Hit(Chunk(cid, "s", 0, 1, chunk_id=cid), score)

    # BM25-sized scores and cosine-sized scores: z-scores put them on one scale
    lexical = [hit("a", 30.0), hit("b", 20.0), hit("c", 10.0)]
    dense = [hit("b", 0.9), hit("d", 0.6), hit("c", 0.3)]
    fused = fuse_scores([lexical, dense], [1.0, 1.0])
    z = 10 / np.std([30, 20, 10])  # one step of either ranking, in standard deviations
    scores = {h.chunk.chunk_id: h.score for h in fused}
    assert scores["b"] == pytest.approx(0 + z)  # middle of one, top of the other
    assert scores["a"] == pytest.approx(z - z)  # top of one, missing from the other: its floor
    assert scores["d"] == pytest.approx(-z + 0)
    assert [h.chunk.chunk_id for h in fused][0] == "b"
    half = {h.chunk.chunk_id: h.score for h in fuse_scores([lexical, dense], [1.0, 0.5])}
    assert half["a"] == pytest.approx(z - 0.5 * z)


def test_rrf_fusion_rewards_agreement():
    def hit(cid):
        return Hit(Chunk(cid, "s", 0, 1, chunk_id=cid), 1.0)

    fused = fuse([[hit("a"), hit("b")], [hit("d"), hit("b")]], rrf_k=60)
    # second in both rankings (2/62) beats first in one (1/61)
    assert [h.chunk.chunk_id for h in fused] == ["b", "a", "d"]
    assert fused[0].score == pytest.approx(2 / 62) and fused[1].score == pytest.approx(1 / 61)


def test_merge_and_budget():
    text = "0123456789" * 10
    a = Chunk(text[10:40], "s", 10, 40)
    b = Chunk(text[30:60], "s", 30, 60)
    c = Chunk(text[80:90], "s", 80, 90)
    merged = merge_adjacent([Hit(b, 3.0, 1), Hit(c, 2.0, 2), Hit(a, 1.0, 3)])
    assert [(h.chunk.start, h.chunk.end) for h in merged] == [(10, 60), (80, 90)]
    assert merged[0].chunk.text == text[10:60] and merged[0].score == 3.0
    cut = fill_budget(merged, 55)
    assert [len(h.chunk.text) for h in cut] == [50, 5]
    assert cut[1].chunk.text == text[80:85]


def test_openai_embedder_batches_and_normalises():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body["model"], len(body["input"])))
            data = [{"index": i, "embedding": [3.0, 4.0 + len(t)]} for i, t in
                    enumerate(body["input"])][::-1]  # out of order on purpose
            out = json.dumps({"object": "list", "data": data}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        emb = make_embedder(f"openai:tiny@{url}")
        emb.batch_size = 2
        vectors = emb.embed(["a", "bb", "ccc"])
        assert seen == [("/v1/embeddings", "tiny", 2), ("/v1/embeddings", "tiny", 1)]
        assert vectors.shape == (3, 2) and emb.dim == 2
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(vectors[0], np.array([3.0, 5.0]) / np.hypot(3, 5), rtol=1e-6)
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_embedding_endpoint():
    emb = OpenAIEmbedder("http://127.0.0.1:9", "x", timeout=2)
    with pytest.raises(LyreError, match="unreachable"):
        emb.embed(["hello"])


def test_embedder_specs(tmp_path):
    assert make_embedder("none") is None
    with pytest.raises(LyreError, match="unknown embedder"):
        make_embedder("word2vec")
    with pytest.raises(LyreError, match="local folder"):
        make_embedder(f"st:{tmp_path / 'missing'}")


def test_run_embedder_pools_hidden_states(trained_run):
    emb = RunEmbedder(trained_run)
    vectors = emb.embed(["Achilles son of Peleus", "Achilles son of Peleus", "ships 😀 and men"])
    assert vectors.shape == (3, emb.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)  # batch padding changes nothing
    alone = emb.embed(["Achilles son of Peleus"])
    np.testing.assert_allclose(alone[0], vectors[0], atol=1e-5)


# -- evaluation -----------------------------------------------------------------------------------


def test_load_qa_reports_malformed_lines(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join([
        json.dumps({"question": "q?", "answers": ["a"], "evidence": "ev"}),
        "{not json",
        json.dumps({"question": "", "evidence": "ev"}),
        json.dumps({"question": "q2?", "answers": "a", "evidence": "ev"}),
        json.dumps(["a list"]),
    ]) + "\n")
    qa = load_qa(path)
    assert len(qa.records) == 1
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in qa.problems] == ["2", "3", "4", "5"]
    assert "not JSON" in qa.problems[0]
    (tmp_path / "bad.jsonl").write_text("nope\n")
    with pytest.raises(LyreError, match="no usable QA record"):
        load_qa(tmp_path / "bad.jsonl")


def test_relevance_and_budget_coverage():
    text = "".join(f"{i:03d}," for i in range(30))  # no substring repeats
    evidence = text[20:40]
    assert is_relevant(Chunk(text[10:50], "s", 10, 50), evidence)  # contains it
    assert is_relevant(Chunk(text[25:35], "s", 25, 35), evidence)  # inside it
    assert is_relevant(Chunk(text[0:31], "s", 0, 31), evidence)  # holds more than half
    assert not is_relevant(Chunk(text[0:25], "s", 0, 25), evidence)  # a quarter
    # Split across two retrieved chunks that touch: covered within a big budget only.
    hits = [Hit(Chunk(text[0:30], "s", 0, 30), 2, 1), Hit(Chunk(text[30:60], "s", 30, 60), 1, 2)]
    assert covered_within_budget(hits, evidence, 60)
    assert not covered_within_budget(hits, evidence, 35)
    other = [Hit(Chunk(text[0:30], "s", 0, 30), 2, 1), Hit(Chunk(text[30:60], "t", 30, 60), 1, 2)]
    assert not covered_within_budget(other, evidence, 100)  # different sources never join


def test_evaluate_retrieval_metrics(facts_index):
    records = [
        QARecord("What raises the tides?", ["the moon"], "The moon pulls the ocean"),
        QARecord("How do astronomers measure distances to stars?", ["parallax"],
                 "distance to stars with parallax"),
        QARecord("What is the capital of France?", ["Paris"], "Paris is the capital"),
    ]
    report = evaluate_retrieval(Retriever(facts_index), records, k=2, budget=4000)
    assert [q["rank"] for q in report.per_question] == [1, 1, None]
    assert report.recall_at_k == pytest.approx(2 / 3)
    assert report.mrr == pytest.approx(2 / 3)
    assert report.ndcg == pytest.approx(2 / 3)
    assert report.context_recall == pytest.approx(2 / 3)
    assert set(report.metrics()) >= {"recall_at_k", "mrr", "ndcg", "context_recall"}


def test_dev_qa_set_is_well_formed():
    qa = load_qa(ROOT / "lyre" / "rag" / "data" / "dev_qa.jsonl")
    assert not qa.problems and len(qa.records) >= 40
    assert {r.split for r in qa.records} == {"tune", "heldout"}
    for r in qa.records:
        flat = " ".join(r.evidence.split())
        assert all(" ".join(a.split()) in flat for a in r.answers), r.id
        assert r.question not in r.evidence


def test_dev_qa_evidence_is_verbatim():
    books = {"sherlock_holmes_pg1661.txt": SHARED / "rag" / "sherlock_holmes_pg1661.txt",
             "iliad.txt": SHARED / "iliad.txt"}
    if not all(p.exists() for p in books.values()):
        pytest.skip(f"shared data not found under {SHARED} (needs rag/ and iliad.txt)")
    texts = {k: p.read_text(encoding="utf-8") for k, p in books.items()}
    for r in load_qa(ROOT / "lyre" / "rag" / "data" / "dev_qa.jsonl").records:
        assert texts[r.source].count(r.evidence) == 1, r.id


def test_small_chunks_index_end_to_end(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("Filler words here. " * 30 + "The secret code is 4417. "
                                          + "More filler text. " * 30)
    store = open_store(tmp_path / "idx", create=True)
    index_paths([tmp_path / "d"], store, split=SplitConfig(100, 20))
    retriever = Retriever(store, config=RetrieverConfig(context_weight=0.0))
    [hit] = retriever.search("what is the secret code", k=1)
    assert "4417" in hit.chunk.text
    store.close()


def test_a_local_model_embedder_is_loaded_once_per_spec(tmp_path, monkeypatch):
    """Issue 19.19: the model of st:DIR / minilm is loaded once per process, keyed by its spec."""
    from lyre.rag import embedders

    loads = []

    class Fake:
        def __init__(self, directory):
            loads.append(directory)
            self.name, self.dim = f"st:{directory.name}", 2

    monkeypatch.setattr(embedders, "SentenceTransformerEmbedder", Fake)
    monkeypatch.setattr(embedders, "_LOADED", {})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = make_embedder(f"st:{tmp_path / 'a'}")
    assert make_embedder(f"st:{tmp_path / 'a' / '.'}") is first  # the same folder
    assert make_embedder(f"st:{tmp_path / 'b'}") is not first
    assert len(loads) == 2
