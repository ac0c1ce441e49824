"""The `search` tool: passages of a lyre rag index, with their sources.

    search = search_tool("idx")                  # `lyre rag index DOCS --index idx` built it
    search.invoke({"query": "Hector's wife"})
    # [1] iliad.txt (chars 10234-10890)
    # ... the passage ...

The index is opened and searched on one thread of its own (its SQLite connection belongs to
the thread that opened it), the way `lyre serve --rag` does; the agent's time limit waits on it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lyre.agent.tools import Tool, ToolError
from lyre.core.errors import LyreError

DEFAULT_K = 4
MAX_PASSAGE_CHARS = 600  # of one passage in the result: a small model's context is small


class SearchIndex:
    def __init__(self, index: str | Path, k: int = DEFAULT_K, embedder: str | None = None) -> None:
        self.name, self.k = str(index), k
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="lyre-agent-search")
        self.retriever = self.executor.submit(self._open, self.name, embedder).result()

    @staticmethod
    def _open(index: str, embedder: str | None):
        from lyre.rag.assistant import make_retriever
        from lyre.rag.index import open_index

        if "://" not in index and not Path(index).exists():
            raise LyreError(f"search: no index {index}; build one with "
                            f"`lyre rag index DOCS --index {index}`")
        return make_retriever(open_index(index), embedder)

    def run(self, query: str) -> str:
        if not isinstance(query, str) or not query.strip():
            raise ToolError("the query is empty")
        try:
            hits = self.executor.submit(self.retriever.search, query, self.k).result()
        except LyreError as e:
            raise ToolError(str(e)) from None
        if not hits:
            return "no passages found"
        return "\n\n".join(_passage(i, h) for i, h in enumerate(hits, 1))

    def close(self) -> None:
        self.executor.shutdown(wait=False)


def _passage(n: int, hit) -> str:
    c = hit.chunk
    where = f"page {c.page}, " if c.page is not None else ""
    text = " ".join(c.text.split())
    if len(text) > MAX_PASSAGE_CHARS:
        text = text[:MAX_PASSAGE_CHARS - 3] + "..."
    return f"[{n}] {c.source} ({where}chars {c.start}-{c.end})\n{text}"


def search_tool(index: str | Path, k: int = DEFAULT_K, embedder: str | None = None,
                timeout_s: float = 10.0) -> Tool:
    """The `search(query)` tool over a lyre rag index (a LyreError now if it is missing)."""
    idx = SearchIndex(index, k, embedder)

    def search(query: str) -> str:
        return idx.run(query)

    return Tool("search",
                f"Search the documents of the index {Path(idx.name).name} and get the "
                f"{k} best passages, each with its source.",
                {"type": "object",
                 "properties": {"query": {"type": "string", "description": "what to look for"}},
                 "required": ["query"], "additionalProperties": False},
                search, timeout_s=timeout_s)
