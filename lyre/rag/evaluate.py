"""Retrieval metrics over a QA set: did the retriever find the passage that holds the answer?

A QA record (one JSON object per line): {"question": str, "answers": [str, ...], "evidence":
str (a verbatim passage of the indexed text that holds the answer), optional "id", "split",
"source"}. Malformed lines are reported with their line numbers, the rest are used.

Relevance is binary and needs no chunk ids, so the same QA file works for any chunking: a
chunk is relevant when it contains the evidence passage, lies inside it, or holds at least half
of it at one of its ends (the passage straddles a chunk boundary).

Metrics, averaged over questions (each question has one evidence passage):
  recall@k       a relevant chunk is among the first k (= hit rate with one passage)
  MRR@k          1 / rank of the first relevant chunk (0 when none in the first k)
  nDCG@k         DCG = Σ rel_i / log2(i + 1) with only the first relevant chunk counted (the
                 same passage found twice is one find), ideal DCG = 1; so 1 / log2(rank + 1)
  context recall the evidence passage lies entirely within the first `budget` characters of
                 the retrieved context: chunks are taken in rank order, cut at the budget, and
                 the passage must be inside their union (across neighbouring chunks too)
Context recall is the number that matters for answering: it is what a "stuff" prompt of that
size actually shows the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lyre.core.errors import LyreError
from lyre.rag.retrieve import Retriever, fill_budget
from lyre.rag.types import Chunk, Hit


@dataclass
class QARecord:
    question: str
    answers: list[str]
    evidence: str
    id: str = ""
    split: str = ""
    source: str = ""


@dataclass
class QASet:
    records: list[QARecord]
    problems: list[str] = field(default_factory=list)  # "FILE:LINE: what is wrong"


def load_qa(path: str | Path) -> QASet:
    """Records of a JSONL file; malformed lines are listed in `problems`, not fatal."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LyreError(f"cannot read QA file {path}: {e}") from None
    qa = QASet([])
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            qa.problems.append(f"{where}: not JSON ({e.msg})")
            continue
        problem = _check(obj)
        if problem:
            qa.problems.append(f"{where}: {problem}")
            continue
        qa.records.append(QARecord(
            question=obj["question"], answers=list(obj.get("answers", [])),
            evidence=obj["evidence"], id=str(obj.get("id", number)),
            split=str(obj.get("split", "")), source=str(obj.get("source", ""))))
    if not qa.records:
        detail = f" ({qa.problems[0]})" if qa.problems else ""
        raise LyreError(f"no usable QA record in {path}{detail}")
    return qa


def _check(obj) -> str | None:
    if not isinstance(obj, dict):
        return "not a JSON object"
    for key in ("question", "evidence"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            return f"'{key}' must be a non-empty string"
    answers = obj.get("answers", [])
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        return "'answers' must be a list of strings"
    return None


def is_relevant(chunk: Chunk, evidence: str) -> bool:
    """The chunk holds the evidence, lies inside it, or holds half of it at one of its ends."""
    text = chunk.text
    if evidence in text or text in evidence:
        return True
    half = (len(evidence) + 1) // 2
    for m in range(len(evidence) - 1, half - 1, -1):
        if text.endswith(evidence[:m]) or text.startswith(evidence[-m:]):
            return True
    return False


def covered_within_budget(hits: list[Hit], evidence: str, budget: int) -> bool:
    """Is the evidence inside the union of the retrieved text within the first budget chars?"""
    pieces = [h.chunk for h in fill_budget(hits, budget)]
    groups: dict[tuple[str, int | None], list[Chunk]] = {}
    for c in pieces:
        groups.setdefault((c.source, c.page), []).append(c)
    for chunks in groups.values():
        chunks.sort(key=lambda c: c.start)
        region_text, region_end = chunks[0].text, chunks[0].end
        for c in chunks[1:]:
            if c.start <= region_end:  # overlapping or touching: extend the region
                if c.end > region_end:
                    region_text += c.text[region_end - c.start:]
                    region_end = c.end
            else:
                if evidence in region_text:
                    return True
                region_text, region_end = c.text, c.end
        if evidence in region_text:
            return True
    return False


@dataclass
class RetrievalReport:
    n: int
    k: int
    budget: int
    recall_at_k: float
    mrr: float
    ndcg: float
    context_recall: float
    per_question: list[dict] = field(default_factory=list)

    def metrics(self) -> dict:
        d = asdict(self)
        d.pop("per_question")
        return d


def evaluate_retrieval(retriever: Retriever, records: list[QARecord], k: int = 5,
                       budget: int = 4000, source_glob: str | None = None) -> RetrievalReport:
    """Score `retriever` on `records` (see the module docstring for the metrics)."""
    if not records:
        raise LyreError("no QA records to evaluate")
    rows = []
    for r in records:
        # Deep enough to fill the budget even with small chunks, and to find rank k.
        hits = retriever.search(r.question, k=max(k, 100), source_glob=source_glob)
        first = next((h.rank for h in hits[:k] if is_relevant(h.chunk, r.evidence)), None)
        rows.append({
            "id": r.id, "question": r.question,
            "rank": first,
            "context": covered_within_budget(hits, r.evidence, budget),
        })
    n = len(rows)
    return RetrievalReport(
        n=n, k=k, budget=budget,
        recall_at_k=sum(q["rank"] is not None for q in rows) / n,
        mrr=sum(1 / q["rank"] for q in rows if q["rank"]) / n,
        ndcg=sum(1 / math.log2(q["rank"] + 1) for q in rows if q["rank"]) / n,
        context_recall=sum(q["context"] for q in rows) / n,
        per_question=rows,
    )
