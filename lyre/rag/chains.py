"""Answering a question from retrieved passages: the four chain types of LangChain's RetrievalQA.

    stuff       one prompt holding every passage; one model call
    refine      a first answer from passage 1, then one call per further passage that carries
                the answer forward and improves it
    map_reduce  one call per passage that copies what helps ("map"), then one call that answers
                from those notes ("reduce"); notes over the budget are first shortened in groups
                ("collapse"), again and again until they fit
    map_rerank  one call per passage answering from it alone with a 0-100 score; the best
                scored answer is kept (ties: the better retrieved passage); a reply without a
                usable score counts as unscored and is counted

    answer = ask("Who killed Hector?", retriever, llm, chain="stuff", k=4)
    print(answer.text); print(answer.format_sources())

The budget rule, for every prompt of every chain: prompt tokens + the call's answer budget <=
the model's context. Passages that do not fit are trimmed (cut at a word, marked " ...") or
dropped, in retrieval order, each with a notice in `answer.notices`; when even the first passage
cannot get MIN_PASSAGE_TOKENS tokens, it is a LyreError naming the sizes. Passages keep their
retrieval rank as their number everywhere, and the answer cites them as [n]; `answer.sources`
lists what the model saw (path, page, offsets), `answer.cited` what the answer cites. When the
answer was written from exactly one passage (map_rerank's pick, a prompt that held one passage)
and the model cited nothing, that passage's [n] is appended: its provenance is known. Contexts
under 512 tokens get the compact prompts (lyre.rag.prompts.COMPACT).

Only the final call streams through `on_token` (stuff's one call, refine's last, the reduce
call; map_rerank delivers the kept answer whole when the scoring is done). Callbacks see every
call (lyre.rag.callbacks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from lyre.core.errors import LyreError
from lyre.rag import prompts as P
from lyre.rag.callbacks import Callbacks, Run, as_callbacks
from lyre.rag.types import Chunk, Hit

CHAIN_TYPES = ("stuff", "refine", "map_reduce", "map_rerank")
MIN_PASSAGE_TOKENS = 8  # room for less of a passage than this: the context is too small
MAX_COLLAPSE_ROUNDS = 4
TRIM_MARK = " ..."


@dataclass
class Source:
    """A passage the model saw, by its number in the prompts."""

    n: int
    source: str
    page: int | None
    start: int
    end: int
    chunk_id: str
    score: float
    heading: str | None = None
    trimmed: bool = False
    text: str = ""

    def label(self) -> str:
        where = self.source + (f", page {self.page}" if self.page is not None else "")
        return f"[{self.n}] {where}, characters {self.start}-{self.end}" + \
            (" (trimmed to fit)" if self.trimmed else "")


@dataclass
class Answer:
    question: str
    text: str
    chain: str
    sources: list[Source] = field(default_factory=list)
    cited: list[int] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    llm_calls: int = 0
    unparseable_scores: int = 0  # map_rerank replies without a usable score
    scores: dict[int, float | None] = field(default_factory=dict)  # map_rerank: n -> score
    standalone_question: str | None = None  # chat: the follow-up rewritten (memory)

    def format_sources(self) -> str:
        if not self.sources:
            return "Sources: none"
        lines = ["Sources:"]
        for s in self.sources:
            lines.append(f"  {s.label()}" + ("  <- cited" if s.n in self.cited else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = asdict(self)
        for s in out["sources"]:
            s.pop("text")
        out["scores"] = {str(k): v for k, v in self.scores.items()}
        return out


def default_max_tokens(llm) -> int:
    """The answer budget when none is given: a quarter of the context, at most 256 tokens."""
    return max(16, min(256, llm.context_window // 4))


# ----------------------------------------------------------------------------------------------
# One question's working state


@dataclass
class _Item:
    n: int
    header: str
    text: str
    chunk: Chunk | None = None
    score: float = 0.0
    basis: tuple[int, ...] = ()  # notes: the passages they were taken from


class _Ctx:
    def __init__(self, question: str, llm, max_tokens: int, cbs: Callbacks, parent: Run | None,
                 on_token: Callable[[str], None] | None) -> None:
        self.question, self.llm, self.max_tokens = question, llm, max_tokens
        self.cbs, self.parent, self.on_token = cbs, parent, on_token
        self.notices: list[str] = []
        self.calls = 0
        self.streamed = False
        self.seen: dict[int, Source] = {}  # passages put in some prompt
        self.prompts = P.prompts_for(llm.context_window)
        self.basis: set[int] = set()  # the passages the final answer was written from

    @property
    def room(self) -> int:
        """Prompt tokens allowed for a call with the usual answer budget."""
        return self.llm.context_window - self.max_tokens

    def count(self, text: str) -> int:
        return self.llm.count_tokens(text)

    def call(self, prompt: str, step: str, stream: bool = False) -> str:
        text = call_llm(self.llm, prompt, self.max_tokens, self.cbs, self.parent, step,
                        self.on_token if stream else None)
        self.calls += 1
        self.streamed |= stream
        return text

    def fit(self, template: str, fields: dict, items: list[_Item], slot: str = "passages",
            what: str = "passage") -> tuple[str, list[_Item]]:
        """The prompt with as many items as fit, in order; the rest trimmed or dropped (noticed)."""
        def render(kept: list[_Item]) -> str:
            body = "\n\n".join(f"{it.header}\n{it.text}" for it in kept)
            return template.format(**fields, **{slot: body})

        free = self.room - self.count(render([]))
        if free < MIN_PASSAGE_TOKENS:
            raise LyreError(
                f"the model's context ({self.llm.context_window} tokens for the prompt and answer) "
                f"cannot hold one {what}: the instructions and question take "
                f"{self.room - free} tokens and the answer {self.max_tokens}; "
                "use a model with a longer context, a smaller --max-tokens or a shorter question")
        kept: list[_Item] = []
        for i, item in enumerate(items):
            if self.count(render(kept + [item])) <= self.room:
                kept.append(item)
                continue
            cut = self._longest_fit(render, kept, item)
            if cut > 0 and (not kept or cut >= len(item.text) // 2):
                trimmed = _Item(item.n, item.header, item.text[:cut].rstrip() + TRIM_MARK,
                                item.chunk, item.score)
                kept.append(trimmed)
                self.notices.append(f"{what} {item.n} trimmed to {cut} of {len(item.text)} "
                                    f"characters to fit the model's context")
                self._mark(trimmed, trimmed=True)
                rest = items[i + 1:]
            else:
                rest = items[i:]
            if rest:
                self.notices.append(
                    f"{what}{'s' if len(rest) > 1 else ''} {', '.join(str(r.n) for r in rest)} "
                    f"dropped: the model's context ({self.llm.context_window} tokens with "
                    f"{self.max_tokens} for the answer) is full")
            break
        for item in kept:
            self._mark(item)
        return render(kept), kept

    def _longest_fit(self, render, kept: list[_Item], item: _Item) -> int:
        """Characters of item.text (cut at a word) that still fit after `kept`; 0 if none."""
        lo, hi = 0, len(item.text)
        while lo < hi:  # the largest cut that fits: binary search on the prefix length
            mid = (lo + hi + 1) // 2
            part = _Item(item.n, item.header, item.text[:mid].rstrip() + TRIM_MARK)
            if self.count(render(kept + [part])) <= self.room:
                lo = mid
            else:
                hi = mid - 1
        space = item.text.rfind(" ", 0, lo)
        return space if space > lo * 0.8 else lo

    def _mark(self, item: _Item, trimmed: bool = False) -> None:
        """Record the passage as shown to the model (a trimmed one with its shorter span)."""
        c = item.chunk
        if c is None or (item.n in self.seen and not trimmed):
            return
        shown = item.text[: -len(TRIM_MARK)] if trimmed else c.text
        end = c.start + len(shown) if trimmed else c.end
        self.seen[item.n] = Source(item.n, c.source, c.page, c.start, end, c.chunk_id,
                                   item.score, c.heading, trimmed, shown)


def call_llm(llm, prompt: str, max_tokens: int, cbs: Callbacks, parent: Run | None, step: str,
             on_token: Callable[[str], None] | None = None) -> str:
    """One model call, watched by the callbacks; refuses a prompt that would overflow."""
    n = llm.count_tokens(prompt)
    if n + max_tokens > llm.context_window:  # the fitting makes this unreachable; never overflow
        raise LyreError(f"a {step} prompt of {n} tokens and {max_tokens} for the answer exceed "
                        f"the model's {llm.context_window}-token context")

    def token(piece: str) -> None:
        run.emit("on_llm_new_token", piece)
        if on_token is not None:
            on_token(piece)

    with cbs.run("llm", parent, (prompt, max_tokens), {"step": step, "prompt_tokens": n}) as run:
        text = llm.complete(prompt, max_tokens, on_token=token)
        run.emit("on_llm_end", text, elapsed_s=run.elapsed())
    return text


# ----------------------------------------------------------------------------------------------
# The four chains


def _stuff(ctx: _Ctx, items: list[_Item]) -> str:
    prompt, kept = ctx.fit(ctx.prompts.stuff, {"question": ctx.question}, items)
    ctx.basis = {it.n for it in kept}
    return ctx.call(prompt, "stuff", stream=True)


def _refine(ctx: _Ctx, items: list[_Item]) -> str:
    answer: str | None = None
    for i, item in enumerate(items):
        last = i == len(items) - 1
        if answer is None:
            prompt, _ = ctx.fit(ctx.prompts.refine_first, {"question": ctx.question}, [item])
            answer = ctx.call(prompt, "refine (first passage)", stream=last)
            ctx.basis.add(item.n)
            continue
        fields = {"question": ctx.question, "answer": answer, "n": item.n}
        try:
            prompt, _ = ctx.fit(ctx.prompts.refine_next, fields, [item])
        except LyreError:  # the answer so far has grown too long to leave room for a passage
            ctx.notices.append(f"passage {item.n} skipped: the answer so far leaves no room for it")
            continue
        better = ctx.call(prompt, f"refine (passage {item.n})", stream=last)
        ctx.basis.add(item.n)
        if better.strip():
            answer = better
            continue
        ctx.notices.append(f"refine: the model wrote nothing for passage {item.n}; "
                           "kept the answer so far")
        if last:  # the blank reply was streamed; the kept answer streams after it
            if ctx.on_token is not None:
                ctx.on_token(answer)
            answer = better + answer
    return answer or ""


def _map_reduce(ctx: _Ctx, items: list[_Item]) -> str:
    notes: list[_Item] = []
    for item in items:
        prompt, _ = ctx.fit(ctx.prompts.map, {"question": ctx.question}, [item])
        note = ctx.call(prompt, f"map (passage {item.n})").strip()
        if note and note.upper().rstrip(".") != P.NONE_NOTE:
            notes.append(_Item(item.n, f"[{item.n}]", note, basis=(item.n,)))
    if not notes:
        ctx.notices.append("map_reduce: no passage held anything relevant")
        notes = [_Item(0, "(no notes)", "None of the passages holds anything relevant.")]
        ctx.basis = set()
    notes = _collapse(ctx, notes)
    prompt, kept = ctx.fit(ctx.prompts.reduce, {"question": ctx.question}, notes, slot="notes",
                           what="note")
    ctx.basis = {n for it in kept for n in it.basis}
    return ctx.call(prompt, "reduce", stream=True)


def _collapse(ctx: _Ctx, notes: list[_Item]) -> list[_Item]:
    """Shorten notes in groups until all of them fit one REDUCE prompt (LangChain's collapse)."""
    def fits(template: str, group: list[_Item], slot: str = "notes") -> bool:
        body = "\n\n".join(f"{it.header}\n{it.text}" for it in group)
        return ctx.count(template.format(question=ctx.question, **{slot: body})) <= ctx.room

    for round_ in range(1, MAX_COLLAPSE_ROUNDS + 1):
        if fits(ctx.prompts.reduce, notes):
            return notes
        groups: list[list[_Item]] = [[]]
        for note in notes:  # greedy: a group takes notes while its COLLAPSE prompt fits
            if groups[-1] and not fits(ctx.prompts.collapse, groups[-1] + [note]):
                groups.append([])
            groups[-1].append(note)
        if all(len(g) == 1 for g in groups):
            break  # no two notes fit one prompt: collapsing cannot make progress
        shorter = []
        for group in groups:
            if len(group) == 1:
                shorter.append(group[0])
                continue
            prompt, _ = ctx.fit(ctx.prompts.collapse, {"question": ctx.question}, group, slot="notes",
                                what="note")
            text = ctx.call(prompt, f"collapse (round {round_})").strip()
            header = " ".join(g.header for g in group)
            basis = tuple(n for g in group for n in g.basis)
            shorter.append(_Item(group[0].n, header, text or "(nothing kept)", basis=basis))
        ctx.notices.append(f"map_reduce: collapsed {len(notes)} notes into {len(shorter)} "
                           f"(round {round_}) to fit the context")
        notes = shorter
    return notes  # the REDUCE fit trims or drops what still does not fit, with a notice


def _map_rerank(ctx: _Ctx, items: list[_Item], scores: dict[int, float | None]) -> str:
    best: tuple[float, int, str] | None = None  # (score, n, answer)
    first: tuple[int, str] | None = None
    for item in items:
        prompt, _ = ctx.fit(ctx.prompts.rerank, {"question": ctx.question}, [item])
        answer, score = P.parse_scored_answer(ctx.call(prompt, f"rerank (passage {item.n})"))
        scores[item.n] = score
        if first is None:
            first = (item.n, answer)
        if score is not None and (best is None or score > best[0]):
            best = (score, item.n, answer)
    unscored = sum(1 for s in scores.values() if s is None)
    if unscored:
        ctx.notices.append(f"map_rerank: {unscored} of {len(scores)} replies had no usable score "
                           "(treated as the lowest)")
    if best is None:
        assert first is not None
        best = (0.0, *first)
        ctx.notices.append("map_rerank: no reply was scored; kept the top-ranked passage's answer")
    _, n, text = best
    ctx.basis = {n}
    if not text.strip():
        text = "I do not know."
    if ctx.on_token is not None:
        ctx.on_token(text)
    ctx.streamed = True
    return text


# ----------------------------------------------------------------------------------------------
# Entry points


def check_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise LyreError("the question is empty; ask something, e.g. lyre rag ask IDX \"Who is Hector?\"")
    return question.strip()


def check_chain(chain: str) -> str:
    if chain not in CHAIN_TYPES:
        raise LyreError(f"unknown chain type {chain!r}; use one of {', '.join(CHAIN_TYPES)}")
    return chain


def check_max_tokens(llm, max_tokens: int | None) -> int:
    if max_tokens is None:
        return default_max_tokens(llm)
    if max_tokens < 1:
        raise LyreError(f"--max-tokens must be >= 1; got {max_tokens}")
    if max_tokens > llm.context_window - MIN_PASSAGE_TOKENS:
        raise LyreError(f"--max-tokens {max_tokens} leaves no room for passages in the model's "
                        f"{llm.context_window}-token context; use at most "
                        f"{llm.context_window // 2}")
    return max_tokens


def run_chain(question: str, hits: list[Hit], llm, *, chain: str = "stuff",
              max_tokens: int | None = None, callbacks=None, on_token=None,
              parent: Run | None = None) -> Answer:
    """Answer `question` from `hits` (already retrieved) with one chain type."""
    question, chain = check_question(question), check_chain(chain)
    max_tokens = check_max_tokens(llm, max_tokens)
    cbs = as_callbacks(callbacks)
    result = Answer(question=question, text="", chain=chain)
    with cbs.run("chain", parent, (chain, {"question": question, "passages": len(hits)})) as run:
        ctx = _Ctx(question, llm, max_tokens, cbs, run, on_token)
        items = [_Item(i + 1, P.passage_header(i + 1, h.chunk, ctx.prompts.headers), h.chunk.text,
                       h.chunk, h.score) for i, h in enumerate(hits)]
        if not items:
            text = "I found no passage about this in the index."
            ctx.notices.append("no passage was retrieved; the model was not asked")
            if on_token is not None:
                on_token(text)
        elif chain == "stuff":
            text = _stuff(ctx, items)
        elif chain == "refine":
            text = _refine(ctx, items)
        elif chain == "map_reduce":
            text = _map_reduce(ctx, items)
        else:
            text = _map_rerank(ctx, items, result.scores)
        if not ctx.streamed and items and on_token is not None:
            on_token(text)  # e.g. refine whose last passage was skipped
        if items and len(ctx.basis) == 1 and not P.citations(text):
            # Written from exactly one passage (map_rerank's pick, a one-passage prompt) but the
            # model cited nothing: the provenance is known, so the citation is added.
            addition = f" [{next(iter(ctx.basis))}]"
            text = text.rstrip() + addition
            if on_token is not None:
                on_token(addition)
        result.text = text
        result.sources = [ctx.seen[n] for n in sorted(ctx.seen)]
        valid = {s.n for s in result.sources}
        cited = P.citations(text)
        result.cited = [n for n in cited if n in valid]
        stray = [n for n in cited if n not in valid]
        if stray:
            ctx.notices.append(f"the answer cites [{'], ['.join(map(str, stray))}], which the "
                               "model was not shown")
        result.llm_calls = ctx.calls
        result.unparseable_scores = sum(1 for s in result.scores.values() if s is None)
        take = getattr(llm, "take_notices", None)
        result.notices = (take() if take else []) + ctx.notices
        run.emit("on_chain_end", {"answer": text, "cited": result.cited,
                                  "llm_calls": ctx.calls}, elapsed_s=run.elapsed())
    return result


def retrieve(retriever, query: str, k: int, source_glob: str | None, cbs: Callbacks,
             parent: Run | None) -> list[Hit]:
    if k < 1:
        raise LyreError(f"--k must be >= 1; got {k}")
    with cbs.run("retriever", parent, (query,), {"k": k}) as run:
        hits = retriever.search(query, k=k, source_glob=source_glob)
        run.emit("on_retriever_end", hits, elapsed_s=run.elapsed())
    return hits


def ask(question: str, retriever, llm, *, chain: str = "stuff", k: int = 4,
        max_tokens: int | None = None, source_glob: str | None = None, callbacks=None,
        on_token: Callable[[str], None] | None = None) -> Answer:
    """Retrieve the k best passages for `question` and answer from them (RetrievalQA)."""
    question, chain = check_question(question), check_chain(chain)
    check_max_tokens(llm, max_tokens)
    cbs = as_callbacks(callbacks)
    with cbs.run("chain", None, ("retrieval_qa", {"question": question, "chain": chain})) as run:
        hits = retrieve(retriever, question, k, source_glob, cbs, run)
        answer = run_chain(question, hits, llm, chain=chain, max_tokens=max_tokens,
                           callbacks=cbs, on_token=on_token, parent=run)
        run.emit("on_chain_end", {"answer": answer.text, "sources": len(answer.sources)},
                 elapsed_s=run.elapsed())
    return answer
