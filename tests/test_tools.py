"""Tool calls in text (lyre.chat.tools): one format in every template, the grammar that makes a
reply a valid call, the parser and the stream parser; and fine-tuning records with tool use
rendered exactly as chat and serve render them. No model here: the grammar is walked at random
through llguidance with a byte-level vocabulary (every allowed token equally likely), the
harshest sampler there is."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from lyre.chat.templates import TEMPLATES, get_template
from lyre.chat.tools import (
    CALL_OPEN,
    Tool,
    ToolCall,
    ToolCallStream,
    assistant_text,
    parse_tool_calls,
    tool_call_grammar,
)

WEATHER = Tool("get_weather", "The weather in a city now", {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                     "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"], "additionalProperties": False})
ADD = Tool("add", "", {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                     "b": {"type": "integer", "minimum": -5, "maximum": 5}},
    "required": ["a", "b"], "additionalProperties": False})
TOOLS = [WEATHER, ADD]

HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 1 + 2?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    {"role": "assistant", "content": "It is 3."},
]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_renders_tools_calls_and_results(name):
    template = get_template(name)
    text = template.render(HISTORY[:-1], TOOLS)
    # the tool list in the system part, before the first user turn
    assert text.index("<tools>") < text.index("What is 1 + 2?")
    assert text.index("Be brief.") < text.index("<tools>")
    assert json.dumps(WEATHER.declaration()) in text
    # the call as a block, the result in a tool turn
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>' in text
    assert "<tool_response>\n3\n</tool_response>" in text
    assert text.index("</tool_call>") < text.index("<tool_response>")
    # without tools, a conversation renders as it always did
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert template.render(plain) == template.render(plain, [])
    assert "<tools>" not in template.render(plain)


def test_alpaca_keeps_its_preamble_and_chatml_has_a_tool_turn():
    text = get_template("alpaca").render([{"role": "user", "content": "hi"}], TOOLS)
    assert text.startswith("Below is an instruction") and "<tools>" in text
    chatml = get_template("chatml").render(HISTORY[:-1], TOOLS)
    assert "<|im_start|>tool\n<tool_response>\n3\n</tool_response><|im_end|>" in chatml


def test_an_unknown_role_is_refused():
    from lyre.core.errors import LyreError

    with pytest.raises(LyreError, match="unknown message role"):
        get_template("plain").render([{"role": "robot", "content": "x"}])


def test_rendered_call_parses_back():
    call = ToolCall("get_weather", {"city": "Paris ✓", "unit": "c"})
    reply = parse_tool_calls("Let me look.\n" + call.block(), TOOLS)
    assert reply.content == "Let me look."
    assert [(c.name, c.arguments) for c in reply.calls] == [(call.name, call.arguments)]
    assert reply.calls[0].id.startswith("call_")


def test_parser_leaves_bad_blocks_as_text():
    bad = f'{CALL_OPEN}\n{{"name": "nope", "arguments": {{}}}}\n</tool_call>'
    assert parse_tool_calls(bad, TOOLS).calls == [] and parse_tool_calls(bad, TOOLS).content == bad
    assert parse_tool_calls(f"{CALL_OPEN}\n{{not json\n</tool_call>").calls == []
    assert parse_tool_calls("just text").content == "just text"


def test_finetune_records_with_tools_render_as_chat_does(tmp_path):
    from lyre.finetune.encode import answer_text, encode_sequences, record_tools
    from lyre.finetune.records import to_record

    raw = {"tools": [t.declaration() for t in TOOLS], "messages": HISTORY}
    record = to_record(raw)
    assert record.to_json()["tools"] == raw["tools"]
    template = get_template("chatml")
    tools = record_tools(record)
    # the answer with the call is what follows the prompt chat/serve would show at that turn
    prompt = template.render(HISTORY[:2], TOOLS)
    assert template.render(record.messages[:2], tools) == prompt
    assert answer_text(template, record.messages, 2, tools) == assistant_text(HISTORY[2])
    assert template.render(HISTORY[:3], TOOLS).startswith(prompt + assistant_text(HISTORY[2]))

    class Chars:  # a tokenizer of code points, <|endoftext|> = -1 -> 0x110000
        eot_id = 0x110000
        kind = "char"

        def encode(self, text):
            return [ord(c) for c in text]

    seqs = encode_sequences(record, template, Chars())
    assert len(seqs) == 2  # one per assistant turn
    first = "".join(chr(i) for i, m in zip(seqs[0].ids, seqs[0].mask, strict=True) if m and i < 0x110000)
    assert first == assistant_text(HISTORY[2])


def test_finetune_record_with_bad_call_is_skipped_with_reason():
    from lyre.finetune.records import to_record

    bad = {"messages": [{"role": "user", "content": "x"},
                        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1"}}]}]}
    with pytest.raises(ValueError, match="tool_calls"):
        to_record(bad)


# ----------------------------------------------------------------------------------------------
# The grammar, walked at random


class _Bytes:
    """A vocabulary of the 256 bytes and <|endoftext|> (llguidance's tokenizer interface)."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"<|endoftext|>"]
    special_token_ids = [256]

    def __call__(self, data):
        return list(data)


def _walk(grammar: str, seed: int, first: str = "", limit: int = 600) -> tuple[str, bool]:
    """A uniformly random reply the grammar allows; (text, the grammar finished)."""
    llg = pytest.importorskip("llguidance")
    tok = llg.LLTokenizer(llg.TokenizerWrapper(_Bytes()))
    matcher = llg.LLMatcher(tok, llg.LLMatcher.grammar_from_lark(grammar))
    assert not matcher.is_error(), matcher.get_error()
    rng, out = random.Random(seed), bytearray()
    for _ in range(limit):
        if matcher.is_stopped():
            break
        mask = matcher.compute_bitmask()
        allowed = [i for i in range(257) if mask[i // 8] >> (i % 8) & 1]
        want = first.encode()[len(out)] if len(out) < len(first) else None
        token = want if want in allowed else rng.choice(allowed)
        assert matcher.consume_token(token)
        if token < 256:
            out.append(token)
    return out.decode("utf-8", "replace"), matcher.is_stopped()


@pytest.mark.parametrize("seed", range(6))
def test_required_grammar_gives_valid_calls_of_declared_tools(seed):
    text, finished = _walk(tool_call_grammar(TOOLS, required=True), seed)
    assert finished
    reply = parse_tool_calls(text, TOOLS)
    assert reply.calls and reply.content is None
    by_name = {t.name: t for t in TOOLS}
    for call in reply.calls:
        jsonschema.validate(call.arguments, by_name[call.name].parameters)


@pytest.mark.parametrize("seed", range(4))
def test_one_call_without_parallel_and_only_the_named_tool(seed):
    text, finished = _walk(tool_call_grammar([ADD], required=True, parallel=False), seed)
    reply = parse_tool_calls(text, TOOLS)
    assert finished and [c.name for c in reply.calls] == ["add"]


@pytest.mark.parametrize("seed", range(3))
def test_auto_grammar_allows_text_or_a_call(seed):
    grammar = tool_call_grammar(TOOLS, required=False)
    text, _ = _walk(grammar, seed, limit=40)
    assert parse_tool_calls(text, TOOLS).calls == []  # free text
    text, finished = _walk(grammar, seed, first="<tool_call>\n")
    assert finished and parse_tool_calls(text, TOOLS).calls


def test_auto_grammar_with_a_response_schema():
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    grammar = tool_call_grammar(TOOLS, required=False, text_schema=schema)
    text, finished = _walk(grammar, 0, first="{")
    assert finished and json.loads(text)["ok"] in (True, False)


# ----------------------------------------------------------------------------------------------
# Streaming


@pytest.mark.parametrize("seed", range(8))
def test_stream_parser_sends_name_first_then_arguments_that_join_to_the_json(seed):
    """Pieces of 1-7 characters (seeds 0-3) or up to 60 (4-7: jump-forward feeds several tokens
    at once): at most one delta per call in each piece, name first, arguments that join."""
    rng = random.Random(seed)
    calls = [ToolCall("get_weather", {"city": "a}b\"", "unit": "f"}),
             ToolCall("add", {"a": 12, "b": -3})]
    text = "Sure.\n" + "\n".join(c.block() for c in calls[: 1 + seed % 2])
    stream, content, seen = ToolCallStream(), "", {}
    at = 0
    while at < len(text):
        step = rng.randint(1, 7 if seed < 4 else 60)
        piece, deltas = stream.feed(text[at:at + step])
        at += step
        assert len({d.index for d in deltas}) == len(deltas)
        content += piece
        for d in deltas:
            if d.index not in seen:
                assert d.name and d.id  # the first delta of a call names it
                seen[d.index] = {"name": d.name, "arguments": d.arguments}
            else:
                assert d.name is None and d.id is None
                seen[d.index]["arguments"] += d.arguments
    content += stream.finish()
    assert content.strip() == "Sure."
    assert len(seen) == 1 + seed % 2
    for i, got in seen.items():
        assert got["name"] == calls[i].name
        assert json.loads(got["arguments"]) == calls[i].arguments


def test_stream_parser_passes_plain_text_and_a_lone_angle_bracket():
    stream = ToolCallStream()
    out = "".join(stream.feed(p)[0] for p in ["a < b", " <tool", "box> c"]) + stream.finish()
    assert out == "a < b <toolbox> c"
