"""The lexical side of retrieval: text -> terms, and BM25 over terms (bm25s).

Terms: lowercase words (`\\w+`), minus stopwords, reduced to their stem by the Snowball
stemmer (PyStemmer) so that "wedding", "wed" and "weds" meet. Queries and chunks must be
analysed the same way, so the settings are stored with the index (LexicalConfig in its info).

BM25: bm25s computes the whole score matrix at index time ("eager" BM25: one precomputed
score per (term, chunk) pair, stored column-wise per term), so a query is a sum of a few
posting lists. We use bm25s to build and persist that matrix and do the summing ourselves,
because we need two things its retrieve() does not give: a weight per query term (for
pseudo-relevance feedback) and a mask of allowed chunks (the source filter) applied before
the top-k, not after.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from lyre.errors import LyreError

WORD = re.compile(r"\w+")


@dataclass
class LexicalConfig:
    method: str = "lucene"  # bm25s: robertson, lucene, atire, bm25l, bm25+
    k1: float = 1.2
    b: float = 0.75
    delta: float = 0.5  # bm25l / bm25+ only
    stemmer: str | None = "english"  # a Snowball language, or None
    stopwords: str | None = "en_plus"  # "en" (Lucene's 33 words), "en_plus" (bm25s' long list)

    def __post_init__(self) -> None:
        if self.method not in {"robertson", "lucene", "atire", "bm25l", "bm25+"}:
            raise LyreError(f"unknown BM25 method {self.method!r}; "
                            "use robertson, lucene, atire, bm25l or bm25+")
        if self.stopwords not in {None, "en", "en_plus"}:
            raise LyreError(f"unknown stopword list {self.stopwords!r}; use en, en_plus or none")

    @classmethod
    def from_dict(cls, d: dict) -> LexicalConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@lru_cache(maxsize=4)
def _stopwords(name: str | None) -> frozenset[str]:
    if name is None:
        return frozenset()
    from bm25s.stopwords import STOPWORDS_EN, STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN if name == "en" else STOPWORDS_EN_PLUS)


class Analyzer:
    """Text -> terms, with a cache of stems (a corpus has far fewer distinct words than words)."""

    def __init__(self, config: LexicalConfig) -> None:
        self.stop = _stopwords(config.stopwords)
        self.stemmer = None
        if config.stemmer:
            try:
                import Stemmer  # PyStemmer
            except ImportError:
                raise LyreError("this index uses stemming; install PyStemmer "
                                "(pip install PyStemmer)") from None
            try:
                self.stemmer = Stemmer.Stemmer(config.stemmer)
            except KeyError:
                raise LyreError(f"no Snowball stemmer for {config.stemmer!r}") from None
        self._stems: dict[str, str] = {}

    def __call__(self, text: str) -> list[str]:
        words = [w for w in WORD.findall(text.lower()) if w not in self.stop]
        if self.stemmer is None:
            return words
        stems = self._stems
        new = [w for w in set(words) if w not in stems]
        if new:
            stems.update(zip(new, self.stemmer.stemWords(new), strict=True))
        return [stems[w] for w in words]


class BM25Index:
    """BM25 scores of every chunk for any weighted set of terms."""

    def __init__(self, bm25, config: LexicalConfig) -> None:
        self.bm25 = bm25
        self.config = config
        self.vocab: dict[str, int] = bm25.vocab_dict
        scores = bm25.scores
        self.data, self.indices, self.indptr = scores["data"], scores["indices"], scores["indptr"]
        self.num_docs = int(scores["num_docs"])
        self.nonoccurrence = bm25.nonoccurrence_array

    @classmethod
    def build(cls, docs_terms: list[list[str]], config: LexicalConfig) -> BM25Index:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.ERROR)
        bm25 = bm25s.BM25(method=config.method, k1=config.k1, b=config.b, delta=config.delta)
        # bm25s cannot index an empty corpus; one empty document keeps the code path uniform.
        bm25.index(docs_terms or [[]], show_progress=False)
        index = cls(bm25, config)
        index.num_docs = len(docs_terms)
        return index

    def save(self, directory: Path) -> None:
        self.bm25.save(str(directory), show_progress=False)
        (directory / "lyre.json").write_text(json.dumps({"num_docs": self.num_docs,
                                                          "config": asdict(self.config)}))

    @classmethod
    def load(cls, directory: Path) -> BM25Index:
        import bm25s

        meta = json.loads((directory / "lyre.json").read_text())
        bm25 = bm25s.BM25.load(str(directory), mmap=False, show_progress=False)
        index = cls(bm25, LexicalConfig.from_dict(meta["config"]))
        index.num_docs = int(meta["num_docs"])
        return index

    def scores(self, weights: dict[str, float]) -> np.ndarray:
        """Σ_t w_t · BM25(t, chunk) for every chunk: a float32 vector of num_docs."""
        out = np.zeros(max(self.num_docs, 1), dtype=np.float32)
        for term, w in weights.items():
            t = self.vocab.get(term)
            if t is None:
                continue
            lo, hi = self.indptr[t], self.indptr[t + 1]
            # A term's posting list names each chunk at most once, so a plain += is exact.
            out[self.indices[lo:hi]] += np.float32(w) * self.data[lo:hi]
            if self.nonoccurrence is not None:  # bm25l/bm25+ give absent terms a score too
                out += np.float32(w) * self.nonoccurrence[t]
        return out[: self.num_docs]


def query_weights(terms: list[str]) -> dict[str, float]:
    """A plain query: each distinct term once (repeating a word does not multiply its weight,
    as in Lucene's default and bm25s)."""
    return {t: 1.0 for t in Counter(terms)}


def top_k(scores: np.ndarray, k: int, mask: np.ndarray | None = None,
          min_score: float = 0.0) -> list[tuple[int, float]]:
    """(row, score) of the k best rows with score > min_score, best first; ties by row order."""
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    candidates = np.flatnonzero(scores > min_score)
    if len(candidates) > k:
        part = np.argpartition(-scores[candidates], k - 1)[:k]
        candidates = candidates[part]
    order = np.lexsort((candidates, -scores[candidates]))
    return [(int(candidates[i]), float(scores[candidates[i]])) for i in order]
