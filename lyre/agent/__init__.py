"""An assistant that acts: the agent loop, tools and the built-in ones (docs/agent.md).

    tools.py       @tool: a function + the JSON schema of its arguments (from its type hints and
                   docstring), checked with jsonschema before each call
    calculator.py  calculator(expression): arithmetic through an AST walk, bounded
    search.py      search(query): passages of a lyre rag index, with their sources
    sql.py         sql(query): one read-only SELECT on a SQLite file (mode=ro, an authorizer,
                   a time limit, a row cap)
    builtins.py    builtin_tool("calculator" | "search:INDEX" | "sql:DB.sqlite"), parse_tools
    llm.py         the model: a run in process (EngineChat) or an OpenAI-compatible server
                   (OpenAIChat), one protocol; open_chat_model
    loop.py        Agent(llm, tools).run(question) -> AgentResult (answer, steps, stopped)

    from lyre.agent import Agent, tool, builtin_tool, open_chat_model

    @tool
    def add(a: int, b: int) -> int:
        \"\"\"Add two integers.\"\"\"
        return a + b

    agent = Agent(open_chat_model("runs/calc"), tools=[add, builtin_tool("calculator")])
    print(agent.run("What is 48,213 times 371?").answer)
"""

from lyre.core.lazy import lazy_exports

_EXPORTS = {
    "Agent": "lyre.agent.loop", "AgentResult": "lyre.agent.loop", "Step": "lyre.agent.loop",
    "run_with_time_limit": "lyre.agent.loop",
    "Tool": "lyre.agent.tools", "ToolError": "lyre.agent.tools", "tool": "lyre.agent.tools",
    "builtin_tool": "lyre.agent.builtins", "parse_tools": "lyre.agent.builtins",
    "calculator": "lyre.agent.calculator", "calculate": "lyre.agent.calculator",
    "sql_tool": "lyre.agent.sql", "search_tool": "lyre.agent.search",
    "ChatModel": "lyre.agent.llm", "EngineChat": "lyre.agent.llm", "OpenAIChat": "lyre.agent.llm",
    "Reply": "lyre.agent.llm", "Call": "lyre.agent.llm", "ContextFull": "lyre.agent.llm",
    "open_chat_model": "lyre.agent.llm",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
