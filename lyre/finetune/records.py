"""Fine-tuning data: read instruction, chat and preference files into conversations.

Accepted layouts, one record per JSON object, in a JSON array (`.json`) or one per line (JSONL):

    Alpaca            {"instruction", "input" (optional), "output"}
    chat              {"messages": [{"role": "system" | "user" | "assistant", "content"}, ...]}
                      with tool use as OpenAI writes it: an optional "tools" list, assistant
                      messages with "tool_calls" (content may be null), {"role": "tool",
                      "tool_call_id", "content"} results (rendered by lyre.chat.tools)
    prompt/completion {"prompt", "completion"}
    preference (DPO)  any of the prompts above with {"chosen", "rejected"} answers
                      ({"instruction", "input", "chosen", "rejected"}, {"prompt", ...}, ...)

Every record becomes a `Record`: the conversation as chat messages (Alpaca's input joins its
instruction under "### Input:", the book's layout) and, for preference data, the two answers.
A record that is not usable (a missing key, an empty answer, a wrong type) is skipped and
counted with its reason and its line (JSONL) or index (JSON array); a file that is not JSON,
or has no usable record at all, is an error. Nothing here knows about tokens: templates and
token ids come next (lyre.finetune.encode).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lyre.core.errors import LyreError
from lyre.core.io import atomic_write_text

ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class Record:
    """One example: a conversation, and for preference data the two answers to its end."""

    messages: list[dict]  # SFT: ends with the assistant's answer; DPO: ends with the user
    where: str = ""  # "line 12" or "record 12", for messages about it
    chosen: str | None = None
    rejected: str | None = None
    tools: list[dict] = field(default_factory=list)  # OpenAI tool definitions, in the system part

    @property
    def is_preference(self) -> bool:
        return self.chosen is not None

    def prompt_messages(self) -> list[dict]:
        """The conversation up to the (last) answer: what a model is asked."""
        if self.is_preference:
            return self.messages
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    def reference(self) -> str:
        """The answer the data gives for the prompt (the chosen one for preference data)."""
        return self.chosen if self.is_preference else self.messages[-1]["content"]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": self.messages}
        if self.tools:
            out["tools"] = self.tools
        if self.is_preference:
            out.update(chosen=self.chosen, rejected=self.rejected)
        return out


@dataclass
class Problems:
    """Records skipped, with why: reported as a count per reason and the first few places."""

    total: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first place it happened

    def add(self, where: str, reason: str) -> None:
        self.reasons[reason] += 1
        self.examples.setdefault(reason, where)

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def summary(self, what: str) -> str:
        """`3 of 1,100 records of FILE skipped: 2 x missing key 'output' (first: record 5), ...`"""
        parts = [f"{n} x {reason} (first: {self.examples[reason]})"
                 for reason, n in self.reasons.most_common()]
        return f"{self.skipped:,} of {self.total:,} records of {what} skipped: " + "; ".join(parts)


# ----------------------------------------------------------------------------------------------
# Reading a file


def read_objects(path: Path) -> list[tuple[str, Any]]:
    """(place, parsed value) of every record of a JSON array or JSONL file."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        raise LyreError(f"data file {path} not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LyreError(f"{path} is not UTF-8 text; fine-tuning data is JSON or JSONL") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise LyreError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
        return [(f"record {i}", item) for i, item in enumerate(items)]
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise LyreError(
                f"{path} line {number} is not valid JSON ({e.msg}, column {e.colno}); a JSONL file "
                f"holds one JSON object per line{_table_hint(path, line)}"
            ) from None
    return out


def _table_hint(path: Path, line: str) -> str:
    """Labelled texts in a table are a classifier's data: say so instead of only "not JSON"."""
    if path.suffix.lower() in (".tsv", ".csv") or "\t" in line:
        return ("; it looks like a table of labelled texts (TSV/CSV): fine-tune a classifier on it "
                "with --task classify")
    return ""


def read_records(path: str | Path, *, preference: bool = False) -> tuple[list[Record], Problems]:
    """The usable records of a data file, and what was skipped. Refuses a file with none."""
    path = Path(path)
    objects = read_objects(path)
    problems = Problems(total=len(objects))
    records = []
    for where, raw in objects:
        try:
            record = to_record(raw, preference=preference)
        except ValueError as e:
            problems.add(where, str(e))
            continue
        record.where = where
        records.append(record)
    if not objects:
        raise LyreError(f"{path} holds no records")
    if not records:
        raise LyreError(f"{path}: no usable record; " + problems.summary(str(path)).split(": ", 1)[1])
    return records, problems


# ----------------------------------------------------------------------------------------------
# One record


def _text(raw: dict, key: str, *, required: bool = True, empty_ok: bool = False) -> str:
    if key not in raw:
        if required:
            raise ValueError(f"missing key {key!r}")
        return ""
    value = raw[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string")
    if not empty_ok and not value.strip():
        raise ValueError(f"empty {key!r}")
    return value


def _alpaca_prompt(raw: dict) -> str:
    instruction = _text(raw, "instruction")
    extra = _text(raw, "input", required=False, empty_ok=True)
    # The book's layout: the input under its own heading inside the instruction turn.
    return f"{instruction}\n\n### Input:\n{extra}" if extra.strip() else instruction


def _messages(raw: dict) -> list[dict]:
    messages = raw["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' is not a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] is not an object")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}] has role {role!r} (use system, user or assistant)")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content
                              if isinstance(p, dict) and p.get("type") == "text")
        calls = m.get("tool_calls") if role == "assistant" else None
        if content is None and calls:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content is not a string")
        if role == "assistant" and not content.strip() and not calls:
            raise ValueError("empty assistant message")
        message = {"role": "system" if role == "developer" else role, "content": content}
        if calls:
            message["tool_calls"] = _tool_calls(calls, i)
        if role == "tool" and m.get("tool_call_id") is not None:
            message["tool_call_id"] = str(m["tool_call_id"])
        out.append(message)
    return out


def _tool_calls(calls: Any, i: int) -> list[dict]:
    """An assistant message's calls, checked the way lyre.chat.tools will render them."""
    from lyre.chat.tools import call_of

    if not isinstance(calls, list):
        raise ValueError(f"messages[{i}].tool_calls is not a list")
    for j, call in enumerate(calls):
        try:
            call_of(call)
        except (LyreError, KeyError, TypeError, AttributeError):
            raise ValueError(f"messages[{i}].tool_calls[{j}] is not a call with a name and "
                             "JSON-object arguments") from None
    return calls


def _tools(raw: dict) -> list[dict]:
    tools = raw.get("tools") or []
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function", t).get("name"), str) for t in tools):
        raise ValueError("'tools' is not a list of function definitions")
    return tools


def _prompt(raw: dict) -> list[dict]:
    """The conversation before the answer, from any of the accepted layouts."""
    if "messages" in raw:
        return _messages(raw)
    if "instruction" in raw:
        return [{"role": "user", "content": _alpaca_prompt(raw)}]
    if "prompt" in raw:
        return [{"role": "user", "content": _text(raw, "prompt")}]
    raise ValueError("no 'instruction', 'prompt' or 'messages' key")


def to_record(raw: Any, *, preference: bool = False) -> Record:
    """One parsed JSON value as a Record; ValueError(reason) when it cannot be one."""
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    if preference:
        prompt = _prompt(raw)
        if prompt[-1]["role"] != "user":
            raise ValueError("the conversation must end with the user's message")
        return Record(prompt, chosen=_text(raw, "chosen"), rejected=_text(raw, "rejected"))
    if "messages" in raw:
        messages = _messages(raw)
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("no assistant message to learn")
        if messages[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's")
        return Record(messages, tools=_tools(raw))
    if "instruction" in raw:
        return Record([{"role": "user", "content": _alpaca_prompt(raw)},
                       {"role": "assistant", "content": _text(raw, "output")}])
    if "prompt" in raw:
        return Record([{"role": "user", "content": _text(raw, "prompt")},
                       {"role": "assistant", "content": _text(raw, "completion")}])
    raise ValueError("no 'instruction', 'prompt' or 'messages' key")


# ----------------------------------------------------------------------------------------------
# Splits


@dataclass
class Splits:
    train: list[Record]
    val: list[Record]
    test: list[Record]


def split_records(records: list[Record], val_fraction: float, test_fraction: float,
                  seed: int) -> Splits:
    """Shuffle (seeded) and cut into train / val / test; val and test get one record at least
    when their fraction is above zero, and train keeps one at least."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    shuffled = [records[i] for i in order]
    n = len(shuffled)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise LyreError(f"{n} record(s) are too few to split into train, val and test; "
                        "add data or pass --set finetune.val_fraction=0 (and test_fraction=0)")
    return Splits(train=shuffled[n_val + n_test:], val=shuffled[:n_val],
                  test=shuffled[n_val:n_val + n_test])


def write_records(path: Path, records: list[Record]) -> None:
    """A split as JSONL (the run keeps its own copy: resume and responses use it)."""
    atomic_write_text(path, "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records))
