"""Files -> Documents: plain text, Markdown, HTML, PDF and Word (.docx).

Loading never stops at a bad file: a binary, empty, undecodable or corrupt file is skipped and
reported with a reason (`Skipped`), the way a user expects `lyre rag index docs/` to index
what it can and say what it could not. Only a path that does not exist at all is an error.

Each format keeps what later stages need:
  .txt            the text as is (UTF-8; a NUL byte means binary)
  .md/.markdown   the text as is; '#' headings are found by the splitter
  .html/.htm      visible text from the stdlib HTML parser; <script>/<style> dropped; h1..h6
                  become Markdown '#' lines so headings work the same as in .md files
  .pdf            one Document per page (1-based `page`) via pypdf; pages without text dropped
  .docx           paragraphs from word/document.xml (a zip of XML: no extra dependency);
                  'Heading N' styles become '#' lines
Sources are posix paths as the user gave them (`docs/` + path inside it), so the same command
run from the same directory names the same sources and re-indexing can match them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lyre.core.errors import LyreError
from lyre.rag.types import Document

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx"}


class SkipFile(Exception):
    """Raised by a loader for a file that cannot be indexed; the message is the reason."""


@dataclass
class Skipped:
    source: str
    reason: str


@dataclass
class SourceFile:
    """A file found on disk and the source name it is indexed under."""

    path: Path
    source: str


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Finding files


def _matches(rel: str, patterns: list[str]) -> bool:
    """fnmatch against the path inside the folder and against the bare name ('*.md' matches
    'a/b.md'; 'drafts/*' matches everything under drafts/)."""
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def discover(
    paths: list[str | Path], include: list[str] | None = None, exclude: list[str] | None = None
) -> tuple[list[SourceFile], list[Skipped]]:
    """Files to load under `paths` (folders are walked recursively, hidden entries ignored).

    include/exclude are glob patterns on the path inside each folder. Without include, every
    file is a candidate and unsupported types come back as Skipped; with include, only matching
    files are considered. A path that does not exist is a LyreError.
    """
    files: list[SourceFile] = []
    skipped: list[Skipped] = []
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise LyreError(f"{given}: no such file or folder")
        if root.is_file():
            candidates = [(root, root.as_posix())]
        else:
            candidates = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith("."):
                        p = Path(dirpath) / name
                        candidates.append((p, p.relative_to(root).as_posix()))
        for path, rel in candidates:
            source = path.as_posix()
            if root.is_dir():
                if include and not _matches(rel, include):
                    continue
                if exclude and _matches(rel, exclude):
                    continue
            if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                skipped.append(Skipped(source, f"unsupported file type '{path.suffix or path.name}'"))
                continue
            files.append(SourceFile(path, source))
    return files, skipped


def folder_prefixes(paths: list[str | Path]) -> list[str]:
    """Source-name prefixes owned by the folders in `paths`: a source under one of them that
    is no longer on disk was deleted and leaves the index."""
    return [Path(p).as_posix().rstrip("/") + "/" for p in paths if Path(p).is_dir()]


# ---------------------------------------------------------------------------------------------
# Reading one file


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SkipFile(f"unreadable: {e.strerror or e}") from None


def _decode_text(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise SkipFile("binary file (contains NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SkipFile(f"not UTF-8 text (bad byte at offset {e.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_bytes(data: bytes, source: str) -> list[Document]:
    """Documents from the raw bytes of one file; SkipFile with a reason when there are none."""
    suffix = Path(source).suffix.lower()
    if not data.strip():
        raise SkipFile("empty file")
    if suffix == ".pdf":
        docs = _load_pdf(data, source)
    elif suffix == ".docx":
        docs = [Document(_docx_text(data), source, metadata={"format": "docx"})]
    elif suffix in HTML_SUFFIXES:
        docs = [Document(html_to_text(_decode_text(data)), source, metadata={"format": "html"})]
    else:
        fmt = "md" if suffix in {".md", ".markdown"} else "txt"
        docs = [Document(_decode_text(data), source, metadata={"format": fmt})]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise SkipFile("no text found")
    return docs


def load_file(path: str | Path, source: str | None = None) -> list[Document]:
    """Documents of one file (SkipFile when it cannot be indexed)."""
    path = Path(path)
    return load_bytes(read_bytes(path), source or path.as_posix())


def load_documents(
    paths: list[str | Path], include: list[str] | None = None, exclude: list[str] | None = None
) -> LoadResult:
    """Every Document under `paths`, and every file that was skipped with its reason."""
    files, skipped = discover(paths, include, exclude)
    result = LoadResult(skipped=skipped)
    for f in files:
        try:
            result.documents.extend(load_file(f.path, f.source))
        except SkipFile as e:
            result.skipped.append(Skipped(f.source, str(e)))
    if not files and not skipped:
        raise LyreError(f"no files found in {', '.join(map(str, paths))}")
    return result


# ---------------------------------------------------------------------------------------------
# HTML


def html_to_text(html: str) -> str:
    """Visible text of an HTML page (lyre.rag.html_text, imported only when HTML is met)."""
    from lyre.rag.html_text import html_to_text as convert

    return convert(html)


# ---------------------------------------------------------------------------------------------
# PDF and DOCX


def _load_pdf(data: bytes, source: str) -> list[Document]:
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # malformed PDFs warn per object
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise SkipFile("encrypted PDF")
        docs = []
        for number, page in enumerate(reader.pages, start=1):
            text = (page.extract_text() or "").replace("\r\n", "\n")
            if text.strip():
                docs.append(Document(text, source, page=number, metadata={"format": "pdf"}))
    except SkipFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        raise SkipFile(f"corrupt PDF ({type(e).__name__}: {str(e)[:80]})") from None
    if not docs:
        raise SkipFile("PDF without extractable text (a scan? run OCR first)")
    return docs


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def _docx_text(data: bytes) -> str:
    """Paragraph text of a .docx; 'Heading N' paragraph styles become N '#' marks."""
    import zipfile  # here, not at the top: a plain-text run need not import zip and XML
    from xml.etree import ElementTree

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            root = ElementTree.fromstring(z.read("word/document.xml"))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError) as e:
        raise SkipFile(f"corrupt .docx ({type(e).__name__})") from None
    paragraphs = []
    for p in root.iter(f"{_W}p"):
        text = "".join(t.text or "" for t in p.iter(f"{_W}t"))
        style = p.find(f"{_W}pPr/{_W}pStyle")
        level = re.fullmatch(r"(?i)heading\s*([1-6])", style.get(f"{_W}val", "")) if style is not None else None
        if level and text.strip():
            text = "#" * int(level.group(1)) + " " + text.strip()
        paragraphs.append(text)
    return "\n\n".join(p for p in paragraphs if p.strip()) + "\n"
