"""The prompts of the four chain types and of the chat memory, in one place to read and tune.

Two sets: FULL (instructions in plain words, for contexts of 512 tokens or more) and COMPACT
(just the layout, for tiny contexts). Each prompt is a plain `str.format` template. Passages
are numbered by retrieval rank, the same number in every prompt of one question, so an
answer's [2] always means the second passage retrieved, whichever chain wrote it. The wording is ours; the roles follow LangChain's chains:

    stuff            all passages, one call                      (stuff)
    refine_first     the first passage -> a first answer         (refine; = stuff)
    refine_next      answer so far + the next passage -> a better answer
    map              one passage -> the text in it that helps    (map_reduce)
    collapse         too many notes -> fewer, shorter notes
    reduce           all notes -> the answer
    rerank           one passage -> an answer and a 0-100 score  (map_rerank)
    condense         conversation + follow-up -> a standalone question (chat memory)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lyre.rag.types import Chunk


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one style; `headers` says whether passages carry their source line."""

    name: str
    stuff: str
    refine_next: str
    map: str
    collapse: str
    reduce: str
    rerank: str
    condense: str
    headers: bool = True

    @property
    def refine_first(self) -> str:
        return self.stuff


FULL = PromptSet(
    name="full",
    stuff=(
        "Answer the question using only the numbered passages below. After each fact, cite the "
        "passage it comes from by its number in square brackets, like [1]. If the passages do "
        "not contain the answer, say that you do not know.\n\n"
        "{passages}\n\n"
        "Question: {question}\n"
        "Answer:"
    ),
    refine_next=(
        "You are improving an answer to a question as new passages arrive.\n\n"
        "Question: {question}\n"
        "Answer so far: {answer}\n\n"
        "New passage:\n{passages}\n\n"
        "If the new passage adds to the answer or corrects it, rewrite the answer and cite the "
        "new passage as [{n}]; keep the citations already there. If it adds nothing, repeat the "
        "answer so far unchanged.\n"
        "Answer:"
    ),
    map=(
        "Copy word for word the sentences of this passage that help answer the question. If "
        "none do, write NONE.\n\n"
        "{passages}\n\n"
        "Question: {question}\n"
        "Helpful sentences:"
    ),
    collapse=(
        "These notes were taken from numbered passages to answer a question. Shorten them: keep "
        "every fact that helps answer the question, each with its passage number in square "
        "brackets.\n\n"
        "{notes}\n\n"
        "Question: {question}\n"
        "Shorter notes:"
    ),
    reduce=(
        "Answer the question using only these notes, taken from numbered passages. Cite the "
        "passages you use by number in square brackets, like [2]. If the notes do not contain "
        "the answer, say that you do not know.\n\n"
        "{notes}\n\n"
        "Question: {question}\n"
        "Answer:"
    ),
    rerank=(
        "Answer the question from this passage alone, then rate from 0 to 100 how completely "
        "the passage answers it (0: not at all, 100: fully). Write your answer, then on its own "
        "line `Score: ` and the number.\n\n"
        "{passages}\n\n"
        "Question: {question}\n"
        "Answer:"
    ),
    condense=(
        "Rewrite the follow-up question so that it can be understood without the conversation: "
        "replace words like he, it or that with what they refer to. Write only the question.\n\n"
        "Conversation:\n{history}\n\n"
        "Follow-up question: {question}\n"
        "Standalone question:"
    ),
)

# For small contexts (the demo's 64 characters, a tiny test model's 256 tokens): no
# instructions, passages numbered but without their source line. A model this small follows
# no instructions anyway; the layout alone says what comes next.
COMPACT = PromptSet(
    name="compact",
    stuff="{passages}\nQ: {question}\nA:",
    refine_next="{passages}\nQ: {question}\nA so far: {answer}\nBetter A:",
    map="{passages}\nQ: {question}\nRelevant:",
    collapse="{notes}\nQ: {question}\nShorter:",
    reduce="{notes}\nQ: {question}\nA:",
    rerank="{passages}\nQ: {question}\nA (then Score: 0-100):",
    condense="{history}\nFollow-up: {question}\nStandalone question:",
    headers=False,
)

COMPACT_BELOW = 512  # contexts (tokens) smaller than this get the compact prompts


def prompts_for(context_window: int) -> PromptSet:
    return COMPACT if context_window < COMPACT_BELOW else FULL


NONE_NOTE = "NONE"


def passage_header(n: int, chunk: Chunk, with_source: bool = True) -> str:
    """'[2] iliad.txt, page 3' : the number and where the passage comes from."""
    if not with_source:
        return f"[{n}]"
    where = chunk.source + (f", page {chunk.page}" if chunk.page is not None else "")
    if chunk.heading:
        where += f" ({chunk.heading})"
    return f"[{n}] {where}"


def format_history(turns: list[tuple[str, str]], compact: bool = False) -> str:
    if compact:
        return "\n".join(f"Q: {q}\nA: {a}" for q, a in turns)
    return "\n".join(f"User: {q}\nAssistant: {a}" for q, a in turns)


_SCORE = re.compile(r"score\s*[:=]?\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*100|%)?", re.IGNORECASE)
_ANSWER_LABEL = re.compile(r"^\s*answer\s*:\s*", re.IGNORECASE)


def parse_scored_answer(text: str) -> tuple[str, float | None]:
    """(answer, score 0..100) from a RERANK reply; score None when there is no usable number.

    The last `Score: N` wins (a model may restate it); the answer is what comes before it.
    Numbers outside 0..100 are clamped, since the scale is what we asked for.
    """
    matches = list(_SCORE.finditer(text))
    if not matches:
        return _ANSWER_LABEL.sub("", text).strip(), None
    last = matches[-1]
    answer = _ANSWER_LABEL.sub("", text[: matches[0].start()]).strip()
    score = float(last.group(1))
    return answer, min(100.0, max(0.0, score))


_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def citations(text: str) -> list[int]:
    """Passage numbers cited as [n] or [n, m] in text, in order of first appearance."""
    seen: list[int] = []
    for m in _CITATION.finditer(text):
        for part in m.group(1).split(","):
            n = int(part)
            if n not in seen:
                seen.append(n)
    return seen
