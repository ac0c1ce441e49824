"""The agent frameworks our users know, with the real packages, driving a real `lyre serve` of
a tiny run over its OpenAI-compatible API:

- LangChain's `create_agent` (LangGraph underneath) with a Python tool completes a loop: the
  model calls the tool, the tool's result goes back as a ToolMessage, the model answers. A tiny
  random model would not choose to call, so a middleware sets tool_choice per call ("required"
  first, "none" once a result is in) and strict (closed) schemas: the loop is LangChain's, the
  valid calls are lyre's constrained decoding; a tool-tuned model (the calculator recipe)
  needs neither.
- LlamaIndex: `OpenAILikeEmbedding` (lyre's /v1/embeddings) builds a `VectorStoreIndex` over a
  few documents and `OpenAILike` answers through a query engine, with its source nodes.
"""

from __future__ import annotations

from typing import Literal

import pytest

from lyre.serve import ServeSettings
from lyre.serve.server import start_background

DOCS = ["Andromache was the wife of Hector, prince of Troy.",
        "Achilles sulked in his tent by the black ships.",
        "Apollo sent a plague upon the camp of the Achaeans."]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The shared tiny run with a context that holds a tool list."""
    from serve_util import tiny_served_run

    return tiny_served_run(tmp_path_factory.getbasetemp(), block_size=2048)


@pytest.fixture(scope="module")
def server(run):
    with start_background(run, ServeSettings(model_name="tiny")) as srv:
        yield srv


def test_lyre_agent_over_http_against_lyre_serve(server):
    """lyre's own loop through OpenAIChat: the same server, streamed tool-call deltas put back
    together, one round of calls then the answer."""
    from lyre.agent import Agent, OpenAIChat, tool

    @tool
    def add(a: Literal[1, 2, 3], b: Literal[1, 2, 3]) -> int:
        """Add two small numbers."""
        return a + b

    llm = OpenAIChat(server.url, "tiny", max_tokens=120)
    result = Agent(llm, [add], tool_choice=("required", "none")).run("What is 1 + 2?")
    assert result.model_calls == 2 and result.stopped in ("answer", "length")
    assert result.steps and result.tool_errors == 0
    for step in result.steps:
        assert step.name == "add" and step.result == str(step.arguments["a"] + step.arguments["b"])
    roles = [m["role"] for m in result.messages]
    assert roles == ["user", "assistant"] + ["tool"] * len(result.steps) + ["assistant"]


def test_langchain_create_agent_completes_a_loop_with_a_python_tool(server):
    agents = pytest.importorskip("langchain.agents", reason="langchain>=1.0 is not installed")
    from langchain.agents.middleware import wrap_model_call
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    calls: list[tuple[int, int]] = []

    @tool
    def add(a: Literal[1, 2, 3], b: Literal[1, 2, 3]) -> int:
        """Add two small numbers."""
        calls.append((a, b))
        return a + b

    @wrap_model_call
    def call_then_answer(request, handler):
        # strict: closed schemas (additionalProperties false), so a random model cannot ramble
        # on in extra properties; lyre serve honours it as OpenAI does.
        answered = any(isinstance(m, ToolMessage) for m in request.messages)
        return handler(request.override(tool_choice="none" if answered else "required",
                                        model_settings={"strict": True}))

    model = ChatOpenAI(base_url=server.url + "/v1", api_key="unused", model="tiny",
                       temperature=0, max_tokens=120, max_retries=0, timeout=120)
    agent = agents.create_agent(model, tools=[add], middleware=[call_then_answer])
    out = agent.invoke({"messages": [{"role": "user", "content": "What is 1 + 2?"}]})

    messages = out["messages"]
    assert isinstance(messages[0], HumanMessage)
    first, results, last = messages[1], messages[2:-1], messages[-1]
    assert isinstance(first, AIMessage) and first.tool_calls  # parsed by LangChain from lyre's reply
    assert all(c["name"] == "add" and set(c["args"]) == {"a", "b"} for c in first.tool_calls)
    assert [type(m) for m in results] == [ToolMessage] * len(first.tool_calls)
    assert [m.content for m in results] == [str(a + b) for a, b in calls]
    assert [m.tool_call_id for m in results] == [c["id"] for c in first.tool_calls]
    assert isinstance(last, AIMessage) and not last.tool_calls  # the loop ended with an answer
    assert len(calls) == len(first.tool_calls) >= 1


def test_llamaindex_vector_index_and_query_engine_with_sources(server, run):
    core = pytest.importorskip("llama_index.core", reason="llama-index-core is not installed")
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding
    from llama_index.llms.openai_like import OpenAILike

    # LlamaIndex counts tokens with tiktoken's cl100k_base by default, which it would download:
    # count with the served run's own tokenizer instead (nothing downloads, counts are exact).
    core.Settings.tokenizer = run.tokenizer.encode
    api = server.url + "/v1"
    embed = OpenAILikeEmbedding(model_name="tiny", api_base=api, api_key="unused")
    llm = OpenAILike(model="tiny", api_base=api, api_key="unused", is_chat_model=True,
                     context_window=2048, max_tokens=24, temperature=0.0, max_retries=0)
    index = core.VectorStoreIndex.from_documents(
        [core.Document(text=t, metadata={"source": f"doc{i}.txt"}) for i, t in enumerate(DOCS)],
        embed_model=embed)
    response = index.as_query_engine(llm=llm, similarity_top_k=2).query("Who was Hector's wife?")

    assert isinstance(str(response), str)
    assert len(response.source_nodes) == 2
    for node in response.source_nodes:
        assert node.node.get_content() in DOCS and node.node.metadata["source"].startswith("doc")
        assert isinstance(node.score, float)
