"""Indexing and query speed of lyre's embedded index against LangChain's pipeline, in one run.

Same files for both (The Adventures of Sherlock Holmes and the Iliad from ../shared/data):
  lyre       open_store(new folder) + index_paths() with its defaults + close(): load, hash,
             split (600/100), Snowball-stem, write SQLite, build and save the BM25 matrix; the
             clock stops when the index is complete on disk
  LangChain  read the files, RecursiveCharacterTextSplitter(1000, 200) (the usual recipe),
             BM25Retriever.from_documents (rank_bm25) with k=4 (4 x 1000 = the same 4,000
             characters): in memory, nothing written
Imports are paid before the clock on both sides (`index_speed_ratio`); each repeat indexes
into a fresh folder (nothing is reused between repeats), lyre and LangChain alternate, and the
median of the repeats is reported (the machine is shared). `--cold N` also times N fresh
Python processes per side, start + imports + indexing + exit (`index_cold_speed_ratio`): what
a user waits for from a command line.
Queries: lyre Retriever.search_budget(q, 4000) on the index opened again from disk; LangChain
retriever.invoke(q). Both are scored on the dev QA set's 42 questions (context recall at
4,000 characters). Ratios are throughputs, ours / theirs (higher is better).

Then query latency of the embedded store at 10^4 and 10^5 chunks (synthetic: random
600-character windows of the same books), and what opening a saved index costs against
rebuilding its BM25 matrix from SQLite (why the matrix is persisted).

    PYTHONPATH=$PWD python bench/rag_speed.py [--repeat 7] [--cold 3] [--sizes 10000,100000] [--smoke]

--smoke: one repeat, one cold process per side, latency at 1,000 chunks (the figures mean nothing).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench._common import add_smoke_flag, json_line, machine, median  # noqa: E402
from lyre.rag.evaluate import covered_within_budget, load_qa  # noqa: E402
from lyre.rag.index import open_store  # noqa: E402
from lyre.rag.retrieve import Retriever  # noqa: E402
from lyre.rag.store import EmbeddedStore  # noqa: E402
from lyre.rag.types import Chunk, Hit  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CORPUS = [SHARED / "rag" / "sherlock_holmes_pg1661.txt", SHARED / "iliad.txt"]
QA = ROOT / "lyre" / "rag" / "data" / "dev_qa.jsonl"
BUDGET = 4000


# What each side runs, as source: timed in this process (imports done before the clock) and
# in fresh processes (--cold). CORPUS and PATH are filled in.
OURS = """
from lyre.rag.index import index_paths, open_store
store = open_store(PATH, create=True)
index_paths([str(p) for p in CORPUS], store)
store.close()
"""
THEIRS = """
from langchain_community.retrievers import BM25Retriever
from langchain_core.documents import Document as LCDocument
from langchain_text_splitters import RecursiveCharacterTextSplitter
docs = [LCDocument(page_content=p.read_text(encoding="utf-8"), metadata={"source": str(p)})
        for p in CORPUS]  # what TextLoader does
splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200,
                                          add_start_index=True)
chunks = splitter.split_documents(docs)
retriever = BM25Retriever.from_documents(chunks, k=4)
"""


def import_both() -> None:
    """Everything either side imports, so that neither pays for imports on the clock."""
    import rank_bm25  # noqa: F401
    import Stemmer  # noqa: F401
    from langchain_community.retrievers import BM25Retriever  # noqa: F401
    from langchain_text_splitters import RecursiveCharacterTextSplitter  # noqa: F401

    import lyre.rag.store  # noqa: F401


def timed_run(source: str, path: Path) -> tuple[float, dict]:
    code = compile(source, "<bench>", "exec")
    scope = {"CORPUS": CORPUS, "PATH": path}
    t0 = time.perf_counter()
    exec(code, scope)
    return time.perf_counter() - t0, scope


def cold_run(source: str, path: Path) -> float:
    """Seconds for a new Python process to import and index (what a command line costs)."""
    prelude = (f"from pathlib import Path\nCORPUS = {[str(p) for p in CORPUS]!r}\n"
               f"CORPUS = [Path(p) for p in CORPUS]\nPATH = {str(path)!r}\n")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-W", "ignore", "-c", prelude + source], check=True,
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - t0


def to_hits(docs) -> list[Hit]:
    hits = []
    for i, d in enumerate(docs):
        start = d.metadata["start_index"]
        c = Chunk(d.page_content, d.metadata["source"], start, start + len(d.page_content))
        hits.append(Hit(c, 0.0, i + 1))
    return hits


def timed_queries(fn, questions: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        for q in questions:
            t0 = time.perf_counter()
            fn(q)
            times.append(time.perf_counter() - t0)
    return times


def synthetic_store(path: Path, n: int, texts: list[str], seed: int = 0) -> float:
    """n random 600-character windows of the books, as 100 sources; returns seconds to write
    them and build + save the BM25 matrix."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    store = EmbeddedStore(path, create=True)
    store.set_settings({"chunking": {"chunk_size": 600, "chunk_overlap": 100,
                                     "sentences": False}, "lexical": {}})
    per = n // 100
    for s in range(100):
        chunks = []
        for i in range(per):
            text = texts[rng.randrange(len(texts))]
            a = rng.randrange(len(text) - 600)
            chunks.append(Chunk(text[a:a + 600], f"synthetic/{s:03d}.txt", i * 600, i * 600 + 600))
        store.replace_source(f"synthetic/{s:03d}.txt", f"h{s}", chunks, None)
    store.close()  # flush: builds and saves the BM25 matrix
    return time.perf_counter() - t0


def _ms(times: list[float]) -> str:
    return " ".join(f"{t * 1e3:.0f}" for t in times)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7,
                    help="index runs per side (median reported); passes over the 42 questions")
    ap.add_argument("--cold", type=int, default=3,
                    help="fresh processes per side for the cold-start figure (0: skip)")
    ap.add_argument("--sizes", default="10000,100000", help="chunk counts for the latency part")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.repeat, args.cold, args.sizes = 1, 1, "1000"
    if not all(p.exists() for p in CORPUS):
        sys.exit(f"needs the shared data under {SHARED}")
    qa = load_qa(QA).records
    questions = [r.question for r in qa]
    print(f"machine: {machine()}")
    out: dict = {"bench": "rag_speed", "smoke": args.smoke}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # -- side by side: index (median of --repeat runs each, alternating, fresh folders) ------
        import_both()
        ours_times, theirs_times = [], []
        for i in range(args.repeat):
            ours_times.append(timed_run(OURS, tmp / f"run{i}")[0])
            seconds, scope = timed_run(THEIRS, tmp)
            theirs_times.append(seconds)
        ours_s, theirs_s = median(ours_times), median(theirs_times)
        lc, lc_chunks = scope["retriever"], len(scope["chunks"])
        store = open_store(tmp / f"run{args.repeat - 1}")
        mb = sum(p.stat().st_size for p in CORPUS) / 1e6
        print(f"\nindexing {mb:.2f} MB, median of {args.repeat}: lyre {ours_s * 1e3:.1f} ms "
              f"({store.chunk_count()} chunks; runs {_ms(ours_times)}), LangChain "
              f"{theirs_s * 1e3:.1f} ms ({lc_chunks} chunks; runs {_ms(theirs_times)})")
        if args.cold:
            ours_cold = median([cold_run(OURS, tmp / f"cold{i}") for i in range(args.cold)])
            theirs_cold = median([cold_run(THEIRS, tmp) for _ in range(args.cold)])
            print(f"fresh process (start + imports + index), median of {args.cold}: "
                  f"lyre {ours_cold:.2f} s, LangChain {theirs_cold:.2f} s")
            out.update({"index_cold_s_ours": round(ours_cold, 3),
                        "index_cold_s_langchain": round(theirs_cold, 3),
                        "index_cold_speed_ratio": round(theirs_cold / ours_cold, 2)})
        retriever = Retriever(store)
        # -- side by side: queries and recall -----------------------------------------------------
        retriever.search_budget(questions[0], BUDGET)  # first query loads nothing more: warm
        ours_q = timed_queries(lambda q: retriever.search_budget(q, BUDGET), questions, args.repeat)
        theirs_q = timed_queries(lc.invoke, questions, args.repeat)
        ours_recall = sum(covered_within_budget(retriever.search_budget(r.question, BUDGET),
                                                r.evidence, BUDGET) for r in qa) / len(qa)
        theirs_recall = sum(covered_within_budget(to_hits(lc.invoke(r.question)), r.evidence,
                                                  BUDGET) for r in qa) / len(qa)
        print(f"query ({len(ours_q)} queries): lyre p50 {median(ours_q) * 1e3:.2f} ms, "
              f"LangChain p50 {median(theirs_q) * 1e3:.2f} ms")
        print(f"context recall @ {BUDGET} chars, all {len(qa)} questions: lyre {ours_recall:.3f}, "
              f"LangChain {theirs_recall:.3f}")
        out.update({
            "index_s_ours": round(ours_s, 4), "index_s_langchain": round(theirs_s, 4),
            "index_speed_ratio": round(theirs_s / ours_s, 2),
            "query_ms_ours": round(sum(ours_q) / len(ours_q) * 1e3, 3),
            "query_ms_langchain": round(sum(theirs_q) / len(theirs_q) * 1e3, 3),
            "query_speed_ratio": round(sum(theirs_q) / sum(ours_q), 2),
            "context_recall_ours": round(ours_recall, 3),
            "context_recall_langchain": round(theirs_recall, 3),
        })
        store.close()
        # -- latency at scale ---------------------------------------------------------------------
        texts = [p.read_text(encoding="utf-8") for p in CORPUS]
        for n in [int(s) for s in args.sizes.split(",") if s]:
            path = tmp / f"syn{n}"
            build_s = synthetic_store(path, n, texts)
            t0 = time.perf_counter()
            s = open_store(path)
            s.lexical_search("warm up the index", 1)  # loads the saved matrix
            open_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            s._build(save=False)  # what a reader would pay without the saved matrix
            rebuild_s = time.perf_counter() - t0
            r = Retriever(s)
            lat = timed_queries(lambda q, r=r: r.search(q, k=10), questions, args.repeat)
            print(f"{n:>7d} chunks: write+build {build_s:.1f} s, open+load {open_s * 1e3:.0f} ms, "
                  f"rebuild BM25 from SQLite {rebuild_s:.2f} s, query p50 "
                  f"{percentile(lat, 50) * 1e3:.2f} ms p99 {percentile(lat, 99) * 1e3:.2f} ms")
            out[f"p50_ms_{n}"] = round(percentile(lat, 50) * 1e3, 2)
            out[f"p99_ms_{n}"] = round(percentile(lat, 99) * 1e3, 2)
            out[f"open_ms_{n}"] = round(open_s * 1e3, 1)
            out[f"rebuild_s_{n}"] = round(rebuild_s, 2)
            s.close()
    json_line(out)


if __name__ == "__main__":
    main()
