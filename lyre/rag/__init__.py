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
"""
