"""`lyre rag ...`: index documents, search them, ask questions about them. See docs/rag.md.

    lyre rag index DOCS... --index IDX        build or update an index (incremental)
    lyre rag ls IDX / lyre rag rm IDX SOURCE  what is indexed / take one source out
    lyre rag search IDX "query" --k 5         the best passages (--json for scripts)
    lyre rag ask IDX "question" --model RUN   an answer with cited sources (streamed)
    lyre rag chat IDX --model RUN             a conversation: follow-ups are rewritten first
    lyre rag eval IDX --qa FILE.jsonl         retrieval metrics; with a model, EM/F1/citations

IDX is an index folder, or a PostgreSQL URL `postgresql://user@host/db#NAME`; `--store URL`
with `--index NAME` (or IDX = NAME) says the same. The model is a lyre run in this process
(`--model RUN`) or any OpenAI-compatible server (`--llm-url URL --llm-model NAME`).

Like the rest of lyre/cli/, a thin layer: each command parses flags and calls lyre.rag functions. Heavy
imports (torch, numpy, psycopg) happen inside the commands, so `lyre --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lyre.core.errors import LyreError
from lyre.rag.splitter import SplitConfig  # light: no numpy, no torch


def add_rag_parser(subparsers) -> None:
    """Register `lyre rag` and its subcommands on the `lyre` command's subparsers."""
    rag = subparsers.add_parser(
        "rag", help="ask questions about your documents (retrieval-augmented QA)",
        description="Index documents, search them and answer questions with cited sources. "
                    "See docs/rag.md.")
    sub = rag.add_subparsers(dest="rag_command", required=True, metavar="RAG_COMMAND")
    for add in (_add_index, _add_ls, _add_rm, _add_search, _add_ask, _add_chat, _add_eval):
        add(sub)


# ----------------------------------------------------------------------------------------------
# Flags


def _store_flags(p, positional: bool = True) -> None:
    if positional:
        p.add_argument("index", metavar="IDX",
                       help="index folder, or postgresql://.../db#NAME (or NAME with --store)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="keep the index in PostgreSQL + pgvector at URL; IDX is then its name")


def _retrieval_flags(p) -> None:
    p.add_argument("--k", type=int, default=4, help="passages to retrieve (default 4)")
    p.add_argument("--source", default=None, metavar="GLOB",
                   help="only passages of sources matching GLOB (e.g. '*.md', 'docs/*')")
    p.add_argument("--mode", default="auto", choices=("auto", "lexical", "dense", "hybrid"),
                   help="retrieval: auto (hybrid with an embedder, else BM25), lexical, dense, hybrid")
    p.add_argument("--embedder", default=None, metavar="SPEC",
                   help="query embedder, the one the index was built with: minilm, "
                        "openai:MODEL@URL, st:DIR or run:DIR (default: minilm when the index "
                        "holds MiniLM vectors, else none: lexical only)")


def _llm_flags(p, required: bool = True) -> None:
    g = p.add_argument_group("model (one of --model or --llm-url)")
    g.add_argument("--model", type=Path, default=None, metavar="RUN",
                   help="a lyre run directory, answering in this process")
    g.add_argument("--llm-url", default=None, metavar="URL",
                   help="an OpenAI-compatible server (lyre serve, vLLM, Ollama): http://host:port[/v1]")
    g.add_argument("--llm-model", default=None, metavar="NAME", help="the model name on that server")
    g.add_argument("--api-key", default=None, help="API key for --llm-url")
    g.add_argument("--llm-context", type=int, default=None, metavar="TOKENS",
                   help="the server model's context length, when the server does not say it")
    g.add_argument("--template", default=None, help="chat template for --model (default: the run's)")
    g.add_argument("--checkpoint", default="best", help="--model checkpoint: best or last")
    g.add_argument("--device", default="auto", help="--model device: auto | cpu | cuda | mps")
    g.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature (default 0: the model's best answer, reproducible)")
    p.add_argument("--chain", default="stuff", choices=("stuff", "refine", "map_reduce", "map_rerank"),
                   help="how passages reach the model (default stuff; see docs/rag.md)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="answer budget in tokens (default: a quarter of the context, at most 256)")
    p.add_argument("--trace", type=Path, default=None, metavar="FILE",
                   help="append every chain, retriever and model event to FILE as JSON lines")
    p.add_argument("--progress", action="store_true", help="print each step on stderr")
    p.set_defaults(llm_required=required)


def _add_index(sub) -> None:
    p = sub.add_parser("index", help="index files and folders (incremental)",
                       description="Load, split and index DOCS. Unchanged files are skipped, "
                                   "changed ones replaced, deleted ones removed.")
    p.add_argument("docs", nargs="+", type=Path, metavar="DOCS", help="files and folders")
    p.add_argument("--index", required=True, metavar="IDX", help="index folder (or NAME with --store)")
    _store_flags(p, positional=False)
    p.add_argument("--include", action="append", default=None, metavar="GLOB",
                   help="only files matching GLOB inside folders (repeatable)")
    p.add_argument("--exclude", action="append", default=None, metavar="GLOB",
                   help="skip files matching GLOB (repeatable)")
    default = SplitConfig()  # the one source of the defaults (lyre/rag/splitter.py)
    p.add_argument("--chunk-size", type=int, default=None,
                   help=f"characters per chunk (default {default.chunk_size}, or the index's)")
    p.add_argument("--chunk-overlap", type=int, default=None,
                   help=f"characters shared by neighbouring chunks (default "
                        f"{default.chunk_overlap}, or the index's)")
    p.add_argument("--embedder", default=None, metavar="SPEC",
                   help="none, minilm, openai:MODEL@URL, st:DIR or run:DIR (default: the "
                        "index's own; none for a new index)")
    p.add_argument("--rebuild", action="store_true", help="re-index everything (new settings)")
    p.add_argument("--quiet", action="store_true", help="no per-file lines")
    p.set_defaults(func=cmd_index)


def _add_ls(sub) -> None:
    p = sub.add_parser("ls", help="list the sources of an index")
    _store_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_ls)


def _add_rm(sub) -> None:
    p = sub.add_parser("rm", help="remove one source from an index")
    _store_flags(p)
    p.add_argument("source", metavar="SOURCE", help="the source as `lyre rag ls` shows it")
    p.set_defaults(func=cmd_rm)


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="the passages that best match a query")
    _store_flags(p)
    p.add_argument("query", help="what to look for")
    _retrieval_flags(p)
    p.add_argument("--json", action="store_true",
                   help="a JSON list of {text, source, score, rank, page, start, end, chunk_id}")
    p.set_defaults(func=cmd_search)


def _add_ask(sub) -> None:
    p = sub.add_parser("ask", help="answer a question from the index, citing sources",
                       description="Retrieve passages and answer with cited sources [1], [2]; "
                                   "the answer streams. See docs/rag.md for the chain types.")
    _store_flags(p)
    p.add_argument("question", help="the question")
    _retrieval_flags(p)
    _llm_flags(p)
    p.add_argument("--json", action="store_true", help="print the answer as one JSON object")
    p.set_defaults(func=cmd_ask)


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="a conversation about the index (follow-ups understood)",
                       description="Type questions; follow-ups are rewritten into standalone "
                                   "questions before retrieval. /reset forgets, /quit ends.")
    _store_flags(p)
    _retrieval_flags(p)
    _llm_flags(p)
    p.set_defaults(func=cmd_chat)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="retrieval metrics on a QA file; answer metrics with a model",
                       description="Recall@k, MRR, nDCG@k and context recall at a budget; with "
                                   "--model or --llm-url also exact match, F1 and citation share.")
    _store_flags(p)
    p.add_argument("--qa", type=Path, required=True, metavar="FILE.jsonl",
                   help='records {"question", "answers": [...], "evidence"}')
    p.add_argument("--budget", type=int, default=4000,
                   help="context recall budget in characters (default 4000)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    _retrieval_flags(p)
    _llm_flags(p, required=False)
    p.set_defaults(func=cmd_eval)


# ----------------------------------------------------------------------------------------------
# Building blocks


def open_index(args, write: bool = False):
    """The Store of IDX (lyre.rag.index.open_index); for reading, empty or missing is an error."""
    from lyre.rag.index import open_index as open_

    return open_(args.index, args.store, write=write)


def model_choice(args):
    from lyre.rag.assistant import ModelChoice

    return ModelChoice(run=args.model, checkpoint=args.checkpoint, device=args.device,
                       template=args.template, url=args.llm_url, model=args.llm_model,
                       api_key=args.api_key, context=args.llm_context,
                       temperature=args.temperature)


def open_assistant(args, with_model: bool = True):
    """Index, retriever and model of a command, assembled by lyre.rag.assistant."""
    from lyre.rag.assistant import open_assistant as open_

    return open_(args.index, store_url=args.store, embedder=args.embedder, mode=args.mode,
                 model=model_choice(args) if with_model else None,
                 model_required=with_model and args.llm_required, notice=_note)


def make_callbacks(args) -> list:
    from lyre.rag.callbacks import JSONLTracer, ProgressPrinter

    handlers: list = []
    if args.trace:
        handlers.append(JSONLTracer(args.trace))
    if args.progress:
        handlers.append(ProgressPrinter())
    return handlers


def _note(text: str) -> None:
    print(f"lyre rag: note: {text}", file=sys.stderr, flush=True)


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _hit_json(h) -> dict:
    c = h.chunk
    return {"rank": h.rank, "score": h.score, "source": c.source, "page": c.page,
            "start": c.start, "end": c.end, "heading": c.heading, "chunk_id": c.chunk_id,
            "text": c.text}


def _check_k(args) -> None:
    if args.k < 1:
        raise LyreError(f"--k must be >= 1; got {args.k}")


# ----------------------------------------------------------------------------------------------
# Commands


def cmd_index(args) -> None:
    from lyre.rag.index import index_documents

    report, chunks = index_documents(
        args.docs, args.index, store_url=args.store, chunk_size=args.chunk_size,
        chunk_overlap=args.chunk_overlap, embedder=args.embedder, include=args.include,
        exclude=args.exclude, rebuild=args.rebuild,
        progress=None if args.quiet else (lambda line: print(f"lyre rag: {line}", file=sys.stderr)))
    print(f"{args.index}: {report.summary()}; {chunks} chunks in the index")


def cmd_ls(args) -> None:
    store = open_index(args, write=False)
    try:
        info, sources = store.info(), store.sources()
    finally:
        store.close()
    if args.json:
        print(json.dumps({"info": info, "sources": sources}, indent=1))
        return
    chunking = info.get("chunking") or {}
    print(f"{args.index}: {info.get('store')} index, {len(sources)} sources, {info.get('chunks')} "
          f"chunks (chunk size {chunking.get('chunk_size', '?')}, overlap "
          f"{chunking.get('chunk_overlap', '?')}), embedder {info.get('embedder') or 'none'}")
    for source, digest in sources.items():
        print(f"  {digest[:12]}  {source}")


def cmd_rm(args) -> None:
    from lyre.rag.index import remove_source

    store = open_index(args, write=True)
    try:
        remove_source(store, args.source)
        print(f"removed {args.source}; {store.chunk_count()} chunks left")
    finally:
        store.close()


def cmd_search(args) -> None:
    _check_k(args)
    if not args.query.strip():
        raise LyreError("the query is empty; say what to look for")
    with open_assistant(args, with_model=False) as assistant:
        hits = assistant.retriever.search(args.query, k=args.k, source_glob=args.source)
    if args.json:
        print(json.dumps([_hit_json(h) for h in hits], ensure_ascii=False, indent=1))
        return
    if not hits:
        print("no passage matches")
    for h in hits:
        c = h.chunk
        where = c.source + (f", page {c.page}" if c.page is not None else "")
        print(f"[{h.rank}] {where} (characters {c.start}-{c.end}, score {h.score:.3f})")
        print("    " + c.text.strip().replace("\n", "\n    "))


def cmd_ask(args) -> None:
    from lyre.rag.chains import check_question

    _check_k(args)
    question = check_question(args.question)  # before loading anything
    with open_assistant(args) as assistant:
        answer = assistant.ask(question, chain=args.chain, k=args.k, max_tokens=args.max_tokens,
                               source_glob=args.source, callbacks=make_callbacks(args),
                               on_token=None if args.json else _write)
    if not args.json:
        print(flush=True)  # end the streamed answer's line before any note on stderr
    for notice in answer.notices:
        _note(notice)
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=1))
        return
    print("\n" + answer.format_sources())


def cmd_chat(args) -> None:
    _check_k(args)
    with open_assistant(args) as assistant:
        chat = assistant.chat(chain=args.chain, k=args.k, max_tokens=args.max_tokens,
                              source_glob=args.source, callbacks=make_callbacks(args))
        interactive = sys.stdin.isatty()
        if interactive:
            print("Ask about your documents. /reset forgets the conversation, /quit ends.")
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line == "/reset":
                chat.memory.clear()
                print("(conversation forgotten)")
                continue
            answer = chat.ask(line, on_token=_write)
            print(flush=True)
            for notice in answer.notices:
                _note(notice)
            if answer.standalone_question and answer.standalone_question != line:
                _note(f"searched for: {answer.standalone_question}")
            print("\n" + answer.format_sources() + "\n", flush=True)


def cmd_eval(args) -> None:
    from lyre.rag.evaluate import evaluate_retrieval, load_qa

    _check_k(args)
    if args.budget < 1:
        raise LyreError(f"--budget must be >= 1; got {args.budget}")
    qa = load_qa(args.qa)
    for problem in qa.problems:
        _note(f"skipped {problem}")
    records = qa.records[: args.limit] if args.limit else qa.records
    with open_assistant(args) as assistant:
        report = evaluate_retrieval(assistant.retriever, records, k=args.k, budget=args.budget,
                                    source_glob=args.source)
        result = {"retrieval": report.metrics()}
        if assistant.llm is not None:
            from lyre.rag.answer_eval import evaluate_answers

            answers = evaluate_answers(
                records, assistant.retriever, assistant.llm, chain=args.chain, k=args.k,
                max_tokens=args.max_tokens, callbacks=make_callbacks(args),
                progress=lambda i, n: print(f"lyre rag: answered {i}/{n}", file=sys.stderr))
            result["answers"] = answers.to_dict()
    print(json.dumps(result))
