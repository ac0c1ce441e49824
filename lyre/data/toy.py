"""Deterministic toy translation tasks: (source, target) pairs that a small encoder-decoder
learns in minutes on a CPU, so the whole seq2seq road (data, training, decoding, attention
maps) can be walked without a parallel corpus.

    dates    a date as people write it -> ISO 8601      "Tuesday, March 4, 1997" -> "1997-03-04"
    reverse  a string of letters -> the same reversed   "kqzvb" -> "bvzqk"
    sort     a string of letters -> its letters sorted  "kqzvb" -> "bkqvz"

`dates` is the classic first attention exercise: the model must find the day, the month (as a
word, an abbreviation or a number) and the year wherever the format put them; its
cross-attention maps show it looking there (lyre attention). `reverse` needs attention to
count positions backwards; `sort` needs it to compare every letter with every other.

A run names a task in `data.corpus` as `toy:NAME` or `toy:NAME:COUNT` (default 20,000 pairs).
The pairs depend only on (name, count, seed): the same list every time, all distinct.
"""

from __future__ import annotations

import datetime as dt
import random
import string
from collections.abc import Callable

from lyre.core.errors import LyreError

DEFAULT_COUNT = 20_000
SEED = 1234

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FIRST_DAY, LAST_DAY = dt.date(1900, 1, 1).toordinal(), dt.date(2099, 12, 31).toordinal()


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# Ways people write a date; none is ambiguous (no two-digit years, no day/month number swaps).
DATE_FORMATS: list[Callable[[dt.date], str]] = [
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{d.day} {MONTHS[d.month - 1][:3]} {d.year}",
    lambda d: f"{MONTHS[d.month - 1][:3]} {d.day} {d.year}",
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    lambda d: f"{d.year}/{d.month}/{d.day}",
    lambda d: f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"the {_ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{d.day} {MONTHS[d.month - 1].upper()} {d.year}",
    lambda d: f"{WEEKDAYS[d.weekday()][:3]} {d.day} {MONTHS[d.month - 1][:3].lower()} {d.year}",
]


def date_pair(rng: random.Random) -> tuple[str, str]:
    day = dt.date.fromordinal(rng.randint(FIRST_DAY, LAST_DAY))
    return rng.choice(DATE_FORMATS)(day), day.isoformat()


def _letters(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 12)))


def reverse_pair(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng)
    return s, s[::-1]


def sort_pair(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng)
    return s, "".join(sorted(s))


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "dates": date_pair, "reverse": reverse_pair, "sort": sort_pair,
}


def toy_pairs(name: str, count: int = DEFAULT_COUNT, seed: int = SEED) -> list[tuple[str, str]]:
    """`count` distinct (source, target) pairs of toy task `name`, the same for the same seed."""
    if name not in TASKS:
        raise LyreError(f"unknown toy task {name!r}; known: {', '.join(TASKS)}")
    if count < 2:
        raise LyreError(f"a toy task needs at least 2 pairs (train and validation); got {count}")
    make, rng = TASKS[name], random.Random(f"{name}:{seed}")
    pairs: dict[str, str] = {}  # source -> target, in order of drawing: no duplicate sources
    for _ in range(50 * count):
        source, target = make(rng)
        pairs.setdefault(source, target)
        if len(pairs) == count:
            return list(pairs.items())
    raise LyreError(f"toy task {name!r} has fewer than {count} distinct pairs; ask for fewer")


def parse_spec(spec: str) -> tuple[str, int] | None:
    """`toy:dates` -> ("dates", 20000), `toy:sort:5000` -> ("sort", 5000); None if not a toy spec."""
    if not spec.startswith("toy:"):
        return None
    name, _, count = spec[4:].partition(":")
    if count and not count.isdigit():
        raise LyreError(f"{spec}: the count after the task name must be a number (toy:NAME:COUNT)")
    return name, int(count) if count else DEFAULT_COUNT
