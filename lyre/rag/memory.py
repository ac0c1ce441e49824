"""A conversation over your documents (`lyre rag chat`): ConversationalRetrievalChain's memory.

A follow-up such as "and who was his father?" finds nothing on its own: "his" names nobody the
index knows. So each question after the first is first rewritten by the model into a standalone
question ("Who was Hector's father?") from the conversation so far (the condense prompt of lyre.rag.prompts); that
question is what is retrieved and answered. A rewrite that shares no word with the conversation
(a small model's fluent nonsense) is not followed: the previous question and the follow-up, the
user's own words, are searched instead, with a notice. The answer prompt itself holds the passages, not
the history, as in LangChain's chain: the history's only job is to resolve the follow-up.

The history kept is the last `max_turns` exchanges; each condense prompt takes the newest turns
that fit the model's context (the oldest are left out, with a notice). Every turn's Answer
carries its sources, as `lyre rag ask` does.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from lyre.core.errors import LyreError
from lyre.rag import prompts as P
from lyre.rag.callbacks import Run, as_callbacks
from lyre.rag.chains import (
    Answer,
    call_llm,
    check_chain,
    check_max_tokens,
    check_question,
    retrieve,
    run_chain,
)

CONDENSE_TOKENS = 96  # a standalone question is short; the answer budget is for answers


@dataclass
class ChatMemory:
    """The exchanges so far, oldest first, at most `max_turns`."""

    max_turns: int = 20
    turns: list[tuple[str, str]] = field(default_factory=list)

    def add(self, question: str, answer: str) -> None:
        self.turns.append((question, answer))
        del self.turns[: max(0, len(self.turns) - self.max_turns)]

    def clear(self) -> None:
        self.turns.clear()


class RAGChat:
    """Ask, then ask follow-ups: condense -> retrieve -> answer with a chain, every turn."""

    def __init__(self, retriever, llm, *, chain: str = "stuff", k: int = 4,
                 max_tokens: int | None = None, source_glob: str | None = None,
                 callbacks=None, memory: ChatMemory | None = None) -> None:
        self.retriever, self.llm = retriever, llm
        self.chain = check_chain(chain)
        self.k, self.source_glob = k, source_glob
        self.max_tokens = check_max_tokens(llm, max_tokens)
        self.cbs = as_callbacks(callbacks)
        self.memory = memory or ChatMemory()
        self._condense_calls = 0  # model calls of the current turn's condensing

    def ask(self, question: str, on_token: Callable[[str], None] | None = None) -> Answer:
        question = check_question(question)
        notices: list[str] = []
        self._condense_calls = 0
        with self.cbs.run("chain", None, ("conversational_retrieval_qa",
                                          {"question": question, "chain": self.chain})) as run:
            standalone = self.condense(question, run, notices) if self.memory.turns else question
            hits = retrieve(self.retriever, standalone, self.k, self.source_glob, self.cbs, run)
            answer = run_chain(standalone, hits, self.llm, chain=self.chain,
                               max_tokens=self.max_tokens, callbacks=self.cbs,
                               on_token=on_token, parent=run)
            run.emit("on_chain_end", {"answer": answer.text, "standalone_question": standalone},
                     elapsed_s=run.elapsed())
        answer.question = question
        answer.standalone_question = standalone
        answer.notices = notices + answer.notices
        answer.llm_calls += self._condense_calls
        self.memory.add(question, answer.text)
        return answer

    def condense(self, question: str, parent: Run | None = None,
                 notices: list[str] | None = None) -> str:
        """The follow-up rewritten as a standalone question, from the newest turns that fit."""
        notices = notices if notices is not None else []
        budget = min(CONDENSE_TOKENS, self.max_tokens)
        room = self.llm.context_window - budget
        turns = list(self.memory.turns)
        prompts = P.prompts_for(self.llm.context_window)
        compact = not prompts.headers
        while turns:
            prompt = prompts.condense.format(history=P.format_history(turns, compact),
                                             question=question)
            if self.llm.count_tokens(prompt) <= room:
                break
            turns.pop(0)
        left_out = len(self.memory.turns) - len(turns)
        if not turns:
            notices.append("the conversation is too long for the model's context; the follow-up "
                           "is searched as it is")
            return question
        if left_out:
            notices.append(f"{left_out} oldest turn{'s' if left_out > 1 else ''} left out of the "
                           "conversation to fit the model's context")
        text = call_llm(self.llm, prompt, budget, self.cbs, parent, "condense question")
        self._condense_calls += 1
        standalone = _first_line(text)
        if not any(ch.isalnum() for ch in standalone):  # nothing, or no word at all
            notices.append("the model did not rewrite the follow-up; it is searched as it is")
            return question
        if not shares_a_term(standalone, [question, *(t for turn in turns for t in turn)]):
            # A small model's rewrite can be fluent nonsense; followed, it takes retrieval to
            # another book. The user's own words (the follow-up after the question before it)
            # at least keep the conversation's subject.
            notices.append(f"the model's rewrite of the follow-up ({standalone[:80]!r}) shares no "
                           "word with the conversation; searched with your words instead")
            return f"{turns[-1][0]} {question}"
        return standalone


def shares_a_term(text: str, conversation: list[str]) -> bool:
    """Whether `text` has a content word (stopwords dropped, stemmed, as BM25 sees it) that
    the conversation has too."""
    with _ANALYSER_LOCK:  # the analyser learns words as it meets them; the server has threads
        analyse = _analyser()
        words = set(analyse(text))
        return any(words & set(analyse(part)) for part in conversation)


def _analyser():
    global _ANALYSER
    if _ANALYSER is None:
        from lyre.rag.lexical import Analyzer, LexicalConfig

        try:
            _ANALYSER = Analyzer(LexicalConfig())
        except LyreError:  # no stemmer installed: lowercase words are close enough here
            _ANALYSER = lambda text: re.findall(r"\w+", text.lower())  # noqa: E731
    return _ANALYSER


_ANALYSER = None
_ANALYSER_LOCK = threading.Lock()


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        line = line.strip()
        lowered = line.lower()
        for label in ("standalone question:", "question:"):
            if lowered.startswith(label):
                line = line[len(label):].strip()
        if line:
            return line
    return ""

