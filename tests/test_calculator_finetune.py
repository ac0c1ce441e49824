"""Tool-use fine-tuning is trained on what the server shows the model at use (issue 21, item 1).

For every assistant turn of a tool-use conversation, the training sequence's prompt must be the
very token ids `lyre serve` builds for that conversation (its request parsing, its tool list, the
run's template), and the loss must cover what the model writes at that turn (its call, its
sentence, and the <|endoftext|> that ends it), never the user's text, the system part, the tool
list or a tool's result.
"""

from __future__ import annotations

import json

import pytest
import torch

from lyre.chat.templates import get_template
from lyre.chat.tools import parse_tool_calls, tool_result_text
from lyre.data.calculator import CALCULATOR_TOOL, Problem, record
from lyre.finetune.encode import answer_text, conversation_text, encode_sequences, record_tools
from lyre.finetune.records import to_record
from lyre.tokenizers import build_tokenizer

FIRST = Problem(48213, "*", 371, phrasing=0, separators=True)
SECOND = Problem(9012, "+", 77, phrasing=1, separators=False)


def two_questions() -> dict:
    """A conversation of two questions, each a call, its result and an answer: 4 assistant turns."""
    first, second = record(FIRST, call_id="call_a"), record(SECOND, call_id="call_b")
    return {"tools": [CALCULATOR_TOOL], "messages": first["messages"] + second["messages"]}


def served_prompt(messages: list[dict], tools: list[dict], template) -> str:
    """The prompt `lyre serve` renders for a chat request (its own parsing of the request)."""
    from lyre.serve.schemas import ChatCompletionRequest
    from lyre.serve.structured import declared_tools, request_messages

    req = ChatCompletionRequest(model="m", messages=messages, tools=tools)
    return template.render(request_messages(req), declared_tools(req))


def tokenizer_for(spec: str, raw: dict, template):
    text = conversation_text(to_record(raw), template)
    return build_tokenizer(spec, [text * 3])


@pytest.mark.parametrize("spec", ["char", "bpe:320"])
@pytest.mark.parametrize("name", ["simple", "chatml", "alpaca", "plain"])
def test_every_assistant_turn_is_trained_on_the_served_prompt(name, spec):
    template = get_template(name)
    raw = two_questions()
    tok = tokenizer_for(spec, raw, template)
    rec = to_record(raw)
    sequences = encode_sequences(rec, template, tok)
    turns = [i for i, m in enumerate(raw["messages"]) if m["role"] == "assistant"]
    assert len(sequences) == len(turns) == 4  # both questions, both turns of each: all trained

    for seq, i in zip(sequences, turns, strict=True):
        n_prompt = seq.mask.index(True)
        assert not any(seq.mask[:n_prompt]) and all(seq.mask[n_prompt:])
        # the prompt is exactly what the server encodes for the conversation so far
        served = served_prompt(raw["messages"][:i], raw["tools"], template)
        assert seq.ids[:n_prompt] == tok.encode(served)
        # the trained part is the turn's own text, then <|endoftext|>
        assert seq.ids[-1] == tok.eot_id
        written = tok.decode(seq.ids[n_prompt:-1])
        assert written == answer_text(template, rec.messages, i, record_tools(rec))
        message = raw["messages"][i]
        if message.get("tool_calls"):  # the call reads back as the server parses a reply
            (call,) = parse_tool_calls(written).calls
            assert call.name == "calculator"
            assert call.arguments == json.loads(message["tool_calls"][0]["function"]["arguments"])
        else:
            assert written.strip() == message["content"]
        # nothing of the user, the tools or the results is learned
        for other in raw["messages"][:i]:
            if other["role"] == "user":
                assert other["content"] not in written
            if other["role"] == "tool":
                assert tool_result_text(other) not in written  # the answer may quote the number
        assert "<tools>" not in written


def test_tool_results_and_questions_are_masked_in_the_last_turn():
    template = get_template("simple")
    raw = record(FIRST)
    tok = tokenizer_for("char", raw, template)
    last = encode_sequences(to_record(raw), template, tok)[-1]
    trained = tok.decode([t for t, m in zip(last.ids, last.mask, strict=True) if m and t != tok.eot_id])
    untrained = tok.decode([t for t, m in zip(last.ids, last.mask, strict=True) if not m])
    assert trained == " The product is 17887023."
    assert "<tool_response>\n17887023\n</tool_response>" in untrained
    assert "What is 48,213 times 371?" in untrained and '"48213 * 371"' in untrained


def test_conversation_text_is_the_last_turns_training_text():
    template = get_template("simple")
    raw = record(FIRST)
    tok = tokenizer_for("char", raw, template)
    last = encode_sequences(to_record(raw), template, tok)[-1]
    assert tok.decode(last.ids[:-1]) == conversation_text(to_record(raw), template)


@pytest.mark.parametrize("name", ["simple", "chatml", "alpaca", "plain"])
def test_what_is_trained_is_what_the_tool_grammar_lets_the_model_write(name):
    """At use (tool_choice auto) every reply is decoded under the tool-call grammar: each trained
    turn, its <|endoftext|> included, must be a reply that grammar accepts token by token. (The
    `simple` template puts a space after "Assistant:"; a call turn trained as " <tool_call>"
    could never be written under the grammar, so a call turn is trained without it.)"""
    pytest.importorskip("llguidance")
    from lyre.chat.tools import tool_call_grammar
    from lyre.constrain import Constraint
    from lyre.constrain.compile import compile_constraint
    from lyre.constrain.matcher import RowMatcher

    template = get_template(name)
    raw = two_questions()
    tok = tokenizer_for("char", raw, template)
    rec = to_record(raw)
    grammar = Constraint.grammar(tool_call_grammar(record_tools(rec), required=False))
    compiled = compile_constraint(grammar, tok)
    for seq in encode_sequences(rec, template, tok):
        matcher = RowMatcher(compiled)
        written = seq.ids[seq.mask.index(True):]
        for token in written[:-1]:
            assert matcher.accept(token), (name, tok.decode(written))
        assert matcher.accepting  # <|endoftext|> may end the reply here


# ----------------------------------------------------------------------------------------------
# A rotary base pretrained on short windows, fine-tuned at a longer context


@pytest.fixture(scope="module")
def short_base(tmp_path_factory, tiny_config):
    """A tiny rotary char GPT with a context of 64, pretrained 2 steps on calculator text."""
    from lyre.train.trainer import train

    folder = tmp_path_factory.mktemp("calc-base")
    rows = list(calculator_records(40))
    text = "\n".join(conversation_text(to_record(r), get_template("simple")) for r in rows)
    (folder / "calc.txt").write_text(text, encoding="utf-8")
    (folder / "calc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = tiny_config(f"data.corpus=['{(folder / 'calc.txt').as_posix()}']", "block_size=64",
                         "max_iters=2", "eval_interval=2", "eval_windows=1")
    train(config, folder / "base", progress=False, plot=False)
    return folder


def calculator_records(n: int):
    from lyre.data.calculator import records

    return records(n, seed=4)


@pytest.mark.parametrize("pos, ok", [("rope", True), ("learned", False)])
def test_finetune_may_lengthen_the_context_of_a_rotary_base(short_base, tmp_path, pos, ok):
    import shutil

    from lyre.core.errors import LyreError
    from lyre.finetune.command import finetune_config
    from lyre.run.config import load_config

    base = short_base / "base"
    if pos != "rope":  # the same run, as if its positions were learned weights
        base = tmp_path / "learned"
        shutil.copytree(short_base / "base", base)
        raw = json.loads((base / "config.json").read_text())
        raw["model"]["pos"] = "learned"
        (base / "config.json").write_text(json.dumps(raw))
        load_config(base / "config.json")  # still a valid run config
    settings = dict(template="simple", overrides=["model.block_size=1024", "max_iters=1"])
    if ok:
        config = finetune_config(base, short_base / "calc.jsonl", tmp_path / "sft", **settings)
        assert config.model.block_size == 1024
        from lyre.finetune.command import finetune
        from lyre.generate.runs import load_run

        settings["overrides"] += ["finetune.responses=false"]
        finetune(base, short_base / "calc.jsonl", tmp_path / "sft", progress=False, plot=False,
                 quiet=True, **settings)
        run = load_run(tmp_path / "sft")  # the base's weights at the longer context
        assert run.config.model.block_size == 1024
        ids = torch.randint(0, run.config.model.vocab_size, (1, 1000))
        assert run.model(ids)[0].shape[1] == 1000
    else:
        with pytest.raises(LyreError, match="model.block_size"):
            finetune_config(base, short_base / "calc.jsonl", tmp_path / "sft", **settings)
