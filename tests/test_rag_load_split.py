"""Loading files into Documents and splitting them into Chunks with exact offsets."""

from __future__ import annotations

import io
import random
import zipfile

import pytest

from lyre.core.errors import LyreError
from lyre.rag.loaders import SkipFile, discover, html_to_text, load_documents, load_file
from lyre.rag.splitter import RecursiveSplitter, SplitConfig, split_documents
from lyre.rag.types import Document


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", None,
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
        content = len(objects)
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents "
                       f"{content} 0 R /Resources << /Font << /F1 3 0 R >> >> >>")
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{i} 0 obj\n{body}\nendobj\n".encode())
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for off in offsets:
        out.write(f"{off:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n"
              "%%EOF\n".encode())
    return out.getvalue()


def make_docx(paragraphs: list[tuple[str | None, str]]) -> bytes:
    """A .docx with (style, text) paragraphs, e.g. ("Heading1", "Intro")."""
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    body = ""
    for style, text in paragraphs:
        ppr = f'<w:pPr><w:pStyle w:val="{style}"/></w:pPr>' if style else ""
        body += f"<w:p>{ppr}<w:r><w:t>{text}</w:t></w:r></w:p>"
    xml = f'<?xml version="1.0"?><w:document xmlns:w="{w}"><w:body>{body}</w:body></w:document>'
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("word/document.xml", xml)
    return buf.getvalue()


# -- loading ------------------------------------------------------------------------------------


def test_text_markdown_and_folder_walk(tmp_path):
    (tmp_path / "a.txt").write_text("plain text\r\nwith windows newlines")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# Heading\n\nbody")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.txt").write_text("never seen")
    result = load_documents([tmp_path])
    by_name = {d.source.rsplit("/", 1)[-1]: d for d in result.documents}
    assert set(by_name) == {"a.txt", "b.md"}
    assert by_name["a.txt"].text == "plain text\nwith windows newlines"
    assert by_name["b.md"].source == f"{tmp_path.as_posix()}/sub/b.md"
    assert by_name["b.md"].metadata["format"] == "md"


def test_include_and_exclude_globs(tmp_path):
    for name in ["keep.md", "drop.md", "notes.txt", "drafts/x.md"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("text " + name)
    files, _ = discover([tmp_path], include=["*.md"], exclude=["drop.md", "drafts/*"])
    assert [f.source.rsplit("/", 1)[-1] for f in files] == ["keep.md"]


def test_html_visible_text_and_headings():
    html = """<html><head><title>Guide</title><style>p {color: red}</style>
      <script>var secret = 1;</script></head><body>
      <h2>Install   steps</h2><p>Run the <b>installer</b> &amp; wait.</p>
      <ul><li>one</li><li>two</li></ul><noscript>enable js</noscript></body></html>"""
    text = html_to_text(html)
    assert "secret" not in text and "color" not in text and "enable js" not in text
    assert "# Guide" in text and "## Install steps" in text
    assert "Run the installer & wait." in text
    assert "- one\n- two" in text


def test_pdf_pages_are_kept(tmp_path):
    path = tmp_path / "book.pdf"
    path.write_bytes(make_pdf(["First page words", "Second page words"]))
    docs = load_file(path)
    assert [(d.page, d.text.strip()) for d in docs] == [(1, "First page words"),
                                                        (2, "Second page words")]
    chunks = split_documents(docs)
    assert [c.chunk_id for c in chunks] == [f"{path.as_posix()}#0@p1", f"{path.as_posix()}#0@p2"]


def test_docx_paragraphs_and_headings(tmp_path):
    path = tmp_path / "report.docx"
    path.write_bytes(make_docx([("Heading1", "Results"), (None, "The yield rose.")]))
    [doc] = load_file(path)
    assert doc.text == "# Results\n\nThe yield rose.\n"
    assert split_documents([doc])[0].heading == "Results"


@pytest.mark.parametrize("name,data,reason", [
    ("empty.txt", b"   \n", "empty file"),
    ("bin.txt", b"abc\x00def", "binary"),
    ("latin.txt", "caf\xe9".encode("latin-1"), "not UTF-8"),
    ("bad.pdf", b"%PDF-1.4 garbage", "corrupt PDF"),
    ("bad.docx", b"not a zip", "corrupt .docx"),
    ("blank.pdf", make_pdf([""]), "without extractable text"),
])
def test_bad_files_are_skipped_with_a_reason(tmp_path, name, data, reason):
    (tmp_path / name).write_bytes(data)
    (tmp_path / "good.txt").write_text("fine")
    result = load_documents([tmp_path])
    assert [d.source.rsplit("/", 1)[-1] for d in result.documents] == ["good.txt"]
    [skipped] = result.skipped
    assert skipped.source.endswith(name) and reason in skipped.reason
    with pytest.raises(SkipFile):
        load_file(tmp_path / name)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(LyreError, match="no such file"):
        load_documents([tmp_path / "nope"])


# -- splitting ----------------------------------------------------------------------------------


def sample_texts() -> list[str]:
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "averyveryverylongwordwithoutspaces"]
    messy = "".join(rng.choice(words) + rng.choice([" ", " ", "\n", "\n\n", "  ", "\n \n"])
                    for _ in range(600))
    prose = "\n\n".join(
        "\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(rng.randint(1, 8)))
        for _ in range(40))
    repeated = ("The same sentence again. " * 30 + "\n\n") * 4  # str.find would get these wrong
    return [messy, prose, repeated]


@pytest.mark.parametrize("size,overlap", [(1000, 200), (300, 50), (60, 10), (25, 0), (9, 4)])
def test_same_chunks_as_langchain(size, overlap):
    lc = pytest.importorskip("langchain_text_splitters")
    for text in sample_texts():
        expected = lc.RecursiveCharacterTextSplitter(
            chunk_size=size, chunk_overlap=overlap).split_text(text)
        spans = RecursiveSplitter(SplitConfig(size, overlap)).split_spans(text)
        assert [text[a:b] for a, b in spans] == expected


def test_offsets_are_exact_and_chunks_fit():
    for text in sample_texts():
        doc = Document(text, "t.txt")
        for cfg in [SplitConfig(120, 30), SplitConfig(120, 30, sentences=True)]:
            chunks = split_documents([doc], cfg)
            assert chunks
            for c in chunks:
                assert text[c.start:c.end] == c.text
                assert len(c.text) <= 120 or " " not in c.text
                assert c.chunk_id == f"t.txt#{c.start}"
            starts = [c.start for c in chunks]
            assert starts == sorted(starts)


def test_overlap_repeats_the_tail():
    text = " ".join(f"w{i:03d}" for i in range(200))
    chunks = split_documents([Document(text, "x")], SplitConfig(100, 30))
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start < a.end  # they overlap
        assert a.end - b.start <= 30


def test_sentence_aware_chunks_end_at_sentences():
    # hard-wrapped prose: line breaks fall in the middle of sentences
    text = ("One short sentence here. Another one follows it, a bit\nlonger than the first. "
            "It wraps onto the next\nline and ends there. Then a fourth.\n") * 5
    chunks = split_documents([Document(text, "x")], SplitConfig(130, 0, sentences=True))
    assert all(c.text.endswith(".") for c in chunks)
    plain = split_documents([Document(text, "x")], SplitConfig(130, 0))
    assert not all(c.text.endswith(".") for c in plain)


def test_headings_in_effect():
    text = "intro line\n\n# Part One\n\n" + "alpha " * 50 + "\n\n## Detail\n\n" + "beta " * 50
    doc = Document(text, "notes.md", metadata={"format": "md"})
    chunks = split_documents([doc], SplitConfig(120, 0))
    assert chunks[0].heading is None
    assert {c.heading for c in chunks if "alpha" in c.text} == {"Part One"}
    assert {c.heading for c in chunks if "beta" in c.text} == {"Detail"}
    plain = split_documents([Document(text, "notes.txt", metadata={"format": "txt"})])
    assert all(c.heading is None for c in plain)


def test_token_length():
    text = "a b c d e f g h i j " * 10
    chunks = RecursiveSplitter(SplitConfig(5, 0), length=lambda s: len(s.split())).split_spans(text)
    assert all(len(text[a:b].split()) <= 5 for a, b in chunks)
    assert len(chunks) == 20


def test_bad_config():
    with pytest.raises(LyreError, match="overlap"):
        SplitConfig(100, 100)
    with pytest.raises(LyreError, match="at least 1"):
        SplitConfig(0, 0)


@pytest.mark.parametrize("size,overlap", [(40, 0), (25, 10), (8, 3), (3, 1)])
def test_same_chunks_as_langchain_with_a_token_length(size, overlap):
    """The merge by binary search over prefix sums, with a length that is not characters (and
    pieces that measure 0): LangChain's chunks."""
    lc = pytest.importorskip("langchain_text_splitters")

    def words(s: str) -> int:
        return len(s.split())

    for text in sample_texts():
        expected = lc.RecursiveCharacterTextSplitter(
            chunk_size=size, chunk_overlap=overlap, length_function=words).split_text(text)
        spans = RecursiveSplitter(SplitConfig(size, overlap), length=words).split_spans(text)
        assert [text[a:b] for a, b in spans] == expected


def test_same_chunks_as_langchain_random_texts():
    lc = pytest.importorskip("langchain_text_splitters")
    rng = random.Random(11)
    pieces = ["a", "bb", "ccc dd", "word", "x" * 30, " ", "  ", "\n", "\n\n", "\n\n\n", " \n "]
    for _ in range(200):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 80)))
        size = rng.randint(2, 40)
        overlap = rng.randint(0, size - 1)
        expected = lc.RecursiveCharacterTextSplitter(
            chunk_size=size, chunk_overlap=overlap).split_text(text)
        spans = RecursiveSplitter(SplitConfig(size, overlap)).split_spans(text)
        assert [text[a:b] for a, b in spans] == expected, (text, size, overlap)
