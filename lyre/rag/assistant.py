"""Assembling a question-answering pipeline: index -> retriever -> model, in one place.

`lyre rag search/ask/chat/eval`, `lyre serve --rag` and Python callers all build their
pipeline here, so an index is opened, its embedder found and a model chosen the same way
everywhere:

    from lyre.rag import open_assistant, ModelChoice
    with open_assistant("idx", model=ModelChoice(run="runs/sft")) as assistant:
        answer = assistant.ask("Who was Hector's wife?")
        chat = assistant.chat()                      # follow-ups: lyre.rag.memory.RAGChat

    retriever = make_retriever(open_index("idx"))   # retrieval alone (the server's route)

A note (`notice`, stderr for the CLI) says when an index holds vectors that the query side
cannot use (MiniLM not installed, another embedder not named): the search is then lexical.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lyre.core.errors import LyreError
from lyre.rag.index import open_index
from lyre.rag.types import Store

NoticeFn = Callable[[str], None]


def _stderr_note(text: str) -> None:
    print(f"lyre rag: note: {text}", file=sys.stderr, flush=True)


def make_retriever(store: Store, embedder: str | None = None, mode: str = "auto",
                   notice: NoticeFn | None = None):
    """A Retriever over `store`. `embedder` is a spec (minilm, openai:MODEL@URL, st:DIR,
    run:DIR); None takes the index's own when lyre can build it (MiniLM from its package)."""
    from lyre.rag.embedders import MINILM_HINT, make_embedder, minilm_zip
    from lyre.rag.retrieve import Retriever

    notice = notice or (lambda text: None)
    built = make_embedder(embedder)  # None: Retriever takes the index's own (MiniLM)
    built_with = (store.info() or {}).get("embedder")
    if built is None and built_with == "minilm" and minilm_zip() is None:
        notice(f"the index holds MiniLM vectors but the model is not installed (lexical search "
               f"only now); {MINILM_HINT}")
    if built is None and built_with not in (None, "minilm") and mode == "auto":
        notice(f"the index holds {built_with} vectors; pass --embedder to search them too "
               "(lexical search only now)")
    return Retriever(store, built, mode=mode)


@dataclass
class ModelChoice:
    """Which model answers: a lyre run in this process (`run`) or an OpenAI-compatible server
    (`url` + `model`)."""

    run: str | Path | None = None
    checkpoint: str = "best"
    device: str = "auto"
    template: str | None = None
    url: str | None = None
    model: str | None = None
    api_key: str | None = None
    context: int | None = None  # the server model's context, when the server does not say
    temperature: float = 0.0

    def build(self, required: bool = True):
        """EngineLLM for `run`, OpenAILLM for `url`; None when neither and not required."""
        if self.run and self.url:
            raise LyreError("give --model RUN or --llm-url URL, not both")
        if self.run:
            from lyre.generate.runs import load_run
            from lyre.rag.llm import EngineLLM

            run = load_run(self.run, self.checkpoint, self.device)
            return EngineLLM(run, template=self.template, temperature=self.temperature)
        if self.url:
            from lyre.rag.llm import OpenAILLM

            if not self.model:
                raise LyreError("--llm-url needs --llm-model NAME (the model the server serves)")
            if self.context is not None and self.context < 1:
                raise LyreError(f"--llm-context must be >= 1; got {self.context}")
            return OpenAILLM(self.url, self.model, self.api_key, context_window=self.context,
                             temperature=self.temperature)
        if required:
            raise LyreError("which model answers? give --model RUN (a lyre run) or --llm-url URL "
                            "--llm-model NAME (an OpenAI-compatible server)")
        return None


@dataclass
class Assistant:
    """An open index, its retriever and the model that answers (None: retrieval only)."""

    store: Store
    retriever: object
    llm: object | None

    def ask(self, question: str, **kw):
        """lyre.rag.chains.ask with this retriever and model (chain, k, max_tokens, ...)."""
        from lyre.rag.chains import ask

        return ask(question, self.retriever, self._model(), **kw)

    def chat(self, **kw):
        """A conversation (lyre.rag.memory.RAGChat): follow-ups are rewritten first."""
        from lyre.rag.memory import RAGChat

        return RAGChat(self.retriever, self._model(), **kw)

    def _model(self):
        if self.llm is None:
            raise LyreError("this assistant has no model; open it with model=ModelChoice(...)")
        return self.llm

    def close(self) -> None:
        self.store.close()
        close = getattr(self.llm, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Assistant:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_assistant(index: str | Path, *, store_url: str | None = None, embedder: str | None = None,
                   mode: str = "auto", model: ModelChoice | None = None, model_required: bool = True,
                   notice: NoticeFn | None = _stderr_note) -> Assistant:
    """Open `index` (a missing or empty one is a LyreError), its retriever and the model."""
    store = open_index(index, store_url)
    try:
        retriever = make_retriever(store, embedder, mode, notice)
        llm = (model or ModelChoice()).build(required=model_required)
    except BaseException:
        store.close()
        raise
    return Assistant(store, retriever, llm)


__all__ = ["Assistant", "ModelChoice", "make_retriever", "open_assistant", "open_index"]
