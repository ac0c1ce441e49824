"""`lyre rag ...` driven in-process through lyre.cli.main: index, ls, rm, search, ask, chat, eval.

Answers come from a scripted OpenAI-compatible server (tests/rag_fakes.py) so the output is
exact; the in-process engine is covered by test_rag_chains.py and the real `lyre serve` by
test_rag_serve.py. Bad input ends in exactly one line `lyre: error: ...` and exit code 2.
"""

from __future__ import annotations

import io
import json
import re
import sys

import pytest
from cli_util import assert_one_line_error as one_line_error
from cli_util import run_cli
from rag_fakes import ScriptedServer

from lyre.cli import main


def assert_one_line_error(code: int, err: str, pattern: str = "") -> None:
    one_line_error(code, err, pattern, ignore="lyre rag: ")  # per-file progress lines come first


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    (d / "notes").mkdir(parents=True)
    (d / "troy.txt").write_text(
        "Hector, son of Priam, was the greatest warrior of Troy.\n\n"
        "Achilles sulked in his tent by the hollow ships of the Achaeans.\n", encoding="utf-8")
    (d / "notes" / "family.md").write_text(
        "# Family\n\nAndromache was the wife of Hector and the mother of Astyanax.\n",
        encoding="utf-8")
    (d / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    return d


@pytest.fixture
def index(docs, tmp_path, capsys):
    idx = tmp_path / "idx"
    code, out, err = run_cli(capsys, "rag", "index", docs, "--index", idx, "--chunk-size", "80",
                             "--chunk-overlap", "10")
    assert code == 0, err
    assert "2 added" in out and "skipped" in out
    assert "image.png" in err  # the skipped file, with its reason
    return idx


def test_index_ls_rm_and_incremental_reindex(docs, index, capsys):
    code, out, err = run_cli(capsys, "rag", "ls", index)
    assert code == 0 and "2 sources" in out and "chunk size 80" in out
    assert "troy.txt" in out and "family.md" in out
    code, out, _ = run_cli(capsys, "rag", "ls", index, "--json")
    listing = json.loads(out)
    assert listing["info"]["chunks"] >= 3 and len(listing["sources"]) == 2
    code, out, _ = run_cli(capsys, "rag", "index", docs, "--index", index)
    assert code == 0 and "2 unchanged" in out
    source = next(s for s in listing["sources"] if s.endswith("family.md"))
    code, out, _ = run_cli(capsys, "rag", "rm", index, source)
    assert code == 0 and "removed" in out
    code, _, err = run_cli(capsys, "rag", "rm", index, source)
    assert_one_line_error(code, err, "not in the index")


def test_search_prints_ranked_passages_and_json(index, capsys):
    code, out, _ = run_cli(capsys, "rag", "search", index, "Who was the wife of Hector?", "--k", "2")
    assert code == 0 and out.startswith("[1] ") and "Andromache" in out.split("[2]")[0]
    code, out, _ = run_cli(capsys, "rag", "search", index, "Hector", "--json", "--k", "5",
                           "--source", "*.md")
    hits = json.loads(out)
    assert hits and all(h["source"].endswith(".md") for h in hits)
    assert {"text", "source", "score", "rank", "page", "start", "end"} <= set(hits[0])


@pytest.mark.parametrize("chain", ["stuff", "refine", "map_reduce", "map_rerank"])
def test_ask_streams_the_answer_and_lists_sources(index, capsys, tmp_path, chain):
    trace = tmp_path / "trace.jsonl"
    with ScriptedServer("Priam [1]\nScore: 80") as server:
        code, out, err = run_cli(capsys, "rag", "ask", index, "Who was Hector's father?",
                                 "--chain", chain, "--llm-url", server.url, "--llm-model",
                                 "scripted", "--k", "2", "--trace", trace)
    assert code == 0, err
    answer, sources = out.split("\n\nSources:\n")
    assert answer.startswith("Priam [1]")
    assert re.search(r"\[1\] \S*troy\.txt, characters \d+-\d+  <- cited", sources)
    events = [json.loads(line)["event"] for line in trace.read_text().splitlines()]
    assert events[0] == "chain_start" and "llm_end" in events and events[-1] == "chain_end"


def test_ask_json(index, capsys):
    with ScriptedServer("Andromache [1]") as server:
        code, out, _ = run_cli(capsys, "rag", "ask", index, "Who was Hector's wife?",
                               "--llm-url", server.url, "--llm-model", "scripted", "--json")
    result = json.loads(out)
    assert code == 0 and result["text"] == "Andromache [1]" and result["cited"] == [1]
    assert result["sources"][0]["source"].endswith((".md", ".txt"))


def test_chat_reads_questions_and_condenses_follow_ups(index, capsys, monkeypatch):
    def reply(prompt):
        if prompt.rstrip().endswith("Standalone question:"):
            return "Who was Hector's wife?"
        return "Andromache [1]" if "wife" in prompt else "Priam [1]"

    monkeypatch.setattr(sys, "stdin", io.StringIO("Who was Hector's father?\n\n/reset\n"
                                                  "Tell me about Hector\nAnd his wife?\n/quit\n"))
    with ScriptedServer(reply) as server:
        code, out, err = run_cli(capsys, "rag", "chat", index, "--llm-url", server.url,
                                 "--llm-model", "scripted")
    assert code == 0, err
    assert out.count("Sources:") == 3 and "(conversation forgotten)" in out
    assert "searched for: Who was Hector's wife?" in err
    assert "Andromache [1]" in out


def test_eval_retrieval_and_answer_metrics(index, tmp_path, capsys):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Who was the wife of Hector?", "answers": ["Andromache"],
         "evidence": "Andromache was the wife of Hector"},
        {"question": "Where did Achilles sulk?", "answers": ["in his tent"],
         "evidence": "Achilles sulked in his tent"},
    ]) + "\nnot json\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "rag", "eval", index, "--qa", qa, "--k", "3")
    assert code == 0, err
    result = json.loads(out)
    assert result["retrieval"]["recall_at_k"] == 1.0 and "answers" not in result
    assert "qa.jsonl:3" in err  # the bad line is reported, not fatal
    with ScriptedServer(lambda p: "Andromache [1]" if "wife" in p else "in his tent [1]") as server:
        code, out, err = run_cli(capsys, "rag", "eval", index, "--qa", qa, "--k", "3",
                                 "--llm-url", server.url, "--llm-model", "scripted")
    answers = json.loads(out)["answers"]
    assert code == 0 and answers["exact_match"] == 1.0 and answers["f1"] == 1.0
    assert answers["citation_share"] == 1.0 and answers["questions"] == 2


def test_bad_input_is_one_line_and_exit_2(index, docs, tmp_path, capsys):
    server_flags = ["--llm-url", "http://127.0.0.1:1", "--llm-model", "m"]
    code, _, err = run_cli(capsys, "rag", "ask", index, "  ", *server_flags)
    assert_one_line_error(code, err, "question is empty")
    code, _, err = run_cli(capsys, "rag", "ask", tmp_path / "nope", "q?", *server_flags)
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_cli(capsys, "rag", "ask", index, "q?", *server_flags)
    assert_one_line_error(code, err, "cannot reach the LLM endpoint")
    code, _, err = run_cli(capsys, "rag", "ask", index, "q?")
    assert_one_line_error(code, err, "which model answers")
    code, _, err = run_cli(capsys, "rag", "ask", index, "q?", "--model", tmp_path / "no-run")
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_cli(capsys, "rag", "search", index, "q", "--k", "0")
    assert_one_line_error(code, err, "--k must be")
    code, _, err = run_cli(capsys, "rag", "index", tmp_path / "empty-dir-missing", "--index", index)
    assert_one_line_error(code, err, "no such file")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "index.sqlite").write_bytes(b"this is not a database" * 100)
    code, _, err = run_cli(capsys, "rag", "search", corrupt, "q")
    assert_one_line_error(code, err, "corrupt|not a lyre index")
    code, _, err = run_cli(capsys, "rag", "index", docs, "--index", index, "--store", "mysql://x")
    assert_one_line_error(code, err, "postgresql://")


def test_a_locked_index_refuses_a_second_writer(index, docs, capsys):
    from lyre.rag.store import EmbeddedStore

    holder = EmbeddedStore(index)
    holder.acquire_write_lock()
    try:
        code, _, err = run_cli(capsys, "rag", "index", docs, "--index", index)
        assert_one_line_error(code, err, "being written by another process")
        code, out, _ = run_cli(capsys, "rag", "search", index, "Hector")  # reading still works
        assert code == 0 and "Hector" in out
    finally:
        holder.close()


def test_rag_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["rag", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for name in ("index", "ls", "rm", "search", "ask", "chat", "eval"):
        assert name in out


def test_index_help_says_the_defaults_the_code_uses(docs, tmp_path, capsys):
    """Issue 19.14: the help said 1000/200 while the code, `rag ls` and the docs said 600/100."""
    from lyre.rag.splitter import SplitConfig

    default = SplitConfig()
    with pytest.raises(SystemExit):
        main(["rag", "index", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"characters per chunk (default {default.chunk_size}," in help_text
    assert f"neighbouring chunks (default {default.chunk_overlap}," in help_text
    code, _, err = run_cli(capsys, "rag", "index", docs, "--index", tmp_path / "plain")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "rag", "ls", tmp_path / "plain")
    assert f"chunk size {default.chunk_size}, overlap {default.chunk_overlap}" in out


def test_a_failed_index_leaves_no_empty_index_behind(docs, index, tmp_path, capsys):
    """Issue 19.15: a failed first index left an empty folder that `rag ls` called empty."""
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    code, _, err = run_cli(capsys, "rag", "index", binary, "--index", tmp_path / "new")
    assert_one_line_error(code, err, "no readable file to index")
    assert not (tmp_path / "new").exists()
    code, _, err = run_cli(capsys, "rag", "ls", tmp_path / "new")
    assert_one_line_error(code, err, "does not exist")
    # an update that fails leaves the index as it was
    code, before, _ = run_cli(capsys, "rag", "ls", index, "--json")
    for f in (docs / "troy.txt", docs / "notes" / "family.md"):
        f.write_bytes(b"\x00\xff" * 100)
    code, _, err = run_cli(capsys, "rag", "index", docs, "--index", index)
    assert_one_line_error(code, err, "no readable file to index")
    code, after, _ = run_cli(capsys, "rag", "ls", index, "--json")
    assert code == 0 and json.loads(after) == json.loads(before)


def test_the_python_api_assembles_what_the_cli_does(index, capsys):
    """Issue 19.10: index + retriever + model are assembled by lyre.rag.open_assistant, which
    `lyre rag ask` calls: the same answer both ways."""
    from lyre.rag import ModelChoice, open_assistant

    with ScriptedServer("Andromache [1]") as server:
        choice = ModelChoice(url=server.url, model="scripted")
        with open_assistant(index, model=choice) as assistant:
            answer = assistant.ask("Who was Hector's wife?", k=2)
            follow = assistant.chat(k=2).ask("And his wife?")
        code, out, _ = run_cli(capsys, "rag", "ask", index, "Who was Hector's wife?", "--k", "2",
                               "--llm-url", server.url, "--llm-model", "scripted", "--json")
    assert code == 0 and json.loads(out)["text"] == answer.text == "Andromache [1]"
    assert [s["chunk_id"] for s in json.loads(out)["sources"]] == [s.chunk_id for s in answer.sources]
    assert follow.text == "Andromache [1]"
    with open_assistant(index, model_required=False) as retrieval_only:
        assert retrieval_only.llm is None and retrieval_only.retriever.search("Hector", k=1)
        with pytest.raises(Exception, match="has no model"):
            retrieval_only.ask("q?")
