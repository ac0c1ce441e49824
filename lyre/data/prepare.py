"""`lyre prepare`: a corpus of any size -> token shards + manifest, in parallel, resumable.

The pipeline, in order:
    1. scan      every input file is hashed and checked (sources.scan); a bad file stops the
                 preparation here, before anything is written (or is skipped with --skip-bad)
    2. tokenizer char learns from the whole corpus (each character needs an id), bpe:V from a
                 seeded sample of documents of about TOKENIZER_SAMPLE_BYTES, gpt2:DIR is ready
    3. encode    the main process reads documents, drops duplicates (--dedup), gives each to a
                 split, groups them in batches of about BATCH_CHARS characters; worker processes
                 turn a batch into two token arrays (train, val) with <|endoftext|> before each
                 document; the main process appends them to the shards, in input order, so any
                 number of workers writes the same bytes
    4. install   manifest.json and meta.json are written and the staging directory
                 (.NAME.partial next to the output) is renamed into place

The split is by document: a document goes to val when a seeded hash of its content falls below
val_fraction, so the same text always lands in the same split, whatever the workers or a resume.
A corpus of fewer than MIN_DOCUMENTS_TO_SPLIT documents (the demo: one book) cannot be split that
way; then each document gives its first (1 - val_fraction) of bytes to train and the rest to val,
and documents are separated, not preceded, by <|endoftext|>: for one file and the char tokenizer
that is exactly nanoGPT's split.

Memory stays flat: documents stream in, at most 2 batches per worker are in flight, shards are
appended to. Resume: after every finished shard, .progress.json records where the input stood;
a killed run continues from there (finished shards kept); a run on the same inputs and options
as a finished directory does nothing ("up to date").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lyre.core.errors import LyreError
from lyre.core.io import write_json
from lyre.data import shards as fmt
from lyre.data import sources as src
from lyre.data.workers import in_order, worker_pool
from lyre.tokenizers import Tokenizer, build_tokenizer, load_tokenizer

DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per shard, as llm.c's FineWeb shards
DEFAULT_SEED = 1337
BATCH_CHARS = 1 << 21  # characters of text per task handed to a worker
PARALLEL_MIN_BYTES = 8 << 20  # below this, workers cost more to start than they save
PROGRESS_MIN_BYTES = 4 << 20  # show progress bars only for corpora at least this big
MIN_DOCUMENTS_TO_SPLIT = 10  # fewer documents: the tail split (see the module docstring)
TOKENIZER_SAMPLE_BYTES = 256 << 20  # text a bpe:V tokenizer learns from, sampled
PROGRESS = ".progress.json"
DEDUP = ".dedup.u64"  # the 8-byte hashes of the documents kept so far (--dedup, for resume)
TAIL, DOCUMENTS = "tail", "documents"


class Interrupted(LyreError):
    """Preparation stopped by the machine (a full disk): what is done is kept for a re-run."""


@dataclass
class PrepareOptions:
    """The options of `lyre prepare` (the CLI flags, one for one)."""

    tokenizer: str = "char"
    val_fraction: float = 0.1
    seed: int = DEFAULT_SEED
    workers: int | None = None  # None: the CPU count (in-process for small corpora)
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    text_field: str = "text"
    split_blank_lines: bool = False
    dedup: bool = False
    skip_bad: bool = False  # skip unreadable/binary/corrupt files (counted) instead of failing
    strict: bool = False  # refuse a record without the text field instead of skipping it
    force: bool = False
    progress: bool = True
    chunk_bytes: int = src.DEFAULT_CHUNK_BYTES

    def check(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise LyreError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.shard_tokens < 1:
            raise LyreError(f"--shard-tokens must be positive, got {self.shard_tokens}")
        if self.workers is not None and self.workers < 1:
            raise LyreError(f"--workers must be at least 1, got {self.workers}")
        if self.chunk_bytes < 1:
            raise LyreError(f"chunk_bytes must be positive, got {self.chunk_bytes}")
        if self.skip_bad and self.strict:
            raise LyreError("--skip-bad and --strict contradict each other; pass one")

    def recorded(self) -> dict:
        """What decides the output (not workers, progress or chunk sizes): the fingerprint."""
        keep = ("tokenizer", "val_fraction", "seed", "shard_tokens", "text_field",
                "split_blank_lines", "dedup", "skip_bad", "strict")
        return {k: v for k, v in asdict(self).items() if k in keep}


@dataclass
class PrepareResult:
    manifest: dict
    out_dir: Path
    up_to_date: bool = False  # nothing to do: the directory already holds this preparation
    resumed: bool = False  # continued a killed preparation
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """The one JSON object of `lyre prepare --json`."""
        m, c = self.manifest, self.manifest["counts"]
        return {"out": str(self.out_dir), "documents": c["documents"], "tokens": c["tokens"],
                "train_tokens": m["train_tokens"], "val_tokens": m["val_tokens"],
                "train_documents": c["train_documents"], "val_documents": c["val_documents"],
                "shards": c["shards"], "skipped": c["skipped"], "skipped_where": c["skipped_where"],
                "files_skipped": c["files_skipped"], "duplicates": c["duplicates"],
                "split": m["split"]["mode"], "dtype": m["dtype"],
                "vocab_size": m["vocab_size"], "tokenizer": m["tokenizer"],
                "up_to_date": self.up_to_date, "resumed": self.resumed, "notes": self.notes}


# --------------------------------------------------------------------------------------------
# The entry point


def prepare_corpus(inputs, out_dir: Path | str, options: PrepareOptions | None = None) -> PrepareResult:
    """Prepare `inputs` (files, folders, globs) into the data directory `out_dir`."""
    opts = options or PrepareOptions()
    opts.check()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.partial"
    sources = _scan_all(src.expand_inputs(inputs, exclude=[out_dir, staging]), opts)
    fingerprint = _fingerprint(sources, opts)

    if fmt.is_prepared(out_dir):
        old = fmt.load_meta(out_dir)
        if old.get("fingerprint") == fingerprint:
            return PrepareResult(old, out_dir, up_to_date=True, notes=["up to date"])
        if not opts.force:
            raise LyreError(f"{out_dir} already holds a prepared dataset from other inputs or "
                            "options; pass --force to overwrite it")

    progress = _read_progress(staging, fingerprint)
    if progress is None:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    try:
        tokenizer = _tokenizer(staging, sources, opts)
        mode = progress["mode"] if progress else _split_mode(sources, opts)
        counts, notes = _encode(staging, sources, tokenizer, opts, mode, fingerprint, progress)
        if mode == DOCUMENTS and (counts["documents"] < MIN_DOCUMENTS_TO_SPLIT
                                  or not counts["val_documents"] or not counts["train_documents"]):
            notes.append(f"{counts['documents']} document(s) gave a split without documents: "
                         "used the tail split instead")
            _clear_shards(staging)
            mode = TAIL
            counts, more = _encode(staging, sources, tokenizer, opts, mode, fingerprint, None)
            notes += more
        if mode == TAIL:
            notes.append("the corpus has too few documents to split by document: each one gave "
                         f"its last {opts.val_fraction:g} to val")
        manifest = _manifest(staging, sources, tokenizer, opts, mode, fingerprint, counts)
        _install(staging, out_dir)
    except Interrupted:
        raise  # the staging directory is kept: the next run continues it
    except BrokenProcessPool:
        raise Interrupted("a worker process died (out of memory?); what is finished is kept: "
                          "run the same command again (with fewer --workers) to continue") from None
    except OSError as e:
        raise Interrupted(f"{e.filename or staging}: {e.strerror or e}; what is finished is kept "
                          "in " + str(staging) + ": run the same command again to continue") from None
    except LyreError:
        shutil.rmtree(staging, ignore_errors=True)  # bad input: nothing worth resuming
        raise
    return PrepareResult(manifest, out_dir, resumed=progress is not None, notes=notes)


def _check_out_dir(out_dir: Path) -> None:
    """Refuse a path that is not a directory, or a directory lyre did not write."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise LyreError(f"output path exists and is not a directory: {out_dir}")
    if not fmt.is_prepared(out_dir) and any(out_dir.iterdir()):
        # Even with force: replacing it would delete files lyre did not write.
        raise LyreError(
            f"{out_dir} is not empty and not a lyre data directory; choose another output path"
        )


def _scan_all(paths: list[Path], opts: PrepareOptions) -> list[src.Source]:
    sources = []
    for path in paths:
        try:
            sources.append(src.scan(path, text_field=opts.text_field, chunk_bytes=opts.chunk_bytes))
        except LyreError as e:
            if not opts.skip_bad:
                raise
            fmt_, comp = src.kind_of(path)
            sources.append(src.Source(path, fmt_, comp, path.stat().st_size, skipped=str(e)))
        except OSError as e:
            if not opts.skip_bad:
                raise LyreError(f"cannot read {path}: {e.strerror or e}") from None
            sources.append(src.Source(path, *src.kind_of(path), 0, skipped=f"unreadable: {e}"))
    if all(s.skipped for s in sources):
        raise LyreError(f"no usable input: every file was skipped ({sources[0].skipped})")
    return sources


def _fingerprint(sources: list[src.Source], opts: PrepareOptions) -> str:
    what = {"sources": [s.describe() for s in sources], "options": opts.recorded()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _split_mode(sources: list[src.Source], opts: PrepareOptions) -> str:
    """Known before reading when every input is one .txt document: too few to split by them."""
    used = [s for s in sources if not s.skipped]
    one_each = all(s.format == "txt" for s in used) and not opts.split_blank_lines
    return TAIL if one_each and len(used) < MIN_DOCUMENTS_TO_SPLIT else DOCUMENTS


# --------------------------------------------------------------------------------------------
# The tokenizer


def _tokenizer(staging: Path, sources: list[src.Source], opts: PrepareOptions) -> Tokenizer:
    """Build (or, resuming, reload) the tokenizer, saved in staging/tokenizer for the workers."""
    directory = staging / "tokenizer"
    if directory.is_dir():
        return load_tokenizer(directory)
    kind = opts.tokenizer.partition(":")[0]
    texts = None
    if kind in ("char", "bpe") and not Path(opts.tokenizer).is_dir():
        bar = _bar(sources, opts, "learning tokenizer")
        sample = 1.0 if kind == "char" else min(1.0, TOKENIZER_SAMPLE_BYTES / _text_bytes(sources))
        texts = _sample_texts(sources, opts, sample, bar)
    tokenizer = build_tokenizer(opts.tokenizer, texts)
    tmp = staging / "tokenizer.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save(tmp)
    os.replace(tmp, directory)
    return tokenizer


def _sample_texts(sources, opts: PrepareOptions, fraction: float, bar: tqdm) -> Iterator[str]:
    """The corpus's text (fraction 1) or a seeded sample of its documents, streamed."""
    threshold = int(fraction * 2**64)
    taking = True
    with bar:
        for item in src.iter_items(sources, text_field=opts.text_field,
                                   split_blank_lines=opts.split_blank_lines, strict=False,
                                   skips=src.Skips(), chunk_bytes=opts.chunk_bytes):
            if item.first:
                taking = fraction >= 1.0 or _unit_hash(item.key, opts.seed + 1) < threshold
                bar.update(1)
            if taking:
                yield item.text


def _text_bytes(sources: list[src.Source]) -> int:
    return max(1, sum(s.text_bytes or s.bytes for s in sources if not s.skipped))


def _bar(sources, opts: PrepareOptions, desc: str) -> tqdm:
    return tqdm(desc=desc, unit=" docs", file=sys.stderr,
                disable=not opts.progress or _text_bytes(sources) < PROGRESS_MIN_BYTES)


def _unit_hash(key: bytes, seed: int) -> int:
    """A seeded 64-bit hash of a document key."""
    digest = hashlib.blake2b(key, digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little")


# --------------------------------------------------------------------------------------------
# Encoding: documents -> batches -> workers -> shards


@dataclass
class Batch:
    """Pieces of text for one worker task, and where the input stood when it began."""

    index: int
    start: tuple[int, int]  # (source, item) of its first item: where a resume reads from
    counts: dict  # the counts before it
    skips: src.Skips  # the skips before it
    document: tuple[int, bool]  # the split of the document it begins in, and if it is dropped
    pieces: list[tuple[str, int, bool]] = field(default_factory=list)  # (text, split, eot first)
    keys: list[int] = field(default_factory=list)  # dedup hashes of its documents
    chars: int = 0
    documents: int = 0


def _new_counts() -> dict:
    return {"documents": 0, "train_documents": 0, "val_documents": 0, "duplicates": 0}


def _batches(items: Iterator[src.Item], mode: str, opts: PrepareOptions, sources, skips: src.Skips,
             counts: dict, seen: set[int], first_index: int,
             document: tuple[int, bool]) -> Iterator[Batch]:
    """Group documents into batches; dedup and split happen here, in the main process, so they
    are the same for any number of workers. `document`: the state of the document a resumed
    run starts inside."""
    threshold = int(opts.val_fraction * 2**64)
    batch: Batch | None = None
    index, documents = first_index, counts["documents"]
    split, dropping = document
    for item in items:
        if batch is None:
            batch = Batch(index, (item.source, item.index), dict(counts), skips.copy(),
                          (split, dropping))
        if item.first:
            batch.documents += 1
            dropping = False
            key = int.from_bytes(item.key[:8], "little")
            if opts.dedup:
                if key in seen:
                    counts["duplicates"] += 1
                    dropping = True
                    continue
                seen.add(key)
                batch.keys.append(key)
            counts["documents"] += 1
            if mode == DOCUMENTS:
                split = int(_unit_hash(item.key, opts.seed) < threshold)
                counts[("train_documents", "val_documents")[split]] += 1
        elif dropping:
            continue
        if mode == DOCUMENTS:
            batch.pieces.append((item.text, split, item.first))
        else:
            batch.pieces += _tail_pieces(item, sources[item.source], opts, documents)
            if item.first:
                documents += 1
                counts["train_documents"] += 1
                counts["val_documents"] += 1
        batch.chars += len(item.text)
        if batch.chars >= BATCH_CHARS:
            yield batch
            batch, index = None, index + 1
    if batch is not None:
        yield batch


def _tail_items(sources: list[src.Source], opts: PrepareOptions, skips: src.Skips,
                start: tuple[int, int]) -> Iterator[src.Item]:
    """The tail split's pieces: a whole .txt file is read as its train part then its val part
    (each in chunks), so that each part is encoded on its own exactly as before shards."""
    for s, source in enumerate(sources):
        if s < start[0] or source.skipped:
            continue
        first = start[1] if s == start[0] else 0
        if source.format == "txt" and not opts.split_blank_lines:
            cut = src.train_bytes(source, opts.val_fraction)
            parts = chain(
                ((0, t) for t in src.iter_text(source.path, source.compression, 0, cut, opts.chunk_bytes)),
                ((1, t) for t in src.iter_text(source.path, source.compression, cut, None, opts.chunk_bytes)),
            )
            key = bytes.fromhex(source.key)
            starts = {0: True, 1: True}
            for i, (split, text) in enumerate(parts):
                if i >= first:
                    yield src.Item(text, s, i, i == 0, key if i == 0 else None, split, starts[split])
                starts[split] = False
            continue
        yield from src.source_items(s, source, text_field=opts.text_field,
                                    split_blank_lines=opts.split_blank_lines, strict=opts.strict,
                                    skips=skips, first_index=first, chunk_bytes=opts.chunk_bytes)


def _tail_pieces(item: src.Item, source: src.Source, opts: PrepareOptions,
                 documents: int) -> list[tuple[str, int, bool]]:
    """An item of the tail split as pieces; <|endoftext|> goes between documents (from the
    second on), never before the first: one file is exactly its text."""
    if item.split is not None:  # a chunk of a .txt part
        eot = item.split_first and documents - (0 if item.first else 1) > 0
        return [(item.text, item.split, eot)]
    cut = src.text_cut(item.text, opts.val_fraction)
    return [(item.text[:cut], 0, documents > 0), (item.text[cut:], 1, documents > 0)]


def _encode(staging: Path, sources, tokenizer: Tokenizer, opts: PrepareOptions, mode: str,
            fingerprint: str, progress: dict | None) -> tuple[dict, list[str]]:
    """Write the shards of both splits; return the counts."""
    dtype = fmt.DTYPES[fmt.dtype_for(tokenizer.vocab_size)]
    counts, skips, seen = _new_counts(), src.Skips(), set()
    run = _Run(staging, dtype, opts, mode, fingerprint)
    start, first_batch, skip_tokens, document = (0, 0), 0, {0: 0, 1: 0}, (0, False)
    if progress:
        counts, skips = progress["counts"], src.Skips(**progress["skips"])
        seen = run.resume(progress)
        start, first_batch = tuple(progress["start"]), progress["batch"]
        skip_tokens = {0: progress["written"][0], 1: progress["written"][1]}
        document = tuple(progress["document"])
    if mode == DOCUMENTS:
        items = src.iter_items(sources, text_field=opts.text_field,
                               split_blank_lines=opts.split_blank_lines, strict=opts.strict,
                               skips=skips, start=start, chunk_bytes=opts.chunk_bytes)
    else:
        items = _tail_items(sources, opts, skips, start)
    batches = _batches(items, mode, opts, sources, skips, counts, seen, first_batch, document)
    bar = _bar(sources, opts, "encoding")
    workers = _workers(opts, sources)
    try:
        with bar, worker_pool(workers, staging / "tokenizer") as pool:
            for batch, arrays in in_order(batches, pool, workers, tokenizer, dtype):
                run.write(batch, arrays, skip_tokens if batch.index == first_batch else None)
                bar.update(batch.documents)
        run.close()
    except BaseException:
        run.abandon()
        raise
    counts["skipped"], counts["skipped_where"] = skips.counts, skips.where
    counts["files_skipped"] = {str(s.path): s.skipped for s in sources if s.skipped}
    counts.update(run.totals())
    notes = [f"{n} file(s) skipped" for n in [len(counts["files_skipped"])] if n]
    return counts, notes


def _workers(opts: PrepareOptions, sources) -> int:
    if opts.workers is not None:
        return opts.workers
    if _text_bytes(sources) < PARALLEL_MIN_BYTES:
        return 1
    return os.cpu_count() or 1


class _Run:
    """The two splits' shard writers and the progress file they commit to."""

    def __init__(self, staging: Path, dtype: np.dtype, opts: PrepareOptions, mode: str,
                 fingerprint: str) -> None:
        self.staging, self.mode, self.fingerprint = staging, mode, fingerprint
        self.writers = [fmt.ShardWriter(staging, split, dtype, opts.shard_tokens, self._commit)
                        for split in fmt.SPLITS]
        self.batch: Batch | None = None
        self.batch_start = [0, 0]  # tokens of each split before the batch being written
        self.pending_keys: list[int] = []  # dedup keys of written batches not yet committed
        self.saved_keys = 0

    def resume(self, progress: dict) -> set[int]:
        for writer, state in zip(self.writers, progress["splits"], strict=True):
            writer.resume(state)
        path = self.staging / DEDUP
        keys = np.fromfile(path, dtype="<u8")[: progress["dedup_keys"]] if path.exists() else []
        self.saved_keys = len(keys)
        return {int(k) for k in keys}

    def write(self, batch: Batch, arrays: list[np.ndarray], skip: dict | None) -> None:
        self.batch = batch
        self.batch_start = [self._total(w) for w in self.writers]
        if skip:  # resuming inside this batch: its first tokens are in the kept shards
            self.batch_start = [self.batch_start[k] - skip[k] for k in (0, 1)]
        for k, writer in enumerate(self.writers):
            done = self._total(writer) - self.batch_start[k]
            with self._disk():
                writer.write(arrays[k][done:])
        self.pending_keys += batch.keys

    def close(self) -> None:
        for writer in self.writers:
            with self._disk():
                writer.close()

    @contextmanager
    def _disk(self):
        """A full disk (or any write error) as one line; the partial shard is cut back to the
        last commit by the next run, which continues from there."""
        try:
            yield
        except OSError as e:
            raise Interrupted(f"cannot write {self.staging}: {e.strerror or e}; the finished "
                              "shards are kept: free space and run the same command again to "
                              "continue") from None

    def abandon(self) -> None:
        for writer in self.writers:
            writer.abandon()

    def totals(self) -> dict:
        train, val = (sum(w.shards) for w in self.writers)
        return {"tokens": train + val, "train_tokens": train, "val_tokens": val,
                "shards": sum(len(w.shards) for w in self.writers)}

    @staticmethod
    def _total(writer: fmt.ShardWriter) -> int:
        return sum(writer.shards) + writer.open_tokens

    def _commit(self) -> None:
        """After a finished shard: where to start again if the process dies now."""
        batch = self.batch
        if batch is None:
            return
        if self.pending_keys:
            with open(self.staging / DEDUP, "ab") as f:
                f.seek(self.saved_keys * 8)
                f.truncate()
                f.write(np.array(self.pending_keys, dtype="<u8").tobytes())
                f.flush()
                os.fsync(f.fileno())
            self.saved_keys += len(self.pending_keys)
            self.pending_keys = []
        write_json(self.staging / PROGRESS, {
            "fingerprint": self.fingerprint, "mode": self.mode, "batch": batch.index,
            "start": list(batch.start), "counts": batch.counts, "skips": batch.skips.to_dict(),
            "written": [self._total(w) - self.batch_start[k] for k, w in enumerate(self.writers)],
            "document": list(batch.document),
            "splits": [w.state() for w in self.writers], "dedup_keys": self.saved_keys,
        })


def _read_progress(staging: Path, fingerprint: str) -> dict | None:
    """The progress of a killed preparation of the same inputs and options, else None."""
    try:
        progress = json.loads((staging / PROGRESS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return progress if progress.get("fingerprint") == fingerprint else None


def _clear_shards(staging: Path) -> None:
    for path in staging.iterdir():
        if path.name.startswith(fmt.SPLITS) or path.name in (PROGRESS, DEDUP):
            path.unlink()


# --------------------------------------------------------------------------------------------
# Finishing


def _manifest(staging: Path, sources, tokenizer: Tokenizer, opts: PrepareOptions, mode: str,
              fingerprint: str, counts: dict) -> dict:
    for split in fmt.SPLITS:
        n = counts[f"{split}_tokens"]
        if n < 2:
            raise LyreError(f"corpus too short: the {split} split has {n} token(s), need at least "
                            "2; use more text or a different val_fraction")
    shards = {split: [{"file": p.name, "tokens": p.stat().st_size // fmt.DTYPES[fmt.dtype_for(
        tokenizer.vocab_size)].itemsize} for p in sorted(staging.glob(f"{split}_*.bin"))]
        for split in fmt.SPLITS}
    used = [s for s in sources if not s.skipped]
    manifest = {
        "format": "lyre-shards", "version": 1,
        "dtype": fmt.dtype_for(tokenizer.vocab_size),
        "vocab_size": tokenizer.vocab_size,
        "train_tokens": counts["train_tokens"],
        "val_tokens": counts["val_tokens"],
        "tokenizer": opts.tokenizer,
        "sources": [s.describe() for s in sources],
        "val_fraction": opts.val_fraction,
        "eot_id": tokenizer.eot_id,
        # Tail split: <|endoftext|> between documents (none for one); documents split: before each.
        "document_separator": tokenizer.eot_id if mode == DOCUMENTS or len(used) > 1 else None,
        "split": {"mode": mode, "seed": opts.seed, "val_fraction": opts.val_fraction},
        "shard_tokens": opts.shard_tokens,
        "shards": shards,
        "counts": counts,
        "options": opts.recorded(),
        "fingerprint": fingerprint,
    }
    write_json(staging / fmt.MANIFEST, manifest)
    meta = {k: manifest[k] for k in ("dtype", "vocab_size", "train_tokens", "val_tokens",
                                     "tokenizer", "sources", "val_fraction", "eot_id",
                                     "document_separator")}
    meta["layout"] = "shards"  # the shards are listed in manifest.json
    for name in (PROGRESS, DEDUP):
        (staging / name).unlink(missing_ok=True)
    write_json(staging / fmt.META, meta)  # last: the directory is complete
    return manifest


def _install(staging: Path, out_dir: Path) -> None:
    """Move the finished staging directory to `out_dir`, replacing an old one only at the end."""
    if out_dir.exists() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    try:
        os.replace(out_dir, old / "data")
        try:
            os.replace(staging, out_dir)
        except BaseException:
            os.replace(old / "data", out_dir)  # put the previous dataset back
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
