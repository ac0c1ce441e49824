"""Tokenizers: lossless round trips, clear errors, save/load, GPT-2 ids against references."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gpt2_fixture import gpt2_files

from lyre.core.errors import LyreError
from lyre.tokenizers import (
    EOT,
    BPETokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    build_tokenizer,
    load_tokenizer,
)
from lyre.tokenizers.bpe import split_for_parallel

REPO = Path(__file__).resolve().parents[1]
ILIAD = REPO / "lyre" / "data_files" / "iliad.txt"
SHARED_DATA = REPO.parent / "shared" / "data"
GPT2_DIR = SHARED_DATA / "gpt2"
NO_GPT2 = f"OpenAI's GPT-2 files not found in {GPT2_DIR} (shared data absent): the checks on the real vocabulary are skipped; the GPT-2-format files made by the test ran"

# Strings a tokenizer is likely to get wrong: multi-byte UTF-8, grapheme clusters, odd spaces.
TRICKY = [
    "",
    " ",
    "   leading and trailing spaces   ",
    "tabs\tand\r\nwindows newlines\n\n\n",
    "emoji 😀 and a family 👨‍👩‍👧 and flags 🇬🇷",
    "CJK 日本語のテキスト 中文 한국어",
    "combining marks: e\u0301 a\u0300\u0323 Z\u0351\u0352\u0353",
    "Greek ἄνδρα μοι ἔννεπε, Μοῦσα, πολύτροπον",
    "RTL שלום עולם مرحبا",
    "control \x00\x01\x7f and nbsp\u00a0and zero-width\u200bspace",
    "the text <|endoftext|> is just text by default",
    "numbers 1234567890 3.14159 and punctuation !?.;:'\"()[]{}",
]


@pytest.fixture(scope="module")
def iliad() -> str:
    return ILIAD.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe(iliad: str) -> BPETokenizer:
    return BPETokenizer.train([iliad], vocab_size=1024)


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    """OpenAI's real GPT-2 tokenizer (shared data): only for checks of GPT-2's actual ids."""
    if not (GPT2_DIR / "encoder.json").is_file():
        pytest.skip(NO_GPT2)
    return GPT2Tokenizer(GPT2_DIR)


@pytest.fixture(scope="module", params=["fixture", "real"])
def gpt2_dir(request, tmp_path_factory) -> Path:
    """Files in GPT-2's format: made by the test (always), and OpenAI's own (when present)."""
    if request.param == "real":
        if not (GPT2_DIR / "encoder.json").is_file():
            pytest.skip(NO_GPT2)
        return GPT2_DIR
    return gpt2_files(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def gpt2_any(gpt2_dir: Path) -> GPT2Tokenizer:
    return GPT2Tokenizer(gpt2_dir)


def same_tokenizer(a, b, text: str) -> None:
    assert (a.kind, a.vocab_size, a.special_tokens) == (b.kind, b.vocab_size, b.special_tokens)
    assert a.encode(text) == b.encode(text)
    assert [a.token_bytes(i) for i in range(a.vocab_size)] == [
        b.token_bytes(i) for i in range(b.vocab_size)
    ]


# ---- char ----------------------------------------------------------------------------------


def test_char_round_trip_and_vocab(iliad: str) -> None:
    tok = build_tokenizer("char", [iliad])
    assert tok.kind == "char" and tok.chars == sorted(set(iliad))
    # Every tokenizer reserves <|endoftext|>; a char one puts it after the last character.
    assert tok.special_tokens == {EOT: len(tok.chars)} and tok.eot_id == len(tok.chars)
    assert tok.vocab_size == len(set(iliad)) + 1
    ids = tok.encode(iliad)
    assert len(ids) == len(iliad) and max(ids) < tok.vocab_size
    assert tok.decode(ids) == iliad


def test_char_vocab_from_streamed_chunks(iliad: str) -> None:
    chunks = (iliad[i : i + 1000] for i in range(0, len(iliad), 1000))
    assert CharTokenizer.from_texts(chunks).chars == CharTokenizer.from_texts([iliad]).chars


def test_char_round_trip_tricky() -> None:
    tok = CharTokenizer.from_texts(TRICKY)
    for text in TRICKY:
        assert tok.decode(tok.encode(text)) == text
        assert b"".join(tok.token_bytes(i) for i in tok.encode(text)) == text.encode()


def test_char_unknown_character_error() -> None:
    tok = CharTokenizer.from_texts(["hello world\n"])
    with pytest.raises(LyreError) as err:
        tok.encode("hello\nwor😀ld")
    message = str(err.value)
    assert "'😀'" in message and "U+1F600" in message
    assert "position 9" in message and "line 2" in message and "unk" in message
    assert "\n" not in message


def test_char_unknown_replacement_is_opt_in() -> None:
    tok = CharTokenizer.from_texts(["abc"], unk="?")
    assert "?" in tok.chars  # added because the corpus lacked it
    assert tok.decode(tok.encode("abzc€")) == "ab?c?"
    assert CharTokenizer.from_texts(["ab?"], unk="?").chars == ["?", "a", "b"]  # reused, not duplicated
    with pytest.raises(LyreError):
        CharTokenizer(["a"], unk="??")


def test_char_save_load(tmp_path: Path, iliad: str) -> None:
    tok = CharTokenizer.from_texts([iliad], unk="~")
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, CharTokenizer) and loaded.unk == "~"
    same_tokenizer(tok, loaded, iliad[:5000] + "\u2603")


def test_char_token_bytes_and_bad_ids() -> None:
    tok = CharTokenizer.from_texts(["aé€"])
    assert [tok.token_bytes(i) for i in range(4)] == [b"a", "é".encode(), "€".encode(), EOT.encode()]
    for bad in ([4], [-1]):
        with pytest.raises(LyreError, match="outside"):
            tok.decode(bad)
    with pytest.raises(LyreError):
        tok.token_bytes(4)


def test_char_endoftext_encode_decode() -> None:
    """<|endoftext|> as bpe.py treats it: plain characters unless allow_special; decoded as text."""
    tok = CharTokenizer.from_texts(["ab <|endoftext|>"])
    eot = tok.eot_id
    text = "a<|endoftext|>b<|endoftext|><|endoftext|>"
    ordinary = tok.encode(text)
    assert eot not in ordinary and len(ordinary) == len(text)  # literal text stays characters
    special = tok.encode(text, allow_special=True)
    assert special == [tok.encode("a")[0], eot, tok.encode("b")[0], eot, eot]
    assert tok.decode(special) == tok.decode(ordinary) == text
    assert tok.decode([eot]) == EOT and tok.decode([]) == ""
    # A corpus without '<' or '|' still encodes the special token, and unknowns still fail.
    small = CharTokenizer.from_texts(["ab"])
    assert small.encode("a<|endoftext|>", allow_special=True) == [0, small.eot_id]
    with pytest.raises(LyreError, match="'<'"):
        small.encode("a<|endoftext|>")
    assert small.encode("z<|endoftext|>", allow_special=True, unknown="replace") == [0, small.eot_id]


def test_char_save_load_keeps_endoftext(tmp_path: Path) -> None:
    tok = CharTokenizer.from_texts(["hello"])
    tok.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["special_tokens"] == {EOT: 4}
    loaded = load_tokenizer(tmp_path)
    assert (loaded.eot_id, loaded.vocab_size) == (4, 5)
    same_tokenizer(tok, loaded, "hello")


def test_char_tokenizer_saved_before_endoftext_still_loads(tmp_path: Path) -> None:
    """A tokenizer.json written before char tokenizers reserved <|endoftext|> (no
    special_tokens key): same ids and vocabulary size as it was trained with, no EOT."""
    old = {"kind": "char", "vocab_size": 3, "unk": None, "chars": ["\n", "a", "b"]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(old))
    tok = load_tokenizer(tmp_path)
    assert (tok.vocab_size, tok.eot_id, tok.special_tokens) == (3, None, {})
    assert tok.encode("ab\n") == [1, 2, 0] and tok.decode([0, 1, 2]) == "\nab"
    with pytest.raises(LyreError, match="outside"):
        tok.decode([3])
    tok.save(tmp_path / "again")  # saving it keeps it the way it was
    assert load_tokenizer(tmp_path / "again").special_tokens == {}


@pytest.mark.parametrize("special", [{EOT: 0}, {"<pad>": 2}, [EOT], "x"])
def test_char_bad_special_tokens(tmp_path: Path, special) -> None:
    meta = {"kind": "char", "chars": ["a", "b"], "special_tokens": special}
    (tmp_path / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(LyreError, match="special_tokens"):
        load_tokenizer(tmp_path)


def test_char_empty_corpus() -> None:
    with pytest.raises(LyreError, match="empty"):
        build_tokenizer("char", [""])


# ---- byte-level BPE ------------------------------------------------------------------------


def test_bpe_basics(bpe: BPETokenizer, iliad: str) -> None:
    assert bpe.kind == "bpe" and bpe.vocab_size == 1024
    assert bpe.eot_id == 0 and bpe.special_tokens == {EOT: 0}
    ids = bpe.encode(iliad)
    assert len(ids) < len(iliad.encode()) / 2  # merges actually compress
    assert bpe.decode(ids) == iliad


def test_bpe_round_trip_unseen_text(bpe: BPETokenizer) -> None:
    for text in TRICKY:
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text, text
        assert b"".join(bpe.token_bytes(i) for i in ids) == text.encode()


def test_bpe_special_tokens_only_when_allowed(bpe: BPETokenizer) -> None:
    text = f"one{EOT}two"
    assert bpe.eot_id not in bpe.encode(text)
    ids = bpe.encode(text, allow_special=True)
    assert ids == bpe.encode("one") + [bpe.eot_id] + bpe.encode("two")
    assert bpe.decode(ids) == text
    assert bpe.token_bytes(bpe.eot_id) == EOT.encode()


def test_bpe_parallel_chunks_match_single_encode(bpe: BPETokenizer, iliad: str) -> None:
    """Cutting a long text for the thread pool must not change a single id."""
    text = iliad[:100000] + "\n\n  x\n y\n\tz\nend\n" + "".join(TRICKY) * 100
    pieces = split_for_parallel(text, size=4096)
    assert len(pieces) > 10 and "".join(pieces) == text
    expected = bpe.hf.encode(text).ids
    assert bpe.encode(text) == expected
    assert bpe.encode_batch(["a b", text, ""]) == [bpe.hf.encode("a b").ids, expected, []]


def test_bpe_save_load(tmp_path: Path, bpe: BPETokenizer, iliad: str) -> None:
    bpe.save(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["kind"] == "bpe"
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, BPETokenizer)
    same_tokenizer(bpe, loaded, iliad[:20000] + "".join(TRICKY))
    text = f"a{EOT}b"
    assert loaded.encode(text) == bpe.encode(text)  # still ordinary after loading


def test_bpe_training_is_deterministic_and_streams(iliad: str) -> None:
    text = iliad[:100000]
    a = build_tokenizer("bpe:400", [text])
    b = build_tokenizer("bpe:400", iter([text]))
    assert a.hf.to_str() == b.hf.to_str()


def test_bpe_digits_option_keeps_one_token_per_digit(tmp_path: Path, iliad: str) -> None:
    # Numbers everywhere, so plain BPE learns digit merges; ':digits' must never make one.
    text = iliad[:50000] + " ".join(f"{n:,} and {n}" for n in range(1000, 60000, 7))
    plain = build_tokenizer("bpe:600", [text])
    digits = build_tokenizer("bpe:600:digits", [text])
    number = "48213 * 371 = 17,887,023"
    assert any(len(p) > 1 and p.isdigit() for p in (plain.decode([i]) for i in plain.encode(number)))
    pieces = [digits.decode([i]) for i in digits.encode(number)]
    assert "".join(pieces) == number
    assert all(not any(c.isdigit() for c in p) or len(p.strip()) == 1 for p in pieces), pieces
    # The option lives in the saved tokenizer: a reloaded one splits the same way.
    digits.save(tmp_path / "tok")
    same_tokenizer(digits, load_tokenizer(tmp_path / "tok"), iliad[:5000] + "".join(TRICKY) + number)


def test_bpe_bad_vocab_size() -> None:
    with pytest.raises(LyreError, match="at least 257"):
        build_tokenizer("bpe:100", ["some text"])


# ---- GPT-2 ---------------------------------------------------------------------------------


def reference_corpora(chars: int = 300_000) -> list[tuple[str, str]]:
    """The bundled Iliad always, the shared corpora when they are there (each cut to `chars`)."""
    corpora = [("bundled iliad.txt", ILIAD.read_text(encoding="utf-8")[:chars])]
    for name in ["tinyshakespeare.txt", "the-verdict.txt"]:
        if (SHARED_DATA / name).is_file():
            corpora.append((name, (SHARED_DATA / name).read_text(encoding="utf-8")[:chars]))
    return corpora


def test_gpt2_hello_world(gpt2: GPT2Tokenizer) -> None:
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256
    assert gpt2.decode([15496, 995]) == "Hello world"
    assert gpt2.encode(f"a{EOT}b", allow_special=True) == [64, 50256, 65]
    assert gpt2.encode_batch(["Hello world", "a"]) == [[15496, 995], [64]]


def test_gpt2_fixture_has_gpt2s_format(tmp_path_factory) -> None:
    """The stand-in made by the test is what the real files are: 50257 tokens, EOT last."""
    tok = GPT2Tokenizer(gpt2_files(tmp_path_factory.getbasetemp()))
    assert tok.vocab_size == 50257 and tok.eot_id == 50256 and tok.kind == "gpt2"
    text = ILIAD.read_text(encoding="utf-8")[:20000]
    assert len(tok.encode(text)) < len(text.encode()) / 2  # its learned merges compress text


def test_gpt2_matches_hugging_face(gpt2_any: GPT2Tokenizer, gpt2_dir: Path, tmp_path: Path) -> None:
    """Independent reference: transformers' GPT-2 tokenizer on the same vocab/merges files."""
    transformers = pytest.importorskip("transformers")
    shutil.copyfile(gpt2_dir / "encoder.json", tmp_path / "vocab.json")
    shutil.copyfile(gpt2_dir / "vocab.bpe", tmp_path / "merges.txt")
    hf = transformers.GPT2TokenizerFast.from_pretrained(tmp_path)
    for name, text in reference_corpora():
        assert gpt2_any.encode(text) == hf(text)["input_ids"], name
    for text in TRICKY:
        if EOT in text:  # HF always treats <|endoftext|> in text as the special token
            continue
        assert gpt2_any.encode(text) == hf(text)["input_ids"], text


def test_gpt2_matches_tiktoken_loader(gpt2_any: GPT2Tokenizer, gpt2_dir: Path, monkeypatch) -> None:
    """Second reference: tiktoken's own encoder.json/vocab.bpe conversion and pattern."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the local files, cache nothing
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(gpt2_dir / "vocab.bpe"),
        encoder_json_file=str(gpt2_dir / "encoder.json"),
    )
    ref = tiktoken.Encoding(
        "gpt2-ref", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={EOT: 50256}
    )
    text = "".join(t for _, t in reference_corpora()) + "".join(TRICKY)
    assert gpt2_any.encode(text) == ref.encode_ordinary(text)
    assert gpt2_any.encode(text, allow_special=True) == ref.encode(text, allowed_special="all")


def test_gpt2_round_trip_and_special(gpt2_any: GPT2Tokenizer) -> None:
    for text in TRICKY:
        ids = gpt2_any.encode(text)
        assert gpt2_any.decode(ids) == text
        assert b"".join(gpt2_any.token_bytes(i) for i in ids) == text.encode()
    assert 50256 not in gpt2_any.encode(EOT)
    ids = gpt2_any.encode(f"a{EOT}b", allow_special=True)
    assert ids == gpt2_any.encode("a") + [50256] + gpt2_any.encode("b")
    texts = ["Hello world", "a", ""]
    assert gpt2_any.encode_batch(texts) == [gpt2_any.encode(t) for t in texts]
    assert gpt2_any.token_bytes(50256) == EOT.encode()


def test_gpt2_save_is_self_contained(gpt2_any: GPT2Tokenizer, gpt2_dir: Path, tmp_path: Path) -> None:
    gpt2_any.save(tmp_path / "run" / "tokenizer")
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "run" / "tokenizer", moved)  # no path back to the source files
    assert sorted(p.name for p in moved.iterdir()) == [
        "encoder.json",
        "tokenizer.json",
        "vocab.bpe",
    ]
    loaded = load_tokenizer(moved)
    assert isinstance(loaded, GPT2Tokenizer)
    text = "Hello world, naïve café 😀"
    assert loaded.encode(text) == gpt2_any.encode(text)
    assert load_tokenizer(f"gpt2:{gpt2_dir}").encode(text) == gpt2_any.encode(text)


def test_gpt2_missing_files(tmp_path: Path) -> None:
    with pytest.raises(LyreError, match="encoder.json"):
        build_tokenizer(f"gpt2:{tmp_path}")


# ---- specs and loading ---------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["word", "bpe", "bpe:", "bpe:8k", "char:5", "gpt2", "", "BPE:10",
                                  "bpe:300:words", "bpe::digits"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(LyreError) as err:
        build_tokenizer(spec, ["text"])
    assert "\n" not in str(err.value)


def test_learned_specs_need_texts() -> None:
    for spec in ["char", "bpe:300"]:
        with pytest.raises(LyreError, match="no texts"):
            build_tokenizer(spec)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(LyreError, match="not found"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(LyreError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(LyreError, match="not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "sentencepiece"}')
    with pytest.raises(LyreError, match="unknown kind"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "bpe"}')
    with pytest.raises(LyreError, match="bpe.json"):
        load_tokenizer(tmp_path)


def test_a_saved_tokenizer_directory_is_a_spec(tmp_path):
    """Fine-tuning reuses a run's tokenizer: its directory works wherever a spec does."""
    from lyre.tokenizers import build_tokenizer as build

    original = build("bpe:300", ["the quick brown fox jumps over the lazy dog " * 20])
    original.save(tmp_path / "tok")
    reused = build(str(tmp_path / "tok"))
    text = "the lazy fox"
    assert reused.kind == "bpe" and reused.encode(text) == original.encode(text)
