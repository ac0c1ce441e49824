"""Tools and structured output over lyre's OpenAI-compatible server, through real clients.

A tiny trained run (serve_util: byte-level BPE, 256 tokens of context) writes nearly random
text; constrained decoding is what makes its answers valid. Every schema here is bounded
(additionalProperties false, short strings, integer ranges, enums) so that a valid answer fits
in max_tokens whatever the model prefers: then every try, with every seed, must be valid.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field
from serve_util import sse_events, with_template

from lyre.serve import ServeSettings
from lyre.serve.server import start_background

SEEDS = (1, 2, 3)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two small integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                           "b": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, ADD]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Troy?"}]


class Hero(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=12)
    side: Literal["greek", "trojan"]
    age: int = Field(ge=15, le=90)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The shared tiny run, with a context that holds a tool list (about 900 BPE tokens)."""
    from serve_util import tiny_served_run

    return tiny_served_run(tmp_path_factory.getbasetemp(), block_size=2048)


@pytest.fixture(scope="module")
def server(run):
    with start_background(run, ServeSettings(model_name="tiny")) as srv:
        yield srv


@pytest.fixture(scope="module")
def chatml_server(run, run_dir, tmp_path_factory):
    from lyre.generate.runs import load_run

    chat_run = load_run(with_template(run_dir, tmp_path_factory.mktemp("chatml") / "run", "chatml"),
                        device="cpu")
    with start_background(chat_run, ServeSettings(model_name="tiny")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _valid_call(call) -> dict:
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, PARAMS[call.function.name])
    assert call.id and call.type == "function"
    return args


# ----------------------------------------------------------------------------------------------
# The openai SDK


@pytest.mark.parametrize("seed", SEEDS)
def test_named_tool_choice_always_calls_that_tool(client, seed):
    r = client.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, seed=seed, temperature=1.0, max_tokens=600,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and choice.message.content is None
    for call in choice.message.tool_calls:
        assert call.function.name == "get_weather"
        _valid_call(call)


@pytest.mark.parametrize("seed", SEEDS)
def test_required_with_one_call_and_the_chatml_template(chatml_server, seed):
    c = openai.OpenAI(base_url=chatml_server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    r = c.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, seed=seed,
                                  tool_choice="required", parallel_tool_calls=False, max_tokens=600)
    assert r.choices[0].finish_reason == "tool_calls"
    assert len(r.choices[0].message.tool_calls) == 1
    _valid_call(r.choices[0].message.tool_calls[0])


@pytest.mark.parametrize("seed", SEEDS)
def test_streamed_tool_deltas_reassemble(client, seed):
    stream = client.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", seed=seed,
        max_tokens=600, stream=True, stream_options={"include_usage": True})
    calls: dict[int, dict] = {}
    finish, usage = None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                assert d.index is not None
                if d.index not in calls:  # id and name come first
                    assert d.id and d.function.name and d.type == "function"
                    calls[d.index] = {"name": d.function.name, "arguments": d.function.arguments or ""}
                else:
                    assert d.id is None and d.function.name is None
                    calls[d.index]["arguments"] += d.function.arguments or ""
    assert finish == "tool_calls" and calls and usage is not None
    assert sorted(calls) == list(range(len(calls)))
    for call in calls.values():
        jsonschema.validate(json.loads(call["arguments"]), PARAMS[call["name"]])


def test_stream_helper_and_plain_answer_agree(client):
    """The SDK's own stream accumulator reads our deltas into the same calls as the answer."""
    kw = dict(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", seed=7,
              temperature=0, max_tokens=600)
    plain = client.chat.completions.create(**kw)
    with client.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion()
    got = [(c.function.name, json.loads(c.function.arguments)) for c in final.choices[0].message.tool_calls]
    want = [(c.function.name, json.loads(c.function.arguments)) for c in plain.choices[0].message.tool_calls]
    assert got == want


@pytest.mark.parametrize("seed", SEEDS)
def test_parse_with_a_pydantic_model(client, seed):
    r = client.chat.completions.parse(model="tiny", messages=[{"role": "user", "content": "A hero?"}],
                                      response_format=Hero, seed=seed, max_tokens=600)
    hero = r.choices[0].message.parsed
    assert isinstance(hero, Hero) and r.choices[0].finish_reason == "stop"


def test_json_object_and_vllm_extras(client):
    r = client.chat.completions.create(model="tiny", messages=ASK, seed=1, max_tokens=200,
                                       response_format={"type": "json_object"},
                                       extra_body={"top_k": 5})
    if r.choices[0].finish_reason == "stop":  # an unbounded object may run out of tokens
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    r = client.chat.completions.create(model="tiny", messages=ASK, seed=2, max_tokens=20,
                                       extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert r.choices[0].message.content in ("yes", "no")
    r = client.chat.completions.create(model="tiny", messages=ASK, seed=3, max_tokens=20,
                                       extra_body={"guided_regex": r"[0-9]{3}-[a-z]{2}"})
    assert len(r.choices[0].message.content) == 6 and r.choices[0].message.content[3] == "-"
    r = client.completions.create(model="tiny", prompt="Sing", max_tokens=20, seed=4,
                                  extra_body={"structured_outputs": {"regex": "(ab|cd){2}"}})
    assert r.choices[0].text in {a + b for a in ("ab", "cd") for b in ("ab", "cd")}
    r = client.completions.create(model="tiny", prompt="Sing", max_tokens=20, seed=5,
                                  extra_body={"guided_grammar": 'start: "x" ("+" "x"){0,2}'})
    assert r.choices[0].text in ("x", "x+x", "x+x+x")
    r = client.completions.create(model="tiny", prompt="Sing", max_tokens=20, seed=6,
                                  extra_body={"guided_grammar": 'root ::= "a" | "b"'})  # GBNF
    assert r.choices[0].text in ("a", "b")
    r = client.completions.create(model="tiny", prompt="Sing", max_tokens=300, seed=7,
                                  extra_body={"guided_json": Hero.model_json_schema()})
    Hero.model_validate_json(r.choices[0].text)


def test_tool_results_in_the_history_render_and_answer(client, run):
    from lyre.chat.templates import get_template

    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Troy", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": '{"sky": "clear"}'},
    ]
    r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS,
                                       tool_choice="none", max_tokens=5, seed=1)
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.tool_calls is None
    from lyre.chat.tools import Tool

    prompt = get_template("plain").render(messages, [Tool.from_openai(t) for t in TOOLS])
    assert r.usage.prompt_tokens == len(run.tokenizer.encode(prompt))


def test_auto_may_answer_in_text(client):
    r = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, seed=1, max_tokens=10)
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    if choice.finish_reason == "tool_calls":
        for call in choice.message.tool_calls:
            _valid_call(call)
    else:
        assert isinstance(choice.message.content, str)


def test_models_report_capabilities(client, server):
    card = httpx.get(server.url + "/v1/models").json()["data"][0]
    caps = card["capabilities"]
    assert caps["tools"] is True and "json_schema" in caps["response_format"]
    assert set(caps["structured_outputs"]) == {"json", "regex", "choice", "grammar"}


# ----------------------------------------------------------------------------------------------
# LangChain


def test_langchain_bind_tools_and_structured_output(server):
    lc = pytest.importorskip("langchain_openai")
    from langchain_core.messages import AIMessage

    for seed in SEEDS:
        llm = lc.ChatOpenAI(model="tiny", base_url=server.url + "/v1", api_key="unused",
                            max_retries=0, timeout=120, seed=seed, max_tokens=600)
        msg = llm.bind_tools([WEATHER, ADD], tool_choice="add").invoke("What is 2 + 3?")
        assert isinstance(msg, AIMessage) and msg.tool_calls
        for call in msg.tool_calls:
            assert call["name"] == "add" and call["id"]
            jsonschema.validate(call["args"], PARAMS["add"])
        msg = llm.bind_tools([WEATHER], tool_choice="required").invoke("Weather in Troy?")
        assert [c["name"] for c in msg.tool_calls][:1] == ["get_weather"]
        hero = llm.with_structured_output(Hero).invoke("Name a hero.")
        assert isinstance(hero, Hero)
        hero = llm.with_structured_output(Hero, method="function_calling").invoke("Name a hero.")
        assert isinstance(hero, Hero)


def test_langchain_streams_tool_calls(server):
    lc = pytest.importorskip("langchain_openai")

    llm = lc.ChatOpenAI(model="tiny", base_url=server.url + "/v1", api_key="unused",
                        max_retries=0, timeout=120, seed=4, max_tokens=600, streaming=True)
    total = None
    for chunk in llm.bind_tools([ADD], tool_choice="add").stream("2 + 3?"):
        total = chunk if total is None else total + chunk
    assert total.tool_calls and total.tool_calls[0]["name"] == "add"
    jsonschema.validate(total.tool_calls[0]["args"], PARAMS["add"])


# ----------------------------------------------------------------------------------------------
# Many at once


async def _one(http: httpx.AsyncClient, url: str, body: dict) -> dict:
    async with http.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        lines = [line async for line in r.aiter_lines()]
    events = sse_events(lines)
    assert events[-1] == "[DONE]"
    text, calls, finish = "", {}, None
    for e in events[:-1]:
        for c in e["choices"]:
            finish = c["finish_reason"] or finish
            text += c["delta"].get("content") or ""
            for d in c["delta"].get("tool_calls") or []:
                entry = calls.setdefault(d["index"], {"name": None, "arguments": ""})
                entry["name"] = d["function"].get("name") or entry["name"]
                entry["arguments"] += d["function"].get("arguments", "")
    return {"text": text, "calls": calls, "finish": finish}


def test_16_concurrent_streams_mixing_constrained_and_free(server):
    hero = {"type": "json_schema", "json_schema": {"name": "hero", "schema": Hero.model_json_schema(),
                                                   "strict": True}}
    kinds = [
        ("free", {}),
        ("tools", {"tools": TOOLS, "tool_choice": "required"}),
        ("schema", {"response_format": hero}),
        ("choice", {"structured_outputs": {"choice": ["alpha", "beta", "gamma"]}}),
    ]
    bodies = [(name, {"model": "tiny", "messages": ASK, "seed": i, "max_tokens": 600, **extra})
              for i in range(4) for name, extra in kinds]

    async def main():
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=32)) as http:
            return await asyncio.gather(*(_one(http, server.url, b) for _, b in bodies))

    results = asyncio.run(main())
    assert len(results) == 16
    for (name, _), got in zip(bodies, results, strict=True):
        assert got["finish"] is not None
        if name == "tools":
            assert got["finish"] == "tool_calls" and got["calls"]
            for call in got["calls"].values():
                jsonschema.validate(json.loads(call["arguments"]), PARAMS[call["name"]])
        elif name == "schema":
            assert got["finish"] == "stop"
            Hero.model_validate_json(got["text"])
        elif name == "choice":
            assert got["text"] in ("alpha", "beta", "gamma")
        else:
            assert got["finish"] in ("stop", "length") and not got["calls"]


# ----------------------------------------------------------------------------------------------
# Bad input: 400 with the field in `param`, streamed or not

BAD_SCHEMA = {"type": "object", "properties": {"a": {"type": "nonsense"}}}
CALLED = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]}
BAD = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": BAD_SCHEMA}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": BAD_SCHEMA}}]},
     "tools[0].function.parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"messages": ASK + [{"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
     "messages[1].tool_call_id"),
    ({"messages": ASK + [CALLED, {"role": "tool", "content": "3"}]}, "messages[2].tool_call_id"),
    ({"messages": ASK + [{**CALLED, "tool_calls": [{**CALLED["tool_calls"][0], "function": {
        "name": "add", "arguments": "{not json"}}]}]}, "messages[1].tool_calls[0].function.arguments"),
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"grammar": "start: start \"x\""}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"grammar": "this is not a grammar"}}, "structured_outputs.grammar"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
    ({"guided_json": BAD_SCHEMA}, "guided_json"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "guided_regex"),
    ({"guided_regex": "a", "tools": TOOLS}, "guided_regex"),
    ({"tools": TOOLS, "tool_choice": "auto", "structured_outputs": {"grammar": 'start: "a"'}},
     "structured_outputs.grammar"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("extra,param", BAD)
def test_bad_tool_and_format_requests_are_400_with_param(server, extra, param, stream):
    body = {"model": "tiny", "messages": ASK, "max_tokens": 5, "stream": stream, **extra}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["message"] and "\n" not in err["message"]


def test_bad_completion_constraint_is_400(server):
    for extra, param in (({"guided_regex": "("}, "guided_regex"),
                         ({"structured_outputs": {"grammar": "nope nope"}}, "structured_outputs.grammar"),
                         ({"response_format": {"type": "json_object"}}, "response_format")):
        r = httpx.post(server.url + "/v1/completions",
                       json={"model": "tiny", "prompt": "x", "stream": True, **extra}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_a_char_model_without_json_characters_says_so(trained_run):
    """The tiny Iliad char run knows no '{', '<' or digits: tools are a clear 400 (before any
    output, streamed too); a constraint its vocabulary can write (a choice of words) works."""
    from lyre.generate.runs import load_run

    char_run = load_run(trained_run, device="cpu")
    with start_background(char_run, ServeSettings(model_name="iliad")) as srv:
        def post(extra):
            return httpx.post(srv.url + "/v1/chat/completions", timeout=60, json={
                "model": "iliad", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                **extra})

        r = post({"tools": [ADD], "stream": True})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
        # JSON needs a '{' this vocabulary lacks: a 400 naming the field, not 200 with bad text
        r = post({"response_format": {"type": "json_object"}, "stream": True})
        assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
        r = post({"structured_outputs": {"choice": ["arms", "man"]}})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] in ("arms", "man")
