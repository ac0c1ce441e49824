"""Data: turn text files into token ids on disk, then serve them to training and evaluation.

A prepared data directory holds
    train.bin, val.bin   raw little-endian uint16 token ids (uint32 when vocab_size > 65536)
    tokenizer/           the tokenizer that produced them (Tokenizer.save)
    meta.json            dtype, vocab_size, token counts, tokenizer spec, sources, val_fraction

The .bin files have no header, so `np.memmap` can read them without loading them: training
touches only the windows it samples, however large the corpus.

`prepare` streams: a corpus of several GB is read in chunks of about a megabyte, never whole.
Each file gives its first (1 - val_fraction) of bytes to train and the rest to val, so for one
ASCII file and the char tokenizer the split is exactly nanoGPT's `data[:int(n*0.9)]`.

Why one module of ~500 lines: preparing, loading and windowing share one on-disk format (the
dtype rule, meta.json, the val split) that is easiest to check when it is all in one place.
"""

import codecs
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lyre.core.errors import LyreError
from lyre.core.io import make_temp_dir
from lyre.tokenizers import Tokenizer, build_tokenizer

DEFAULT_CHUNK_BYTES = 1 << 20  # read the corpus 1 MiB at a time
ENCODE_BATCH = 8  # chunks handed to tokenizer.encode_batch at once
PROGRESS_MIN_BYTES = 4 << 20  # show a progress bar only for corpora at least this big
IGNORE_INDEX = -100  # targets with this value are not scored (same as the model's loss)
SPLITS = ("train", "val")
# Explicit little-endian dtypes so a .bin file means the same thing on every machine.
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
# Tokenizers that learn their vocabulary from the corpus; "gpt2:DIR" comes ready-made.
_TRAINED_KINDS = ("char", "bpe")


# --------------------------------------------------------------------------------------------
# Reading the corpus in chunks


def _check_corpus(corpus: Sequence[Path | str] | Path | str) -> list[Path]:
    """Return the corpus as a list of existing, non-empty files, or raise LyreError."""
    if isinstance(corpus, str | Path):
        corpus = [corpus]
    paths = [Path(p) for p in corpus]
    if not paths:
        raise LyreError("no corpus files given; pass at least one UTF-8 text file")
    for path in paths:
        if not path.exists():
            raise LyreError(f"corpus file not found: {path}")
        if not path.is_file():
            raise LyreError(f"corpus path is not a file: {path}; pass the text files themselves")
        if path.stat().st_size == 0:
            raise LyreError(f"corpus file is empty: {path}")
    return paths


def _train_bytes(path: Path, size: int, val_fraction: float) -> int:
    """Byte offset where `path` switches from train to val, moved back to a UTF-8 char start.

    int(size * (1 - val_fraction)) is nanoGPT's int(n * 0.9) for ASCII text (bytes == chars).
    """
    cut = int(size * (1 - val_fraction))
    with open(path, "rb") as f:
        f.seek(max(cut - 3, 0))
        window = f.read(4)  # a UTF-8 char is at most 4 bytes: its start is in here
    # Continuation bytes look like 0b10xxxxxx; step back over them to the char's first byte.
    i = cut - max(cut - 3, 0)
    while 0 < i < len(window) and window[i] & 0xC0 == 0x80:
        cut, i = cut - 1, i - 1
    return cut


def _safe_cut(text: str) -> int:
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


def _iter_text(
    path: Path, start: int, end: int, chunk_bytes: int, progress: tqdm | None = None
) -> Iterator[str]:
    """Yield the text of bytes [start, end) of `path` in chunks of about `chunk_bytes`.

    Raises LyreError naming the byte offset of the first NUL byte or invalid UTF-8 sequence.
    `start` must be at a character boundary; a character cut by a read is completed by the
    incremental decoder with the next read.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    carry = ""  # text read but not yet yielded (after the last safe cut)
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        while pos < end:
            raw = f.read(min(chunk_bytes, end - pos))
            if not raw:  # the file shrank while we read it
                raise LyreError(f"corpus file changed while reading: {path}")
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise LyreError(
                    f"corpus file looks binary: {path} has a NUL byte at byte offset {pos + nul}; "
                    "lyre expects UTF-8 text"
                )
            pending = len(decoder.getstate()[0])  # bytes of a char cut by the previous read
            final = pos + len(raw) >= end
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
            cut = len(text) if final else _safe_cut(text)
            carry = text[cut:]
            if cut:
                yield text[:cut]
    if carry:
        yield carry


def _progress(total: int, desc: str) -> tqdm:
    """A byte-counting progress bar on stderr, silent for small corpora."""
    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=total < PROGRESS_MIN_BYTES,
    )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# prepare: corpus -> train.bin / val.bin / tokenizer / meta.json


def prepare(
    corpus: list[Path],
    tokenizer_spec: str,
    out_dir: Path,
    val_fraction: float = 0.1,
    force: bool = False,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict:
    """Tokenize `corpus` into a data directory `out_dir` and return its meta.json as a dict.

    tokenizer_spec: "char", "bpe:VOCAB_SIZE" (both learned from the corpus) or "gpt2:DIR".
    Everything is written to a temporary directory next to `out_dir` and renamed into place at
    the end, so a failure (or Ctrl-C) never leaves a half-written or damaged data directory.
    """
    paths = _check_corpus(corpus)
    if not 0.0 < val_fraction < 1.0:
        raise LyreError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if chunk_bytes < 1:
        raise LyreError(f"chunk_bytes must be positive, got {chunk_bytes}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force)

    sizes = [p.stat().st_size for p in paths]
    total = sum(sizes)
    tmp = make_temp_dir(out_dir.parent, prefix=f".{out_dir.name}.")  # becomes out_dir: umask perms
    try:
        # 1. Build the tokenizer. Char and BPE learn from the whole corpus, val included, as
        #    nanoGPT does: a character seen only in val must still have an id.
        texts = None
        if tokenizer_spec.split(":", 1)[0] in _TRAINED_KINDS:
            texts = _iter_corpus(paths, chunk_bytes, _progress(total, "learning tokenizer"))
        tokenizer = build_tokenizer(tokenizer_spec, texts)
        tokenizer.save(tmp / "tokenizer")
        dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"

        # 2. Encode each file's train part and val part, appending to the two .bin files.
        counts = _encode_splits(
            paths,
            sizes,
            tokenizer,
            _DTYPES[dtype],
            tmp,
            val_fraction,
            chunk_bytes,
            _progress(total, "encoding"),
        )
        for split, n in counts.items():
            if n < 2:
                raise LyreError(
                    f"corpus too short: the {split} split has {n} token(s), need at least 2; "
                    "use more text or a different val_fraction"
                )

        meta = {
            "dtype": dtype,
            "vocab_size": tokenizer.vocab_size,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "tokenizer": tokenizer_spec,
            "sources": [
                {"path": str(p), "sha256": file_sha256(p), "bytes": size}
                for p, size in zip(paths, sizes, strict=True)
            ],
            "val_fraction": val_fraction,
            # Recorded so that tokens prepared before char tokenizers reserved <|endoftext|>
            # (no "eot_id" key) can be told apart and prepared again (tasks/lm.py).
            "eot_id": tokenizer.eot_id,
            # Between two files each split gets <|endoftext|> (when the tokenizer has one), so
            # the model is not taught that one file continues into the next.
            "document_separator": tokenizer.eot_id if len(paths) > 1 else None,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _install(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful install
    return meta


def _iter_corpus(paths: list[Path], chunk_bytes: int, progress: tqdm) -> Iterator[str]:
    """All text of all files, in chunks (the input for learning a tokenizer)."""
    with progress:
        for path in paths:
            yield from _iter_text(path, 0, path.stat().st_size, chunk_bytes, progress)


def _encode_splits(
    paths: list[Path],
    sizes: list[int],
    tokenizer: Tokenizer,
    dtype: np.dtype,
    out: Path,
    val_fraction: float,
    chunk_bytes: int,
    progress: tqdm,
) -> dict[str, int]:
    """Write out/train.bin and out/val.bin; return the number of tokens in each."""
    counts = dict.fromkeys(SPLITS, 0)
    with progress, open(out / "train.bin", "wb") as ftrain, open(out / "val.bin", "wb") as fval:
        files = {"train": ftrain, "val": fval}
        for k, (path, size) in enumerate(zip(paths, sizes, strict=True)):
            cut = _train_bytes(path, size, val_fraction)
            for split, (start, end) in zip(SPLITS, ((0, cut), (cut, size)), strict=True):
                if k > 0 and tokenizer.eot_id is not None:
                    np.array([tokenizer.eot_id], dtype=dtype).tofile(files[split])
                    counts[split] += 1
                texts = _iter_text(path, start, end, chunk_bytes, progress)
                for ids in _encode_chunks(tokenizer, texts):
                    np.array(ids, dtype=dtype).tofile(files[split])
                    counts[split] += len(ids)
    return counts


def _encode_chunks(tokenizer: Tokenizer, texts: Iterator[str]) -> Iterator[list[int]]:
    """Encode text chunks in order, ENCODE_BATCH at a time when the tokenizer can batch.

    Fast tokenizers (HF tokenizers, tiktoken) encode a batch on all CPU cores, which matters
    for a corpus of gigabytes; only ENCODE_BATCH chunks are held in memory at once.
    """
    if not hasattr(tokenizer, "encode_batch"):
        yield from map(tokenizer.encode, texts)
        return
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == ENCODE_BATCH:
            yield from tokenizer.encode_batch(batch)
            batch = []
    if batch:
        yield from tokenizer.encode_batch(batch)


def _check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse to overwrite a prepared dataset without force, or a directory that is not one."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise LyreError(f"output path exists and is not a directory: {out_dir}")
    if (out_dir / "meta.json").exists():
        if not force:
            raise LyreError(
                f"{out_dir} already holds a prepared dataset; pass --force to overwrite it"
            )
    elif any(out_dir.iterdir()):
        # Even with force: replacing it would delete files lyre did not write.
        raise LyreError(
            f"{out_dir} is not empty and not a lyre data directory; choose another output path"
        )


def _install(tmp: Path, out_dir: Path) -> None:
    """Move the finished `tmp` directory to `out_dir`, replacing an old one only at the end."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    try:
        os.replace(out_dir, old / "data")
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(old / "data", out_dir)  # put the previous dataset back
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Loading a prepared directory


def load_meta(data_dir: Path) -> dict:
    """Read data_dir/meta.json."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise LyreError(f"no prepared data in {data_dir} (meta.json missing); run `lyre prepare`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LyreError(f"corrupt {path}: {e}; run `lyre prepare --force` again") from None


def load_split(data_dir: Path, split: str) -> np.memmap:
    """Memory-map the token ids of one split ("train" or "val") without reading them."""
    if split not in SPLITS:
        raise LyreError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    meta = load_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise LyreError(f"missing {path}; run `lyre prepare --force` again")
    if meta.get("dtype") not in _DTYPES:
        raise LyreError(f"unknown dtype {meta.get('dtype')!r} in {Path(data_dir) / 'meta.json'}")
    dtype = _DTYPES[meta["dtype"]]
    n = meta.get(f"{split}_tokens")
    if n is None or path.stat().st_size != n * dtype.itemsize:
        raise LyreError(
            f"{path} does not match meta.json ({path.stat().st_size} bytes, expected {n} "
            f"{meta['dtype']} tokens); run `lyre prepare --force` again"
        )
    return np.memmap(path, dtype=dtype, mode="r")


# --------------------------------------------------------------------------------------------
# Training batches


def _to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy to `device`; on CUDA via pinned memory so the copy can overlap with compute."""
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def get_batch(
    tokens: np.ndarray,
    batch_size: int,
    block_size: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `batch_size` random windows of block_size+1 tokens: x = window[:-1], y = window[1:].

    Offsets come from `generator`, so restoring its state (e.g. from a checkpoint) replays
    exactly the same batches. Returns int64 tensors of shape (batch_size, block_size).
    """
    n = len(tokens)
    if n < block_size + 1:
        raise LyreError(
            f"the data split has {n} tokens, fewer than block_size+1={block_size + 1}; "
            "use a smaller block_size or more text"
        )
    starts = torch.randint(n - block_size, (batch_size,), generator=generator).tolist()
    windows = np.stack([tokens[i : i + block_size + 1] for i in starts]).astype(np.int64)
    w = torch.from_numpy(windows)
    x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()
    return _to_device(x, device), _to_device(y, device)


# --------------------------------------------------------------------------------------------
# Exact evaluation: every target token of a split scored exactly once


def _eval_windows(
    n_tokens: int, block_size: int, stride: int | None, max_windows: int | None
) -> tuple[int, list[tuple[int, int]]]:
    """Plan the evaluation windows: (window length, [(start, how many leading targets to skip)]).

    Window k starts at k*stride; the last one is aligned to the end of the split so the final
    token is covered. A window skips the targets the previous window already scored, so with
    stride < block_size every scored token still sees at least block_size - stride tokens of
    context, yet none is counted twice. `max_windows` keeps an evenly spaced subset (the same
    one every time), for quick estimates during training.
    """
    if n_tokens < 2:
        raise LyreError(f"cannot evaluate a split of {n_tokens} token(s); need at least 2")
    if block_size < 1:
        raise LyreError(f"block_size must be positive, got {block_size}")
    stride = block_size if stride is None else stride
    if not 1 <= stride <= block_size:
        raise LyreError(f"eval stride must be between 1 and block_size={block_size}, got {stride}")
    length = min(block_size, n_tokens - 1)  # targets are positions 1..n_tokens-1
    last = n_tokens - 1 - length
    if max_windows is not None and max_windows < 1:
        raise LyreError(f"max_windows must be positive, got {max_windows}")
    starts = list(range(0, last, stride)) + [last]
    if max_windows is not None and max_windows < len(starts):
        picks = np.unique(np.linspace(0, len(starts) - 1, max_windows).round().astype(int))
        starts = [starts[i] for i in picks]
    plan, scored_up_to = [], 0  # targets at positions <= scored_up_to are already counted
    for s in starts:
        skip = max(0, scored_up_to - s)
        plan.append((s, skip))
        scored_up_to = s + length
    return length, plan


def iter_eval_windows(
    tokens: np.ndarray,
    block_size: int,
    stride: int | None = None,
    batch_size: int = 8,
    max_windows: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield int64 (x, y) batches of windows covering the split; y is -100 where not scored.

    Each target position 1..len(tokens)-1 is scored exactly once over all batches (or, with
    max_windows, at most once). stride defaults to block_size: non-overlapping windows.
    """
    length, plan = _eval_windows(len(tokens), block_size, stride, max_windows)
    for b in range(0, len(plan), batch_size):
        rows = plan[b : b + batch_size]
        w = np.stack([tokens[s : s + length + 1] for s, _ in rows]).astype(np.int64)
        x = torch.from_numpy(w[:, :-1].copy())
        y = torch.from_numpy(w[:, 1:].copy())
        for r, (_, skip) in enumerate(rows):
            y[r, :skip] = IGNORE_INDEX
        yield x, y


def count_eval_tokens(
    tokens: np.ndarray | int,
    block_size: int,
    stride: int | None = None,
    max_windows: int | None = None,
) -> int:
    """How many targets iter_eval_windows scores (len(tokens) - 1 unless max_windows cuts it)."""
    n = int(tokens) if isinstance(tokens, int | np.integer) else len(tokens)
    length, plan = _eval_windows(n, block_size, stride, max_windows)
    return sum(length - skip for _, skip in plan)


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    tokens: np.ndarray,
    block_size: int,
    stride: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    max_windows: int | None = None,
) -> dict:
    """Mean cross-entropy per scored token over the split, and its perplexity.

    Returns {"loss", "perplexity", "tokens"}. The model follows the GPT contract
    model(idx, targets) -> (logits, loss); we sum the per-token losses ourselves because the
    model's own mean is per batch, and batches score different numbers of tokens.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in iter_eval_windows(tokens, block_size, stride, batch_size, max_windows):
            x, y = _to_device(x, device), _to_device(y, device)
            logits, _ = model(x, y)
            loss_sum = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)),
                y.view(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += loss_sum.item()
            count += int((y != IGNORE_INDEX).sum().item())
    finally:
        model.train(was_training)
    loss = total / count
    perplexity = math.exp(loss) if loss < 700 else math.inf
    return {"loss": loss, "perplexity": perplexity, "tokens": count}
