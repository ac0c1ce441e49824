"""Retriever: a question -> ranked chunks, lexical (BM25), dense (embeddings) or hybrid.

    lexical  BM25 over the store's analysed terms, plus half the mean score of the two chunks
             on each side ("context": a chunk inside a passage about the question ranks higher
             than an isolated one that shares a word with it); optionally pseudo-relevance
             feedback (RM3: the best terms of the first results are added to the query, then
             search again; it did not help on our questions, so it is off by default)
    dense    cosine similarity of the question's embedding with every chunk's
    hybrid   both rankings fused: "convex" (the default, measured best on our tuning
             questions): each ranking's scores standardised (z-scores over its candidates),
             then BM25 + dense_weight x cosine; or "rrf", reciprocal rank fusion, score =
             Σ w / (rrf_k + rank), which needs no score calibration at all
    auto     hybrid when there is an embedder and the index holds vectors, else lexical; with
             no embedder given, an index built with MiniLM gets MiniLM back (its package
             holds the weights), any other index is searched lexically

Hits of the same source whose spans overlap or touch are merged into one (`merge=True`): with
overlapping chunks the same sentences would otherwise be sent to the model twice and eat the
context budget (see docs/rag.md, "Retrieval", for what each option measured).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from lyre.core.errors import LyreError
from lyre.rag.lexical import query_weights
from lyre.rag.types import Chunk, Embedder, Hit, Store

MODES = ("auto", "lexical", "dense", "hybrid")
FUSIONS = ("convex", "rrf")


@dataclass
class RetrieverConfig:
    fusion: str = "convex"  # hybrid: "convex" (z-scored scores) or "rrf" (ranks only)
    dense_weight: float = 0.5  # weight of the dense ranking against the lexical one
    rrf_k: int = 60  # reciprocal rank fusion constant (Cormack et al. 2009)
    depth: int = 50  # candidates taken from each ranking before fusion
    prf_docs: int = 0  # RM3 feedback: chunks to learn expansion terms from (0 = off)
    prf_terms: int = 10  # expansion terms added
    prf_weight: float = 0.5  # weight of the original query against the expansion terms
    merge: bool = True  # merge overlapping or touching hits of the same source
    context_weight: float = 0.5  # add this share of the neighbouring chunks' mean BM25 score
    context_window: int = 2  # neighbours on each side counted by context_weight


class Retriever:
    def __init__(self, store: Store, embedder: Embedder | None = None, mode: str = "auto",
                 config: RetrieverConfig | None = None) -> None:
        if mode not in MODES:
            raise LyreError(f"unknown retrieval mode {mode!r}; use one of {', '.join(MODES)}")
        if embedder is None and mode != "lexical":
            embedder = _index_embedder(store)
        if mode in ("dense", "hybrid") and embedder is None:
            raise LyreError(f"{mode} retrieval needs an embedder (--embedder)")
        if config is not None and config.fusion not in FUSIONS:
            raise LyreError(f"unknown fusion {config.fusion!r}; use one of {', '.join(FUSIONS)}")
        if mode == "auto":
            has_vectors = getattr(store, "has_vectors", lambda: True)()
            mode = "hybrid" if embedder is not None and has_vectors else "lexical"
        self.store, self.embedder, self.mode = store, embedder, mode
        self.config = config or RetrieverConfig()

    def search(self, query: str, k: int = 4, source_glob: str | None = None) -> list[Hit]:
        """The k best chunks for `query`, best first (rank 1..k)."""
        if not query or not query.strip():
            raise LyreError("the question is empty")
        if k < 1:
            raise LyreError(f"k must be at least 1, got {k}")
        depth = max(self.config.depth, 2 * k)
        if self.mode == "lexical":
            hits = self._lexical(query, depth, source_glob)
        elif self.mode == "dense":
            hits = self._dense(query, depth, source_glob)
        else:
            rankings = [self._lexical(query, depth, source_glob),
                        self._dense(query, depth, source_glob)]
            weights = [1.0, self.config.dense_weight]
            hits = (fuse_scores(rankings, weights) if self.config.fusion == "convex"
                    else fuse(rankings, self.config.rrf_k, weights))
        if self.config.merge:
            hits = merge_adjacent(hits)
        hits = hits[:k]
        for i, h in enumerate(hits):
            h.rank = i + 1
        return hits

    def search_budget(self, query: str, budget_chars: int = 4000,
                      source_glob: str | None = None) -> list[Hit]:
        """Best chunks until `budget_chars` characters of context are filled; the last one is
        cut to fit (what a "stuff" prompt of that size would hold)."""
        hits = self.search(query, k=max(self.config.depth, 8), source_glob=source_glob)
        return fill_budget(hits, budget_chars)

    # -- the two rankings -----------------------------------------------------------------------

    def _lexical(self, query: str, depth: int, source_glob: str | None) -> list[Hit]:
        store = self.store
        weighted = hasattr(store, "lexical_search_terms") and hasattr(store, "analyze")
        if not weighted:
            return store.lexical_search(query, depth, source_glob)
        c = self.config
        extra = {"context_weight": c.context_weight, "context_window": c.context_window} \
            if c.context_weight > 0 else {}
        weights = query_weights(store.analyze(query))
        hits = store.lexical_search_terms(weights, depth, source_glob, **extra)
        if c.prf_docs > 0 and hits:
            weights = self._rm3(weights, hits[: c.prf_docs])
            hits = store.lexical_search_terms(weights, depth, source_glob, **extra)
        return hits

    def _rm3(self, weights: dict[str, float], feedback: list[Hit]) -> dict[str, float]:
        """RM3 (Lavrenko & Croft's relevance model, interpolated with the query): weight each
        term by Σ_d P(t|d) P(d|q) over the feedback chunks, keep the best, then mix
        prf_weight * query + (1 - prf_weight) * expansion (each normalised to sum 1)."""
        c = self.config
        total = sum(h.score for h in feedback) or 1.0
        relevance: Counter[str] = Counter()
        for h in feedback:
            terms = self.store.analyze(h.chunk.text)
            if not terms:
                continue
            for t, n in Counter(terms).items():
                relevance[t] += (n / len(terms)) * (h.score / total)
        best = dict(relevance.most_common(c.prf_terms))
        norm_e = sum(best.values()) or 1.0
        norm_q = sum(weights.values()) or 1.0
        mixed: Counter[str] = Counter()
        for t, w in weights.items():
            mixed[t] += c.prf_weight * w / norm_q
        for t, w in best.items():
            mixed[t] += (1 - c.prf_weight) * w / norm_e
        return dict(mixed)

    def _dense(self, query: str, depth: int, source_glob: str | None) -> list[Hit]:
        vector = self.embedder.embed([query])[0]
        return self.store.vector_search(vector, depth, source_glob)


def _index_embedder(store: Store) -> Embedder | None:
    """The index's own embedder when lyre can rebuild it alone (MiniLM from its package), so
    `Retriever(open_store(IDX))` searches an index the way it was built."""
    from lyre.rag.embedders import embedder_for_index  # lazy: loads a model only when needed

    settings = store.settings() if hasattr(store, "settings") else {}
    return embedder_for_index(settings.get("embedder"))


def fuse(rankings: list[list[Hit]], rrf_k: int = 60,
         weights: list[float] | None = None) -> list[Hit]:
    """Reciprocal rank fusion: a chunk's score is Σ over rankings of w / (rrf_k + rank)."""
    weights = weights or [1.0] * len(rankings)
    scores: dict[str, float] = {}
    chunks: dict[str, Chunk] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        for rank, hit in enumerate(ranking, start=1):
            cid = hit.chunk.chunk_id
            scores[cid] = scores.get(cid, 0.0) + w / (rrf_k + rank)
            chunks[cid] = hit.chunk
    return _ranked(scores, chunks)


def fuse_scores(rankings: list[list[Hit]], weights: list[float]) -> list[Hit]:
    """Convex combination of standardised scores: each ranking's scores become z-scores over
    its own candidates (BM25 is unbounded, cosine lies in [-1, 1]: raw sums would let one
    dominate); a chunk missing from a ranking gets that ranking's lowest z-score."""
    chunks = {h.chunk.chunk_id: h.chunk for ranking in rankings for h in ranking}
    scores = dict.fromkeys(chunks, 0.0)
    for ranking, w in zip(rankings, weights, strict=True):
        if not ranking:
            continue
        raw = [h.score for h in ranking]
        mean = sum(raw) / len(raw)
        std = (sum((x - mean) ** 2 for x in raw) / len(raw)) ** 0.5 or 1.0
        z = {h.chunk.chunk_id: (h.score - mean) / std for h in ranking}
        floor = min(z.values())
        for cid in scores:
            scores[cid] += w * z.get(cid, floor)
    return _ranked(scores, chunks)


def _ranked(scores: dict[str, float], chunks: dict[str, Chunk]) -> list[Hit]:
    order = sorted(scores, key=lambda c: -scores[c])
    return [Hit(chunks[c], scores[c], rank=i + 1) for i, c in enumerate(order)]


def merge_adjacent(hits: list[Hit]) -> list[Hit]:
    """Fold each hit into a better-ranked one of the same source (and page) when their spans
    overlap or touch: the merged chunk covers both, keeps the better rank and score."""
    merged: list[Hit] = []
    for hit in hits:
        c = hit.chunk
        for m in merged:
            mc = m.chunk
            if mc.source == c.source and mc.page == c.page and \
                    c.start <= mc.end and mc.start <= c.end:
                m.chunk = _union(mc, c)
                break
        else:
            merged.append(Hit(c, hit.score, hit.rank))
    return merged


def _union(a: Chunk, b: Chunk) -> Chunk:
    """The chunk covering two overlapping or touching spans of the same text."""
    first, second = (a, b) if a.start <= b.start else (b, a)
    if second.end <= first.end:
        return first
    text = first.text + second.text[first.end - second.start:]
    return Chunk(text=text, source=first.source, start=first.start, end=second.end,
                 page=first.page, heading=first.heading, chunk_id=first.chunk_id)


def fill_budget(hits: list[Hit], budget_chars: int) -> list[Hit]:
    """Hits in order until budget_chars characters are used; the last one cut to fit."""
    out, used = [], 0
    for h in hits:
        room = budget_chars - used
        if room <= 0:
            break
        c = h.chunk
        if len(c.text) > room:
            c = Chunk(text=c.text[:room], source=c.source, start=c.start, end=c.start + room,
                      page=c.page, heading=c.heading, chunk_id=c.chunk_id)
        out.append(Hit(c, h.score, h.rank))
        used += len(c.text)
    return out
