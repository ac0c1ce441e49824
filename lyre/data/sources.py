"""The inputs of `lyre prepare`: files, folders and globs of text, read as a stream of documents.

Formats, by file name (after an optional .gz or .zst):
    .txt (and any other name)   one document per file, or one per paragraph (split_blank_lines)
    .jsonl                      one JSON object per line; its `text_field` is the document
    .json                       a JSON array of such objects (or of strings), loaded whole
    .parquet                    the `text_field` column, streamed in batches of rows (pyarrow)

A big .txt document is never held whole: it is read in chunks of about a megabyte, cut where
a BPE pre-tokenizer cuts anyway (`safe_cut`), so encoding the chunks gives the ids of the whole.

Two kinds of bad input. A bad *file* (not UTF-8, a NUL byte, a damaged .gz/.zst, a parquet file
without the column) is found by `scan` before anything is written: an error, or with
`skip_bad` a skipped file with its reason. A bad *record* (a JSONL line that is not JSON or has
no text field) is counted and skipped with its line number; `strict` refuses it instead.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lyre.core.errors import LyreError

DEFAULT_CHUNK_BYTES = 1 << 20  # read text 1 MiB at a time
FORMATS = ("txt", "jsonl", "json", "parquet")
COMPRESSIONS = {".gz": "gz", ".zst": "zst"}
PARQUET_ROWS = 1024  # rows read from a parquet file at once
EXAMPLES_KEPT = 5  # where a skip reason happened: the first few "file:line" kept per reason


@dataclass
class Source:
    """One input file, as `scan` found it."""

    path: Path
    format: str  # txt | jsonl | json | parquet
    compression: str | None  # None | gz | zst
    bytes: int  # size on disk
    sha256: str = ""
    text_bytes: int = 0  # decompressed size (txt only): where the tail split cuts
    key: str = ""  # txt only: the document key of its whole text (document_key, hex)
    skipped: str | None = None  # why the whole file is left out (skip_bad), else None

    def describe(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "bytes": self.bytes,
                "format": self.format + (f".{self.compression}" if self.compression else "")}


@dataclass
class Item:
    """A piece of the document stream: a whole document, or a chunk of a big .txt one."""

    text: str
    source: int  # index of its Source
    index: int  # position in its source's stream (records and chunks alike)
    first: bool  # True: the first piece of a document
    key: bytes | None = None  # content hash of the document, on its first piece
    split: int | None = None  # tail split only: 0 train, 1 val (a part of a .txt document)
    split_first: bool = False  # tail split only: the first piece of its part


class Skips:
    """Counts of what was left out, by reason, with where it happened."""

    def __init__(self, counts: dict | None = None, where: dict | None = None) -> None:
        self.counts: dict[str, int] = dict(counts or {})
        self.where: dict[str, list[str]] = {k: list(v) for k, v in (where or {}).items()}

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        kept = self.where.setdefault(reason, [])
        if len(kept) < EXAMPLES_KEPT:
            kept.append(where)

    def copy(self) -> Skips:
        return Skips(self.counts, self.where)

    def to_dict(self) -> dict:
        return {"counts": self.counts, "where": self.where}


# --------------------------------------------------------------------------------------------
# Which files


def expand_inputs(inputs: list[Path | str] | Path | str,
                  exclude: list[Path] | None = None) -> list[Path]:
    """Files, folders (every file below, hidden ones left out) and globs, in a stable order;
    nothing below `exclude` (the output directory, when it sits inside an input folder)."""
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    if not inputs:
        raise LyreError("no corpus files given; pass at least one file, folder or glob")
    paths: list[Path] = []
    for item in map(str, inputs):
        if any(c in item for c in "*?[") and not Path(item).exists():
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                raise LyreError(f"no file matches {item!r}")
            paths += found
            continue
        path = Path(item)
        if not path.exists():
            raise LyreError(f"corpus file not found: {path}")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise LyreError(f"folder {path} holds no files")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise LyreError(f"corpus path is not a file: {path}; pass the text files themselves")
    skip = [e.resolve() for e in exclude or []]
    seen: set[Path] = set()
    unique = [p for p in paths if not (p.resolve() in seen or seen.add(p.resolve()))
              and not any(p.resolve().is_relative_to(e) for e in skip)]
    if not unique:
        raise LyreError("no corpus files left once the output directory is left out")
    return unique


def kind_of(path: Path) -> tuple[str, str | None]:
    """(format, compression) from the file name: a.jsonl.zst -> ("jsonl", "zst")."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    fmt = suffixes[-1][1:] if suffixes else "txt"
    return (fmt if fmt in FORMATS else "txt"), compression


def open_binary(path: Path, compression: str | None) -> IO[bytes]:
    """The (decompressed) bytes of a file as a stream."""
    raw = open(path, "rb")
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if compression == "zst":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,
                                                            closefd=True)
        return io.BufferedReader(reader, 1 << 20)  # type: ignore[arg-type]
    return raw


_DECOMPRESS_ERRORS: tuple[type[Exception], ...] = (EOFError, OSError, zlib.error)


def _zstd_error() -> tuple[type[Exception], ...]:
    try:
        import zstandard

        return (zstandard.ZstdError,)
    except ImportError:  # pragma: no cover - zstandard is a dependency
        return ()


def scan(path: Path, *, text_field: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Source:
    """Hash a file and check what can be checked before preparing: the compression is intact,
    a .txt is UTF-8 without NUL bytes, a parquet file has the column. Raises LyreError."""
    fmt, compression = kind_of(path)
    size = path.stat().st_size
    if size == 0:
        raise LyreError(f"corpus file is empty: {path}")
    source = Source(path, fmt, compression, size, sha256=file_sha256(path))
    try:
        if fmt == "txt":  # also the paragraphs of split_blank_lines: a txt file is checked whole
            key = _key_hash()
            for chunk in iter_text(path, compression, 0, None, chunk_bytes):
                raw = chunk.encode("utf-8")
                key.update(raw)
                source.text_bytes += len(raw)
            source.key = key.hexdigest()
        elif fmt == "parquet":
            _parquet_file(path, text_field)
        elif compression:  # jsonl/json: read the stream once to find a damaged archive early
            with open_binary(path, compression) as f:
                while f.read(chunk_bytes):
                    pass
    except _DECOMPRESS_ERRORS + _zstd_error() as e:
        raise LyreError(f"corrupt {compression or fmt} file {path}: {e}") from None
    return source


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Text in chunks


def safe_cut(text: str) -> int:
    """Where to end a chunk so that encoding the pieces separately matches encoding the whole.

    Character tokenizers do not care, but BPE pre-tokenizers (GPT-2's regex) group runs of
    whitespace and attach a leading space to the next word. Cutting right after a single "\\n"
    that sits between two non-space characters (or, failing that, before a single space between
    two words) splits text exactly where those pre-tokenizers split it anyway. We look only in
    the second half of the text so chunks stay large; with no such place we cut at the end.
    """
    lo = len(text) // 2
    for sep, after in (("\n", 1), (" ", 0)):
        i = text.rfind(sep, lo, len(text) - 1)
        while i > lo:
            if not text[i - 1].isspace() and not text[i + 1].isspace():
                return i + after
            i = text.rfind(sep, lo, i)
    return len(text)


def iter_text(
    path: Path, compression: str | None, start: int, end: int | None, chunk_bytes: int,
    progress=None,
) -> Iterator[str]:
    """Yield the text of (decompressed) bytes [start, end) of `path` in chunks of about
    `chunk_bytes`; end None: to the end of the file.

    Raises LyreError naming the byte offset of the first NUL byte or invalid UTF-8 sequence.
    `start` must be at a character boundary; a character cut by a read is completed by the
    incremental decoder with the next read.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    carry = ""  # text read but not yet yielded (after the last safe cut)
    with open_binary(path, compression) as f:
        _skip(f, start, compression)
        pos = start
        while end is None or pos < end:
            want = chunk_bytes if end is None else min(chunk_bytes, end - pos)
            raw = f.read(want)
            if not raw and end is not None:  # the file shrank while we read it
                raise LyreError(f"corpus file changed while reading: {path}")
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise LyreError(
                    f"corpus file looks binary: {path} has a NUL byte at byte offset {pos + nul}; "
                    "lyre expects UTF-8 text"
                )
            pending = len(decoder.getstate()[0])  # bytes of a char cut by the previous read
            final = not raw or (end is not None and pos + len(raw) >= end)
            try:
                text = carry + decoder.decode(raw, final=final)
            except UnicodeDecodeError as e:
                raise LyreError(
                    f"corpus file is not valid UTF-8: {path} at byte offset "
                    f"{pos - pending + e.start} ({e.reason}); convert it to UTF-8 "
                    "(e.g. iconv -f latin1 -t utf-8)"
                ) from None
            pos += len(raw)
            if progress is not None:
                progress.update(len(raw))
            cut = len(text) if final else safe_cut(text)
            carry = text[cut:]
            if cut:
                yield text[:cut]
            if final:
                break
    if carry:
        yield carry


def _skip(f: IO[bytes], start: int, compression: str | None) -> None:
    if not start:
        return
    if compression is None:
        f.seek(start)
        return
    left = start
    while left > 0:
        got = len(f.read(min(left, 1 << 20)))
        if not got:
            break
        left -= got


def train_bytes(source: Source, val_fraction: float) -> int:
    """Byte offset where a .txt document switches from train to val (the tail split), moved
    back to a UTF-8 character start. int(size * (1 - val_fraction)) is nanoGPT's int(n * 0.9)
    for ASCII text (bytes == chars)."""
    cut = int(source.text_bytes * (1 - val_fraction))
    with open_binary(source.path, source.compression) as f:
        _skip(f, max(cut - 3, 0), source.compression)
        window = f.read(4)  # a UTF-8 char is at most 4 bytes: its start is in here
    # Continuation bytes look like 0b10xxxxxx; step back over them to the char's first byte.
    i = cut - max(cut - 3, 0)
    while 0 < i < len(window) and window[i] & 0xC0 == 0x80:
        cut, i = cut - 1, i - 1
    return cut


def text_cut(text: str, val_fraction: float) -> int:
    """The tail split of a document held in memory: the character index of the byte cut."""
    raw = text.encode("utf-8")
    cut = int(len(raw) * (1 - val_fraction))
    while 0 < cut < len(raw) and raw[cut] & 0xC0 == 0x80:
        cut -= 1
    return len(raw[:cut].decode("utf-8"))


# --------------------------------------------------------------------------------------------
# Documents


def _key_hash():
    return hashlib.blake2b(digest_size=16)


def document_key(text: str) -> bytes:
    """A document's content hash: the same text always lands in the same split, and --dedup
    recognises it, whatever file or format it comes from."""
    key = _key_hash()
    key.update(text.encode("utf-8", "surrogatepass"))
    return key.digest()


def iter_items(
    sources: list[Source], *, text_field: str, split_blank_lines: bool, strict: bool,
    skips: Skips, start: tuple[int, int] = (0, 0), chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[Item]:
    """Every piece of every document of `sources`, in order, from position `start`
    (source index, item index): what a resumed preparation skips is never tokenized, and its
    skipped records were counted before."""
    for s, source in enumerate(sources):
        if s < start[0] or source.skipped:
            continue
        yield from source_items(s, source, text_field=text_field,
                                split_blank_lines=split_blank_lines, strict=strict, skips=skips,
                                first_index=start[1] if s == start[0] else 0,
                                chunk_bytes=chunk_bytes)


def source_items(
    s: int, source: Source, *, text_field: str, split_blank_lines: bool, strict: bool,
    skips: Skips, first_index: int = 0, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[Item]:
    """The pieces of one source (index `s`) from its item `first_index` on."""
    if source.format == "txt" and not split_blank_lines:
        chunks = iter_text(source.path, source.compression, 0, None, chunk_bytes)
        key = bytes.fromhex(source.key)
        for i, chunk in enumerate(chunks):
            if i >= first_index:
                yield Item(chunk, s, i, i == 0, key if i == 0 else None)
        return
    records = {"txt": _paragraphs, "jsonl": _jsonl, "json": _json, "parquet": _parquet}
    for i, (text, why, where) in enumerate(records[source.format](source, text_field)):
        if i < first_index or (text is None and why is None):
            continue
        if why is None and not text.strip():
            why = "empty text"
        if why is not None:
            if strict and why != "empty text":
                raise LyreError(f"{where}: {why} (--strict refuses it; without --strict such "
                                "records are skipped and counted)")
            skips.add(why, where)
            continue
        yield Item(text, s, i, True, document_key(text))


# Each reader yields (text, None, where) per record, or (None, why it is skipped, where), or
# (None, None, where) for what is not a record (a blank line).
Record = tuple[str | None, str | None, str]


def _paragraphs(source: Source, text_field: str) -> Iterator[Record]:
    """A .txt file's paragraphs (separated by blank lines), streamed."""
    carry, n = "", 0
    for chunk in iter_text(source.path, source.compression, 0, None, DEFAULT_CHUNK_BYTES):
        parts = _BLANK_LINES.split(carry + chunk)
        carry = parts.pop()
        for part in parts:
            if part.strip():  # not a record: blank space at the start of a file
                n += 1
                yield part.strip("\r\n"), None, f"{source.path}:paragraph {n}"
    if carry.strip():
        yield carry.strip("\r\n"), None, f"{source.path}:paragraph {n + 1}"


_BLANK_LINES = re.compile(r"\r?\n[ \t]*(?:\r?\n)+")


def _record_text(obj, text_field: str) -> tuple[str | None, str | None]:
    """(text, None) or (None, why not)."""
    if isinstance(obj, str):
        return obj, None
    if not isinstance(obj, dict):
        return None, f"not a JSON object with a {text_field!r} field"
    if text_field not in obj:
        return None, f"no {text_field!r} field"
    text = obj[text_field]
    if not isinstance(text, str):
        return None, f"{text_field!r} is not a string"
    return text, None


def _jsonl(source: Source, text_field: str) -> Iterator[Record]:
    """One document per line (blank lines are not records)."""
    with open_binary(source.path, source.compression) as f:
        for n, line in enumerate(f):
            where = f"{source.path}:{n + 1}"
            if not line.strip():
                yield None, None, where  # not a record
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                yield None, "invalid JSON", where
                continue
            yield (*_record_text(obj, text_field), where)


def _json(source: Source, text_field: str) -> Iterator[Record]:
    """A JSON array of records, loaded whole (use .jsonl for big corpora)."""
    try:
        with open_binary(source.path, source.compression) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LyreError(f"{source.path} is not valid JSON ({e}); .json inputs hold one array "
                        "of records (use .jsonl for one record per line)") from None
    if not isinstance(data, list):
        raise LyreError(f"{source.path} holds a JSON {type(data).__name__}, expected an array "
                        f"of records with a {text_field!r} field")
    for n, obj in enumerate(data):
        yield (*_record_text(obj, text_field), f"{source.path}[{n}]")


def _parquet_file(path: Path, text_field: str):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...: all mean unreadable
        raise LyreError(f"cannot read parquet file {path}: {e}".splitlines()[0]) from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise LyreError(f"parquet file {path} has no column {text_field!r} (columns: "
                        f"{', '.join(names)}); pass --text-field")
    return pf


def _parquet(source: Source, text_field: str) -> Iterator[Record]:
    """The column, streamed in record batches of PARQUET_ROWS rows (within row groups): memory
    follows the batch, not the file or its row groups."""
    pf = _parquet_file(source.path, text_field)
    row = 0
    for batch in pf.iter_batches(batch_size=PARQUET_ROWS, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            where = f"{source.path}:row {row}"
            if isinstance(text, str):
                yield text, None, where
            else:
                yield None, f"{text_field!r} is null or not a string", where
            row += 1
