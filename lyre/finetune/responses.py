"""Answers of a fine-tuned run to its test prompts, beside the references: RUN/responses.json.

The prompts go through the run's chat template (the same function chat and serve use) and the
engine answers them in batches, greedily, stopping at <|endoftext|> or the template's stop
strings. As many answers decode together as a KV cache of CACHE_BUDGET bytes holds, up to
MAX_ROWS (`answer_rows`): a decoding step of 64 rows costs far less than four of 16.

Each entry keeps the prompt, the reference answer and the response, plus whether the
model ended its answer itself (`stopped`: <|endoftext|>, no stop string and no length limit
needed); `lyre judge` scores them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lyre.core.errors import LyreError
from lyre.core.io import atomic_write_text
from lyre.finetune.encode import encode_prompt

RESPONSES_FILE = "responses.json"
MAX_ROWS = 64  # answers decoded together at most (the engine's default)
CACHE_BUDGET = 2**30  # bytes of KV cache the answers may take


def answer_rows(engine, length: int, budget: int = CACHE_BUDGET) -> int:
    """How many rows of `length` cache positions decode together: as many as `budget` bytes of
    KV cache hold (at least 1), at most MAX_ROWS. A row's size is measured, not estimated: the
    engine allocates a one-row cache (0 bytes for a model without one)."""
    per_row = engine.new_batch(1, max_length=length).reserve()
    return MAX_ROWS if not per_row else max(1, min(MAX_ROWS, budget // per_row))


def generate_responses(run, template, records, *, max_new_tokens: int = 256,
                       max_batch: int | None = None) -> list[dict[str, Any]]:
    """One entry per record: {"prompt", "messages", "reference", "response", "finish_reason",
    "stopped"}; `run` is a lyre.generate.runs.LoadedRun. `max_batch`: rows decoded together (default
    `answer_rows`)."""
    from lyre.engine import Engine, SamplingConfig

    engine = Engine(run.model, run.tokenizer, run.device)
    block = run.config.model.block_size
    eot = run.tokenizer.eot_id
    prompts, params, entries = [], [], []
    for record in records:
        messages = record.prompt_messages()
        entry = {"prompt": messages[-1]["content"] if messages else "", "messages": messages,
                 "reference": record.reference(), "response": "", "finish_reason": None,
                 "stopped": False}
        entries.append(entry)
        ids = encode_prompt(messages, template, run.tokenizer)
        room = min(max_new_tokens, block - len(ids))
        if room < 1:
            entry["finish_reason"] = "prompt_too_long"
            continue
        prompts.append(ids)
        params.append(SamplingConfig(max_new_tokens=room, temperature=0.0, stop=tuple(template.stop)))
    answered = [e for e in entries if e["finish_reason"] is None]
    if prompts:
        if max_batch is None:
            longest = max(len(ids) + p.max_new_tokens for ids, p in zip(prompts, params, strict=True))
            max_batch = answer_rows(engine, longest)  # the engine caps a row at the context
        for entry, done in zip(answered, engine.generate(prompts, params, max_batch=max_batch),
                               strict=True):
            entry["response"] = done.text.strip() if template.strip_answer else done.text
            entry["finish_reason"] = done.finish_reason
            entry["stopped"] = done.finish_reason == "stop" and done.stop_reason == eot
    return entries


def write_responses(path: Path, entries: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps({**meta, "responses": entries}, indent=2, ensure_ascii=False) + "\n")


def read_responses(path: str | Path) -> list[dict[str, Any]]:
    """Entries with a prompt, a reference and a response: RUN/responses.json, a file like it,
    or the book's layout (a list of {"instruction", "input", "output", "model_response"})."""
    from lyre.core.io import read_json

    path = Path(path)
    if path.is_dir():
        path = path / RESPONSES_FILE
        if not path.is_file():
            raise LyreError(f"{path} not found: fine-tune with finetune.responses=true (the default)")
    raw = read_json(path)
    items = raw.get("responses") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise LyreError(f"{path} must hold a list of responses (or {{\"responses\": [...]}})")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise LyreError(f"{path}: response {i} is not a JSON object")
        if "instruction" in item:  # the book's layout
            text = item["instruction"] + (f"\n\n{item['input']}" if item.get("input") else "")
            item = {"prompt": text, "reference": item.get("output", ""),
                    "response": item.get("model_response", item.get("response", ""))}
        for key in ("prompt", "reference", "response"):
            if not isinstance(item.get(key), str):
                raise LyreError(f"{path}: response {i} has no string {key!r}")
        out.append(item)
    if not out:
        raise LyreError(f"{path} holds no responses")
    return out
