"""Indexing: files -> chunks -> a Store, incrementally.

`index_paths` is what `lyre rag index DOCS... --index IDX` runs. Each file is hashed (sha256 of
its bytes) and compared with the hash the store holds for its source:
  unchanged  skipped without being parsed (re-running on a large folder is cheap)
  new        loaded, split, embedded and written
  changed    its chunks replaced in one transaction
  deleted    a source under an indexed folder that is no longer there (or is now excluded
             by the include/exclude globs) is removed
  unreadable reported with its reason (and removed if an older version was indexed)
The settings an index was built with (chunking, BM25 analysis, embedder) are stored in it;
re-indexing with different ones asks for --rebuild rather than mixing two kinds of chunks.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lyre.errors import LyreError
from lyre.rag.lexical import LexicalConfig
from lyre.rag.loaders import (
    SkipFile,
    Skipped,
    content_hash,
    discover,
    folder_prefixes,
    load_bytes,
    read_bytes,
)
from lyre.rag.splitter import RecursiveSplitter, SplitConfig
from lyre.rag.types import Embedder, ProgressFn, Store


@dataclass
class IndexReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    chunks_written: int = 0

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.updated)} updated, {len(self.unchanged)} "
                f"unchanged, {len(self.removed)} removed, {len(self.skipped)} skipped; "
                f"{self.chunks_written} chunks written")


def open_store(path_or_url: str | Path, create: bool = False) -> Store:
    """A postgresql:// URL -> the PostgreSQL store; anything else -> an embedded index folder."""
    target = str(path_or_url)
    if target.startswith(("postgresql://", "postgres://")):
        from lyre.rag.pgstore import PgStore  # optional dependency (psycopg), imported lazily

        return PgStore(target)
    from lyre.rag.store import EmbeddedStore

    return EmbeddedStore(target, create=create)


@contextmanager
def _cyclic_gc_paused():
    """Python's cycle collector off while indexing (a speed trick). Indexing allocates ~10^5
    container objects (chunks, rows, token lists) and none of them form cycles, yet every 700
    allocations the collector scans the young ones, and now and then the whole heap (100 ms in
    a process with torch loaded: docs/log.md). Memory is still freed by reference counting;
    the collector is switched back on after, as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _settings(store: Store, split: SplitConfig | None, lexical: LexicalConfig | None,
              embedder: Embedder | None, rebuild: bool) -> tuple[dict, bool]:
    """The settings this run uses, and whether every source must be re-indexed."""
    stored = store.settings() if hasattr(store, "settings") else {}
    if split is None:
        split = SplitConfig(**stored["chunking"]) if stored.get("chunking") else SplitConfig()
    if lexical is None:
        lexical = LexicalConfig.from_dict(stored.get("lexical") or {})
    wanted = {"chunking": asdict(split), "lexical": asdict(lexical),
              "embedder": embedder.name if embedder else None,
              "dim": embedder.dim if embedder else None}
    if not stored.get("chunking") or rebuild:
        return wanted, True
    changed = [k for k in ("chunking", "embedder") if stored.get(k) != wanted[k]]
    if changed:
        what = ", ".join(f"{k} {stored.get(k)} -> {wanted[k]}" for k in changed)
        raise LyreError(f"this index was built with other settings ({what}); "
                        "re-index everything with --rebuild, or use a new index folder")
    return wanted, False


@_cyclic_gc_paused()  # a context manager, used as a decorator: around every call
def index_paths(
    paths: list[str | Path],
    store: Store,
    split: SplitConfig | None = None,
    embedder: Embedder | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    progress: ProgressFn | None = None,
    lexical: LexicalConfig | None = None,
    rebuild: bool = False,
    length=None,
) -> IndexReport:
    """Index files and folders into `store` (see the module docstring). `split=None` keeps the
    index's chunking (defaults for a new index); `length` counts chunk size in tokens."""
    say = progress or (lambda line: None)
    if hasattr(store, "acquire_write_lock"):
        store.acquire_write_lock()  # a second writer fails here, before any work
    files, skipped = discover(paths, include, exclude)
    if not files and not skipped:
        raise LyreError(f"no files found in {', '.join(map(str, paths))}")
    settings, everything = _settings(store, split, lexical, embedder, rebuild)
    if hasattr(store, "set_settings") and settings != store.settings():
        store.set_settings(settings)
    splitter = RecursiveSplitter(SplitConfig(**settings["chunking"]), length)
    known = store.sources()
    report = IndexReport(skipped=list(skipped))
    for s in skipped:
        say(f"skip {s.source}: {s.reason}")
    seen = set()
    for f in files:
        seen.add(f.source)
        try:
            data = read_bytes(f.path)
            digest = content_hash(data)
            if not everything and known.get(f.source) == digest:
                report.unchanged.append(f.source)
                continue
            chunks = splitter.split_documents(load_bytes(data, f.source))
        except SkipFile as e:
            report.skipped.append(Skipped(f.source, str(e)))
            say(f"skip {f.source}: {e}")
            if f.source in known and store.delete_source(f.source):
                report.removed.append(f.source)
            continue
        vectors = embedder.embed([c.text for c in chunks]) if embedder and chunks else None
        store.replace_source(f.source, digest, chunks, vectors)
        (report.updated if f.source in known else report.added).append(f.source)
        report.chunks_written += len(chunks)
        say(f"{'update' if f.source in known else 'add'} {f.source}: {len(chunks)} chunks")
    for prefix in folder_prefixes(paths):
        for source in known:
            if source.startswith(prefix) and source not in seen:
                store.delete_source(source)
                report.removed.append(source)
                say(f"remove {source}: no longer on disk (or now excluded)")
    if hasattr(store, "flush"):
        store.flush()  # rebuild the BM25 matrix once, after all writes
    if store.chunk_count() == 0:
        reasons = "; ".join(f"{s.source}: {s.reason}" for s in report.skipped[:3])
        raise LyreError(f"no readable file to index ({reasons or 'nothing found'})")
    return report


def list_sources(store: Store) -> dict[str, str]:
    """source -> content sha256 of everything in the index."""
    return store.sources()


def remove_source(store: Store, source: str) -> None:
    """Remove one source from the index; LyreError when it is not there."""
    if not store.delete_source(source):
        raise LyreError(f"{source} is not in the index; `lyre rag ls IDX` lists its sources")
    if hasattr(store, "flush"):
        store.flush()
