"""Documents -> Chunks: the recursive character splitter, with exact offsets and headings.

The algorithm is LangChain's RecursiveCharacterTextSplitter (same chunks for the same settings,
tested against langchain_text_splitters): try the separators in order (paragraph "\\n\\n", line
"\\n", word " ", character ""); split the text at the first separator it contains, keeping the
separator at the start of the piece that follows it; greedily merge pieces into chunks of at
most `chunk_size`, carrying up to `chunk_overlap` of the tail of one chunk into the next; a
piece still too long is split again with the next separators. Chunks are stripped of
surrounding whitespace.

What we add: every piece is a (start, end) span of the original text rather than a string, so
each chunk knows its exact offsets (text[start:end] == chunk.text, always), which citations,
highlighting and the evaluation's span overlap rely on. LangChain recovers offsets with
str.find, which picks the wrong place when a passage repeats.

`length="tokens"` measures with a token-count function (e.g. the answering model's tokenizer)
instead of characters. `sentences=True` tries a sentence boundary right after paragraphs, so a
hard-wrapped text (one line per ~70 characters, like Project Gutenberg books) is cut at the end
of a sentence rather than at a line break in the middle of one.
"""

from __future__ import annotations

import bisect
import functools
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

from lyre.core.errors import LyreError
from lyre.rag.types import Chunk, Document

Span = tuple[int, int]

DEFAULT_SEPARATORS = ["\n\n", "\n", " ", ""]
# The end of a sentence: . ! or ? (optionally closed by a quote or bracket) then whitespace.
SENTENCE = r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+"
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


@dataclass
class SplitConfig:
    # 600/100 measured best on the tuning questions of bench/rag_retrieval.py (docs/rag.md):
    # more, smaller passages fit a fixed context budget than LangChain's usual 1000.
    chunk_size: int = 600
    chunk_overlap: int = 100
    sentences: bool = False  # cut hard-wrapped prose at sentence ends before line breaks

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise LyreError(f"chunk size must be at least 1, got {self.chunk_size}")
        if not 0 <= self.chunk_overlap < self.chunk_size:
            raise LyreError(
                f"chunk overlap must be between 0 and the chunk size ({self.chunk_size}), "
                f"got {self.chunk_overlap}"
            )

    def separators(self) -> list[tuple[str, bool]]:
        """(pattern, is_regex) in the order they are tried."""
        seps = [(s, False) for s in DEFAULT_SEPARATORS]
        if self.sentences:
            seps.insert(1, (SENTENCE, True))
        return seps


class RecursiveSplitter:
    """Split text into chunks of at most chunk_size (characters, or tokens via `length`)."""

    def __init__(self, config: SplitConfig | None = None,
                 length: Callable[[str], int] | None = None) -> None:
        self.config = config or SplitConfig()
        self.length = length or len

    # -- the LangChain algorithm over spans ----------------------------------------------------

    def split_spans(self, text: str) -> list[Span]:
        """(start, end) of each chunk of `text`, in order."""
        return self._split(text, (0, len(text)), self.config.separators())

    def _split(self, text: str, span: Span, separators: list[tuple[str, bool]]) -> list[Span]:
        # The first separator that occurs in this span decides how it is cut.
        separator, remaining = separators[-1], []
        for i, (sep, is_regex) in enumerate(separators):
            if sep == "":
                separator = (sep, is_regex)
                break
            if _occurs(text, span, sep, is_regex):
                separator, remaining = (sep, is_regex), separators[i + 1:]
                break
        bounds = _cut(text, span, *separator)  # piece j is text[bounds[j]:bounds[j + 1]]
        sizes = self._sizes(text, bounds)
        ends = list(accumulate(sizes, initial=0))  # pieces j..k-1 measure ends[k] - ends[j]
        chunks: list[Span] = []
        run = 0  # the first piece of the current run of small pieces
        for j in [j for j, n in enumerate(sizes) if n >= self.config.chunk_size]:
            if run < j:
                chunks.extend(self._merge(text, bounds, ends, run, j))
            piece = (bounds[j], bounds[j + 1])
            if remaining:
                chunks.extend(self._split(text, piece, remaining))
            else:  # nothing left to cut with: an over-long piece becomes its own chunk
                chunks.extend(_strip(text, piece))
            run = j + 1
        if run < len(sizes):
            chunks.extend(self._merge(text, bounds, ends, run, len(sizes)))
        return chunks

    def _sizes(self, text: str, bounds: list[int]) -> list[int]:
        """The length of each piece (characters, or whatever `length` counts)."""
        if self.length is len:  # characters: no need to copy the pieces out
            return list(map(operator.sub, bounds[1:], bounds))
        return [self.length(text[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]

    def _merge(self, text: str, bounds: list[int], ends: list[int], first: int,
               last: int) -> list[Span]:
        """Greedy merge of the small pieces first..last-1 into chunks, with overlap: LangChain's
        _merge_splits (the separator stays inside the pieces, so joining is concatenation).

        LangChain adds one piece at a time; with the prefix sums `ends` each step is a binary
        search instead: where the chunk starting at piece `a` must end, and how many of its
        last pieces the next chunk starts with. Same chunks (tested against LangChain)."""
        size, overlap = self.config.chunk_size, self.config.chunk_overlap
        chunks: list[Span] = []
        a = first
        while True:
            # The most pieces from a that fit: the largest b with ends[b] - ends[a] <= size
            # (at least one: every piece here is smaller than the chunk size).
            b = bisect.bisect_right(ends, ends[a] + size, a + 1, last + 1) - 1
            chunks.extend(_strip(text, (bounds[a], bounds[b])))
            if b == last:
                return chunks
            # The next chunk starts with the shortest tail of pieces a..b-1 that is at most
            # `overlap` long and leaves room for piece b beside it.
            a = max(bisect.bisect_left(ends, ends[b] - overlap, a, b),
                    bisect.bisect_left(ends, ends[b + 1] - size, a, b))

    # -- Documents -> Chunks ------------------------------------------------------------------

    def split_document(self, doc: Document) -> list[Chunk]:
        headings = _headings(doc) if doc.metadata.get("format") in {"md", "html", "docx"} else []
        positions = [h[0] for h in headings]
        chunks = []
        for start, end in self.split_spans(doc.text):
            i = bisect.bisect_right(positions, start) - 1
            chunks.append(Chunk(
                text=doc.text[start:end], source=doc.source, start=start, end=end,
                page=doc.page, heading=headings[i][1] if i >= 0 else None,
            ))
        return chunks

    def split_documents(self, docs: list[Document]) -> list[Chunk]:
        return [c for d in docs for c in self.split_document(d)]


def _occurs(text: str, span: Span, separator: str, is_regex: bool) -> bool:
    if is_regex:
        return _pattern(separator, is_regex).search(text, span[0], span[1]) is not None
    return text.find(separator, span[0], span[1]) != -1


def _cut(text: str, span: Span, separator: str, is_regex: bool) -> list[int]:
    """Where span is cut: [start, cut, ..., end], a cut before each separator match (the
    separator starts the next piece), no empty pieces. The empty separator cuts between
    characters."""
    start, end = span
    if separator == "":
        return list(range(start, end + 1))
    if is_regex:
        pattern = _pattern(separator, is_regex)
        cuts = [m.start() for m in pattern.finditer(text, start, end) if m.end() > m.start()]
        bounds = [start, *cuts, end]
    else:  # str.split finds the matches in C; the pieces' lengths give the cuts
        parts = text[start:end].split(separator)
        steps = [len(parts[0])] + [len(separator) + len(p) for p in parts[1:]]
        bounds = list(accumulate(steps, initial=start))
    return list(dict.fromkeys(bounds))  # drop repeats: empty pieces


@functools.lru_cache(maxsize=32)
def _pattern(separator: str, is_regex: bool) -> re.Pattern:
    return re.compile(separator if is_regex else re.escape(separator))


def _strip(text: str, span: Span) -> list[Span]:
    """The span without surrounding whitespace; nothing if it was all whitespace."""
    start, end = span
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [(start, end)] if end > start else []


def _headings(doc: Document) -> list[tuple[int, str]]:
    """(offset, heading text) of each Markdown heading line, in order."""
    return [(m.start(), m.group(2).strip()) for m in HEADING.finditer(doc.text)]


def split_documents(docs: list[Document], config: SplitConfig | None = None,
                    length: Callable[[str], int] | None = None) -> list[Chunk]:
    return RecursiveSplitter(config, length).split_documents(docs)


def token_length(tokenizer) -> Callable[[str], int]:
    """A length function counting the tokens of a lyre tokenizer (chunk sizes in tokens)."""
    return lambda s: len(tokenizer.encode(s))
