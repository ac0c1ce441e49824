"""ServeSettings: everything `lyre serve` lets a user choose, checked in one place."""

from __future__ import annotations

from dataclasses import dataclass

from lyre.chat.templates import get_template
from lyre.core.errors import LyreError


@dataclass
class ServeSettings:
    model_name: str | None = None  # default: the run directory's name
    api_key: str | None = None
    max_batch: int = 32  # choices decoded together in one step
    max_queue: int = 64  # requests waiting for a slot before 429
    max_body_bytes: int = 1 << 20
    chat_template: str | None = None  # default: the run's (chat.json / config.json) or "plain"
    shutdown_timeout: float = 10.0  # seconds in-flight requests get to finish on SIGTERM
    # At the end of the context: "stop" (finish_reason "length", OpenAI's rule: prompt and answer
    # share the context) or "slide" (keep generating on the last block_size tokens).
    overflow: str = "stop"
    # Seconds a client has to send a request's headers, and again its body: a client that
    # connects (or sends headers) and then stalls gets 408 and is disconnected (slowloris).
    read_timeout: float = 30.0
    # `--rag IDX`: answer POST /v1/rag/answer from this index (lyre.serve.routes.rag), with
    # `--rag-embedder SPEC` for its dense vectors.
    rag_index: str | None = None
    rag_embedder: str | None = None
    # `--tools calculator,search:IDX,sql:DB`: the chat page's agent runs these tools here
    # (POST /v1/agent/answer, lyre.serve.routes.agent); the OpenAI API is unchanged.
    tools: str | None = None

    def validate(self) -> None:
        if self.max_batch < 1:
            raise LyreError(f"--max-batch must be >= 1; got {self.max_batch}")
        if self.max_queue < 0:
            raise LyreError(f"--max-queue must be >= 0; got {self.max_queue}")
        if self.max_body_bytes < 1024:
            raise LyreError(f"--max-body-bytes must be >= 1024; got {self.max_body_bytes}")
        if self.shutdown_timeout < 0:
            raise LyreError(f"--shutdown-timeout must be >= 0; got {self.shutdown_timeout}")
        if not self.read_timeout > 0:
            raise LyreError(f"--read-timeout must be > 0 seconds; got {self.read_timeout}")
        if self.api_key is not None and not self.api_key.strip():
            raise LyreError("--api-key is empty; give a key or leave it out")
        if self.chat_template is not None:
            get_template(self.chat_template)
        if self.overflow not in ("stop", "slide"):
            raise LyreError(f"--context-overflow must be stop or slide; got {self.overflow!r}")
