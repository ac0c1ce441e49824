"""Labelled text: read TSV, CSV or JSONL files, check them, balance and split them.

    label<TAB>text                       TSV, with or without a header row (sms_spam.tsv as is)
    "text","label"                       CSV (RFC 4180 quoting), with or without a header row
    {"text": ..., "label": ...}          JSONL (or a JSON array of objects)

The text and label columns are found by name (a header cell or JSON key such as text,
sentence, message / label, class, category), or named with classify.text_column and
classify.label_column. A two-column file without a header needs no names: the label column is
the one with fewer distinct values. TSV fields are taken as they are (no quote processing: an
SMS may start with a quotation mark); CSV follows the usual quoting rules.

A bad row (no label, an empty text, a wrong number of fields) of the training file is skipped
and reported with its line number; in explicit validation and test files every bad row, and
a label the training data does not have, is an error, because scores on a silently shortened
test set mislead. A file with no usable row, or with a single class, is refused.

The labels keep an order, recorded in the run: the head's output i is labels[i]. Numbers sort
numerically (0, 1, 2), names keep the order in which the training file first uses them
(sms_spam.tsv: ham, spam), unless classify.labels lists them.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lyre.core.errors import LyreError
from lyre.core.io import atomic_write_text

TEXT_KEYS = ("text", "sentence", "message", "content", "sms", "review", "document", "body",
             "input")
LABEL_KEYS = ("label", "labels", "class", "category", "target", "sentiment", "y")
MAX_SHOWN = 5  # line numbers quoted in a message


@dataclass
class Example:
    text: str
    label: str
    where: str = ""  # "line 12", for messages about it


@dataclass
class Problems:
    """Rows that could not be used: how many per reason, and the first few line numbers."""

    rows: int = 0  # rows read, usable or not
    reasons: Counter = field(default_factory=Counter)
    places: dict[str, list[str]] = field(default_factory=dict)

    def add(self, where: str, reason: str) -> None:
        self.reasons[reason] += 1
        shown = self.places.setdefault(reason, [])
        if len(shown) < MAX_SHOWN:
            shown.append(where)

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        """`2 x empty text (line 4, line 9); 1 x no label (line 7)`"""
        return "; ".join(f"{n} x {reason} ({', '.join(self.places[reason])}"
                         f"{', ...' if n > len(self.places[reason]) else ''})"
                         for reason, n in self.reasons.most_common())


# ----------------------------------------------------------------------------------------------
# Reading one file


def read_text_file(path: Path) -> str:
    """The file's text; a missing, binary or non-UTF-8 file is a LyreError naming the line."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        raise LyreError(f"data file {path} not found" + (" (it is a directory)" if path.is_dir() else ""))
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise LyreError(f"{path} is not UTF-8 text (byte {e.start}, line {line}); convert it, "
                        "e.g. `iconv -f latin1 -t utf-8`") from None


def file_format(path: Path, text: str) -> str:
    """"jsonl", "tsv" or "csv": by the file's suffix, else by its first line."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix == ".csv":
        return "csv"
    first = next((line for line in text.splitlines() if line.strip()), "")
    if first.lstrip().startswith(("{", "[")):
        return "jsonl"
    return "tsv" if "\t" in first else "csv"


def read_labelled(path: str | Path, text_column: str = "",
                  label_column: str = "") -> tuple[list[Example], Problems]:
    """Every usable row of a labelled file, and what could not be used."""
    path = Path(path)
    text = read_text_file(path)
    kind = file_format(path, text)
    if kind == "jsonl":
        return _read_json(path, text, text_column, label_column)
    return _read_delimited(path, text, "\t" if kind == "tsv" else ",", text_column, label_column)


def _example(where: str, text: Any, label: Any, problems: Problems) -> Example | None:
    if label is None or (isinstance(label, str) and not label.strip()):
        problems.add(where, "no label")
        return None
    if isinstance(label, (dict, list)):
        problems.add(where, "a label that is not a name or number")
        return None
    if not isinstance(text, str):
        problems.add(where, "no text" if text is None else "a text that is not a string")
        return None
    if not text.strip():
        problems.add(where, "empty text")
        return None
    if isinstance(label, bool):
        label = str(label).lower()
    return Example(text, str(label).strip(), where)


def _pick(names: list[str], wanted: str, known: tuple[str, ...], what: str, path: Path,
          flag: str) -> str:
    """The column/key called `wanted`, or the first of `known` present (any case)."""
    if wanted:
        if wanted in names:
            return wanted
        folded = [n for n in names if n.lower() == wanted.lower()]
        if folded:
            return folded[0]
        raise LyreError(f"{path} has no {what} column {wanted!r}; it has {', '.join(names)}")
    lowered = {n.lower().strip(): n for n in names}
    for key in known:
        if key in lowered:
            return lowered[key]
    raise LyreError(f"{path}: cannot tell which column holds the {what} ({', '.join(names)}); "
                    f"name it with --set {flag}=NAME")


def _read_json(path: Path, text: str, text_key: str, label_key: str) -> tuple[list[Example], Problems]:
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise LyreError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}") from None
        if not isinstance(items, list):
            raise LyreError(f"{path}: expected a JSON array of objects")
        objects = [(f"record {i}", item) for i, item in enumerate(items)]
    else:
        objects = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                objects.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise LyreError(f"{path} line {number} is not valid JSON ({e.msg}); a JSONL file "
                                "holds one JSON object per line") from None
    problems = Problems(rows=len(objects))
    keys: list[str] = []
    for _, obj in objects:
        if isinstance(obj, dict):
            keys += [k for k in obj if k not in keys]
    if not keys:
        return [], problems
    tkey = _pick(keys, text_key, TEXT_KEYS, "text", path, "classify.text_column")
    lkey = _pick(keys, label_key, LABEL_KEYS, "label", path, "classify.label_column")
    examples = []
    for where, obj in objects:
        if not isinstance(obj, dict):
            problems.add(where, "not a JSON object")
        elif (example := _example(where, obj.get(tkey), obj.get(lkey), problems)) is not None:
            examples.append(example)
    return examples, problems


def _read_delimited(path: Path, text: str, delimiter: str, text_name: str,
                    label_name: str) -> tuple[list[Example], Problems]:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter, quoting=quoting)
    rows: list[tuple[int, list[str]]] = []
    line = 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append((line, row))
            line = reader.line_num + 1
    except csv.Error as e:
        raise LyreError(f"{path} line {reader.line_num}: {e}") from None
    if not rows:
        return [], Problems()
    header = rows[0][1]
    if _is_header(header, text_name, label_name):
        names = [cell.strip() for cell in header]
        t = names.index(_pick(names, text_name, TEXT_KEYS, "text", path, "classify.text_column"))
        lab = names.index(_pick(names, label_name, LABEL_KEYS, "label", path, "classify.label_column"))
        rows = rows[1:]
    else:
        t, lab = _guess_columns(path, rows, text_name or label_name)
    width = len(header)
    problems = Problems(rows=len(rows))
    examples = []
    for number, row in rows:
        where = f"line {number}"
        if len(row) != width:
            problems.add(where, f"{len(row)} fields instead of {width}")
        elif (example := _example(where, row[t], row[lab], problems)) is not None:
            examples.append(example)
    return examples, problems


def _is_header(row: list[str], text_name: str, label_name: str) -> bool:
    cells = {cell.strip().lower() for cell in row}
    if text_name or label_name:
        return bool({text_name.lower(), label_name.lower()} & cells)
    return bool(cells & set(TEXT_KEYS)) and bool(cells & set(LABEL_KEYS))


def _guess_columns(path: Path, rows: list[tuple[int, list[str]]], named: str) -> tuple[int, int]:
    """(text, label) column of a headerless file: two columns, the label has fewer values."""
    width = len(rows[0][1])
    if named:
        raise LyreError(f"{path} has no header row with the column {named!r}; add one")
    if width != 2:
        raise LyreError(f"{path} has {width} columns and no header row naming them; add a header "
                        "(e.g. text and label) or use two columns, label and text")
    sample = [row for _, row in rows[:2000] if len(row) == 2]
    distinct = [len({row[i] for row in sample}) for i in (0, 1)]
    mean_len = [sum(len(row[i]) for row in sample) / max(1, len(sample)) for i in (0, 1)]
    label = 0 if (distinct[0], mean_len[0]) <= (distinct[1], mean_len[1]) else 1
    return 1 - label, label


# ----------------------------------------------------------------------------------------------
# Labels, checks, balance, splits


def label_order(examples: list[Example], given: list[str] | None = None) -> list[str]:
    """The labels in head order: `given`, else numbers ascending, else first appearance."""
    if given:
        return list(given)
    seen = list(dict.fromkeys(e.label for e in examples))
    try:
        return sorted(seen, key=float)
    except ValueError:
        return seen


def check_classes(examples: list[Example], labels: list[str], what: str) -> None:
    if not examples:
        raise LyreError(f"{what} has no usable row; expected a text and a label on each line")
    counts = Counter(e.label for e in examples)
    if len(counts) < 2 or len(labels) < 2:
        only = ", ".join(f"{name!r}: {n} rows" for name, n in counts.items())
        raise LyreError(f"{what} has one class only ({only}); a classifier needs at least two")


def keep_known(examples: list[Example], labels: list[str], problems: Problems) -> list[Example]:
    """Drop (and report) rows whose label is not one of `labels`."""
    known = set(labels)
    kept = []
    for e in examples:
        if e.label in known:
            kept.append(e)
        else:
            problems.add(e.where, f"unknown label {e.label!r}")
    return kept


def balance(examples: list[Example], seed: int) -> list[Example]:
    """Undersample every class to the size of the smallest one (seeded), keeping file order."""
    by_label: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_label.setdefault(e.label, []).append(i)
    smallest = min(len(v) for v in by_label.values())
    rng = random.Random(seed)
    chosen = sorted(i for label in sorted(by_label) for i in rng.sample(by_label[label], smallest))
    return [examples[i] for i in chosen]


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]


def split(examples: list[Example], val_fraction: float, test_fraction: float, seed: int) -> Splits:
    """Shuffle (seeded), then train = int(n * train share), val = int(n * val_fraction), test the
    rest: the book's arithmetic (1,494 rows at 70/10/20 -> 1,045 / 149 / 300)."""
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    n_train = int(n * (1.0 - val_fraction - test_fraction) + 1e-9)
    n_val = int(n * val_fraction + 1e-9)
    if test_fraction == 0.0:
        n_val = n - n_train
    parts = Splits(shuffled[:n_train], shuffled[n_train:n_train + n_val], shuffled[n_train + n_val:])
    for name, part, fraction in (("train", parts.train, 1.0), ("val", parts.val, val_fraction),
                                 ("test", parts.test, test_fraction)):
        if fraction > 0 and not part:
            raise LyreError(f"{n} rows are too few to split {1 - val_fraction - test_fraction:.0%}/"
                            f"{val_fraction:.0%}/{test_fraction:.0%}: the {name} split would be "
                            "empty; add data or pass explicit finetune.val_data / test_data")
    return parts


def write_split(path: Path, examples: list[Example]) -> None:
    """A split as JSONL {"text", "label"}: the run keeps its own copy (resume, the report)."""
    atomic_write_text(path, "".join(json.dumps({"text": e.text, "label": e.label}, ensure_ascii=False)
                                    + "\n" for e in examples))


def read_split(path: Path) -> list[Example]:
    """A split written by write_split; missing or empty: no rows."""
    if not path.exists() or not path.stat().st_size:
        return []
    examples, problems = read_labelled(path, "text", "label")
    if problems.count:
        raise LyreError(f"{path} is damaged: {problems.summary()}; start the run again")
    return examples


# ----------------------------------------------------------------------------------------------
# Everything a run reads


@dataclass
class Dataset:
    splits: Splits
    labels: list[str]
    notes: list[str]  # what the user should hear: rows skipped, classes balanced


def read_eval_file(path: str | Path, labels: list[str], text_column: str, label_column: str,
                   what: str) -> list[Example]:
    """An explicit validation or test file: every row must be usable, every label known."""
    examples, problems = read_labelled(path, text_column, label_column)
    examples = keep_known(examples, labels, problems)
    if problems.count:
        raise LyreError(f"{what} file {path}: {problems.summary()}; fix these rows (the model "
                        f"knows the labels {', '.join(labels)})")
    if not examples:
        raise LyreError(f"{what} file {path} has no rows")
    return examples


def load_dataset(ft: Any, cls: Any) -> Dataset:
    """Read, check, balance and split the data: `ft` the run's [finetune] section (data files,
    fractions, seed), `cls` its [classify] section (columns, labels, balance)."""
    if not ft.data:
        raise LyreError("no training data: pass --data FILE (TSV, CSV or JSONL with a text and a label)")
    examples, problems = read_labelled(ft.data, cls.text_column, cls.label_column)
    labels = label_order(examples, cls.labels)
    if cls.labels:
        examples = keep_known(examples, labels, problems)
    check_classes(examples, labels, str(ft.data))
    notes = []
    if problems.count:
        notes.append(f"skipped {problems.count:,} of {problems.rows:,} rows of {ft.data}: "
                     f"{problems.summary()}")
    if cls.balance:
        before = Counter(e.label for e in examples)
        examples = balance(examples, ft.split_seed)
        shown = ", ".join(f"{name} {before[name]:,}" for name in labels if before[name])
        notes.append(f"balanced by undersampling: {shown} -> {len(examples) // len(before):,} each")
    val_fraction = 0.0 if ft.val_data else ft.val_fraction
    test_fraction = 0.0 if ft.test_data else ft.test_fraction
    splits = split(examples, val_fraction, test_fraction, ft.split_seed)
    if ft.val_data:
        splits.val = read_eval_file(ft.val_data, labels, cls.text_column, cls.label_column, "validation")
    if ft.test_data:
        splits.test = read_eval_file(ft.test_data, labels, cls.text_column, cls.label_column, "test")
    if not splits.val:
        raise LyreError("no validation rows: set finetune.val_fraction above 0 or pass finetune.val_data")
    return Dataset(splits, labels, notes)
