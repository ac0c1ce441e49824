"""The answering side of lyre.rag: the four chain types, the context budget, citations, memory,
callbacks, the LLM adapters (in-process engine, OpenAI-compatible over HTTP) and answer metrics.

Most tests use ScriptedLLM (tests/rag_fakes.py): one token per character, and it asserts the
budget rule on every call, so a chain that overflowed would fail here. The in-process engine
and a scripted OpenAI server are exercised end to end as well.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from rag_fakes import FixedRetriever, ScriptedLLM, ScriptedServer, make_hits

from lyre.core.errors import LyreError
from lyre.rag import prompts as P
from lyre.rag.answer_eval import evaluate_answers, exact_match, f1_score, normalize_answer
from lyre.rag.callbacks import CallbackHandler, JSONLTracer, ProgressPrinter
from lyre.rag.chains import CHAIN_TYPES, ask
from lyre.rag.evaluate import QARecord
from lyre.rag.memory import RAGChat

PASSAGES = [
    "Hector, son of Priam, was the greatest warrior of Troy.",
    "Achilles sulked in his tent by the hollow ships.",
    "Andromache was the wife of Hector and mother of Astyanax.",
]


def _ask(chain, reply, window=2000, hits=None, **kw):
    llm = ScriptedLLM(reply, context_window=window)
    retriever = FixedRetriever(hits if hits is not None else make_hits(PASSAGES, page=2))
    return ask("Who was Hector's father?", retriever, llm, chain=chain, **kw), llm, retriever


# ----------------------------------------------------------------------------------------------
# The four chains


def test_stuff_is_one_call_with_every_passage_numbered():
    streamed = []
    answer, llm, _ = _ask("stuff", "Hector's father was Priam [1].", on_token=streamed.append)
    assert len(llm.prompts) == 1 and answer.llm_calls == 1
    prompt = llm.prompts[0]
    positions = [prompt.index(f"[{n}] iliad.txt, page 2\n{PASSAGES[n - 1]}") for n in (1, 2, 3)]
    assert positions == sorted(positions)
    assert "Question: Who was Hector's father?" in prompt
    assert answer.text == "Hector's father was Priam [1]." == "".join(streamed)
    assert answer.cited == [1]
    assert [s.n for s in answer.sources] == [1, 2, 3]
    assert answer.sources[0].source == "iliad.txt" and answer.sources[0].page == 2
    listing = answer.format_sources()
    assert "[1] iliad.txt, page 2, characters 0-" in listing and "<- cited" in listing
    assert answer.to_dict()["cited"] == [1]


def test_refine_carries_the_answer_forward_one_call_per_passage():
    replies = iter(["Priam [1]", "Priam, king of Troy [1]", "King Priam of Troy [1]"])
    streamed = []
    answer, llm, _ = _ask("refine", lambda p: next(replies), on_token=streamed.append)
    assert len(llm.prompts) == 3
    assert PASSAGES[0] in llm.prompts[0] and PASSAGES[1] not in llm.prompts[0]
    assert "Answer so far: Priam [1]" in llm.prompts[1] and PASSAGES[1] in llm.prompts[1]
    assert "cite the new passage as [3]" in llm.prompts[2]
    assert answer.text == "King Priam of Troy [1]"
    assert "".join(streamed) == answer.text  # only the last call streams


def test_refine_keeps_the_answer_when_a_step_writes_nothing():
    replies = iter(["Priam [1]", "", ""])
    answer, _, _ = _ask("refine", lambda p: next(replies))
    assert answer.text == "Priam [1]"
    assert any("kept the answer so far" in n for n in answer.notices)


def test_map_reduce_maps_each_passage_then_reduces_the_notes():
    def reply(prompt):
        if "Helpful sentences:" in prompt:
            return "NONE" if "Achilles" in prompt else "Hector is the son of Priam."
        return "Priam [1]"

    streamed = []
    answer, llm, _ = _ask("map_reduce", reply, on_token=streamed.append)
    assert len(llm.prompts) == 4  # 3 maps + 1 reduce
    reduce_prompt = llm.prompts[-1]
    assert "notes" in reduce_prompt and "[1]\n" in reduce_prompt and "[3]\n" in reduce_prompt
    assert "[2]\n" not in reduce_prompt  # its note was NONE
    assert answer.text == "Priam [1]" == "".join(streamed)


def test_map_reduce_collapses_notes_that_do_not_fit():
    hits = make_hits([f"Passage {i} says: " + "Priam was king. " * 8 for i in range(6)])

    def reply(prompt):
        if "Helpful sentences:" in prompt:
            return "Priam was king of Troy and father of Hector. " * 2  # long notes
        if "Shorter notes:" in prompt:
            return "Priam, king [1]."
        return "Priam [1]"

    answer, llm, _ = _ask("map_reduce", reply, window=900, hits=hits, k=6, max_tokens=190)
    collapses = [p for p in llm.prompts if "Shorter notes:" in p]
    assert collapses, "six long notes cannot fit one reduce prompt: they must be collapsed"
    assert any("collapsed" in n for n in answer.notices)
    assert llm.prompts[-1].endswith("Answer:") and answer.text == "Priam [1]"


def test_map_rerank_keeps_the_best_scored_answer_and_counts_unparseable():
    def reply(prompt):
        if PASSAGES[0] in prompt:
            return "Priam\nScore: 90"
        if PASSAGES[1] in prompt:
            return "no idea, sorry"  # no score
        return "Answer: Andromache's father-in-law Priam\nScore: 95/100"

    streamed = []
    answer, llm, _ = _ask("map_rerank", reply, on_token=streamed.append)
    assert len(llm.prompts) == 3
    assert answer.scores == {1: 90.0, 2: None, 3: 95.0}
    assert answer.unparseable_scores == 1
    assert answer.text == "Andromache's father-in-law Priam [3]"  # provenance appended
    assert answer.cited == [3] and "".join(streamed) == answer.text
    assert any("no usable score" in n for n in answer.notices)


def test_map_rerank_ties_go_to_the_better_retrieved_passage_and_no_score_at_all_is_handled():
    answer, _, _ = _ask("map_rerank", "Priam\nScore: 50")
    assert answer.text == "Priam [1]" and answer.unparseable_scores == 0
    answer, _, _ = _ask("map_rerank", lambda p: "Priam?" if PASSAGES[0] in p else "Troy")
    assert answer.text == "Priam? [1]" and answer.unparseable_scores == 3
    assert any("kept the top-ranked" in n for n in answer.notices)


def test_parse_scored_answer_and_citations():
    assert P.parse_scored_answer("Priam\nScore: 80") == ("Priam", 80.0)
    assert P.parse_scored_answer("Answer: Priam. score=120") == ("Priam.", 100.0)
    assert P.parse_scored_answer("Priam (score: 7.5%)")[1] == 7.5
    assert P.parse_scored_answer("Priam\nScore: high") == ("Priam\nScore: high", None)
    assert P.citations("a [2] b [1, 3] c [2] [x] [10]") == [2, 1, 3, 10]


@pytest.mark.parametrize("chain", CHAIN_TYPES)
def test_every_chain_fits_a_small_context_with_notices(chain):
    long_hits = make_hits(["Priam was the king of Troy. " * 20, "Hector was his son. " * 20,
                           "Troy fell. " * 30])
    answer, llm, _ = _ask(chain, "Priam\nScore: 50", window=400, hits=long_hits, max_tokens=60)
    # ScriptedLLM asserted prompt + budget <= 400 on every call
    assert llm.prompts and all(len(p) + 60 <= 400 for p in llm.prompts)
    assert any("trimmed" in n for n in answer.notices)
    assert any(s.trimmed for s in answer.sources)
    if chain == "stuff":
        assert any("dropped" in n for n in answer.notices)
        assert [s.n for s in answer.sources] == [1]
    assert P.COMPACT.stuff.split("{passages}")[1].split("{")[0] in llm.prompts[0] or chain != "stuff"


def test_a_context_that_cannot_hold_a_passage_is_a_clear_error():
    with pytest.raises(LyreError, match="cannot hold one passage"):
        _ask("stuff", "x", window=60, max_tokens=30)
    with pytest.raises(LyreError, match="leaves no room"):
        _ask("stuff", "x", window=100, max_tokens=99)


def test_empty_question_unknown_chain_and_no_passages():
    llm = ScriptedLLM()
    with pytest.raises(LyreError, match="question is empty"):
        ask("   ", FixedRetriever(make_hits(PASSAGES)), llm)
    with pytest.raises(LyreError, match="unknown chain type"):
        ask("q?", FixedRetriever(make_hits(PASSAGES)), llm, chain="mapreduce")
    answer = ask("q?", FixedRetriever([]), llm)
    assert llm.prompts == [] and answer.sources == [] and "no passage" in answer.text


def test_citations_outside_the_passages_are_not_counted():
    answer, _, _ = _ask("stuff", "Priam [1] [7]")
    assert answer.cited == [1]
    assert any("[7]" in n for n in answer.notices)


# ----------------------------------------------------------------------------------------------
# Callbacks


class Recorder(CallbackHandler):
    def __init__(self):
        self.events = []

    def _log(self, name, kw):
        self.events.append((name, kw.get("run_id"), kw.get("parent_run_id"), kw))

    def on_chain_start(self, name, inputs, **kw): self._log("chain_start:" + name, kw)
    def on_chain_end(self, outputs, **kw): self._log("chain_end", kw)
    def on_chain_error(self, error, **kw): self._log("chain_error", kw)
    def on_retriever_start(self, query, **kw): self._log("retriever_start", kw)
    def on_retriever_end(self, hits, **kw): self._log("retriever_end", kw)
    def on_llm_start(self, prompt, max_tokens, **kw): self._log("llm_start", kw)
    def on_llm_new_token(self, token, **kw): self._log("llm_new_token", kw)
    def on_llm_end(self, text, **kw): self._log("llm_end", kw)
    def on_llm_error(self, error, **kw): self._log("llm_error", kw)


def test_callbacks_see_the_tree_of_runs_with_timing():
    rec = Recorder()
    _ask("refine", "Priam [1]", callbacks=[rec])
    names = [e[0] for e in rec.events if e[0] != "llm_new_token"]
    assert names[:4] == ["chain_start:retrieval_qa", "retriever_start", "retriever_end",
                         "chain_start:refine"]
    assert names.count("llm_start") == 3 and names.count("llm_end") == 3
    assert names[-2:] == ["chain_end", "chain_end"]
    top = rec.events[0][1]
    assert rec.events[0][2] is None
    retr = [e for e in rec.events if e[0] == "retriever_start"][0]
    assert retr[2] == top
    inner = [e for e in rec.events if e[0] == "chain_start:refine"][0][1]
    assert all(e[2] == inner for e in rec.events if e[0].startswith("llm"))
    ends = [e for e in rec.events if e[0] in ("llm_end", "retriever_end", "chain_end")]
    assert all(e[3]["elapsed_s"] >= 0 for e in ends)
    starts = {e[1] for e in rec.events if e[0] == "llm_start"}
    assert len(starts) == 3  # one run id per call
    tokens = [e for e in rec.events if e[0] == "llm_new_token"]
    assert tokens and all(e[1] in starts for e in tokens)


def test_a_failing_handler_is_ignored_unless_it_asks_to_raise(capsys):
    class Broken(CallbackHandler):
        def on_llm_new_token(self, token, **kw):
            raise RuntimeError("boom")

    answer, _, _ = _ask("stuff", "Priam [1]", callbacks=[Broken()])
    assert answer.text == "Priam [1]"
    err = capsys.readouterr().err
    assert err.count("Broken.on_llm_new_token failed") == 1  # said once, not per token

    class Strict(Broken):
        raise_error = True

    with pytest.raises(RuntimeError, match="boom"):
        _ask("stuff", "Priam [1]", callbacks=[Strict()])


def test_llm_and_chain_errors_reach_the_callbacks():
    rec = Recorder()
    llm = ScriptedLLM(fail=LyreError("the server went away"))
    with pytest.raises(LyreError, match="went away"):
        ask("q?", FixedRetriever(make_hits(PASSAGES)), llm, callbacks=[rec])
    names = [e[0] for e in rec.events]
    assert "llm_error" in names and names.count("chain_error") == 2
    assert "llm_end" not in names


def test_jsonl_tracer_and_progress_printer(tmp_path):
    trace = tmp_path / "trace.jsonl"
    tracer = JSONLTracer(trace)
    out = io.StringIO()
    _ask("map_rerank", "Priam\nScore: 10", callbacks=[tracer, ProgressPrinter(out)])
    tracer.close()
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "chain_start" and kinds[-1] == "chain_end"
    assert kinds.count("llm_start") == 3 and "retriever_end" in kinds and "llm_new_token" in kinds
    assert all(isinstance(e["run_id"], str) and "time" in e for e in events)
    hits = [e for e in events if e["event"] == "retriever_end"][0]["hits"]
    assert hits[0]["source"] == "iliad.txt"
    assert "model call 3" in out.getvalue() and "passages in" in out.getvalue()
    with pytest.raises(LyreError, match="cannot write the trace file"):
        JSONLTracer(tmp_path / "no" / "such" / "dir" / "t.jsonl")


# ----------------------------------------------------------------------------------------------
# Memory


def test_chat_condenses_follow_ups_before_retrieval():
    def reply(prompt):
        if prompt.endswith("Standalone question:"):
            return "Standalone question: Who was Hector's mother?\nextra"
        return "Hecuba [1]" if "Hector's mother?" in prompt else "Priam [1]"

    llm = ScriptedLLM(reply)
    retriever = FixedRetriever(make_hits(PASSAGES))
    chat = RAGChat(retriever, llm)
    first = chat.ask("Who was Hector's father?")
    assert first.text == "Priam [1]" and len(llm.prompts) == 1  # no history: no condensing
    second = chat.ask("And his mother?")
    condense = llm.prompts[1]
    assert "User: Who was Hector's father?\nAssistant: Priam [1]" in condense
    assert "Follow-up question: And his mother?" in condense
    assert retriever.queries == ["Who was Hector's father?", "Who was Hector's mother?"]
    assert second.standalone_question == "Who was Hector's mother?"
    assert second.question == "And his mother?" and second.text == "Hecuba [1]"
    assert second.sources  # sources every turn
    chat.memory.clear()
    chat.ask("Who is Achilles?")
    assert retriever.queries[-1] == "Who is Achilles?"


def test_chat_history_is_trimmed_to_fit_and_an_empty_rewrite_falls_back():
    llm = ScriptedLLM(lambda p: "" if p.endswith("Standalone question:") else "A" * 150 + " [1]",
                      context_window=700)
    chat = RAGChat(FixedRetriever(make_hits(PASSAGES)), llm, max_tokens=160)
    for q in ["first question?", "second question?", "third question?", "fourth?"]:
        answer = chat.ask(q)
    assert any("left out of the conversation" in n for n in answer.notices)
    assert any("did not rewrite" in n for n in answer.notices)
    assert answer.standalone_question == "fourth?"
    condense = [p for p in llm.prompts if p.endswith("Standalone question:")][-1]
    assert "first question?" not in condense and "third question?" in condense


def test_a_rewrite_that_shares_nothing_with_the_conversation_is_not_followed():
    """Issue 19.17: a small model's rewrite ("The ships sailed to Ithaca.") took retrieval to
    the wrong book; the user's own words (previous question + follow-up) are searched instead."""
    rewrites = iter(["The ships of Odysseus sailed home to Ithaca.", "Who was Hector's wife?"])

    def reply(prompt):
        return next(rewrites) if prompt.endswith("Standalone question:") else "Andromache [1]"

    llm = ScriptedLLM(reply)
    retriever = FixedRetriever(make_hits(PASSAGES))
    chat = RAGChat(retriever, llm)
    chat.ask("Who was Hector?")
    garbage = chat.ask("And his wife?")
    assert retriever.queries[-1] == garbage.standalone_question == "Who was Hector? And his wife?"
    assert any("shares no word with the conversation" in n for n in garbage.notices)
    good = chat.ask("And his wife?")  # a rewrite that keeps the subject is followed as before
    assert retriever.queries[-1] == good.standalone_question == "Who was Hector's wife?"
    assert not any("shares no word" in n for n in good.notices)


# ----------------------------------------------------------------------------------------------
# Answer metrics


def test_squad_normalisation_exact_match_and_f1():
    assert normalize_answer("The  King, Priam!") == "king priam"
    assert exact_match("Priam [1].", ["priam"]) == 1.0
    assert exact_match("King Priam", ["Priam"]) == 0.0
    assert f1_score("King Priam of Troy", ["Priam"]) == pytest.approx(2 * 0.25 * 1 / 1.25)
    assert f1_score("nothing here", ["Priam", "the king"]) == 0.0
    assert f1_score("", [""]) == 1.0


def test_evaluate_answers_scores_em_f1_and_evidence_citations():
    records = [QARecord("Who was Hector's father?", ["Priam"], "Hector, son of Priam"),
               QARecord("Who was Hector's wife?", ["Andromache"], "Andromache was the wife of Hector")]

    def reply(prompt):
        return "Priam [1]" if "father" in prompt else "Andromache [2]"

    llm = ScriptedLLM(reply)
    report = evaluate_answers(records, FixedRetriever(make_hits(PASSAGES)), llm, k=3)
    assert report.questions == 2 and report.exact_match == 1.0 and report.f1 == 1.0
    # the second answer cites [2] (Achilles) while the evidence is in [3]
    assert report.citation_share == 0.5 and report.evidence_shown == 1.0
    assert report.to_dict()["llm_calls"] == 2 and "records" not in report.to_dict()


# ----------------------------------------------------------------------------------------------
# OpenAILLM over HTTP (scripted server)


def test_openai_llm_streams_counts_with_tokenize_and_reads_the_context():
    from lyre.rag.llm import OpenAILLM

    with ScriptedServer("Priam [1]", context=1000) as server:
        llm = OpenAILLM(server.url + "/v1", "scripted")
        assert llm.context_window == 1000 - 5 - 2  # template overhead (5) and the margin
        assert llm.count_tokens("abcd") == 4  # exact: /tokenize minus the empty message
        pieces = []
        assert llm.complete("hello", 10, stop=["\n"], on_token=pieces.append) == "Priam [1]"
        assert "".join(pieces) == "Priam [1]"
        chat = [r for r in server.requests if r["path"] == "/v1/chat/completions"][0]
        assert chat["stream"] is True and chat["max_tokens"] == 10 and chat["stop"] == ["\n"]
        assert chat["messages"] == [{"role": "user", "content": "hello"}]
        answer = ask("Who?", FixedRetriever(make_hits(PASSAGES)), llm, chain="stuff")
        assert answer.text == "Priam [1]" and answer.cited == [1]


def test_openai_llm_without_tokenize_or_context_uses_safe_bounds():
    from lyre.rag.llm import OpenAILLM

    with ScriptedServer("x", context=None, tokenize=False) as server:
        llm = OpenAILLM(server.url, "scripted")
        assert llm.context_window == 2048 - 64
        assert llm.count_tokens("héllo") == 6  # one per UTF-8 byte: never undercounts
        notes = llm.take_notices()
        assert any("context length" in n for n in notes) and any("tokenize route" in n for n in notes)


@pytest.mark.parametrize("failure, message", [(500, "answered 500: the model fell over"),
                                              ("garbage", "not JSON"),
                                              ("html", "not an OpenAI chat completion")])
def test_openai_llm_server_errors_are_lyre_errors(failure, message):
    from lyre.rag.llm import OpenAILLM

    with ScriptedServer(fail_with=failure) as server:
        llm = OpenAILLM(server.url, "scripted")
        with pytest.raises(LyreError, match=message):
            llm.complete("hi", 5)


def test_openai_llm_accepts_a_server_that_ignores_stream():
    from lyre.rag.llm import OpenAILLM

    with ScriptedServer("Priam [1]", fail_with="nonstream") as server:
        pieces = []
        assert OpenAILLM(server.url, "scripted").complete("q", 5, on_token=pieces.append) == "Priam [1]"
        assert pieces == ["Priam [1]"]


def test_openai_llm_unreachable_or_wrong_model():
    from lyre.rag.llm import OpenAILLM

    with pytest.raises(LyreError, match="cannot reach the LLM endpoint"):
        OpenAILLM("http://127.0.0.1:1/v1", "m", timeout=2)
    with pytest.raises(LyreError, match="must be an http"):
        OpenAILLM("localhost:8000", "m")
    with ScriptedServer() as server, pytest.raises(LyreError, match="does not serve the model"):
        OpenAILLM(server.url, "other")


# ----------------------------------------------------------------------------------------------
# EngineLLM: a lyre run in this process


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    from serve_util import tiny_served_run

    return tiny_served_run(tmp_path_factory.getbasetemp())


@pytest.mark.parametrize("chain", CHAIN_TYPES)
def test_all_chains_end_to_end_with_the_in_process_engine(bpe_run, chain):
    from lyre.rag.llm import EngineLLM

    llm = EngineLLM(bpe_run)
    assert llm.context_window < 256 and llm.count_tokens("Hector") >= 1
    hits = make_hits(["Hector, son of Priam, tamer of horses.", "Achilles sulked by the ships.",
                      "Andromache wept on the walls of Troy."])
    streamed = []
    answer = ask("Who was the father of Hector?", FixedRetriever(hits), llm, chain=chain, k=3,
                 max_tokens=24, on_token=streamed.append)
    assert answer.llm_calls == {"stuff": 1, "refine": 3, "map_rerank": 3}.get(chain, answer.llm_calls)
    assert answer.sources and answer.sources[0].source == "iliad.txt"
    assert "".join(streamed) == answer.text
    assert answer.format_sources().startswith("Sources:\n  [1] iliad.txt")
    if chain == "map_rerank":
        assert re.search(r"\[\d\]$", answer.text)  # the kept passage is cited


def test_engine_llm_replaces_characters_a_char_model_never_saw(trained_run):
    from lyre.rag.llm import EngineLLM

    llm = EngineLLM(trained_run)  # char-level, trained on plain ASCII Iliad text
    text = "Héctor—the “breaker” of horses"
    fitted = llm.fit_vocabulary(text)
    assert len(fitted) == len(text)
    assert all(c in llm.tokenizer._stoi for c in fitted)
    assert llm.count_tokens(text) == len(text)
    notes = llm.take_notices()
    assert len(notes) == 1 and "does not know some characters" in notes[0]
    llm.fit_vocabulary("ünïcode")
    assert llm.take_notices() == []  # said once
    assert isinstance(llm.complete("Hector—é", 4), str)  # no error, whatever the characters


def test_a_trimmed_source_lists_the_span_the_model_saw():
    text = "Priam was the king of Troy. " * 20
    answer, llm, _ = _ask("stuff", "Priam", window=300, hits=make_hits([text]), max_tokens=40)
    (src,) = answer.sources
    assert src.trimmed and src.end - src.start == len(src.text) < len(text)
    assert text.startswith(src.text) and src.text in llm.prompts[0]
