"""The built-in tools by name: `--tools calculator,search:INDEX,sql:DB.sqlite`.

    builtin_tool("calculator")         calculator(expression: str)
    builtin_tool("search:idx")         search(query: str)   over the lyre rag index idx
    builtin_tool("sql:shop.sqlite")    sql(query: str)      one read-only SELECT

The names and argument names are a contract: a model fine-tuned to call `calculator` with an
`expression` works with every lyre that has it.
"""

from __future__ import annotations

import difflib

from lyre.agent.tools import Tool
from lyre.core.errors import LyreError

BUILTINS = {
    "calculator": "arithmetic: calculator",
    "search": "passages of a lyre rag index: search:INDEX",
    "sql": "one read-only SELECT on a SQLite file: sql:DB.sqlite",
}


def builtin_tool(spec: str) -> Tool:
    """A built-in tool from its spec: NAME or NAME:ARGUMENT (the index, the database)."""
    name, _, target = spec.strip().partition(":")
    if name == "calculator":
        if target:
            raise LyreError(f"the calculator takes no argument; got {spec!r}")
        from lyre.agent.calculator import calculator_tool

        return calculator_tool()
    if name in ("search", "sql") and not target:
        raise LyreError(f"the {name} tool needs its {'index' if name == 'search' else 'database'}:"
                        f" {BUILTINS[name].rsplit(': ', 1)[1]}")
    if name == "search":
        from lyre.agent.search import search_tool

        return search_tool(target)
    if name == "sql":
        from lyre.agent.sql import sql_tool

        return sql_tool(target)
    close = difflib.get_close_matches(name, BUILTINS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise LyreError(f"unknown tool {name!r}{hint}; the built-in tools: "
                    + ", ".join(BUILTINS[n].rsplit(": ", 1)[1] for n in BUILTINS))


def parse_tools(text: str) -> list[Tool]:
    """`calculator,search:idx` -> the tools, each checked now (a missing index is an error)."""
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise LyreError("--tools is empty; e.g. --tools calculator,search:INDEX,sql:DB.sqlite")
    tools = [builtin_tool(s) for s in specs]
    names = [t.name for t in tools]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise LyreError(f"--tools names {', '.join(twice)} twice; one of each")
    return tools
