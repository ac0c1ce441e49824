"""Conversations -> token ids and a loss mask, through the chat template the model will be used with.

The one rule that makes a fine-tuned model work in `lyre chat` and `lyre serve`: it is trained
on exactly the text they will show it. So every training sequence is

    tokenizer.encode(template.render(conversation so far))    the prompt, as chat/serve encode it
  + tokenizer.encode(answer)                                  the assistant's answer
  + [<|endoftext|>]                                           so that generation stops there

`template.render` (lyre.chat.templates) is the function chat and serve call; nothing else lays out a
prompt. The mask is True on the answer and its <|endoftext|>: the tokens the model learns to
write (train_on_prompt learns the prompt's tokens too). A conversation with several assistant
turns gives one sequence per turn, each a prompt exactly as chat shows it at that turn.

A sequence longer than the context (block_size + 1 tokens: inputs and their next tokens) is
cut at its end and counted; one whose prompt alone fills the context has nothing to learn
and is skipped with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lyre.chat.templates import ChatTemplate
from lyre.chat.tools import Tool, assistant_text
from lyre.core.errors import LyreError
from lyre.finetune.records import Problems, Record


@dataclass
class Example:
    """One training sequence: token ids and, per token, whether it is part of an answer."""

    ids: list[int]
    mask: list[bool]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Pair:
    """One preference pair (DPO): the prompt, and the chosen and rejected answers' ids
    (each ending with <|endoftext|>)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


@dataclass
class EncodeReport:
    sequences: int = 0  # produced
    truncated: int = 0  # cut to the context
    problems: Problems | None = None  # skipped, with reasons


def answer_text(template: ChatTemplate, messages: Sequence[dict], i: int,
                tools: Sequence[Tool] = ()) -> str:
    """The text that follows `template.render(messages[:i])` when message i is the answer: the
    content (and its <tool_call> blocks) plus whatever whitespace the template puts before it
    (" " after "Assistant:").

    A turn that is only calls starts at its first <tool_call> block, without that whitespace:
    at use the tool-call grammar (lyre.chat.tools.tool_call_grammar) makes a call's first
    token the block's opening, so a model trained to write " <tool_call>" could never call
    (the grammar would push it into free text). The history still shows the template's layout.
    """
    prompt = template.render(messages[:i], tools)
    after = template.render(messages[: i + 1], tools)
    content = assistant_text(messages[i])
    rest = after[len(prompt):] if after.startswith(prompt) else None
    lead = rest.find(content) if rest is not None else -1
    if lead < 0 or rest[:lead].strip():
        raise LyreError(f"chat template {template.name!r} does not lay out an answer right after its "
                        "prompt, so it cannot be used for fine-tuning; choose another --template")
    if messages[i].get("tool_calls") and not (messages[i].get("content") or "").strip():
        return content
    return rest[:lead] + content


def record_tools(record: Record) -> list[Tool]:
    """The record's declared tools, rendered into the system part as chat and serve do."""
    return [Tool.from_openai(t) for t in record.tools]


def require_eot(tokenizer) -> int:
    eot = tokenizer.eot_id
    if eot is None:
        how = ("it was saved before char tokenizers reserved one: train the base again, e.g. "
               "`make demo`" if tokenizer.kind == "char" else "pretrain with data.tokenizer=char, "
               "bpe:N or gpt2:DIR")
        raise LyreError(
            f"fine-tuning needs a tokenizer with <|endoftext|> to end each answer; this run's "
            f"{tokenizer.kind} tokenizer has none ({how})"
        )
    return eot


def _encode(tokenizer, text: str) -> list[int]:
    try:
        return tokenizer.encode(text)
    except LyreError as e:  # e.g. a character a char-level model never saw
        raise ValueError(str(e).split(";")[0]) from None


def encode_sequences(record: Record, template: ChatTemplate, tokenizer) -> list[Example]:
    """One sequence per assistant turn of a conversation (see the module docstring)."""
    eot = require_eot(tokenizer)
    tools = record_tools(record)
    out = []
    for i, m in enumerate(record.messages):
        if m["role"] != "assistant":
            continue
        prompt = _encode(tokenizer, template.render(record.messages[:i], tools))
        answer = _encode(tokenizer, answer_text(template, record.messages, i, tools)) + [eot]
        out.append(Example(prompt + answer, [False] * len(prompt) + [True] * len(answer)))
    return out


def conversation_text(record: Record, template: ChatTemplate) -> str:
    """A whole conversation as text, exactly as its last answer is trained: the prompt
    `template.render` gives before that answer, then the answer (no <|endoftext|>). Pretraining
    on such text teaches a base the layout chat and serve will show it (the calculator recipe,
    docs/calculator.md)."""
    tools = record_tools(record)
    last = len(record.messages) - 1
    return (template.render(record.messages[:last], tools)
            + answer_text(template, record.messages, last, tools))


def encode_prompt(messages: Sequence[dict], template: ChatTemplate, tokenizer) -> list[int]:
    """The prompt ids of a conversation that ends with the user: what chat and serve send."""
    return _encode(tokenizer, template.render(messages))


def encode_pair(record: Record, template: ChatTemplate, tokenizer) -> Pair:
    eot = require_eot(tokenizer)
    prompt = encode_prompt(record.messages, template, tokenizer)
    answers = []
    for text in (record.chosen, record.rejected):
        full = [*record.messages, {"role": "assistant", "content": text}]
        answers.append(_encode(tokenizer, answer_text(template, full, len(full) - 1)) + [eot])
    return Pair(prompt, *answers)


def encode_all(records: list[Record], template: ChatTemplate, tokenizer, block_size: int,
               what: str) -> tuple[list, EncodeReport]:
    """Encode every record (sequences, or pairs for preference data), fitted to the context."""
    limit = block_size + 1  # a sequence of T + 1 tokens trains T next-token predictions
    report = EncodeReport(problems=Problems(total=len(records)))
    out: list = []
    for record in records:
        try:
            if record.is_preference:
                pair = encode_pair(record, template, tokenizer)
                out.append(_fit_pair(pair, limit, report))
            else:
                for seq in encode_sequences(record, template, tokenizer):
                    out.append(_fit_sequence(seq, limit, report))
        except ValueError as e:
            report.problems.add(record.where or what, str(e))
    report.sequences = len(out)
    return out, report


def _fit_sequence(seq: Example, limit: int, report: EncodeReport) -> Example:
    if len(seq) <= limit:
        return seq
    # Answer tokens are the targets of the position before them: keep one at least.
    if not any(seq.mask[1:limit]):
        raise ValueError(f"the prompt alone is longer than the context ({limit - 1} tokens)")
    report.truncated += 1
    return Example(seq.ids[:limit], seq.mask[:limit])


def _fit_pair(pair: Pair, limit: int, report: EncodeReport) -> Pair:
    room = limit - len(pair.prompt)
    if room < 1:
        raise ValueError(f"the prompt alone is longer than the context ({limit - 1} tokens)")
    if len(pair.chosen) > room or len(pair.rejected) > room:
        report.truncated += 1
        return Pair(pair.prompt, pair.chosen[:room], pair.rejected[:room])
    return pair
