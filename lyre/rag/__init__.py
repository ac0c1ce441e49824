"""Retrieval-augmented question answering: load, split, index, retrieve, answer.

The pieces, in the order data flows through them:
  loaders.py   files -> Documents (txt, md, html, pdf), unreadable ones skipped with a reason
  splitter.py  Documents -> Chunks (recursive character splitter, exact offsets, headings)
  lexical.py   words -> terms (stopwords, Snowball stems) and the BM25 matrix
  store.py     the embedded index: SQLite (chunks) + BM25 (lexical) + numpy (dense vectors)
  index.py     incremental indexing of paths into a Store; open_store()
  embedders.py text -> unit vectors (OpenAI-compatible endpoint, sentence-transformers, lyre run)
  retrieve.py  Retriever: lexical, dense or hybrid (reciprocal rank fusion) search
  evaluate.py  retrieval metrics (recall@k, MRR, nDCG@k, context recall at a budget)
and the answering side:
  pgstore.py   the same Store on PostgreSQL + pgvector (HNSW, full-text search), for scale
  llm.py       the models that answer: a lyre run in process, any OpenAI-compatible server
  prompts.py   the prompts of the chains and of the chat memory
  chains.py    ask(): stuff, refine, map_reduce, map_rerank; context budget; [n] citations
  memory.py    RAGChat: follow-ups condensed into standalone questions (lyre rag chat)
  callbacks.py events of chains, retrievers and model calls; JSONL tracer, progress printer
  answer_eval.py  exact match, F1 and citation share of answers
  assistant.py open_assistant(): index + retriever + model assembled, for the CLI, the
               server's /v1/rag/answer and Python alike
  cli.py       `lyre rag ...`

    from lyre.rag import open_assistant, ModelChoice
    with open_assistant("idx", model=ModelChoice(run="runs/x")) as assistant:
        answer = assistant.ask("Who was Hector?")

The names below are imported on first use, so `import lyre.rag` (and `lyre --help`) stays
light: numpy, torch, httpx and psycopg load only when something needs them.
"""

from lyre.core.lazy import lazy_exports

_PUBLIC = {
    "Document": "types", "Chunk": "types", "Hit": "types",
    "SplitConfig": "splitter", "open_store": "index", "index_paths": "index",
    "EmbeddedStore": "store", "PgStore": "pgstore", "make_embedder": "embedders",
    "Retriever": "retrieve", "evaluate_retrieval": "evaluate", "load_qa": "evaluate",
    "EngineLLM": "llm", "OpenAILLM": "llm", "ask": "chains", "run_chain": "chains",
    "Answer": "chains", "CHAIN_TYPES": "chains", "RAGChat": "memory", "ChatMemory": "memory",
    "CallbackHandler": "callbacks", "JSONLTracer": "callbacks", "ProgressPrinter": "callbacks",
    "evaluate_answers": "answer_eval", "open_index": "index", "index_documents": "index",
    "open_assistant": "assistant", "Assistant": "assistant", "ModelChoice": "assistant",
    "make_retriever": "assistant",
}

__all__ = sorted(_PUBLIC)


__getattr__ = lazy_exports(__name__, {name: f"lyre.rag.{module}" for name, module in _PUBLIC.items()})
