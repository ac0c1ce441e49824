"""The lexical side of retrieval: text -> terms, and BM25 over terms (bm25s).

Terms: lowercase words (`\\w+`), minus stopwords, reduced to their stem by the Snowball
stemmer (PyStemmer) so that "wedding", "wed" and "weds" meet. Queries and chunks must be
analysed the same way, so the settings are stored with the index (LexicalConfig in its info).
Analysis is most of what indexing costs, so Analyzer cuts words in C (bytes.translate, then
split) and analyses each distinct token once; the comments there say how and why.

BM25 "eager", as bm25s does it: the score of every (term, chunk) pair is computed at index
time and stored per term, so a query is a sum of a few posting lists. The matrix is built here
with a handful of numpy operations (about 3x faster than bm25s' build on the Sherlock Holmes
chunks, and without its scipy import: docs/log.md); the scores are bm25s' (a test
checks them against bm25s). bm25s itself builds the two variants that also score absent terms
(bm25l, bm25+). Queries sum the posting lists themselves, because we need a weight per query
term (pseudo-relevance feedback) and a mask of allowed chunks (the source filter) applied
before the top-k, not after.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from lyre.core.errors import LyreError

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


# Lucene's English stopwords, and NLTK's longer list; the same lists bm25s ships
# (STOPWORDS_EN, STOPWORDS_EN_PLUS), copied so that analysing text does not import bm25s
# and scipy (a quarter of a second, paid by every CLI call).
STOPWORDS_EN = frozenset("""
    a an and are as at be but by for if in into is it no not of on or such that the their
    then there these they this to was will with
""".split())
STOPWORDS_EN_PLUS = frozenset("""
    a about above after again against ain all am an and any are aren aren't as at be because
    been before being below between both but by can couldn couldn't d did didn didn't do
    does doesn doesn't doing don don't down during each few for from further had hadn hadn't
    has hasn hasn't have haven haven't having he her here hers herself him himself his how i
    if in into is isn isn't it it's its itself just ll m ma me mightn mightn't more most
    mustn mustn't my myself needn needn't no nor not now o of off on once only or other our
    ours ourselves out over own re s same shan shan't she she's should should've shouldn
    shouldn't so some such t than that that'll the their theirs them themselves then there
    these they this those through to too under until up ve very was wasn wasn't we were
    weren weren't what when where which while who whom why will with won won't wouldn
    wouldn't y you you'd you'll you're you've your yours yourself yourselves
""".split())


def _stopwords(name: str | None) -> frozenset[str]:
    return {None: frozenset(), "en": STOPWORDS_EN, "en_plus": STOPWORDS_EN_PLUS}[name]


# Tokenising, the fast way. `\w+` over the lowercased text is the definition; running that
# regex costs ~140 ns per word, about LangChain's whole indexing time on a book. Instead every
# ASCII byte that is not a word character becomes a space (bytes.translate: a 256-byte table
# applied in C; it also lowercases A-Z, so ASCII text needs no str.lower()) and bytes.split()
# cuts the rest. A token that is pure ASCII is then exactly one \w+ word; a token holding
# non-ASCII bytes (an accented letter, a curly apostrophe) goes through the real regex, once
# per distinct token. tests/test_rag_index.py checks this gives the regex's words on tricky
# text.
_LOWER_WORD_BYTES = bytes(
    b + 32 if 65 <= b <= 90  # A-Z -> a-z
    else b if b >= 128 or chr(b).isalnum() or b == ord("_")  # UTF-8 bytes, a-z, 0-9, _
    else ord(" ")
    for b in range(256))


def _tokens(text: str) -> list[bytes]:
    r"""Space-free pieces of the lowercased text; each holds one or more \w+ words."""
    if text.isascii():  # (a flag of the string: free)
        data = text.encode("ascii")
    else:
        data = text.lower().encode("utf-8", "surrogatepass")
    return data.translate(_LOWER_WORD_BYTES).split()


class Analyzer:
    r"""Text -> terms (lowercase \w+ words, stopwords dropped, Snowball-stemmed).

    Each distinct token is analysed once (a book has ~15,000 distinct tokens for ~250,000
    tokens) and numbered; what a text costs after that is one dict lookup per token, and the
    rest is numpy. Term ids number the terms this analyser has met, in first-seen order
    (`self.terms[i]` is term i); the index builds its BM25 matrix from them directly."""

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
                # No cache inside PyStemmer (maxCacheSize 0): ours, per word, makes it
                # redundant, and keeping it costs as much as stemming (measured: 4.6 vs 9.6 ms
                # for the 12,000 distinct words of the two books).
                self.stemmer = Stemmer.Stemmer(config.stemmer, 0)
            except KeyError:
                raise LyreError(f"no Snowball stemmer for {config.stemmer!r}") from None
        self.terms: list[str] = []
        self._term_id: dict[str, int] = {}
        self._word_term: dict[str, int] = {}  # word -> term id, -1 for a stopword
        # Token k holds the terms _flat[_first[k]:_first[k] + _count[k]]; tokens are numbered
        # the first time they are looked up (_TokenNumbers) and analysed right after, in bulk.
        self._numbers = _TokenNumbers()
        self._first = np.zeros(0, dtype=np.int64)
        self._count = np.zeros(0, dtype=np.int64)
        self._flat = np.zeros(0, dtype=np.int32)

    def __call__(self, text: str) -> list[str]:
        """The terms of `text`, in order."""
        return [self.terms[i] for i in self.term_ids(text)]

    def term_ids(self, text: str) -> list[int]:
        """The terms of `text` as ids (see the class docstring), in order."""
        return self.term_id_arrays([text])[0].tolist()

    def term_id_arrays(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, lengths): every text's term ids in order, one text after the other, and how
        many belong to each text."""
        token_lists = [_tokens(t) for t in texts]
        tokens_per_text = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(texts))
        numbers = np.fromiter(map(self._numbers.__getitem__, chain.from_iterable(token_lists)),
                              dtype=np.int64, count=int(tokens_per_text.sum()))
        if self._numbers.new:
            self._learn(self._numbers.take_new())
        return _expand_tokens(numbers, tokens_per_text, self._first, self._count, self._flat)

    def _learn(self, tokens: list[bytes]) -> None:
        """Record the terms of newly numbered tokens: their words minus stopwords, stemmed (all
        new words in one stemWords call)."""
        words: list[str] = []  # every new token's words, one token after the other
        per_token: list[int] = []
        for token in b" ".join(tokens).decode("utf-8", "surrogatepass").split(" "):
            if token.isascii():  # one word (see _tokens)
                words.append(token)
                per_token.append(1)
            else:
                found = WORD.findall(token)
                words.extend(found)
                per_token.append(len(found))
        new = list(dict.fromkeys(w for w in words if w not in self._word_term))
        stems = self.stemmer.stemWords(new) if self.stemmer else new
        self._add_terms(stems)
        self._word_term.update(zip(new, map(self._term_id.__getitem__, stems), strict=True))
        self._word_term.update((w, -1) for w in self.stop.intersection(new))
        terms = np.fromiter(map(self._word_term.__getitem__, words), dtype=np.int32,
                            count=len(words))
        owner = np.repeat(np.arange(len(tokens)), per_token)
        count = np.bincount(owner[terms >= 0], minlength=len(tokens))
        first = len(self._flat) + np.cumsum(count) - count
        self._first = np.concatenate([self._first, first])
        self._count = np.concatenate([self._count, count])
        self._flat = np.concatenate([self._flat, terms[terms >= 0]])

    def _add_terms(self, terms: list[str]) -> None:
        """Give the terms not met before the next ids (stopwords' stems too: unused ids)."""
        new = [t for t in dict.fromkeys(terms) if t not in self._term_id]
        self._term_id.update(zip(new, range(len(self.terms), len(self.terms) + len(new)),
                                 strict=True))
        self.terms.extend(new)


class _TokenNumbers(dict):
    """token -> its number; a token not seen before gets the next number and is remembered in
    `new` (so one pass over a text's tokens both numbers them and finds the new ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.new: list[bytes] = []

    def __missing__(self, token: bytes) -> int:
        number = self[token] = len(self)
        self.new.append(token)
        return number

    def take_new(self) -> list[bytes]:
        new, self.new = self.new, []
        return new


def _expand_tokens(numbers: np.ndarray, tokens_per_text: np.ndarray, first: np.ndarray,
                   count: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token numbers -> term ids, in order, and terms per text. A token holds no term (a
    stopword), one (most) or several ("observer—excellent"): token occurrence i contributes
    flat[first[n]:first[n] + count[n]] with n = numbers[i]. All in numpy: no Python object
    per word."""
    per_token = count[numbers]
    ends = np.concatenate([[0], np.cumsum(per_token)])  # terms before each token
    lengths = np.diff(ends[np.concatenate([[0], np.cumsum(tokens_per_text)])])
    if per_token.max(initial=0) <= 1:  # the usual case: a token is one term or none
        return flat[first[numbers[per_token == 1]]], lengths
    owner = np.repeat(np.arange(len(numbers)), per_token)  # the occurrence each term came from
    within = np.arange(len(owner)) - ends[owner]  # its place inside the token
    return flat[first[numbers][owner] + within], lengths


# How each BM25 variant weighs term frequency (tf) in a document of length dl (in terms) and
# how rare a term is (idf, from its document frequency df among n documents), as in bm25s
# (Kamphuis et al. 2020, "Which BM25 do you mean?").
def _idf(method: str, df: np.ndarray, n: int) -> np.ndarray:
    if method == "robertson":  # clipped at 0: a term in most chunks does not count against
        return np.log(np.maximum((n - df + 0.5) / (df + 0.5), 1.0))
    if method == "atire":
        return np.log(n / df)
    return np.log(1 + (n - df + 0.5) / (df + 0.5))  # lucene (never negative)


def _tf_part(method: str, tf: np.ndarray, dl: np.ndarray, avgdl: float, k1: float,
             b: float) -> np.ndarray:
    norm = k1 * ((1 - b) + b * dl / avgdl)
    if method == "atire":
        return tf * (k1 + 1) / (tf + norm)
    return tf / (norm + tf)  # robertson, lucene


class BM25Index:
    """BM25 scores of every chunk for any weighted set of terms.

    The matrix is stored per term (compressed sparse columns): the chunks holding term t are
    indices[indptr[t]:indptr[t+1]] and their scores data[...] — so a query only touches the
    posting lists of its own terms."""

    def __init__(self, vocab: dict[str, int], data: np.ndarray, indices: np.ndarray,
                 indptr: np.ndarray, num_docs: int, config: LexicalConfig,
                 nonoccurrence: np.ndarray | None = None) -> None:
        self.vocab, self.data, self.indices, self.indptr = vocab, data, indices, indptr
        self.num_docs, self.config, self.nonoccurrence = num_docs, config, nonoccurrence

    @classmethod
    def build(cls, docs_terms: list[list[str]], config: LexicalConfig) -> BM25Index:
        """The index of documents given as lists of terms."""
        if config.method in ("bm25l", "bm25+"):
            return cls._build_bm25s(docs_terms, config)
        vocab = {t: i for i, t in enumerate(dict.fromkeys(chain.from_iterable(docs_terms)))}
        lengths = np.fromiter(map(len, docs_terms), dtype=np.int64, count=len(docs_terms))
        ids = np.fromiter(map(vocab.__getitem__, chain.from_iterable(docs_terms)),
                          dtype=np.int64, count=int(lengths.sum()))
        return cls.from_term_ids(ids, lengths, list(vocab), config)

    @classmethod
    def from_term_ids(cls, ids: np.ndarray, lengths: np.ndarray, terms: list[str],
                      config: LexicalConfig) -> BM25Index:
        """The index of documents given as one flat array of term ids (`terms[i]` is term i;
        document d holds the next lengths[d] ids). Every (term, chunk) pair is scored at once
        with numpy; bm25l and bm25+ (which also score absent terms) are built by bm25s."""
        n = len(lengths)
        if config.method in ("bm25l", "bm25+"):
            words = [terms[i] for i in ids.tolist()]
            ends = np.cumsum(lengths).tolist()
            docs_terms = [words[end - length:end] for end, length in zip(ends, lengths.tolist(),
                                                                         strict=True)]
            return cls._build_bm25s(docs_terms, config)
        if len(ids) == 0:
            empty = np.zeros(0, dtype=np.float32)
            return cls({}, empty, np.zeros(0, np.int32), np.zeros(1, np.int64), n, config)
        docs = np.repeat(np.arange(n, dtype=np.int64), lengths)
        keys, tf = np.unique(ids.astype(np.int64) * n + docs, return_counts=True)
        term, doc = keys // n, keys % n  # sorted by term, then chunk: already column order
        # Columns are the terms that occur, in id order (ids of terms met only in queries
        # are left out).
        first = np.flatnonzero(np.concatenate([[True], term[1:] != term[:-1]]))
        used = term[first]
        df = np.diff(np.append(first, len(term)))
        avgdl = max(float(lengths.mean()), 1e-9)
        scores = np.repeat(_idf(config.method, df, n), df) * _tf_part(
            config.method, tf, lengths[doc], avgdl, config.k1, config.b)
        indptr = np.concatenate([[0], np.cumsum(df)])
        vocab = {terms[t]: column for column, t in enumerate(used.tolist())}
        return cls(vocab, scores.astype(np.float32), doc.astype(np.int32), indptr, n, config)

    @classmethod
    def _build_bm25s(cls, docs_terms: list[list[str]], config: LexicalConfig) -> BM25Index:
        if not any(docs_terms):
            return cls.build(docs_terms, LexicalConfig(**{**asdict(config), "method": "lucene"}))
        import logging

        import bm25s

        logging.getLogger("bm25s").setLevel(logging.ERROR)
        bm25 = bm25s.BM25(method=config.method, k1=config.k1, b=config.b, delta=config.delta)
        bm25.index(docs_terms, show_progress=False)
        s = bm25.scores
        return cls(dict(bm25.vocab_dict), s["data"], s["indices"], s["indptr"], len(docs_terms),
                   config, bm25.nonoccurrence_array)

    def save(self, directory: Path) -> None:
        """Plain .npy arrays and JSON (no pickle)."""
        np.save(directory / "data.npy", self.data)
        np.save(directory / "indices.npy", self.indices)
        np.save(directory / "indptr.npy", self.indptr)
        if self.nonoccurrence is not None:
            np.save(directory / "nonoccurrence.npy", self.nonoccurrence)
        (directory / "lexical.json").write_text(json.dumps({
            "num_docs": self.num_docs, "config": asdict(self.config), "vocab": self.vocab}))

    @classmethod
    def load(cls, directory: Path) -> BM25Index:
        meta = json.loads((directory / "lexical.json").read_text())
        nnoc = directory / "nonoccurrence.npy"
        return cls(meta["vocab"], np.load(directory / "data.npy"),
                   np.load(directory / "indices.npy"), np.load(directory / "indptr.npy"),
                   int(meta["num_docs"]), LexicalConfig.from_dict(meta["config"]),
                   np.load(nnoc) if nnoc.exists() else None)

    def scores(self, weights: dict[str, float]) -> np.ndarray:
        """Σ_t w_t · BM25(t, chunk) for every chunk: a float32 vector of num_docs."""
        out = np.zeros(self.num_docs, dtype=np.float32)
        for term, w in weights.items():
            t = self.vocab.get(term)
            if t is None:
                continue
            lo, hi = self.indptr[t], self.indptr[t + 1]
            # A term's posting list names each chunk at most once, so a plain += is exact.
            out[self.indices[lo:hi]] += np.float32(w) * self.data[lo:hi]
            if self.nonoccurrence is not None:  # bm25l/bm25+ give absent terms a score too
                out += np.float32(w) * self.nonoccurrence[t]
        return out

    def document_frequency(self, term: str) -> int:
        t = self.vocab.get(term)
        return 0 if t is None else int(self.indptr[t + 1] - self.indptr[t])


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
