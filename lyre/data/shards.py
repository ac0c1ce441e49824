"""The on-disk token format: fixed-size shards per split, and a read view over them.

A prepared directory (`lyre prepare`, or RUN_DIR/data):
    train_000000.bin ...    raw little-endian uint16 token ids (uint32 when vocab_size > 65536),
    val_000000.bin ...      no header, `shard_tokens` each (the last of a split is shorter)
    manifest.json           shards and their token counts, sources with sha256, tokenizer,
                            split, counts (documents, tokens, skipped with reasons, duplicates)
    meta.json               the summary older readers know (dtype, vocab_size, token counts);
                            written last: its presence means the directory is complete
    tokenizer/              the tokenizer that produced the ids

Older directories hold one `train.bin` and one `val.bin` and a meta.json: `Tokens` reads both.

A shard is written as NAME.partial and renamed when full, so a file named like a shard is always
whole; `ShardWriter` commits its position after each rename (what a killed preparation resumes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lyre.core.errors import LyreError

SPLITS = ("train", "val")
# Explicit little-endian dtypes so a .bin file means the same thing on every machine.
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
MANIFEST = "manifest.json"
META = "meta.json"
PARTIAL = ".partial"


def dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


# --------------------------------------------------------------------------------------------
# Writing


class ShardWriter:
    """Appends token arrays to one split's shards, `shard_tokens` per file.

    `state()` is the whole position: the finished shards' sizes and the tokens in the open
    `.partial` file. `resume(state)` cuts the partial file back to that position (what was
    written after the last commit is written again) and removes shards beyond it.
    `on_shard` is called after each finished shard (the caller commits its progress there).
    """

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int,
                 on_shard=None) -> None:
        self.directory, self.split, self.dtype = directory, split, dtype
        self.shard_tokens = shard_tokens
        self.shards: list[int] = []
        self.open_tokens = 0
        self.on_shard = on_shard
        self._file = None

    def state(self) -> dict:
        return {"shards": list(self.shards), "open_tokens": self.open_tokens}

    def resume(self, state: dict) -> None:
        self.shards = list(state["shards"])
        self.open_tokens = state["open_tokens"]
        for i, n in enumerate(self.shards):  # a rename the kill interrupted is finished now
            path, partial = self._path(i), self._path(i, PARTIAL)
            if not path.exists() and partial.exists() and partial.stat().st_size == n * self.dtype.itemsize:
                os.replace(partial, path)
            if not path.exists() or path.stat().st_size != n * self.dtype.itemsize:
                raise LyreError(f"{path} is missing or damaged; prepare again with --force")
        for stale in self.directory.glob(f"{self.split}_*.bin"):
            if int(stale.stem.split("_")[1]) >= len(self.shards):
                stale.unlink()  # finished after the last commit: written again
        partial = self._path(len(self.shards), PARTIAL)
        have = partial.stat().st_size if partial.exists() else 0
        if have < self.open_tokens * self.dtype.itemsize:
            raise LyreError(f"{partial} is shorter than recorded; prepare again with --force")
        if self.open_tokens:
            os.truncate(partial, self.open_tokens * self.dtype.itemsize)
        elif partial.exists():
            partial.unlink()

    def write(self, tokens: np.ndarray) -> None:
        """Append `tokens`, closing shards as they fill."""
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        while len(tokens):
            room = self.shard_tokens - self.open_tokens
            part, tokens = tokens[:room], tokens[room:]
            f = self._open()
            f.write(part.tobytes())  # one big write per part; ENOSPC surfaces here as OSError
            self.open_tokens += len(part)
            if self.open_tokens == self.shard_tokens:
                self._finish_shard()

    def close(self) -> None:
        """Finish the last, shorter shard (if it holds anything)."""
        if self.open_tokens:
            self._finish_shard()
        elif self._file is not None:
            self._file.close()
            self._file = None

    def abandon(self) -> None:
        """Close the open file without finishing it (after an error)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self):
        if self._file is None:
            self._file = open(self._path(len(self.shards), PARTIAL), "ab")
        return self._file

    def _finish_shard(self) -> None:
        f = self._open()
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._file = None
        index = len(self.shards)
        self.shards.append(self.open_tokens)
        self.open_tokens = 0
        os.replace(self._path(index, PARTIAL), self._path(index))
        if self.on_shard is not None:
            self.on_shard()

    def _path(self, index: int, suffix: str = "") -> Path:
        return self.directory / (shard_name(self.split, index) + suffix)


# --------------------------------------------------------------------------------------------
# Reading


def read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LyreError(f"corrupt {path}: {e}; run `lyre prepare --force` again") from None
    if not isinstance(obj, dict):
        raise LyreError(f"corrupt {path}: not a JSON object; run `lyre prepare --force` again")
    return obj


def load_meta(data_dir: Path) -> dict:
    """A prepared directory's description: manifest.json (shards) or, for directories prepared
    before shards, meta.json. Both have dtype, vocab_size, train_tokens, val_tokens, tokenizer,
    sources, val_fraction and eot_id."""
    data_dir = Path(data_dir)
    if not (data_dir / META).is_file():
        raise LyreError(f"no prepared data in {data_dir} (meta.json missing); run `lyre prepare`")
    if (data_dir / MANIFEST).is_file():
        return read_json(data_dir / MANIFEST)
    return read_json(data_dir / META)


def is_prepared(data_dir: Path) -> bool:
    """True if `data_dir` holds a complete prepared directory (either layout)."""
    return (Path(data_dir) / META).is_file()


class Tokens:
    """A split's token ids over one or more memory-mapped files, read as one sequence.

    `tokens[a:b]` returns a numpy array even when the range crosses from one shard into the
    next (a window over two shards is as valid as any: they are one stream cut at fixed
    sizes), `len(tokens)` counts them all. Nothing is read until it is sliced, so a split of
    many gigabytes costs only its file handles.
    """

    def __init__(self, paths: list[Path], dtype: np.dtype) -> None:
        self.paths = list(paths)
        self.dtype = dtype
        self.parts = [np.memmap(p, dtype=dtype, mode="r") if p.stat().st_size else
                      np.zeros(0, dtype=dtype) for p in self.paths]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])  # offset of each part

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return np.asarray(self)[key]
            return self.read(start, max(stop - start, 0))
        if isinstance(key, int | np.integer):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"token index {key} out of range for {len(self)} tokens")
            return self.read(i, 1)[0]
        raise TypeError(f"Tokens are indexed by int or slice, not {type(key).__name__}")

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as one array (a view when inside one shard)."""
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        local = start - int(self.starts[k]) if k < len(self.parts) else 0
        if k < len(self.parts) and local + length <= len(self.parts[k]):
            return self.parts[k][local : local + length]
        pieces, left = [], length
        while left > 0 and k < len(self.parts):
            piece = self.parts[k][local : local + left]
            pieces.append(piece)
            left -= len(piece)
            k, local = k + 1, 0
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=self.dtype)

    def locate(self, offset: int) -> tuple[int, int]:
        """(shard index, offset in that shard) of a position of the split."""
        k = int(np.searchsorted(self.starts, offset, side="right")) - 1
        return k, offset - int(self.starts[k])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.read(0, len(self))
        return whole if dtype is None else whole.astype(dtype)

    def __iter__(self) -> Iterator[int]:
        for part in self.parts:
            yield from part.tolist()

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()

    def positions_of(self, token: int) -> np.ndarray:
        """Every position holding `token` (int64), shard by shard: document starts."""
        found = [np.flatnonzero(part == token) + int(start)
                 for part, start in zip(self.parts, self.starts, strict=False)]
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def load_split(data_dir: Path, split: str) -> Tokens:
    """The token ids of one split ("train" or "val") of a prepared directory, not read yet."""
    if split not in SPLITS:
        raise LyreError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    if meta.get("dtype") not in DTYPES:
        raise LyreError(f"unknown dtype {meta.get('dtype')!r} in {data_dir / META}")
    dtype = DTYPES[meta["dtype"]]
    if "shards" in meta:  # the sharded layout
        files = [(data_dir / s["file"], s["tokens"]) for s in meta["shards"][split]]
    else:
        files = [(data_dir / f"{split}.bin", meta.get(f"{split}_tokens"))]
    for path, n in files:
        if not path.is_file():
            raise LyreError(f"missing {path}; run `lyre prepare --force` again")
        if n is None or path.stat().st_size != n * dtype.itemsize:
            raise LyreError(
                f"{path} does not match {data_dir / (MANIFEST if 'shards' in meta else META)} "
                f"({path.stat().st_size} bytes, expected {n} {meta['dtype']} tokens); run "
                "`lyre prepare --force` again"
            )
    return Tokens([p for p, _ in files], dtype)
