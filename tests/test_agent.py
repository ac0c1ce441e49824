"""The agent loop (lyre.agent.loop) against a scripted OpenAI-compatible endpoint: the exact
messages it sends, the step limit, calls that cannot run (an undeclared tool, arguments that are
not JSON or fail the schema, a tool that raises or hangs), the trace; and the same loop in
process through a tiny run, where constrained decoding makes every call valid."""

from __future__ import annotations

import json
import time
from typing import Literal

import pytest
from agent_util import ScriptedEndpoint, call

from lyre.agent import Agent, builtin_tool, tool
from lyre.core.errors import LyreError
from lyre.rag.callbacks import JSONLTracer

QUESTION = "What is 48,213 times 371?"


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first
        b: the second
    """
    return a + b


def calc_tools():
    return [builtin_tool("calculator"), add]


def test_the_exact_transcript_of_a_call_and_an_answer():
    endpoint = ScriptedEndpoint([
        {"calls": [call("calculator", {"expression": "48213 * 371"}, "call_a")]},
        {"content": "48,213 times 371 is 17887023."},
    ])
    pieces: list[str] = []
    result = Agent(endpoint.model_client(), tools=calc_tools()).run(QUESTION, on_token=pieces.append)

    assert result.answer == "48,213 times 371 is 17887023."
    assert "".join(pieces) == result.answer and len(pieces) > 1  # streamed
    assert result.stopped == "answer" and result.model_calls == 2 and result.tool_errors == 0
    (step,) = result.steps
    assert (step.name, step.arguments, step.result, step.error, step.call_id, step.turn) == \
        ("calculator", {"expression": "48213 * 371"}, "17887023", False, "call_a", 1)

    user = {"role": "user", "content": QUESTION}
    first, second = endpoint.bodies
    assert first["messages"] == [user]
    assert second["messages"] == [
        user,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "calculator", "arguments": '{"expression": "48213 * 371"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "17887023"},
    ]
    for body in (first, second):
        assert body["tool_choice"] == "auto" and body["stream"] is True
        assert body["model"] == "scripted"
        assert [t["function"]["name"] for t in body["tools"]] == ["calculator", "add"]
    declared = {t["function"]["name"]: t["function"] for t in first["tools"]}
    assert declared["add"] == {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {
            "a": {"type": "integer", "description": "the first"},
            "b": {"type": "integer", "description": "the second"}},
            "required": ["a", "b"], "additionalProperties": False}}
    assert declared["calculator"]["parameters"]["required"] == ["expression"]
    assert result.messages == second["messages"] + [
        {"role": "assistant", "content": "48,213 times 371 is 17887023."}]


def test_parallel_calls_each_get_their_tool_message_in_order():
    endpoint = ScriptedEndpoint([
        {"calls": [call("add", {"a": 1, "b": 2}, "c1"), call("calculator", {"expression": "2**5"}, "c2")]},
        {"content": "3 and 32"},
    ])
    result = Agent(endpoint.model_client(), tools=calc_tools()).run("two sums")
    assert [s.result for s in result.steps] == ["3", "32"]
    sent = endpoint.bodies[1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [m["tool_call_id"] for m in sent[2:]] == ["c1", "c2"]


def test_a_call_cut_short_by_the_token_limit_is_dropped():
    endpoint = ScriptedEndpoint([
        {"calls": [call("add", {"a": 1, "b": 2}, "whole"), call("add", '{"a": 1, "b"', "cut")],
         "finish": "length"},
        {"content": "3"}])
    result = Agent(endpoint.model_client(), tools=calc_tools()).run("1 + 2?")
    assert [s.call_id for s in result.steps] == ["whole"] and result.answer == "3"
    sent = endpoint.bodies[1]["messages"][1]["tool_calls"]
    assert [c["id"] for c in sent] == ["whole"]


def test_the_step_limit_stops_a_loop_that_never_answers():
    endpoint = ScriptedEndpoint([{"calls": [call("add", {"a": 1, "b": 1}, "again")]}],
                                repeat_last=True)
    result = Agent(endpoint.model_client(), tools=calc_tools(), max_steps=3).run("loop forever")
    assert result.stopped == "max_steps" and result.answer == ""
    assert result.model_calls == 3 and len(endpoint.bodies) == 3 and len(result.steps) == 3
    assert "no answer after 3 steps" in result.notices[0]
    with pytest.raises(LyreError, match="max-steps"):
        Agent(endpoint.model_client(), tools=calc_tools(), max_steps=0)


def test_tool_choice_per_model_call():
    """("required", "none"): one round of calls, then the answer, whatever the model prefers."""
    endpoint = ScriptedEndpoint([
        {"calls": [call("add", {"a": 1, "b": 2}, "c")]}, {"content": "3"}])
    result = Agent(endpoint.model_client(), tools=calc_tools(),
                   tool_choice=("required", "none")).run("1 + 2?")
    assert [b["tool_choice"] for b in endpoint.bodies] == ["required", "none"]
    assert result.answer == "3"
    endpoint = ScriptedEndpoint([{"calls": [call("add", {"a": 1, "b": 2}, "c")]}, {"content": "3"}])
    Agent(endpoint.model_client(), tools=calc_tools(), tool_choice="add").run("1 + 2?")
    assert endpoint.bodies[0]["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    with pytest.raises(LyreError, match="tool_choice must be"):
        Agent(endpoint.model_client(), tools=calc_tools(), tool_choice=("required", "sub"))


@pytest.mark.parametrize("name, arguments, error", [
    ("rm_rf", {"path": "/"}, "Error: there is no tool 'rm_rf'; the tools are calculator, add"),
    ("add", {"a": "one", "b": 2}, "Error: invalid arguments for add: 'one' is not of type 'integer' (at a)"),
    ("add", {"a": 1}, "Error: invalid arguments for add: 'b' is a required property"),
    ("add", {"a": 1, "b": 2, "c": 3}, "Error: invalid arguments for add: Additional properties"),
    ("add", '{"a": 1, "b": ', "Error: the arguments are not valid JSON"),
    ("add", "[1, 2]", "Error: the arguments must be a JSON object"),
    ("calculator", {"expression": "__import__('os').system('true')"}, "Error: only numbers"),
])
def test_a_call_that_cannot_run_is_answered_as_an_error_and_counted(name, arguments, error):
    endpoint = ScriptedEndpoint([{"calls": [call(name, arguments, "bad")]}, {"content": "sorry"}])
    result = Agent(endpoint.model_client(), tools=calc_tools()).run("try it")
    assert result.stopped == "answer" and result.answer == "sorry"
    (step,) = result.steps
    assert step.error and result.tool_errors == 1
    assert step.result.startswith(error)
    tool_message = endpoint.bodies[1]["messages"][-1]
    assert tool_message == {"role": "tool", "tool_call_id": "bad", "content": step.result}


def test_a_tool_that_raises_or_hangs_is_an_error_not_a_crash():
    @tool
    def explode(x: int) -> str:
        """Always fails."""
        raise RuntimeError(f"boom {x}")

    @tool(timeout_s=0.2)
    def hang(x: int) -> str:
        """Never returns in time."""
        time.sleep(5)
        return "late"

    endpoint = ScriptedEndpoint([
        {"calls": [call("explode", {"x": 1}, "e"), call("hang", {"x": 2}, "h")]},
        {"content": "done"},
    ])
    started = time.monotonic()
    result = Agent(endpoint.model_client(), tools=[explode, hang]).run("go")
    assert time.monotonic() - started < 4  # the hung call was abandoned at its limit
    assert [s.result for s in result.steps] == [
        "Error: RuntimeError: boom 1", "Error: the call took longer than 0.2 s; it was abandoned"]
    assert result.tool_errors == 2 and result.answer == "done"


def test_the_trace_shows_every_model_call_and_tool_call(tmp_path):
    endpoint = ScriptedEndpoint([
        {"calls": [call("calculator", {"expression": "6*7"}, "c")]}, {"content": "42"}])
    tracer = JSONLTracer(tmp_path / "trace.jsonl")
    Agent(endpoint.model_client(), tools=calc_tools(), callbacks=[tracer]).run("6 times 7?")
    tracer.close()
    events = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events if e["event"] != "llm_new_token"]
    assert kinds == ["chain_start", "llm_start", "llm_end", "tool_start", "tool_end",
                     "llm_start", "llm_end", "chain_end"]
    by = {e["event"]: e for e in events}
    assert by["tool_start"]["name"] == "calculator"
    assert by["tool_start"]["arguments"] == '{"expression": "6*7"}'
    assert by["tool_end"]["output"] == "42" and by["tool_end"]["error"] is False
    chain = by["chain_start"]["run_id"]
    assert all(e["parent_run_id"] == chain for e in events if e["event"].startswith(("tool", "llm")))
    assert by["chain_end"]["outputs"] == {"answer": "42", "stopped": "answer", "steps": 1,
                                          "tool_errors": 0}


def test_a_conversation_that_outgrows_the_context_stops_with_a_notice():
    endpoint = ScriptedEndpoint([
        {"calls": [call("add", {"a": 1, "b": 2}, "c")]},
        {"status": 400, "error": {"message": "this model's context is 256 tokens",
                                  "code": "context_length_exceeded", "type": "invalid_request_error"}},
    ])
    result = Agent(endpoint.model_client(), tools=calc_tools()).run("add")
    assert result.stopped == "context" and "context is 256 tokens" in result.notices[0]


def test_an_endpoint_error_is_one_line():
    endpoint = ScriptedEndpoint([{"status": 400, "error": {"message": "bad tools", "param": "tools"}}])
    with pytest.raises(LyreError, match="answered 400: bad tools"):
        Agent(endpoint.model_client(), tools=calc_tools()).run("x")
    from lyre.agent import OpenAIChat

    with pytest.raises(LyreError, match="does not serve the model 'other'; it serves scripted"):
        OpenAIChat("http://scripted.test", "other", transport=ScriptedEndpoint([]).transport)


def test_an_endpoint_that_is_down_is_one_line():
    from lyre.agent import OpenAIChat
    from lyre.core.openai_client import RetryPolicy
    from lyre.serve.server import free_port

    with pytest.raises(LyreError, match="cannot reach the LLM endpoint .* is the server running"):
        OpenAIChat(f"http://127.0.0.1:{free_port('127.0.0.1')}", "m", retry=RetryPolicy(retries=0))


def test_history_and_a_system_message():
    endpoint = ScriptedEndpoint([{"content": "again 3"}])
    history = [{"role": "user", "content": "1+2?"}, {"role": "assistant", "content": "3"}]
    agent = Agent(endpoint.model_client(), tools=calc_tools(), system="Be brief.")
    agent.run("and again?", history=history)
    assert endpoint.bodies[0]["messages"] == [{"role": "system", "content": "Be brief."}] + \
        history + [{"role": "user", "content": "and again?"}]
    endpoint = ScriptedEndpoint([{"content": "again 3"}])
    own = [{"role": "system", "content": "Be terse."}] + history
    Agent(endpoint.model_client(), system="Be brief.").run("and again?", history=own)
    assert endpoint.bodies[0]["messages"][0] == {"role": "system", "content": "Be terse."}
    endpoint = ScriptedEndpoint([{"content": "hi"}])
    Agent(endpoint.model_client(), system="Be brief.").run("hello")
    assert endpoint.bodies[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert "tools" not in endpoint.bodies[0]


def test_tools_must_be_tools_with_unique_names():
    with pytest.raises(LyreError, match="decorate the function with @tool"):
        Agent(ScriptedEndpoint([]).model_client(), tools=[len])
    with pytest.raises(LyreError, match="two tools are named 'add'"):
        Agent(ScriptedEndpoint([]).model_client(), tools=[add, add])


# ----------------------------------------------------------------------------------------------
# In process: a tiny random run; the grammar makes its calls valid


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The shared tiny run with a context that holds a tool list."""
    from serve_util import tiny_served_run

    return tiny_served_run(tmp_path_factory.getbasetemp(), block_size=2048)


@tool
def pick(a: Literal[1, 2, 3], b: Literal[1, 2, 3]) -> int:
    """Add two small numbers."""
    return a + b


def test_in_process_the_loop_runs_with_valid_calls(run):
    from lyre.agent import EngineChat

    llm = EngineChat(run, max_tokens=96)
    result = Agent(llm, tools=[pick], tool_choice="required", max_steps=2).run("1 + 2?")
    assert result.stopped == "max_steps" and result.model_calls == 2
    assert len(result.steps) >= 2 and result.tool_errors == 0
    for step in result.steps:
        assert step.name == "pick" and set(step.arguments) == {"a", "b"}
        assert step.result == str(step.arguments["a"] + step.arguments["b"])
    # the second prompt held the first call and its result, rendered by the run's template
    assert [m["role"] for m in result.messages[:3]] == ["user", "assistant", "tool"]


def test_in_process_auto_answers_in_text_or_calls(run):
    from lyre.agent import EngineChat

    llm = EngineChat(run, max_tokens=48)
    for seed in (1, 2, 3):
        llm.seed, llm.temperature = seed, 1.0
        result = Agent(llm, tools=[pick], max_steps=2).run("1 + 2?")
        assert result.stopped in ("answer", "length", "max_steps")
        assert result.tool_errors == 0


def test_a_char_run_reads_a_tool_result_with_characters_it_never_saw():
    """A tool's text (here an error with quotes) is read with unknown characters replaced: the
    loop goes on instead of failing on the tokenizer."""
    from lyre.agent.llm import readable_results
    from lyre.tokenizers import build_tokenizer

    tok = build_tokenizer("char", ["abc ?"])
    messages = [{"role": "user", "content": "abc"},
                {"role": "tool", "tool_call_id": "c1", "content": "a 'b' c"}]
    read = readable_results(messages, tok)
    assert read[0] == messages[0] and read[1]["content"] == "a ?b? c"
    assert messages[1]["content"] == "a 'b' c"  # the conversation itself is left as it was
