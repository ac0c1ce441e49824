"""Scoring answers: SQuAD's exact match and F1, and how often an answer cites the evidence.

The retrieval metrics (recall@k, MRR, nDCG, context recall) live in lyre.rag.evaluate; this
module asks the model every question of a QA file and scores what it wrote:

    exact_match     1 when the normalised answer equals a normalised gold answer (the best one)
    f1              token-overlap F1 with the best-matching gold answer
    citation_share  answers citing ([n]) at least one passage that holds the evidence
    evidence_shown  questions where the model was shown a passage holding the evidence

Normalisation is SQuAD v1.1's official one (lower case, no punctuation, no a/an/the, single
spaces), so the numbers compare with published ones. Records are
lyre.rag.evaluate.QARecord ({"question", "answers": [...], "evidence"}, load_qa reads them).

A passage "holds the evidence" by the retrieval metrics' rule (lyre.rag.evaluate.is_relevant):
it contains the evidence, lies inside it, or holds half of it at one of its ends.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from lyre.rag.chains import Answer, Source, ask
from lyre.rag.evaluate import QARecord, is_relevant
from lyre.rag.types import Chunk

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1: lower, drop punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _without_citations(text: str) -> str:
    return re.sub(r"\[\d+(?:\s*,\s*\d+)*\]", " ", text)


def exact_match(prediction: str, golds: list[str]) -> float:
    pred = normalize_answer(_without_citations(prediction))
    return float(any(pred == normalize_answer(g) for g in golds))


def f1_score(prediction: str, golds: list[str]) -> float:
    pred = normalize_answer(_without_citations(prediction)).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        if not pred or not ref:
            best = max(best, float(pred == ref))
            continue
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def holds_evidence(source: Source, evidence: str) -> bool:
    """The passage the model saw holds the evidence (lyre.rag.evaluate's relevance rule)."""
    chunk = Chunk(text=source.text, source=source.source, start=source.start, end=source.end)
    return bool(evidence) and is_relevant(chunk, evidence)


@dataclass
class AnswerRecord:
    question: str
    answer: str
    exact_match: float
    f1: float
    cites_evidence: bool
    evidence_shown: bool
    cited: list[int]
    notices: list[str]


@dataclass
class AnswerReport:
    questions: int
    exact_match: float
    f1: float
    citation_share: float
    evidence_shown: float
    unparseable_scores: int
    llm_calls: int
    chain: str
    records: list[AnswerRecord] = field(default_factory=list)

    def to_dict(self, with_records: bool = False) -> dict:
        out = asdict(self)
        if not with_records:
            out.pop("records")
        return out


def score_answer(answer: Answer, golds: list[str], evidence: str) -> AnswerRecord:
    shown = [s for s in answer.sources if holds_evidence(s, evidence)]
    return AnswerRecord(
        question=answer.question, answer=answer.text,
        exact_match=exact_match(answer.text, golds), f1=f1_score(answer.text, golds),
        cites_evidence=any(s.n in answer.cited for s in shown), evidence_shown=bool(shown),
        cited=list(answer.cited), notices=list(answer.notices),
    )


def evaluate_answers(records: list[QARecord], retriever, llm, *, chain: str = "stuff", k: int = 4,
                     max_tokens: int | None = None, callbacks=None,
                     progress: Callable[[int, int], None] | None = None) -> AnswerReport:
    """Ask every question of `records` and score the answers (means over questions)."""
    scored: list[AnswerRecord] = []
    unparseable = calls = 0
    for i, rec in enumerate(records):
        answer = ask(rec.question, retriever, llm, chain=chain, k=k, max_tokens=max_tokens,
                     callbacks=callbacks)
        scored.append(score_answer(answer, rec.answers, rec.evidence))
        unparseable += answer.unparseable_scores
        calls += answer.llm_calls
        if progress is not None:
            progress(i + 1, len(records))
    n = max(1, len(scored))
    return AnswerReport(
        questions=len(scored),
        exact_match=sum(r.exact_match for r in scored) / n,
        f1=sum(r.f1 for r in scored) / n,
        citation_share=sum(r.cites_evidence for r in scored) / n,
        evidence_shown=sum(r.evidence_shown for r in scored) / n,
        unparseable_scores=unparseable, llm_calls=calls, chain=chain, records=scored,
    )
