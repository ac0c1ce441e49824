"""Tests for lyre.data.corpus: prepare, loading, training batches and exact evaluation (CPU, fast)."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lyre.core.errors import LyreError
from lyre.data import corpus as data
from lyre.data import prepare as prepare_module
from lyre.data.corpus import (
    Tokens,
    count_eval_tokens,
    evaluate_loss,
    get_batch,
    iter_eval_windows,
    load_meta,
    load_split,
    prepare,
)
from lyre.tokenizers import load_tokenizer

SHARED_ILIAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "iliad.txt"

ASCII_TEXT = "".join(
    f"Line {i}: the quick brown fox, number {i * 7 % 13}, jumps over the lazy dog!\n"
    for i in range(200)
)
# Multi-byte characters (2, 3 and 4 bytes in UTF-8) so chunk and split cuts can land inside one.
UNICODE_TEXT = "".join(
    f"{i} café naïve — 日本語 {'🙂' * (i % 3)}\n\n  x  y\ttab{i % 5}\r\n" for i in range(150)
)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


def nanogpt_char_split(text: str) -> tuple[np.ndarray, np.ndarray]:
    """nanoGPT's data/shakespeare_char/prepare.py, verbatim in spirit."""
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(text)
    train = np.array([stoi[c] for c in text[: int(n * 0.9)]], dtype=np.uint16)
    val = np.array([stoi[c] for c in text[int(n * 0.9) :]], dtype=np.uint16)
    return train, val


def to_old_layout(out: Path) -> None:
    """Turn a prepared directory into the layout of lyre before shards: train.bin, val.bin and a
    meta.json (one shard per split)."""
    manifest = json.loads((out / "manifest.json").read_text())
    for split in ("train", "val"):
        (shard,) = manifest["shards"][split]
        (out / shard["file"]).rename(out / f"{split}.bin")
    keys = ("dtype", "vocab_size", "train_tokens", "val_tokens", "tokenizer", "val_fraction",
            "eot_id", "document_separator")
    meta = {k: manifest[k] for k in keys}
    meta["sources"] = [{k: s[k] for k in ("path", "sha256", "bytes")} for s in manifest["sources"]]
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "manifest.json").unlink()


# ---------------------------------------------------------------------------------------------
# prepare


def test_prepare_char_matches_nanogpt(tmp_path):
    src = write(tmp_path / "corpus.txt", ASCII_TEXT)
    out = tmp_path / "prepared"
    meta = prepare([src], "char", out)

    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "meta.json",
        "tokenizer",
        "train_000000.bin",
        "val_000000.bin",
    ]
    assert meta == load_meta(out) == json.loads((out / "manifest.json").read_text())
    assert meta["dtype"] == "uint16"
    assert meta["vocab_size"] == len(set(ASCII_TEXT)) + 1  # + <|endoftext|>, the last id
    assert meta["eot_id"] == len(set(ASCII_TEXT))
    assert meta["tokenizer"] == "char"
    assert meta["val_fraction"] == 0.1
    assert meta["sources"] == [
        {
            "path": str(src),
            "sha256": hashlib.sha256(ASCII_TEXT.encode()).hexdigest(),
            "bytes": len(ASCII_TEXT),
            "format": "txt",
        }
    ]
    assert meta["split"]["mode"] == "tail" and meta["document_separator"] is None

    train, val = load_split(out, "train"), load_split(out, "val")
    assert isinstance(train, Tokens) and train.dtype == np.dtype("<u2")
    ref_train, ref_val = nanogpt_char_split(ASCII_TEXT)
    np.testing.assert_array_equal(train, ref_train)
    np.testing.assert_array_equal(val, ref_val)
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(ref_train), len(ref_val))
    # The .bin files are nothing but the ids, little-endian.
    assert (out / "train_000000.bin").read_bytes() == ref_train.astype("<u2").tobytes()

    tok = load_tokenizer(out / "tokenizer")
    assert tok.decode(train) + tok.decode(val) == ASCII_TEXT


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 64, 1000])
def test_streaming_chunks_match_one_shot(tmp_path, chunk_bytes):
    src = write(tmp_path / "u.txt", UNICODE_TEXT)
    one_shot = prepare([src], "char", tmp_path / "big")
    chunked = prepare([src], "char", tmp_path / "small", chunk_bytes=chunk_bytes)
    assert one_shot == chunked
    for split in ("train", "val"):
        a = (tmp_path / "big" / f"{split}_000000.bin").read_bytes()
        assert a == (tmp_path / "small" / f"{split}_000000.bin").read_bytes()
    tok = load_tokenizer(tmp_path / "small" / "tokenizer")
    text = tok.decode(load_split(tmp_path / "small", "train"))
    text += tok.decode(load_split(tmp_path / "small", "val"))
    assert text == UNICODE_TEXT


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 4, 7, 50, 10_000])
def test_iter_text_chunks_concatenate_to_the_text(tmp_path, chunk_bytes):
    src = write(tmp_path / "u.txt", UNICODE_TEXT)
    raw = UNICODE_TEXT.encode()
    chunks = list(data._iter_text(src, 0, len(raw), chunk_bytes))
    assert "".join(chunks) == UNICODE_TEXT
    # A range that starts and ends mid-file (at character boundaries) decodes just as well.
    start, end = len(UNICODE_TEXT[:100].encode()), len(UNICODE_TEXT[:-100].encode())
    assert "".join(data._iter_text(src, start, end, chunk_bytes)) == UNICODE_TEXT[100:-100]


def test_iter_text_cuts_after_a_lone_newline(tmp_path):
    src = write(tmp_path / "a.txt", ASCII_TEXT)
    chunks = list(data._iter_text(src, 0, len(ASCII_TEXT), 300))
    assert "".join(chunks) == ASCII_TEXT and len(chunks) > 10
    assert all(c.endswith("!\n") for c in chunks)
    assert all(len(c) <= 600 for c in chunks)  # the carried-over text stays bounded


def test_safe_cut_prefers_lone_newline_between_words():
    assert data._safe_cut("aaaa bbbb\ncccc dd") == len("aaaa bbbb\n")
    assert data._safe_cut("aaaa bbbb\n\n  cccc dd") == len("aaaa bbbb\n\n  cccc")
    assert data._safe_cut("aaaaaaaaaaaaa") == len("aaaaaaaaaaaaa")


def test_split_point_never_cuts_a_character(tmp_path):
    # 9 ASCII bytes then "é" (2 bytes): int(11 * 0.9) = 9 ... try several lengths so the
    # nominal cut lands on every byte of multi-byte characters.
    for k in range(1, 12):
        text = "a" * k + "é日🙂" * 3
        src = write(tmp_path / f"s{k}.txt", text)
        out = tmp_path / f"out{k}"
        prepare([src], "char", out, val_fraction=0.3)
        tok = load_tokenizer(out / "tokenizer")
        train, val = tok.decode(load_split(out, "train")), tok.decode(load_split(out, "val"))
        assert train + val == text
        cut = int(len(text.encode()) * 0.7)
        assert abs(len(train.encode()) - cut) <= 3


def test_multi_file_each_file_splits_on_its_own(tmp_path):
    a = write(tmp_path / "a.txt", ASCII_TEXT)
    b = write(tmp_path / "b.txt", UNICODE_TEXT)
    out = tmp_path / "out"
    meta = prepare([a, b], "char", out)
    tok = load_tokenizer(out / "tokenizer")
    assert meta["vocab_size"] == len(set(ASCII_TEXT + UNICODE_TEXT)) + 1
    assert [s["path"] for s in meta["sources"]] == [str(a), str(b)]
    assert [s["bytes"] for s in meta["sources"]] == [len(ASCII_TEXT), len(UNICODE_TEXT.encode())]
    # char reserves <|endoftext|> too: it separates the two files in each split.
    assert meta["document_separator"] == tok.eot_id == meta["vocab_size"] - 1

    def parts(text):
        raw = text.encode()
        cut = int(len(raw) * 0.9)
        while raw[cut] & 0xC0 == 0x80:
            cut -= 1
        return raw[:cut].decode(), raw[cut:].decode()

    (a_train, a_val), (b_train, b_val) = parts(ASCII_TEXT), parts(UNICODE_TEXT)
    assert tok.decode(load_split(out, "train")) == a_train + "<|endoftext|>" + b_train
    assert tok.decode(load_split(out, "val")) == a_val + "<|endoftext|>" + b_val


class BigVocabTokenizer:
    """Stand-in tokenizer with ids above 65535 and an <|endoftext|>, to test uint32 files."""

    kind = "fake"
    vocab_size = 70_000
    eot_id = 69_999
    special_tokens = {"<|endoftext|>": 69_999}

    def encode(self, text):
        return [ord(c) + 65_536 for c in text]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        return "".join(chr(int(i) - 65_536) for i in ids if i != self.eot_id)

    def save(self, directory):
        Path(directory).mkdir(parents=True)
        (Path(directory) / "tokenizer.json").write_text('{"kind": "fake"}')


def test_uint32_for_big_vocab_and_eot_between_files(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "build_tokenizer", lambda spec, texts=None: BigVocabTokenizer())
    a = write(tmp_path / "a.txt", "0123456789" * 3)
    b = write(tmp_path / "b.txt", "abcdefghij" * 2)
    out = tmp_path / "out"
    meta = prepare([a, b], "fake:x", out)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_000
    assert meta["document_separator"] == 69_999
    train = load_split(out, "train")
    assert train.dtype == np.dtype("<u4")
    tok = BigVocabTokenizer()
    expected = (
        tok.encode("0123456789" * 2 + "0123456") + [69_999] + tok.encode("abcdefghij" + "abcdefgh")
    )
    np.testing.assert_array_equal(train, expected)
    np.testing.assert_array_equal(
        load_split(out, "val"), tok.encode("789") + [69_999] + tok.encode("ij")
    )
    assert meta["train_tokens"] == len(expected) and meta["val_tokens"] == 6


def test_progress_bar_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_module, "PROGRESS_MIN_BYTES", 0)
    src = write(tmp_path / "c.txt", ASCII_TEXT)
    prepare([src], "char", tmp_path / "out", chunk_bytes=512)
    err = capsys.readouterr().err
    assert "encoding" in err and "learning tokenizer" in err


# ---------------------------------------------------------------------------------------------
# prepare: bad input


@pytest.mark.parametrize(
    ("content", "chunk_bytes", "message"),
    [
        (b"", 1 << 20, "corpus file is empty"),
        (b"hello\x00world", 1 << 20, "NUL byte at byte offset 5"),
        (b"hello \xff world", 1 << 20, "not valid UTF-8: {path} at byte offset 6"),
        # an invalid byte right after a 2-byte char that the first read cut in two
        ("ab\u00e9".encode() + b"\x80cd", 3, "at byte offset 4"),
        # a file that ends in the middle of a character
        (("x" * 30 + "\u00e9").encode()[:-1], 4, "at byte offset 30"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1 << 20, "looks binary"),
        (b"abc", 1 << 20, "corpus too short: the val split has 1 token(s)"),
    ],
)
def test_bad_corpus_raises(tmp_path, content, chunk_bytes, message):
    src = write(tmp_path / "bad.txt", content)
    with pytest.raises(LyreError, match=None) as exc:
        prepare([src], "char", tmp_path / "out", chunk_bytes=chunk_bytes)
    assert message.format(path=src) in str(exc.value)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.txt"]  # no temp dirs left


def test_missing_and_empty_corpus(tmp_path):
    with pytest.raises(LyreError, match="corpus file not found"):
        prepare([tmp_path / "nope.txt"], "char", tmp_path / "out")
    with pytest.raises(LyreError, match="no corpus files"):
        prepare([], "char", tmp_path / "out")
    with pytest.raises(LyreError, match="holds no files"):
        prepare([tmp_path], "char", tmp_path / "out")


@pytest.mark.parametrize("val_fraction", [0, 1, -0.1, 1.5])
def test_bad_val_fraction(tmp_path, val_fraction):
    src = write(tmp_path / "c.txt", ASCII_TEXT)
    with pytest.raises(LyreError, match="val_fraction must be between 0 and 1"):
        prepare([src], "char", tmp_path / "out", val_fraction=val_fraction)


def test_existing_dataset_needs_force_and_survives_failures(tmp_path):
    src = write(tmp_path / "c.txt", ASCII_TEXT)
    out = tmp_path / "out"
    prepare([src], "char", out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    # The same inputs and options again: nothing to do, nothing rewritten.
    assert prepare([src], "char", out) == load_meta(out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    with pytest.raises(LyreError, match="already holds a prepared dataset from other inputs or "
                                        "options; pass --force"):
        prepare([src], "char", out, val_fraction=0.2)
    # A failure half-way (binary second file, found while encoding) leaves the old data intact.
    bad = write(tmp_path / "bad.bin", b"fine text\n" * 10 + b"\x00")
    with pytest.raises(LyreError, match="NUL byte"):
        prepare([src, bad], "char", out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bin", "c.txt", "out"]

    other = write(tmp_path / "d.txt", UNICODE_TEXT)
    meta = prepare([other], "char", out, force=True)
    assert load_meta(out) == meta and meta["sources"][0]["path"] == str(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bin", "c.txt", "d.txt", "out"]


def test_refuses_foreign_directory_even_with_force(tmp_path):
    src = write(tmp_path / "c.txt", ASCII_TEXT)
    out = tmp_path / "mine"
    write(out / "precious.txt", "do not delete")
    for force in (False, True):
        with pytest.raises(LyreError, match="not a lyre data directory"):
            prepare([src], "char", out, force=force)
    assert (out / "precious.txt").read_text() == "do not delete"
    (out / "precious.txt").unlink()
    prepare([src], "char", out)  # an empty directory is fine
    assert (out / "meta.json").exists()


def test_load_errors(tmp_path):
    with pytest.raises(LyreError, match="meta.json missing"):
        load_meta(tmp_path)
    with pytest.raises(LyreError, match="meta.json missing"):
        load_split(tmp_path, "train")
    src = write(tmp_path / "c.txt", ASCII_TEXT)
    out = tmp_path / "out"
    prepare([src], "char", out)
    with pytest.raises(LyreError, match="unknown split 'test'"):
        load_split(out, "test")
    (out / "val_000000.bin").write_bytes(b"\x00")
    with pytest.raises(LyreError, match="does not match .*manifest.json"):
        load_split(out, "val")
    (out / "val_000000.bin").unlink()
    with pytest.raises(LyreError, match="missing .*val_000000.bin"):
        load_split(out, "val")
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(LyreError, match="corrupt"):
        load_meta(out)


def test_iliad_char(tmp_path):
    if not SHARED_ILIAD.exists():
        pytest.skip(f"{SHARED_ILIAD} not present")
    meta = prepare([SHARED_ILIAD], "char", tmp_path / "iliad")
    n = SHARED_ILIAD.stat().st_size
    assert meta["vocab_size"] == 66 + 1  # 66 characters and <|endoftext|>
    assert (meta["train_tokens"], meta["val_tokens"]) == (int(n * 0.9), n - int(n * 0.9))
    assert meta["sources"][0]["sha256"].startswith("aad0893fdb257dc8")


# ---------------------------------------------------------------------------------------------
# get_batch


def test_get_batch_shapes_shift_and_reproducibility():
    tokens = np.arange(1000, dtype=np.uint16)  # token value == position: easy to check
    g = torch.Generator().manual_seed(1337)
    x, y = get_batch(tokens, 4, 8, g, "cpu")
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # y is x shifted by one: consecutive windows
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 7, dtype=torch.int64))
    assert int(x.min()) >= 0 and int(y.max()) <= 999

    state = g.get_state()
    x1, y1 = get_batch(tokens, 4, 8, g, "cpu")
    g.set_state(state)
    x2, y2 = get_batch(tokens, 4, 8, g, "cpu")
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = get_batch(tokens, 4, 8, torch.Generator().manual_seed(1337), "cpu")
    assert torch.equal(x3, x)


def test_get_batch_reaches_the_last_token_and_rejects_short_data():
    tokens = np.arange(9, dtype=np.uint16)
    g = torch.Generator().manual_seed(0)
    x, y = get_batch(tokens, 64, 8, g, "cpu")  # exactly block_size+1 tokens: one window
    assert torch.equal(x[0], torch.arange(8)) and torch.equal(y[0], torch.arange(1, 9))
    with pytest.raises(LyreError, match="has 9 tokens, fewer than block_size\\+1=10"):
        get_batch(tokens, 1, 9, g, "cpu")


# ---------------------------------------------------------------------------------------------
# exact evaluation


@pytest.mark.parametrize(
    ("n", "block", "stride", "batch"),
    [
        (2, 4, None, 8),
        (5, 4, None, 8),  # exactly block_size + 1 tokens: one full window
        (4, 8, 3, 2),  # shorter than a block: one window of n-1
        (100, 10, None, 3),
        (101, 10, None, 4),
        (100, 10, 1, 16),
        (100, 10, 3, 5),
        (97, 16, 7, 2),
        (1000, 32, 16, 8),
    ],
)
def test_eval_windows_score_every_target_once(n, block, stride, batch):
    tokens = np.arange(n, dtype=np.uint32)  # value == position
    scored, min_context = [], block
    n_windows = 0
    for x, y in iter_eval_windows(tokens, block, stride, batch):
        assert x.dtype == y.dtype == torch.int64
        assert x.shape == y.shape and x.shape[0] <= batch
        assert x.shape[1] == min(block, n - 1)
        assert torch.equal(y[y != -100], (x + 1)[y != -100])  # y is x shifted by one
        for row in y:
            cols = (row != -100).nonzero().flatten()
            scored += row[cols].tolist()
            if n_windows > 0:  # later windows give every scored token some context
                min_context = min(min_context, int(cols[0]) + 1)
            n_windows += 1
    assert sorted(scored) == list(range(1, n)) and len(scored) == len(set(scored))
    if stride is not None and n - 1 > block:
        assert min_context >= block - stride + 1
    assert count_eval_tokens(tokens, block, stride) == n - 1 == count_eval_tokens(n, block, stride)


def test_eval_windows_subset_is_deterministic_and_scores_at_most_once():
    tokens = np.arange(1000, dtype=np.uint16)
    runs = [
        [y.clone() for _, y in iter_eval_windows(tokens, 16, 8, 4, max_windows=10)]
        for _ in range(2)
    ]
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    scored = torch.cat([y[y != -100] for y in runs[0]]).tolist()
    assert len(scored) == len(set(scored)) == count_eval_tokens(tokens, 16, 8, max_windows=10)
    assert sum(y.shape[0] for y in runs[0]) == 10
    assert 1 in scored and 999 in scored  # the subset spans the whole split


def test_eval_windows_bad_arguments():
    tokens = np.arange(50)
    with pytest.raises(LyreError, match="stride"):
        list(iter_eval_windows(tokens, 8, 9, 4))
    with pytest.raises(LyreError, match="stride"):
        list(iter_eval_windows(tokens, 8, 0, 4))
    with pytest.raises(LyreError, match="need at least 2"):
        list(iter_eval_windows(tokens[:1], 8, None, 4))


class Bigram(nn.Module):
    """The first model of "Let's build GPT", with the GPT forward contract."""

    def __init__(self, vocab_size):
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx, targets=None):
        logits = self.table(idx)
        if targets is None:
            return logits[:, -1:, :], None
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100
        )
        return logits, loss


def test_evaluate_loss_matches_brute_force():
    torch.manual_seed(0)
    vocab = 11
    model = Bigram(vocab)
    tokens = np.random.default_rng(0).integers(0, vocab, size=300).astype(np.uint16)
    # Brute force: for a bigram model the loss of target t only depends on the token before it.
    t = torch.from_numpy(tokens.astype(np.int64))
    logp = F.log_softmax(model.table.weight, dim=-1)
    expected = -logp[t[:-1], t[1:]].mean().item()

    model.train()
    for block, stride, batch in [(16, None, 4), (16, 5, 3), (64, 64, 1), (500, None, 8)]:
        result = evaluate_loss(model, tokens, block, stride=stride, batch_size=batch)
        assert result["tokens"] == len(tokens) - 1
        assert result["loss"] == pytest.approx(expected, rel=1e-6)
        assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-6)
    assert model.training  # the previous mode is restored
    model.eval()
    evaluate_loss(model, tokens, 16)
    assert not model.training

    quick = evaluate_loss(model, tokens, 16, max_windows=5)
    assert quick["tokens"] == count_eval_tokens(tokens, 16, max_windows=5) < len(tokens) - 1
    assert quick == evaluate_loss(model, tokens, 16, max_windows=5)


SHARED_GPT2 = SHARED_ILIAD.parent / "gpt2"


@pytest.mark.parametrize("spec", ["bpe:300", "gpt2"])
@pytest.mark.parametrize("chunk_bytes", [64, 1000])
def test_bpe_chunks_do_not_change_tokens(tmp_path, spec, chunk_bytes):
    """Chunks are cut where the GPT-2 pre-tokenizer splits anyway: same ids as one shot."""
    if spec == "gpt2":
        if not (SHARED_GPT2 / "encoder.json").exists():
            pytest.skip(f"{SHARED_GPT2} not present")
        spec = f"gpt2:{SHARED_GPT2}"
    for name, text in [("ascii", ASCII_TEXT), ("unicode", UNICODE_TEXT)]:
        src = write(tmp_path / f"{name}.txt", text)
        out = tmp_path / f"{name}-out"
        meta = prepare([src], spec, out, chunk_bytes=chunk_bytes)
        tok = load_tokenizer(out / "tokenizer")
        raw = text.encode()
        cut = int(len(raw) * 0.9)
        while raw[cut] & 0xC0 == 0x80:
            cut -= 1
        np.testing.assert_array_equal(load_split(out, "train"), tok.encode(raw[:cut].decode()))
        np.testing.assert_array_equal(load_split(out, "val"), tok.encode(raw[cut:].decode()))
        assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.vocab_size


def test_char_tokens_prepared_before_endoftext_are_prepared_again(tmp_path):
    """A run's data/ prepared by a char tokenizer without <|endoftext|> (meta.json without
    eot_id) is not reused by a fresh run: its tokenizer could not be fine-tuned."""
    from lyre.run.config import load_config
    from lyre.train.tasks.lm import prepared_from

    src = write(tmp_path / "corpus.txt", ASCII_TEXT)
    config = load_config(None, [f"data.corpus=['{src}']", "data.tokenizer=char"])
    out = tmp_path / "data"
    prepare([src], "char", out)
    assert prepared_from(out, config)
    to_old_layout(out)
    assert prepared_from(out, config)
    meta = json.loads((out / "meta.json").read_text())
    del meta["eot_id"]
    (out / "meta.json").write_text(json.dumps(meta))
    assert not prepared_from(out, config)
