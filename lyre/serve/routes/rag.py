"""POST /v1/rag/answer: retrieval-augmented answers from the served run (`lyre serve RUN --rag IDX`).

    curl localhost:8000/v1/rag/answer -d '{"question": "Who was Hector'"'"'s wife?", "k": 4}'

The server retrieves passages from the index and answers with one of lyre.rag's chains, the
model being the served run itself: its calls go through the server's scheduler, so questions
batch with ordinary chat traffic. Body: question, chain (stuff | refine | map_reduce |
map_rerank), k, max_tokens, source (a glob), history (earlier {question, answer} turns: the
question is then first rewritten into a standalone one, as `lyre rag chat` does), stream.

Answer: {"object": "rag.answer", "answer", "sources": [{n, source, page, start, end, score,
cited, ...}], "cited", "notices", ...}. With `stream: true`, server-sent events: one
{"object": "rag.answer.delta", "text"} per piece of the final answer, then the whole
rag.answer object, then `data: [DONE]`; an error mid-way is an {"error": {...}} event.

Threads: the index is read on one thread of its own (SQLite connections belong to the thread
that opened them; retrieval takes milliseconds), the chains run in worker threads and block on
their jobs' events, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from lyre.chat.templates import AnswerTrimmer
from lyre.core.errors import LyreError
from lyre.rag.llm import RunPrompts
from lyre.serve import schemas as S
from lyre.serve.errors import APIError
from lyre.serve.scheduler import Job, Piece, Scheduler
from lyre.serve.streaming import SSEResponse
from lyre.serve.worker import job_events, stream_from_thread

router = APIRouter(tags=["lyre"])
log = logging.getLogger("lyre.serve")


class HistoryTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(max_length=10_000)
    answer: str = Field(max_length=100_000)


class RagRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=10_000, description="What to answer.")
    chain: Literal["stuff", "refine", "map_reduce", "map_rerank"] = Field(
        "stuff", description="How passages reach the model (see docs/rag.md).")
    k: int = Field(4, ge=1, le=50, description="Passages to retrieve.")
    max_tokens: int | None = Field(None, ge=1, description="Answer budget in tokens.")
    source: str | None = Field(None, max_length=1000, description="Only sources matching this glob.")
    history: list[HistoryTurn] = Field(default_factory=list, max_length=50,
                                       description="Earlier turns: the question is a follow-up.")
    stream: bool = Field(False, description="Server-sent events: deltas, then the answer.")


class RagSource(BaseModel):
    n: int
    source: str
    page: int | None
    start: int
    end: int
    chunk_id: str
    score: float
    heading: str | None = None
    trimmed: bool
    cited: bool
    text: str


class RagAnswer(BaseModel):
    object: Literal["rag.answer"] = "rag.answer"
    model: str
    question: str
    standalone_question: str | None
    chain: str
    answer: str
    cited: list[int]
    sources: list[RagSource]
    notices: list[str]
    llm_calls: int


class ServedLLM(RunPrompts):
    """The served run as a lyre.rag LLM whose calls are jobs on the server's scheduler."""

    def __init__(self, run, scheduler: Scheduler, template: str) -> None:
        super().__init__(run, template)
        self.scheduler = scheduler
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, set per request

    def complete(self, prompt: str, max_tokens: int, stop: list[str] | None = None,
                 on_token=None) -> str:
        job = Job(prompt=self.prompt_ids(prompt, max_tokens), params=self.sampling(max_tokens, stop))
        trimmer, pieces = AnswerTrimmer(True), []
        for event in job_events(self.scheduler, self.loop, job):
            if isinstance(event, Piece) and (piece := trimmer.feed(event.text)):
                pieces.append(piece)
                if on_token is not None:
                    on_token(piece)
        return "".join(pieces)


class _StoreThread:
    """The index, opened and searched on one thread of its own."""

    def __init__(self, index: str, embedder: str | None) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="lyre-rag-index")
        self.retriever = self.executor.submit(self._open, index, embedder).result()

    @staticmethod
    def _open(index: str, embedder: str | None):
        """The same assembly as `lyre rag search` (lyre.rag.assistant)."""
        from lyre.rag.assistant import make_retriever
        from lyre.rag.index import open_index

        store = open_index(index)
        return make_retriever(store, embedder, notice=lambda text: log.warning("--rag: %s", text))

    def search(self, query: str, k: int = 4, source_glob: str | None = None):
        return self.executor.submit(self.retriever.search, query, k, source_glob).result()


class RagService:
    def __init__(self, run, scheduler: Scheduler, template: str, model_name: str, index: str,
                 embedder: str | None = None) -> None:
        self.store = _StoreThread(index, embedder)
        self.llm = ServedLLM(run, scheduler, template)
        self.model_name = model_name

    @staticmethod
    def of(request: Request) -> RagService:
        return request.app.state.rag

    def answer(self, req: RagRequest, on_token=None) -> RagAnswer:
        """Run in a worker thread: condense (with history), retrieve, answer."""
        from lyre.rag.memory import ChatMemory, RAGChat

        memory = ChatMemory(turns=[(t.question, t.answer) for t in req.history])
        try:
            chat = RAGChat(self.store, self.llm, chain=req.chain, k=req.k, max_tokens=req.max_tokens,
                           source_glob=req.source, memory=memory)
            result = chat.ask(req.question, on_token=on_token)
        except LyreError as e:
            raise APIError(400, str(e), code="invalid_request") from None
        cited = set(result.cited)
        return RagAnswer(
            model=self.model_name, question=result.question,
            standalone_question=result.standalone_question, chain=result.chain,
            answer=result.text, cited=result.cited, notices=result.notices,
            llm_calls=result.llm_calls,
            sources=[RagSource(n=s.n, source=s.source, page=s.page, start=s.start, end=s.end,
                               chunk_id=s.chunk_id, score=s.score, heading=s.heading,
                               trimmed=s.trimmed, cited=s.n in cited, text=s.text)
                     for s in result.sources])


def install(app, run, scheduler: Scheduler, template: str, model_name: str, index: str,
            embedder: str | None = None) -> APIRouter:
    """Open the index (LyreError now, before the server starts, when it is missing) and return
    the router to include."""
    app.state.rag = RagService(run, scheduler, template, model_name, index, embedder)
    return router


@router.post("/v1/rag/answer", response_model=RagAnswer,
             responses={**S.sse_responses(RagAnswer), **S.error_responses(400, 401, 413, 429, 503)})
async def rag_answer(req: RagRequest, request: Request):
    rag = RagService.of(request)
    loop = asyncio.get_running_loop()
    rag.llm.loop = loop
    if not req.stream:
        return await asyncio.to_thread(rag.answer, req)
    return SSEResponse(stream_from_thread(
        lambda emit: rag.answer(req, lambda piece: emit({"object": "rag.answer.delta", "text": piece})),
        "POST /v1/rag/answer"))


