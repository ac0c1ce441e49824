"""The embedded index's BM25 matrix on disk: IDX/bm25/gNNN/, one directory per generation.

The matrix is derived data (SQLite is the source of truth): store.py rebuilds it after a batch
of writes and saves it here, named by the SQLite write generation it was built from, so a
reader knows whether it is current. A directory is written under a temporary name and renamed
(atomic: readers see all of it or none), older generations are deleted after. Everything is
.npy arrays and JSON (no pickle). Kept apart from store.py: that one is about SQLite.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from lyre.rag.lexical import BM25Index


class SavedMatrix:
    """The BM25 matrix of one generation and which SQLite row each of its documents is."""

    def __init__(self, generation: int, index: BM25Index, rows: np.ndarray,
                 source_codes: np.ndarray, source_names: list[str]) -> None:
        self.generation = generation
        self.index = index
        self.rows = rows  # SQLite row id of each matrix document
        self.source_codes = source_codes  # each document's source, as an index into names
        self.source_names = source_names


def generation_dir(index_dir: Path, generation: int) -> Path:
    return index_dir / "bm25" / f"g{generation:09d}"


def load(index_dir: Path, generation: int) -> SavedMatrix | None:
    """The saved matrix of `generation`, or None when there is none or it cannot be read."""
    directory = generation_dir(index_dir, generation)
    if not directory.is_dir():
        return None
    try:
        return SavedMatrix(generation, BM25Index.load(directory),
                           np.load(directory / "rows.npy"),
                           np.load(directory / "source_codes.npy"),
                           json.loads((directory / "sources.json").read_text()))
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # derived data: the caller rebuilds it


def save(index_dir: Path, matrix: SavedMatrix) -> None:
    """Write the matrix's generation directory atomically, then drop older generations."""
    final = generation_dir(index_dir, matrix.generation)
    if final.exists():
        return
    final.parent.mkdir(exist_ok=True)
    tmp = final.parent / f".tmp-{os.getpid()}-{matrix.generation}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    matrix.index.save(tmp)
    np.save(tmp / "rows.npy", matrix.rows)
    np.save(tmp / "source_codes.npy", matrix.source_codes)
    (tmp / "sources.json").write_text(json.dumps(matrix.source_names))
    os.rename(tmp, final)  # atomic: readers see the whole directory or none
    for old in final.parent.iterdir():  # older generations are of no further use
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
