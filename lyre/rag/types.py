"""The data types every part of lyre.rag speaks, and the two protocols a store and an embedder
implement. Kept in one small module with no dependencies so that loaders, stores (embedded and
PostgreSQL), retrievers and chains can all import it without import cycles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # numpy only for annotations: this module must stay import-light
    import numpy as np


@dataclass
class Document:
    """One loaded file (or one PDF page): the text and where it came from."""

    text: str
    source: str  # path as given / relative to the indexed root, posix separators
    page: int | None = None  # 1-based PDF page
    metadata: dict = field(default_factory=dict)


@dataclass
class Chunk:
    """A piece of a Document. text == document.text[start:end] exactly."""

    text: str
    source: str
    start: int  # character offsets of the chunk in its Document's text
    end: int
    page: int | None = None
    heading: str | None = None
    chunk_id: str = ""  # stable id: f"{source}#{start}" (+ f"@p{page}" when page)

    def __post_init__(self) -> None:
        if not self.chunk_id:
            self.chunk_id = make_chunk_id(self.source, self.start, self.page)


def make_chunk_id(source: str, start: int, page: int | None = None) -> str:
    """The stable id of a chunk: the same file split the same way gives the same ids."""
    return f"{source}#{start}" + (f"@p{page}" if page is not None else "")


@dataclass
class Hit:
    """One search result."""

    chunk: Chunk
    score: float  # higher is better; fused scores for hybrid
    rank: int = 0  # 1-based


class Store(Protocol):
    """What an index needs from its storage; embedded (SQLite) and PostgreSQL implement it and
    pass the SAME test suite (tests/rag_store_contract.py: a function run against each store)."""

    def sources(self) -> dict[str, str]: ...  # source -> content sha256

    def replace_source(self, source: str, content_hash: str, chunks: list[Chunk],
                       vectors: np.ndarray | None) -> None: ...  # one transaction

    def delete_source(self, source: str) -> bool: ...

    def chunk_count(self) -> int: ...

    def get_chunks(self, chunk_ids: list[str]) -> list[Chunk]: ...

    def lexical_search(self, query: str, k: int,
                       source_glob: str | None = None) -> list[Hit]: ...

    def vector_search(self, vector: np.ndarray, k: int,
                      source_glob: str | None = None) -> list[Hit]: ...

    def info(self) -> dict: ...  # embedder name/dim, chunking settings, counts

    def close(self) -> None: ...


class Embedder(Protocol):
    """Text -> float32 [n, dim] L2-normalised vectors. Never downloads anything."""

    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


ProgressFn = Callable[[str], None]  # receives one human-readable line per event
