"""Labelled data: formats and column detection, label order, bad rows, balance and the split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from lyre.classify.config import ClassifyConfig
from lyre.classify.data import (
    balance,
    label_order,
    load_dataset,
    read_labelled,
    read_split,
    split,
    write_split,
)
from lyre.core.errors import LyreError
from lyre.finetune.config import FinetuneConfig

SMS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sms_spam.tsv"
needs_sms = pytest.mark.skipif(not SMS.is_file(), reason=f"shared data {SMS} not present")


def sections(data: Path, **classify) -> tuple[FinetuneConfig, ClassifyConfig]:
    ft = FinetuneConfig(task="classify", data=str(data), val_fraction=0.1, test_fraction=0.2)
    return ft, ClassifyConfig(**classify)


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---- the SMS file, and the book's split --------------------------------------------------------


@needs_sms
def test_sms_spam_reads_as_is():
    examples, problems = read_labelled(SMS)
    counts = Counter(e.label for e in examples)
    assert counts == {"ham": 4827, "spam": 747} and problems.count == 0
    assert label_order(examples) == ["ham", "spam"]  # first appearance: ham is index 0
    # TSV fields are taken as they are: a text starting with a quote keeps it.
    assert any(e.text.startswith('"') for e in examples)


@needs_sms
def test_the_books_balanced_split():
    ft, cls = sections(SMS, balance=True)
    dataset = load_dataset(ft, cls)
    s = dataset.splits
    assert (len(s.train), len(s.val), len(s.test)) == (1045, 149, 300)
    assert Counter(e.label for e in s.train + s.val + s.test) == {"ham": 747, "spam": 747}
    assert any("balanced by undersampling" in note for note in dataset.notes)
    again = load_dataset(*sections(SMS, balance=True)).splits
    assert [e.text for e in again.test] == [e.text for e in s.test]  # seeded


# ---- formats ---------------------------------------------------------------------------------


def test_tsv_with_a_header_and_csv_with_quotes(tmp_path):
    tsv = write(tmp_path, "a.tsv", "text\tlabel\nhello there\tham\nWIN now\tspam\n")
    examples, _ = read_labelled(tsv)
    assert [(e.text, e.label, e.where) for e in examples] == [
        ("hello there", "ham", "line 2"), ("WIN now", "spam", "line 3")]
    csv_file = write(tmp_path, "b.csv", 'id,Sentence,Class\n1,"hi, you",a\n2,"say ""yes""\nplease",b\n')
    examples, _ = read_labelled(csv_file)
    assert [(e.text, e.label) for e in examples] == [("hi, you", "a"), ('say "yes"\nplease', "b")]


def test_headerless_two_columns_find_the_label_column(tmp_path):
    path = write(tmp_path, "c.tsv", "".join(f"a long text number {i}\t{'xy'[i % 2]}\n" for i in range(10)))
    examples, _ = read_labelled(path)
    assert examples[0].text == "a long text number 0" and examples[0].label == "x"


def test_jsonl_and_json_array_with_named_keys(tmp_path):
    rows = [{"review": "great film", "stars": 5}, {"review": "dull", "stars": 1}, {"review": "fine", "stars": 10}]
    jsonl = write(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LyreError, match="classify.label_column"):
        read_labelled(jsonl)  # "stars" is not a name it knows: it says which flag to set
    examples, _ = read_labelled(jsonl, text_column="review", label_column="stars")
    assert [e.label for e in examples] == ["5", "1", "10"]
    assert label_order(examples) == ["1", "5", "10"]  # numbers sort numerically
    array = write(tmp_path, "e.json", json.dumps([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]))
    assert [e.where for e in read_labelled(array)[0]] == ["record 0", "record 1"]


def test_given_labels_fix_the_order_and_drop_other_rows(tmp_path):
    path = write(tmp_path, "f.tsv", "ham\thello\nspam\tWIN\nother\twhat\n")
    ft, cls = sections(path, labels=["spam", "ham"])
    ft.val_fraction, ft.test_fraction = 0.34, 0.0
    dataset = load_dataset(ft, cls)
    assert dataset.labels == ["spam", "ham"]
    assert "unknown label 'other' (line 3)" in " ".join(dataset.notes)


# ---- bad input -------------------------------------------------------------------------------


def test_bad_training_rows_are_skipped_and_reported_with_line_numbers(tmp_path):
    path = write(tmp_path, "g.tsv", "ham\thi\n\tno label\nspam\t   \nspam\tWIN\nham\tok\nspam\tFREE\nham\tyo\n"
                                    "spam\tcash\nham\tsee you\nspam\tprize\nham\tlater\nspam\tcall\n")
    dataset = load_dataset(*sections(path))
    note = " ".join(dataset.notes)
    assert "skipped 2 of 12 rows" in note and "no label (line 2)" in note and "empty text (line 3)" in note


def test_explicit_val_and_test_files_must_be_clean(tmp_path):
    train = write(tmp_path, "train.tsv", "".join(f"{'ab'[i % 2]}\ttext {i}\n" for i in range(20)))
    val = write(tmp_path, "val.tsv", "a\tfine\nc\tunknown label\n\tno label\nb\t\n")
    ft, cls = sections(train)
    ft.val_data = str(val)
    with pytest.raises(LyreError) as e:
        load_dataset(ft, cls)
    message = str(e.value)
    assert "validation file" in message and "unknown label 'c' (line 2)" in message
    assert "no label (line 3)" in message and "line 4" in message and "\n" not in message
    ft.val_data = str(write(tmp_path, "val2.tsv", "a\tfine\nb\tgood\n"))
    ft.test_data = str(write(tmp_path, "test.tsv", "b\tx\na\ty\nb\tz\n"))
    s = load_dataset(ft, cls).splits
    assert (len(s.train), len(s.val), len(s.test)) == (20, 2, 3)  # nothing split off train


@pytest.mark.parametrize("text, match", [
    ("ham\tone\nham\ttwo\nham\tthree\n", "one class only"),
    ("\n\n", "no usable row"),
    ("\thi\nham\t\n", "no usable row"),
])
def test_one_class_or_no_rows_is_refused(tmp_path, text, match):
    path = write(tmp_path, "h.tsv", text)
    with pytest.raises(LyreError, match=match):
        load_dataset(*sections(path))


def test_non_utf8_and_missing_files(tmp_path):
    path = write(tmp_path, "i.tsv", "ham\tok\nspam\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(LyreError, match=r"not UTF-8 text \(byte 15, line 2\)"):
        read_labelled(path)
    with pytest.raises(LyreError, match="not found"):
        read_labelled(tmp_path / "missing.tsv")
    with pytest.raises(LyreError, match="line 2 is not valid JSON"):
        read_labelled(write(tmp_path, "j.jsonl", '{"text": "a", "label": "x"}\n{oops\n'))


def test_too_few_rows_to_split(tmp_path):
    path = write(tmp_path, "k.tsv", "a\tone\nb\ttwo\na\tthree\n")
    with pytest.raises(LyreError, match="too few to split"):
        load_dataset(*sections(path))


# ---- balance, split, the run's copy -------------------------------------------------------------


def test_balance_undersamples_to_the_smallest_class():
    from lyre.classify.data import Example

    rows = [Example(f"t{i}", "a" if i % 5 else "b") for i in range(100)]
    kept = balance(rows, seed=1)
    assert Counter(e.label for e in kept) == {"a": 20, "b": 20}
    assert [e.text for e in kept] == [e.text for e in rows if e in kept]  # file order kept


def test_split_arithmetic_and_no_test_split():
    from lyre.classify.data import Example

    rows = [Example(str(i), "a") for i in range(10)]
    s = split(rows, 0.1, 0.2, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (7, 1, 2)
    s = split(rows, 0.2, 0.0, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (8, 2, 0)


def test_a_split_round_trips(tmp_path):
    from lyre.classify.data import Example

    rows = [Example('quote " tab\t newline\n ünï', "x"), Example("plain", "7")]
    write_split(tmp_path / "s.jsonl", rows)
    assert [(e.text, e.label) for e in read_split(tmp_path / "s.jsonl")] == [(e.text, e.label) for e in rows]
