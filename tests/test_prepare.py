"""`lyre prepare` at scale (lyre/data/prepare.py, sources.py, shards.py): formats, workers,
the document split, dedup, resume after a kill, up-to-date re-runs and every kind of bad input.
Corpora are made in the tests: a few hundred short documents, the char tokenizer."""

from __future__ import annotations

import errno
import gzip
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from cli_util import assert_one_line_error, run_cli

from lyre.core.errors import LyreError
from lyre.data import prepare as prepare_module
from lyre.data import shards
from lyre.data.corpus import load_meta, load_split, prepare
from lyre.data.prepare import PrepareOptions, prepare_corpus
from lyre.tokenizers import build_tokenizer, load_tokenizer

WORDS = "sing goddess anger achilles son of peleus brought countless ills upon the achaeans".split()


def documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))).capitalize() + "."
            for _ in range(n)]


DOCS = documents(300)


def write_jsonl(path: Path, docs: list[str], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d, "id": 1}) + "\n")
    return path


def write_parquet(path: Path, docs: list[str], column: str = "text") -> Path:
    pq.write_table(pa.table({column: docs, "n": list(range(len(docs)))}), path, row_group_size=64)
    return path


def split_documents(out: Path) -> dict[str, list[str]]:
    """The documents of each split: <|endoftext|> begins each one."""
    tok = load_tokenizer(out / "tokenizer")
    docs = {}
    for split in ("train", "val"):
        ids = np.asarray(load_split(out, split))
        assert ids[0] == tok.eot_id
        cuts = np.flatnonzero(ids == tok.eot_id)
        docs[split] = [tok.decode(ids[a + 1 : b]) for a, b in zip(cuts, [*cuts[1:], len(ids)], strict=True)]
    return docs


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}


# ---------------------------------------------------------------------------------------------
# Formats


@pytest.fixture
def formats(tmp_path) -> dict[str, list[Path] | str]:
    """The same 300 documents in every input format."""
    (tmp_path / "txt" / "deeper").mkdir(parents=True)
    txt = [tmp_path / "txt" / ("deeper" if i % 2 else "") / f"{i:03d}.txt" for i in range(len(DOCS))]
    for path, doc in zip(txt, DOCS, strict=True):
        path.write_text(doc, encoding="utf-8")
    (tmp_path / "parts").mkdir()
    for k in range(3):
        write_jsonl(tmp_path / "parts" / f"part{k}.jsonl", DOCS[k * 100 : (k + 1) * 100])
    zst = tmp_path / "c.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"text": d}) + "\n" for d in DOCS).encode()))
    (tmp_path / "d.json").write_text(json.dumps([{"text": d} for d in DOCS]))
    return {
        "jsonl": [write_jsonl(tmp_path / "a.jsonl", DOCS)],
        "gz": [write_jsonl(tmp_path / "b.jsonl.gz", DOCS, gzip.open)],
        "zst": [zst],
        "json": [tmp_path / "d.json"],
        "parquet": [write_parquet(tmp_path / "e.parquet", DOCS)],
        "glob": str(tmp_path / "parts" / "*.jsonl"),
        # A folder: its files in sorted path order, which is not DOCS's order.
        "folder": [tmp_path / "txt"],
    }


def test_every_format_gives_the_same_documents(tmp_path, formats):
    reference = None
    for name, inputs in formats.items():
        out = tmp_path / f"out-{name}"
        meta = prepare(inputs, "char", out, shard_tokens=1000)
        docs = split_documents(out)
        assert sorted(docs["train"] + docs["val"]) == sorted(DOCS), name
        assert meta["counts"]["documents"] == len(DOCS) and meta["split"]["mode"] == "documents"
        assert meta["counts"]["val_documents"] == len(docs["val"]) > 0
        assert meta["counts"]["tokens"] == meta["train_tokens"] + meta["val_tokens"]
        # Documents land in a split by their content: the same split whatever the format.
        if reference is None:
            reference = {split: set(d) for split, d in docs.items()}
        assert {split: set(d) for split, d in docs.items()} == reference, name
        if name != "folder":  # the same order of documents: the same bytes
            assert shard_bytes(out) == shard_bytes(tmp_path / "out-jsonl"), name
    # The split is by documents, about val_fraction of them, seeded.
    assert 10 <= len(reference["val"]) <= 60
    other = prepare(formats["jsonl"], "char", tmp_path / "seed2", seed=2)
    assert other["counts"]["val_documents"] != len(reference["val"]) or \
        set(split_documents(tmp_path / "seed2")["val"]) != reference["val"]


def test_shards_are_fixed_size_and_listed_in_the_manifest(tmp_path, formats):
    out = tmp_path / "out"
    meta = prepare(formats["jsonl"], "char", out, shard_tokens=1000)
    train = meta["shards"]["train"]
    assert [s["file"] for s in train] == [f"train_{i:06d}.bin" for i in range(len(train))]
    assert all(s["tokens"] == 1000 for s in train[:-1]) and 0 < train[-1]["tokens"] <= 1000
    assert sum(s["tokens"] for s in train) == meta["train_tokens"] == len(load_split(out, "train"))
    assert meta["counts"]["shards"] == len(train) + len(meta["shards"]["val"])
    assert meta["sources"][0]["sha256"] and meta["sources"][0]["format"] == "jsonl"
    assert meta["tokenizer"] == "char" and meta["eot_id"] == meta["vocab_size"] - 1
    assert meta["split"] == {"mode": "documents", "seed": 1337, "val_fraction": 0.1}
    assert not list(out.glob("*.partial")) and not (out / ".progress.json").exists()
    assert not list(tmp_path.glob(".out*"))  # the staging directory became out


def test_split_blank_lines_and_bpe(tmp_path):
    text = "\n\n".join(DOCS[:40]) + "\n"
    src = tmp_path / "book.txt"
    src.write_text(text)
    meta = prepare([src], "bpe:300", tmp_path / "out", split_blank_lines=True)
    assert meta["counts"]["documents"] == 40 and meta["split"]["mode"] == "documents"
    assert sorted(sum(split_documents(tmp_path / "out").values(), [])) == sorted(DOCS[:40])


def test_one_document_is_split_by_its_tail(tmp_path):
    """One JSONL record (or a few): too few documents to split by; each gives its tail."""
    src = write_jsonl(tmp_path / "one.jsonl", ["x" * 50 + "y" * 50])
    result = prepare_corpus([src], tmp_path / "out", PrepareOptions(tokenizer="char"))
    assert result.manifest["split"]["mode"] == "tail"
    assert any("tail" in note for note in result.notes)
    tok = load_tokenizer(tmp_path / "out" / "tokenizer")
    assert tok.decode(load_split(tmp_path / "out", "train")) == "x" * 50 + "y" * 40
    assert tok.decode(load_split(tmp_path / "out", "val")) == "y" * 10


# ---------------------------------------------------------------------------------------------
# Workers, dedup, re-runs


def test_two_workers_write_the_same_bytes_as_one(tmp_path, formats, monkeypatch):
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 2000)  # many batches in flight
    one = prepare(formats["jsonl"], "char", tmp_path / "one", workers=1, shard_tokens=3000)
    two = prepare(formats["jsonl"], "char", tmp_path / "two", workers=2, shard_tokens=3000)
    assert one == two
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")


def test_dedup_drops_exact_duplicates_and_counts_them(tmp_path):
    docs = DOCS[:50] + DOCS[10:30] + DOCS[:5]
    src = write_jsonl(tmp_path / "dups.jsonl", docs)
    meta = prepare([src], "char", tmp_path / "out", dedup=True)
    assert meta["counts"]["duplicates"] == 25 and meta["counts"]["documents"] == 50
    assert sorted(sum(split_documents(tmp_path / "out").values(), [])) == sorted(DOCS[:50])
    kept = prepare([src], "char", tmp_path / "all")
    assert kept["counts"]["duplicates"] == 0 and kept["counts"]["documents"] == 75


def test_rerun_is_a_no_op_and_other_options_need_force(tmp_path, formats):
    out = tmp_path / "out"
    first = prepare_corpus(formats["jsonl"], out, PrepareOptions(tokenizer="char"))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = prepare_corpus(formats["jsonl"], out, PrepareOptions(tokenizer="char", workers=2))
    assert again.up_to_date and again.manifest == first.manifest
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    with pytest.raises(LyreError, match="other inputs or options; pass --force"):
        prepare(formats["jsonl"], "char", out, dedup=True)
    with pytest.raises(LyreError, match="other inputs or options; pass --force"):
        prepare(formats["gz"], "char", out)  # other inputs
    assert prepare(formats["jsonl"], "char", out, dedup=True, force=True)["options"]["dedup"]


# ---------------------------------------------------------------------------------------------
# Resume


class Killed(BaseException):
    """Stands for SIGKILL: nothing runs after it but what is on disk."""


def kill_after_shard(monkeypatch, k: int) -> None:
    finish, count = shards.ShardWriter._finish_shard, [0]

    def finish_then_die(self):
        finish(self)
        count[0] += 1
        if count[0] == k:
            raise Killed

    monkeypatch.setattr(shards.ShardWriter, "_finish_shard", finish_then_die)


@pytest.fixture
def mixed(tmp_path) -> list[Path]:
    """Records, duplicates, skipped lines and big .txt documents read in many chunks."""
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", DOCS[:120] + DOCS[:30])
    with open(tmp_path / "in" / "a.jsonl", "a") as f:
        f.write('{"title": "no text"}\n')
    (tmp_path / "in" / "b.txt").write_text(" ".join(DOCS[120:200]))
    (tmp_path / "in" / "c.txt").write_text("\n".join(DOCS[200:]))
    write_parquet(tmp_path / "in" / "d.parquet", DOCS[::7])
    return [tmp_path / "in"]


@pytest.mark.parametrize("kill_at", [1, 4, 9, 14])
def test_a_killed_prepare_resumes_to_the_same_bytes(tmp_path, mixed, monkeypatch, kill_at):
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 700)
    opts = dict(tokenizer="char", shard_tokens=900, dedup=True, chunk_bytes=256)
    full = prepare_corpus(mixed, tmp_path / "full", PrepareOptions(**opts))
    assert full.manifest["counts"]["shards"] > 14 and full.manifest["counts"]["duplicates"] > 30

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        kill_after_shard(m, kill_at)
        with pytest.raises(Killed):
            prepare_corpus(mixed, out, PrepareOptions(**opts))
    staging = tmp_path / ".out.partial"
    assert not out.exists() and (staging / ".progress.json").exists()
    kept = {p.name: p.read_bytes() for p in staging.glob("*.bin")}
    assert len(kept) == kill_at

    resumed = prepare_corpus(mixed, out, PrepareOptions(**opts))
    assert resumed.resumed and resumed.manifest == full.manifest
    assert shard_bytes(out) == shard_bytes(tmp_path / "full")
    assert all(shard_bytes(out)[name] == data for name, data in kept.items())
    assert not staging.exists()


def test_a_progress_file_of_other_options_is_not_resumed(tmp_path, mixed, monkeypatch):
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 700)
    with monkeypatch.context() as m:
        kill_after_shard(m, 2)
        with pytest.raises(Killed):
            prepare(mixed, "char", tmp_path / "out", shard_tokens=900)
    result = prepare_corpus(mixed, tmp_path / "out", PrepareOptions(tokenizer="char",
                                                                     shard_tokens=1000))
    assert not result.resumed
    assert prepare(mixed, "char", tmp_path / "ref", shard_tokens=1000) == result.manifest


def test_a_full_disk_keeps_finished_shards_and_resumes(tmp_path, mixed, monkeypatch):
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 700)
    full = prepare(mixed, "char", tmp_path / "full", shard_tokens=900)
    write, calls = shards.ShardWriter.write, [0]

    def full_disk(self, tokens):
        calls[0] += 1
        if calls[0] == 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, tokens)

    with monkeypatch.context() as m:
        m.setattr(shards.ShardWriter, "write", full_disk)
        with pytest.raises(LyreError, match="No space left on device.*finished shards are kept") as e:
            prepare(mixed, "char", tmp_path / "out", shard_tokens=900)
    assert "\n" not in str(e.value)
    staging = tmp_path / ".out.partial"
    assert list(staging.glob("train_*.bin"))  # whole shards only under shard names
    for shard in staging.glob("*.bin"):
        assert shard.stat().st_size == 900 * 2
    assert prepare(mixed, "char", tmp_path / "out", shard_tokens=900) == full
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "full")


# ---------------------------------------------------------------------------------------------
# Bad input


def test_records_without_the_text_field_are_counted_with_line_numbers(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", DOCS[:20])
    with open(src, "a") as f:
        f.write('{"title": "x"}\n\nnot json\n{"text": 3}\n{"text": ""}\n')
    meta = prepare([src], "char", tmp_path / "out")
    c = meta["counts"]
    assert c["documents"] == 20
    assert c["skipped"] == {"no 'text' field": 1, "invalid JSON": 1, "'text' is not a string": 1,
                            "empty text": 1}
    assert c["skipped_where"]["no 'text' field"] == [f"{src}:21"]
    assert c["skipped_where"]["invalid JSON"] == [f"{src}:23"]
    with pytest.raises(LyreError, match=r"a\.jsonl:21: no 'text' field \(--strict refuses it"):
        prepare([src], "char", tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists() and not (tmp_path / ".strict.partial").exists()
    # Another field name.
    other = tmp_path / "b.jsonl"
    other.write_text("".join(json.dumps({"content": d}) + "\n" for d in DOCS[:20]))
    assert prepare([other], "char", tmp_path / "b", text_field="content")["counts"]["documents"] == 20


def test_parquet_without_the_column(tmp_path):
    src = write_parquet(tmp_path / "a.parquet", DOCS[:20], column="body")
    with pytest.raises(LyreError, match="has no column 'text' \\(columns: body, n\\); pass --text-field"):
        prepare([src], "char", tmp_path / "out")
    assert prepare([src], "char", tmp_path / "out", text_field="body")["counts"]["documents"] == 20
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(LyreError, match="cannot read parquet file"):
        prepare([tmp_path / "junk.parquet"], "char", tmp_path / "junk")


@pytest.mark.parametrize("kind", ["binary", "latin1", "gz", "zst"])
def test_bad_files_stop_before_writing_or_are_skipped(tmp_path, kind):
    good = write_jsonl(tmp_path / "good.jsonl", DOCS[:30])
    bad, message = {
        "binary": (tmp_path / "bad.txt", "NUL byte at byte offset 4"),
        "latin1": (tmp_path / "bad.txt", "not valid UTF-8"),
        "gz": (tmp_path / "bad.jsonl.gz", "corrupt gz file"),
        "zst": (tmp_path / "bad.jsonl.zst", "corrupt zst file"),
    }[kind]
    content = {
        "binary": b"text\x00\x01\x02",
        "latin1": "caf\u00e9".encode("latin-1"),
        "gz": gzip.compress(b'{"text": "hello"}\n' * 100)[:-20],
        "zst": b"\x28\xb5\x2f\xfd" + b"garbage" * 10,
    }[kind]
    bad.write_bytes(content)
    with pytest.raises(LyreError, match=message) as e:
        prepare([good, bad], "char", tmp_path / "out")
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([good.name, bad.name])
    meta = prepare([good, bad], "char", tmp_path / "out", skip_bad=True)
    assert meta["counts"]["documents"] == 30
    assert message.split(" at")[0] in meta["counts"]["files_skipped"][str(bad)]


def test_a_tokenizer_that_does_not_cover_the_text(tmp_path):
    build_tokenizer("char", ["abc "]).save(tmp_path / "tok")
    src = write_jsonl(tmp_path / "a.jsonl", ["abc cab"] * 5 + ["abz"] + ["bca"] * 10)
    with pytest.raises(LyreError, match="does not cover the text: .*'z'") as e:
        prepare([src], str(tmp_path / "tok"), tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / ".out.partial").exists()


def test_an_output_inside_the_input_folder_is_not_read_back(tmp_path):
    (tmp_path / "corpus").mkdir()
    write_jsonl(tmp_path / "corpus" / "a.jsonl", DOCS)
    out = tmp_path / "corpus" / "prepared"
    first = prepare([tmp_path / "corpus"], "char", out)
    assert len(first["sources"]) == 1
    assert prepare([tmp_path / "corpus"], "char", out) == first  # still up to date


def test_bad_options(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", DOCS[:20])
    for options, message in [({"shard_tokens": 0}, "--shard-tokens must be positive"),
                             ({"workers": 0}, "--workers must be at least 1"),
                             ({"skip_bad": True, "strict": True}, "contradict")]:
        with pytest.raises(LyreError, match=message):
            prepare([src], "char", tmp_path / "out", **options)
    with pytest.raises(LyreError, match="no file matches"):
        prepare([str(tmp_path / "*.parquet")], "char", tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# The command


def test_cli_prepare_json_summary_and_errors(capsys, tmp_path, formats):
    out = tmp_path / "data"
    code, stdout, _ = run_cli(capsys, "prepare", *formats["jsonl"], *formats["parquet"], "--out", out,
                              "--dedup", "--shard-tokens", "2000", "--json")
    assert code == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert {"documents", "tokens", "train_tokens", "val_tokens", "shards", "skipped"} <= set(summary)
    assert summary["documents"] == 300 and summary["duplicates"] == 300 and summary["skipped"] == {}
    assert summary["tokens"] == summary["train_tokens"] + summary["val_tokens"]
    assert summary["shards"] == load_meta(out)["counts"]["shards"]

    code, stdout, _ = run_cli(capsys, "prepare", *formats["jsonl"], *formats["parquet"], "--out", out,
                              "--dedup", "--shard-tokens", "2000")
    assert code == 0 and "up to date" in stdout
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\x00\x01")
    assert_one_line_error(*run_cli(capsys, "prepare", bad, "--out", tmp_path / "x")[::2], "NUL byte")
    code, stdout, _ = run_cli(capsys, "prepare", *formats["jsonl"], bad, "--out", tmp_path / "z",
                              "--skip-bad")
    assert code == 0 and f"skipped file {bad}" in stdout


def test_sigkill_then_the_same_command_gives_the_same_bytes(tmp_path):
    """A real kill -9 of `lyre prepare --workers 2` (its workers leave on their own), then the
    same command: the shards it finished are kept and the result is the uninterrupted one."""
    import signal
    import subprocess
    import sys
    import time

    src = write_jsonl(tmp_path / "big.jsonl", documents(20_000, seed=1))
    argv = [sys.executable, "-m", "lyre", "prepare", str(src), "--out", str(tmp_path / "out"),
            "--workers", "2", "--shard-tokens", "20000", "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / ".out.partial" / ".progress.json"
    deadline = time.monotonic() + 120
    while not progress.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    children = [p.parent.name for p in Path("/proc").glob("[0-9]*/stat")
                if _parent_of(p) == proc.pid]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if progress.exists():  # killed half-way (else it finished first: nothing to resume)
        kept = {p.name: p.read_bytes() for p in progress.parent.glob("*.bin")}
        assert kept
        time.sleep(1.5)
        for pid in children:  # the orphaned workers have left
            status = Path(f"/proc/{pid}/status")
            assert not status.exists() or "zombie" in status.read_text().lower()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["resumed"]
        assert all(shard_bytes(tmp_path / "out")[name] == data for name, data in kept.items())
    reference = prepare([src], "char", tmp_path / "ref", shard_tokens=20000)
    assert load_meta(tmp_path / "out") == reference
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "ref")


def _parent_of(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
