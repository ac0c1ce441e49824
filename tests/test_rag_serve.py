"""lyre.rag against a REAL `lyre serve` of a tiny trained run (byte-level BPE, 256-token context).

- all four chain types end to end over HTTP (OpenAILLM: streamed chat completions, exact token
  counts from /v1/tokenize, the context length from /v1/models), from Python and from the CLI
- POST /v1/embeddings: the run's mean-pooled hidden states, equal to the `run:` embedder's
- `lyre serve RUN --rag IDX`: POST /v1/rag/answer, plain and streamed, with history
- LangChain's ChatOpenAI and OpenAIEmbeddings pointed at the server (offline: no tiktoken)

A model this small does not answer well; the tests check the mechanics: passages in, answer
streamed, sources listed, [n] citations where provenance is known.
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from serve_util import sse_events

from lyre.cli import main
from lyre.core.errors import LyreError
from lyre.generate.runs import load_run
from lyre.rag.chains import CHAIN_TYPES, ask
from lyre.serve import ServeSettings
from lyre.serve.server import start_background

MODEL = "tiny-chat"
DOCS = {
    "troy.txt": "Hector, son of Priam, was the greatest warrior of Troy.\n\n"
                "Achilles sulked in his tent by the hollow ships of the Achaeans.\n\n"
                "Andromache was the wife of Hector and the mother of Astyanax.\n",
    "gods.md": "# Gods\n\nApollo sent a plague upon the camp of the Achaeans.\n\n"
               "Athena favoured the Greeks and Aphrodite favoured Troy.\n",
}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    from lyre.rag.index import index_paths, open_store
    from lyre.rag.splitter import SplitConfig

    docs = tmp_path_factory.mktemp("rag-docs")
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    idx = docs.parent / "rag-idx"
    store = open_store(idx, create=True)
    index_paths([docs], store, SplitConfig(chunk_size=120, chunk_overlap=0))
    store.close()
    return idx


@pytest.fixture(scope="module")
def server(run, index):
    with start_background(run, ServeSettings(rag_index=str(index))) as srv:
        yield srv


@pytest.fixture(scope="module")
def retriever(index):
    from lyre.rag.index import open_store
    from lyre.rag.retrieve import Retriever

    return Retriever(open_store(index))


# ----------------------------------------------------------------------------------------------
# The four chains over HTTP


@pytest.mark.parametrize("chain", CHAIN_TYPES)
def test_all_chains_end_to_end_against_lyre_serve(server, retriever, run, chain):
    from lyre.rag.llm import OpenAILLM

    llm = OpenAILLM(server.url, MODEL)
    assert 200 < llm.context_window < 256  # 256 minus the template and a margin, from the server
    assert llm.count_tokens("Hector, son of Priam") == len(run.tokenizer.encode("Hector, son of Priam"))
    streamed = []
    answer = ask("Who was the wife of Hector?", retriever, llm, chain=chain, k=3, max_tokens=20,
                 on_token=streamed.append)
    assert answer.sources and all(s.source.endswith(("troy.txt", "gods.md")) for s in answer.sources)
    assert "".join(streamed) == answer.text
    assert answer.llm_calls >= {"stuff": 1, "refine": 2, "map_reduce": 2, "map_rerank": 2}[chain]
    if chain == "map_rerank":
        assert answer.cited and f"[{answer.cited[0]}]" in answer.text
    assert answer.format_sources().startswith("Sources:\n  [1] ")
    assert not any("tokenize route" in n for n in answer.notices)  # counted exactly


def test_cli_ask_with_llm_url_pointing_at_lyre_serve(server, index, capsys):
    code = main(["rag", "ask", str(index), "Who sent a plague?", "--llm-url", server.url + "/v1",
                 "--llm-model", MODEL, "--chain", "map_rerank", "--k", "2", "--max-tokens", "16"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "\n\nSources:\n  [1] " in out and "<- cited" in out


def test_cli_ask_with_the_in_process_model(run_dir, index, capsys):
    code = main(["rag", "ask", str(index), "Who sent a plague?", "--model", str(run_dir),
                 "--k", "2", "--max-tokens", "16", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "\n\nSources:\n  [1] " in out


# ----------------------------------------------------------------------------------------------
# Embeddings and tokenize


def test_embeddings_are_the_run_embedders_vectors(server, run_dir):
    from lyre.rag.embedders import RunEmbedder

    texts = ["Hector, son of Priam", "Achilles sulked by the ships.", "héllo wörld ✓"]
    r = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == MODEL
    vectors = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert vectors.shape == (3, 32) and [d["index"] for d in body["data"]] == [0, 1, 2]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = RunEmbedder(run_dir).embed(texts)
    assert np.allclose(vectors, expected, atol=1e-4)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    b64 = httpx.post(server.url + "/v1/embeddings", timeout=60,
                     json={"model": MODEL, "input": texts[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, vectors[0], atol=1e-6)
    ids = httpx.post(server.url + "/v1/embeddings", timeout=60,
                     json={"model": MODEL, "input": [[1, 2, 3], [4]]}).json()
    assert len(ids["data"]) == 2


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "nope", "input": "x"}, 404, "does not exist"),
    ({"model": MODEL, "input": [[1, 99999]]}, 400, "outside the vocabulary"),
    ({"model": MODEL, "input": "x", "dimensions": 8}, 400, "dimensions"),
    ({"model": MODEL, "input": []}, 400, ""),
    ({"model": MODEL, "input": "x", "extra": 1}, 400, ""),
])
def test_embeddings_bad_requests(server, body, status, fragment):
    r = httpx.post(server.url + "/v1/embeddings", json=body, timeout=30)
    assert r.status_code == status and fragment in r.json()["error"]["message"]


def test_tokenize_counts_prompts_and_templated_messages(server, run):
    r = httpx.post(server.url + "/v1/tokenize", json={"prompt": "Hector"}, timeout=30).json()
    assert r["count"] == len(run.tokenizer.encode("Hector")) and r["max_model_len"] == 256
    m = httpx.post(server.url + "/v1/tokenize", timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hector"}]}).json()
    from lyre.chat.templates import get_template

    rendered = get_template("plain").render([{"role": "user", "content": "Hector"}])  # "Hector\n"
    assert m["count"] == len(run.tokenizer.encode(rendered))
    bad = httpx.post(server.url + "/v1/tokenize", json={}, timeout=30)
    assert bad.status_code == 400


# ----------------------------------------------------------------------------------------------
# POST /v1/rag/answer


def test_rag_answer_route_plain_and_streamed(server):
    r = httpx.post(server.url + "/v1/rag/answer", timeout=120,
                   json={"question": "Who was the wife of Hector?", "k": 2, "max_tokens": 16,
                         "chain": "map_rerank"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "rag.answer" and body["model"] == MODEL
    assert body["sources"] and body["sources"][0]["text"] and body["cited"]
    assert f"[{body['cited'][0]}]" in body["answer"]
    with httpx.stream("POST", server.url + "/v1/rag/answer", timeout=120,
                      json={"question": "Who sulked?", "k": 2, "max_tokens": 12,
                            "stream": True}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        events = sse_events(s.iter_lines())
    assert events[-1] == "[DONE]"
    final = events[-2]
    deltas = "".join(e["text"] for e in events[:-2] if e["object"] == "rag.answer.delta")
    assert final["object"] == "rag.answer" and final["answer"] == deltas
    assert final["sources"]


def test_rag_answer_with_history_condenses_the_follow_up(server):
    r = httpx.post(server.url + "/v1/rag/answer", timeout=120, json={
        "question": "And who sulked?", "k": 2, "max_tokens": 12,
        "history": [{"question": "Who was Hector?", "answer": "A prince of Troy [1]"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    # A tiny model's rewrite may match no passage; then the chain asks nothing more.
    assert body["standalone_question"]
    assert body["llm_calls"] == 1 + (1 if body["sources"] else 0)  # condense (+ answer)


@pytest.mark.parametrize("body", [{"question": ""}, {"question": "q", "chain": "mapreduce"},
                                  {"question": "q", "k": 0}, {"question": "q", "max_tokens": 250}])
def test_rag_answer_bad_requests_are_400(server, body):
    r = httpx.post(server.url + "/v1/rag/answer", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["message"]


def test_rag_route_only_with_an_index_and_a_missing_index_fails_at_start(run, tmp_path):
    from lyre.serve.app import create_app

    with start_background(run, ServeSettings()) as plain:
        assert httpx.post(plain.url + "/v1/rag/answer", json={"question": "q"}).status_code == 404
    with pytest.raises(LyreError, match="does not exist"):
        create_app(run, ServeSettings(rag_index=str(tmp_path / "missing")))


def test_openapi_documents_the_new_routes(server):
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/v1/tokenize", "/v1/rag/answer"} <= set(paths)


# ----------------------------------------------------------------------------------------------
# LangChain pointed at lyre serve


def test_langchain_chat_openai_and_openai_embeddings(server, run_dir, monkeypatch):
    pytest.importorskip("langchain_openai")
    # Offline: no tiktoken download may happen; with check_embedding_ctx_length=False
    # OpenAIEmbeddings never tokenizes. Any attempt to fetch an encoding would fail here.
    import tiktoken
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    from lyre.rag.embedders import RunEmbedder

    def no_download(*a, **kw):
        raise AssertionError("tiktoken tried to load an encoding")

    monkeypatch.setattr(tiktoken, "get_encoding", no_download)
    monkeypatch.setattr(tiktoken, "encoding_for_model", no_download)
    chat = ChatOpenAI(model=MODEL, base_url=server.url + "/v1", api_key="unused", max_tokens=8,
                      temperature=0, max_retries=0, timeout=60)
    reply = chat.invoke("Sing, O goddess")
    assert isinstance(reply.content, str)
    pieces = [c.content for c in chat.stream("Sing, O goddess")]
    assert "".join(pieces) == reply.content  # greedy: the same text, streamed
    emb = OpenAIEmbeddings(model=MODEL, base_url=server.url + "/v1", api_key="unused",
                           check_embedding_ctx_length=False, max_retries=0, timeout=60)
    docs = emb.embed_documents(["Hector, son of Priam", "Achilles"])
    query = emb.embed_query("Hector, son of Priam")
    expected = RunEmbedder(run_dir).embed(["Hector, son of Priam", "Achilles"])
    assert np.allclose(np.array(docs), expected, atol=1e-4)
    assert np.allclose(np.array(query), expected[0], atol=1e-4)


def test_the_served_embeddings_can_build_and_search_an_index(server, tmp_path):
    from lyre.rag.embedders import OpenAIEmbedder
    from lyre.rag.index import index_paths, open_store
    from lyre.rag.retrieve import Retriever
    from lyre.rag.splitter import SplitConfig

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "troy.txt").write_text(DOCS["troy.txt"], encoding="utf-8")
    embedder = OpenAIEmbedder(server.url, MODEL)
    store = open_store(tmp_path / "idx", create=True)
    index_paths([docs], store, SplitConfig(chunk_size=80, chunk_overlap=0), embedder)
    hits = Retriever(store, embedder, mode="dense").search("Hector, son of Priam", k=1)
    assert hits and hits[0].chunk.text.startswith("Hector, son of Priam")
    store.close()


# ----------------------------------------------------------------------------------------------
# A character-level run (like the demo) served: characters it never saw are replaced, not fatal


@pytest.fixture(scope="module")
def char_run(tmp_path_factory, tiny_config):
    from lyre.train.trainer import train

    run_dir = tmp_path_factory.mktemp("char-run") / "char"
    train(tiny_config("model.block_size=128", "train.max_iters=4", "train.eval_interval=4"),
          run_dir, progress=False, plot=False)
    return load_run(run_dir, device="cpu")


def test_a_char_model_behind_lyre_serve_gets_unknown_characters_replaced(char_run):
    from lyre.rag.llm import OpenAILLM
    from lyre.rag.types import Chunk, Hit

    hits = [Hit(Chunk(text="Hector — “tamer of horses”, son of Priam; café 42.", source="a.txt",
                      start=0, end=50), 1.0, 1)]

    class Fixed:
        def search(self, query, k=4, source_glob=None):
            return hits

    with start_background(char_run, ServeSettings()) as srv:
        tok = httpx.post(srv.url + "/v1/tokenize", json={"prompt": "café [1]"}).json()
        assert tok["count"] == 8 and "é" in tok["unknown"] and "[" in tok["unknown"]
        llm = OpenAILLM(srv.url, "char")
        answer = ask("Who was Hector?", Fixed(), llm, chain="stuff", max_tokens=8)
    assert answer.sources and answer.sources[0].source == "a.txt"
    assert any("does not know some characters" in n for n in answer.notices)
