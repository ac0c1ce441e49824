"""Corpus preparation speed and memory: `lyre prepare` next to nanoGPT's recipe on the same files.

    python bench/prepare.py [--gb 1.0] [--workers 2] [--workdir DIR] [--no-peer] [--smoke]

The corpus is generated once (seeded) and cached under --workdir (default
/tmp/lyre-bench-prepare): documents of 2..30 paragraphs sampled from ../shared/data's books
(the Iliad, Shakespeare, Sherlock Holmes, The Verdict), half of the files JSONL and half parquet
(`{"id", "text"}` rows), 16 files of equal size. Then, each in a fresh process whose whole
process tree is watched with psutil (peak RSS = the largest sum over the tree at any 50 ms poll):

* lyre: `lyre prepare FILES --tokenizer gpt2:../shared/data/gpt2 --workers N --out DIR --json`,
  on a quarter of the files (about --gb / 4) and on all of them: peak RSS at both sizes gives
  `prepare_rss_ratio` (all / quarter; goal: within 10%, i.e. <= 1.10: memory does not grow with
  the corpus);
* nanoGPT's recipe (data/openwebtext/prepare.py) on all of them: Hugging Face `datasets`
  `load_dataset` of the JSONL and the parquet files (concatenated), `train_test_split(test_size=
  0.0005, seed=2357)`, `.map(process, num_proc=N)` where process is tiktoken's `encode_ordinary` +
  the end-of-text token, then one uint16 memmap per split written in 1024 contiguous shards. The
  tiktoken Encoding is built from the same local GPT-2 files as lyre's (lyre.tokenizers.gpt2:
  nothing is downloaded). HF_DATASETS_OFFLINE=1 and HF_HOME / HF_DATASETS_CACHE in a temporary
  folder, deleted afterwards: the Arrow cache files that `load_dataset` and `map` write ARE
  included in its time (they are part of its recipe), and their size is reported.

Both must count the same tokens: every document's tokens plus one end-of-text token per
document. prepare_speed_ratio = lyre tokens/s / nanoGPT-recipe tokens/s (wall time of the whole
process, start-up included; goal >= 1.5). prepare_cpu_ratio is the same per CPU-second of the
process tree (getrusage of the waited-for children), steadier than wall time on a machine whose
cores other jobs share. The peer runs first, then lyre on all files, then on the quarter.
--smoke: a 4 MB corpus, seconds. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import add_smoke_flag, json_line, machine

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GPT2_DIR = SHARED / "gpt2"
BUNDLED_ILIAD = ROOT / "lyre" / "data_files" / "iliad.txt"
BOOKS = ["iliad.txt", "tinyshakespeare.txt", "the-verdict.txt", "rag/sherlock_holmes_pg1661.txt"]
N_FILES = 16  # half JSONL, half parquet; a quarter of them is the small input
POLL_S = 0.05


# ----------------------------------------------------------------------------------------------
# The corpus: generated once, seeded, cached


def books() -> list[Path]:
    """The books of ../shared/data; without them (a bare GPU machine), the Iliad bundled with lyre."""
    return [SHARED / name for name in BOOKS if (SHARED / name).is_file()] or [BUNDLED_ILIAD]


def paragraphs() -> list[str]:
    """Every paragraph (blank-line separated, 40+ characters) of the books."""
    out: list[str] = []
    for path in books():
        text = path.read_text(encoding="utf-8", errors="replace")
        out += [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.strip()) >= 40]
    return out


def documents(rng: random.Random, pool: list[str], n_bytes: int):
    """Documents of 2..30 paragraphs drawn at random until about n_bytes of text."""
    written = 0
    while written < n_bytes:
        doc = "\n\n".join(rng.choices(pool, k=rng.randint(2, 30)))
        written += len(doc.encode("utf-8"))
        yield doc


def write_corpus(directory: Path, total_bytes: int, seed: int) -> list[Path]:
    """N_FILES files of total_bytes / N_FILES each, alternating JSONL and parquet; reused when a
    previous run wrote the same spec (NAME.done.json, written last)."""
    spec = {"total_bytes": total_bytes, "seed": seed, "files": N_FILES,
            "books": [p.name for p in books()], "version": 1}
    names = [f"part-{i:03d}.{'jsonl' if i % 2 == 0 else 'parquet'}" for i in range(N_FILES)]
    done = directory.parent / f"{directory.name}.done.json"  # outside: the folder is an input
    if done.exists() and json.loads(done.read_text()) == spec:
        return [directory / n for n in names]
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(directory, ignore_errors=True)
    done.unlink(missing_ok=True)
    directory.mkdir(parents=True)
    rng, pool, doc_id = random.Random(seed), paragraphs(), 0
    t0 = time.perf_counter()
    for name in names:
        docs = list(documents(rng, pool, total_bytes // N_FILES))
        ids = list(range(doc_id, doc_id + len(docs)))
        doc_id += len(docs)
        if name.endswith(".jsonl"):
            with (directory / name).open("w", encoding="utf-8") as f:
                for i, doc in zip(ids, docs, strict=True):
                    f.write(json.dumps({"id": i, "text": doc}) + "\n")
        else:
            table = pa.table({"id": pa.array(ids, pa.int64()), "text": pa.array(docs, pa.string())})
            pq.write_table(table, directory / name, row_group_size=1024)
    done.write_text(json.dumps(spec))
    print(f"corpus:  wrote {doc_id:,} documents, {total_bytes / 1e9:.2f} GB in {N_FILES} files "
          f"to {directory} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return [directory / n for n in names]


# ----------------------------------------------------------------------------------------------
# Running a contender in a fresh process, its process tree watched


def children_cpu() -> float:
    """CPU seconds (user + system) of every finished child and the descendants it waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_watched(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, int, str, float]:
    """(wall seconds, peak RSS of the process tree in bytes, stdout, CPU seconds of the tree)."""
    import psutil

    with log.open("w") as err, tempfile.TemporaryFile("w+") as out:
        cpu0 = children_cpu()
        t0 = time.perf_counter()
        proc = psutil.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        peak = 0
        while proc.poll() is None:
            total = 0
            try:
                tree = [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for p in tree:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peak = max(peak, total)
            time.sleep(POLL_S)
        seconds = time.perf_counter() - t0
        cpu = children_cpu() - cpu0
        out.seek(0)
        stdout = out.read()
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        sys.exit(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}):\n{tail}")
    return seconds, peak, stdout, cpu


def run_lyre(files: list[Path], out: Path, workers: int, log: Path) -> dict:
    cmd = [sys.executable, "-m", "lyre", "prepare", *map(str, files), "--tokenizer", f"gpt2:{GPT2_DIR}",
           "--workers", str(workers), "--out", str(out), "--json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    seconds, rss, stdout, cpu = run_watched(cmd, env, log)
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "cpu": cpu, "rss": rss, "tokens": summary["tokens"],
            "documents": summary["documents"]}


def run_peer(files: list[Path], out: Path, workers: int, log: Path) -> dict:
    hf_home = Path(tempfile.mkdtemp(prefix="hf-home-", dir=out.parent))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home),
           "HF_DATASETS_CACHE": str(hf_home / "datasets"), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer-child", str(out), "--workers", str(workers),
           *map(str, files)]
    try:
        seconds, rss, stdout, cpu = run_watched(cmd, env, log)
        cache_bytes = sum(p.stat().st_size for p in hf_home.rglob("*") if p.is_file())
    finally:
        shutil.rmtree(hf_home, ignore_errors=True)
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "cpu": cpu, "rss": rss, "tokens": summary["tokens"],
            "documents": summary["documents"], "cache_bytes": cache_bytes}


# ----------------------------------------------------------------------------------------------
# nanoGPT's recipe (data/openwebtext/prepare.py), run in the child process


def peer_child(out: Path, files: list[Path], workers: int) -> None:
    import numpy as np
    from datasets import concatenate_datasets, load_dataset

    from lyre.tokenizers.gpt2 import load_gpt2_encoding

    enc = load_gpt2_encoding(GPT2_DIR)  # tiktoken, from the local files: nothing downloads

    def process(example):
        ids = enc.encode_ordinary(example["text"])
        ids.append(enc.eot_token)
        return {"ids": ids, "len": len(ids)}

    parts = []
    for builder, suffix in (("json", ".jsonl"), ("parquet", ".parquet")):
        chosen = [str(f) for f in files if f.suffix == suffix]
        if chosen:
            parts.append(load_dataset(builder, data_files=chosen, split="train", num_proc=workers))
    dataset = concatenate_datasets(parts)
    split = dataset.train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    split["val"] = split.pop("test")
    tokenized = split.map(process, remove_columns=dataset.column_names, desc="tokenizing the splits",
                          num_proc=workers)
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, dset in tokenized.items():
        length = int(np.sum(dset["len"], dtype=np.uint64))
        arr = np.memmap(out / f"{name}.bin", dtype=np.uint16, mode="w+", shape=(length,))
        n_batches, idx = min(1024, len(dset)), 0
        for b in range(n_batches):
            batch = dset.shard(num_shards=n_batches, index=b, contiguous=True).with_format("numpy")
            chunk = np.concatenate(batch["ids"])
            arr[idx: idx + len(chunk)] = chunk
            idx += len(chunk)
        arr.flush()
        total += length
    print(json.dumps({"tokens": total, "documents": len(dataset)}), flush=True)


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="corpus size in GB (default 1.0)")
    parser.add_argument("--workers", type=int, default=2, help="processes on both sides (default 2)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lyre-bench-prepare",
                        help="where the generated corpus is cached and the outputs go")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--no-peer", action="store_true", help="lyre only")
    parser.add_argument("--peer-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", type=Path, help=argparse.SUPPRESS)
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.peer_child:
        peer_child(args.peer_child, args.files, args.workers)
        return {}
    if not (GPT2_DIR / "encoder.json").is_file():
        sys.exit(f"bench/prepare.py needs the GPT-2 tokenizer files and books in {SHARED}")
    if args.smoke:
        args.gb = 0.004
    print(f"machine: {machine()}", flush=True)

    total_bytes = int(args.gb * 1e9)
    corpus = args.workdir / f"corpus-{total_bytes}-{args.seed}"
    files = write_corpus(corpus, total_bytes, args.seed)
    quarter = files[: N_FILES // 4]
    outputs = Path(tempfile.mkdtemp(prefix="out-", dir=args.workdir))
    results: dict[str, dict] = {}
    try:
        if not args.no_peer:
            results["peer"] = run_peer(files, outputs / "peer", args.workers, outputs / "peer.log")
        results["lyre"] = run_lyre(files, outputs / "lyre", args.workers, outputs / "lyre.log")
        results["lyre_small"] = run_lyre(quarter, outputs / "lyre-small", args.workers, outputs / "lyre-small.log")
    finally:
        shutil.rmtree(outputs, ignore_errors=True)  # outputs only: the corpus stays cached

    record: dict = {"bench": "prepare", "smoke": args.smoke, "corpus_gb": round(total_bytes / 1e9, 3),
                    "files": N_FILES, "workers": args.workers}
    for name, r in results.items():
        rate = r["tokens"] / r["seconds"]
        record.update({f"{name}_tokens": r["tokens"], f"{name}_documents": r["documents"],
                       f"{name}_seconds": round(r["seconds"], 2), f"{name}_tok_s": round(rate),
                       f"{name}_cpu_seconds": round(r["cpu"], 2),
                       f"{name}_peak_rss_mb": round(r["rss"] / 2**20, 1)})
        print(f"{name:<11} {r['documents']:>10,} docs {r['tokens']:>13,} tokens {r['seconds']:>8.1f} s "
              f"{rate:>12,.0f} tok/s {r['cpu']:>8.1f} CPU-s   peak RSS {r['rss'] / 2**20:>8,.0f} MB", flush=True)
    record["prepare_rss_ratio"] = round(results["lyre"]["rss"] / results["lyre_small"]["rss"], 3)
    print(f"lyre peak RSS, {args.gb:g} GB over {args.gb / 4:g} GB of input: {record['prepare_rss_ratio']:.3f} "
          "(goal <= 1.10)")
    if "peer" in results:
        peer = results["peer"]
        record["peer_cache_mb"] = round(peer["cache_bytes"] / 2**20, 1)
        record["peer_includes_datasets_cache"] = True
        record["same_tokens"] = peer["tokens"] == results["lyre"]["tokens"]
        record["prepare_speed_ratio"] = round(
            (results["lyre"]["tokens"] / results["lyre"]["seconds"]) / (peer["tokens"] / peer["seconds"]), 3)
        # Per CPU-second of the whole tree: steadier than wall time when other jobs share the cores.
        record["prepare_cpu_ratio"] = round(
            (results["lyre"]["tokens"] / results["lyre"]["cpu"]) / (peer["tokens"] / peer["cpu"]), 3)
        print(f"nanoGPT recipe's time includes writing datasets' Arrow cache ({peer['cache_bytes'] / 1e9:.2f} GB, "
              "deleted afterwards): it is part of its recipe")
        print(f"same token count: {record['same_tokens']} (lyre {results['lyre']['tokens']:,}, "
              f"nanoGPT recipe {peer['tokens']:,})")
        print(f"prepare_speed_ratio (lyre / nanoGPT recipe, tokens/s): {record['prepare_speed_ratio']:.3f} "
              f"(goal >= 1.5); per CPU-second: {record['prepare_cpu_ratio']:.3f}")
    json_line(record)
    return record


if __name__ == "__main__":
    main()
