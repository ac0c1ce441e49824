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

A failure never leaves half a run: an index that holds something is updated in one transaction
(store.batch()), so it stays as it was; a new index is written source by source (a killed run
resumes where it stopped) and `index_documents` removes it again when the run fails.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lyre.core.errors import LyreError
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


def is_postgres(target: str | Path) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


def open_index(index: str | Path, store_url: str | None = None, write: bool = False) -> Store:
    """The Store of an index: a folder, a postgresql://.../db#NAME URL, or NAME in the
    PostgreSQL database `store_url`. For reading, a missing or empty index is a LyreError."""
    if store_url is not None and not is_postgres(store_url):
        raise LyreError(f"--store must be a postgresql:// URL; got {store_url!r}")
    target = store_url or str(index)
    if is_postgres(target):
        from lyre.rag.pgstore import PgStore

        store = PgStore(target, str(index) if store_url else None)
    else:
        store = open_store(target, create=write)
    if not write and store.chunk_count() == 0:
        store.close()
        raise LyreError(f"index {index} is empty; add documents with "
                        f"`lyre rag index DOCS --index {index}`")
    return store


def split_config(chunk_size: int | None = None, chunk_overlap: int | None = None,
                 stored: dict | None = None) -> SplitConfig | None:
    """The chunking an indexing run asks for: None (the index's own, or SplitConfig's defaults
    for a new index) when neither is given; a value not given comes from the index, else from
    SplitConfig (the overlap at most a fifth of a smaller chunk size)."""
    if chunk_size is None and chunk_overlap is None:
        return None
    current = (stored or {}).get("chunking") or {}
    default = SplitConfig()
    size = chunk_size if chunk_size is not None else current.get("chunk_size", default.chunk_size)
    if chunk_overlap is None:
        chunk_overlap = current.get("chunk_overlap") if chunk_size is None else None
    overlap = chunk_overlap if chunk_overlap is not None else min(default.chunk_overlap, size // 5)
    return SplitConfig(chunk_size=size, chunk_overlap=overlap,
                       sentences=current.get("sentences", default.sentences))


def index_documents(docs: list[str | Path], index: str | Path, *, store_url: str | None = None,
                    chunk_size: int | None = None, chunk_overlap: int | None = None,
                    embedder: str | None = None, include: list[str] | None = None,
                    exclude: list[str] | None = None, rebuild: bool = False,
                    progress: ProgressFn | None = None) -> tuple[IndexReport, int]:
    """`lyre rag index`: index `docs` into `index` (made when missing); (report, chunks in the
    index). A first index that fails (nothing readable, an embedding server down, Ctrl-C)
    leaves nothing behind; an update that fails leaves the index as it was (index_paths)."""
    from lyre.rag.embedders import index_embedder

    new = _new_index_marker(index, store_url)
    store = open_index(index, store_url, write=True)
    try:
        stored = store.settings() if hasattr(store, "settings") and not rebuild else {}
        report = index_paths([str(d) for d in docs], store,
                             split_config(chunk_size, chunk_overlap, stored),
                             index_embedder(embedder, stored), include=include, exclude=exclude,
                             rebuild=rebuild, progress=progress)
        chunks = store.chunk_count()
    except BaseException:
        if new is not None:
            _remove_new_index(store, new)
        else:
            store.close()
        raise
    store.close()
    return report, chunks


def _new_index_marker(index: str | Path, store_url: str | None) -> dict | None:
    """What a failed first index must remove (None: the index exists, keep it)."""
    if store_url is not None or is_postgres(index):
        return {"postgres": True}  # PgStore knows whether its schema existed (checked below)
    folder = Path(index)
    if (folder / "index.sqlite").exists():
        return None
    return {"folder": folder, "made": not folder.exists()}


def _remove_new_index(store: Store, new: dict) -> None:
    import shutil

    if new.get("postgres"):
        try:
            if not getattr(store, "existed", True):
                store.drop()
        finally:
            store.close()
        return
    store.close()
    folder: Path = new["folder"]
    if new["made"]:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "lock"):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "bm25", ignore_errors=True)


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
    known = store.sources()
    report = IndexReport(skipped=list(skipped))
    # An index that holds something is updated all or nothing: a failure (an embedding server
    # that went away, nothing readable left) leaves it as it was. A new index is written
    # source by source instead, so that a killed run resumes where it stopped.
    with _one_transaction(store) if known else nullcontext():
        settings, everything = _settings(store, split, lexical, embedder, rebuild)
        if hasattr(store, "set_settings") and settings != store.settings():
            store.set_settings(settings)
        splitter = RecursiveSplitter(SplitConfig(**settings["chunking"]), length)
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
        if store.chunk_count() == 0:
            reasons = "; ".join(f"{s.source}: {s.reason}" for s in report.skipped[:3])
            raise LyreError(f"no readable file to index ({reasons or 'nothing found'})")
    if hasattr(store, "flush"):
        store.flush()  # rebuild the BM25 matrix once, after all writes
    return report


def _one_transaction(store: Store):
    """The store's batch() (every write one transaction), or nothing when it has none."""
    batch = getattr(store, "batch", None)
    return batch() if batch is not None else nullcontext()


def list_sources(store: Store) -> dict[str, str]:
    """source -> content sha256 of everything in the index."""
    return store.sources()


def remove_source(store: Store, source: str) -> None:
    """Remove one source from the index; LyreError when it is not there."""
    if not store.delete_source(source):
        raise LyreError(f"{source} is not in the index; `lyre rag ls IDX` lists its sources")
    if hasattr(store, "flush"):
        store.flush()
