"""Helpers shared by the fine-tuning tests: a tiny base run and small, learnable data sets.

The base is the shared tiny run of serve_util (byte-level BPE with <|endoftext|>, context 256),
trained once per test session. The data sets are made here, so the tests need no shared data:

    colour_data(n)   "What colour is the NOUN?" -> "The NOUN is COLOUR." (a learnable mapping)
    preference_data  the same prompts with a chosen answer ending "Thanks!" and a rejected one
"""

from __future__ import annotations

import json
from pathlib import Path

from serve_util import tiny_served_run

NOUNS = ["sky", "grass", "sun", "snow", "coal", "rose", "sea", "leaf", "milk", "blood", "lemon",
         "night", "cloud", "fire", "ash", "gold", "silver", "wine", "olive", "sand"]
COLOURS = ["blue", "green", "yellow", "white", "black", "red", "blue", "green", "white", "red",
           "yellow", "black", "white", "red", "grey", "yellow", "grey", "red", "green", "yellow"]


def base_run(tmp_path_factory) -> Path:
    return tiny_served_run(tmp_path_factory.getbasetemp())


def colour_records(n: int = 60) -> list[dict]:
    out = []
    for i in range(n):
        noun, colour = NOUNS[i % len(NOUNS)], COLOURS[i % len(COLOURS)]
        extra = "" if i % 3 else "Answer in one sentence."
        out.append({"instruction": f"What colour is the {noun}?", "input": extra,
                    "output": f"The {noun} is {colour}."})
    return out


def preference_records(n: int = 60) -> list[dict]:
    out = []
    for i, r in enumerate(colour_records(n)):
        r = {**r, "instruction": r["instruction"].replace("?", f" number {i}?")}  # every prompt new
        answer = r["output"]
        # Learnable from the answers alone: the chosen one always says thanks, the rejected
        # one always grumbles, whatever the prompt.
        out.append({**r, "chosen": f"{answer} Thanks!", "rejected": f"{answer} Whatever." if i % 2
                    else f"Ugh. {answer}"})
    return out


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
