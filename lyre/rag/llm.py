"""The models that answer: a lyre run in this process, or any OpenAI-compatible server.

Both speak one small protocol, all the chains need:

    llm.context_window          tokens a prompt may use (the answer budget comes out of it)
    llm.count_tokens(text)      tokens `text` takes inside a prompt
    llm.complete(prompt, max_tokens, stop=None, on_token=None) -> the answer text, streamed
                                piece by piece through `on_token` as it is generated

A prompt is one user message: `EngineLLM` lays it out with the run's chat template (the same
one `lyre chat` and `lyre serve` use; a base model gets the text as is), `OpenAILLM` sends it
as the one message of /v1/chat/completions and the server applies its own template. Sampling
is greedy by default: question answering wants the model's best answer, and the same answer
twice.

Counting tokens exactly matters: the chains promise never to overflow the context. In process
that is the run's tokenizer. Over HTTP it is the server's tokenize route when it has one (lyre
serve's POST /v1/tokenize, vLLM's POST /tokenize), else a bound that cannot undercount for
byte-level tokenizers (one token per UTF-8 byte), said once.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx

from lyre.core.errors import LyreError
from lyre.core.openai_client import EndpointError, OpenAIClient, RetryPolicy

TokenFn = Callable[[str], None]
NoticeFn = Callable[[str], None]

# Template tokens around the user's text (a few may merge differently at the boundary).
BOUNDARY_MARGIN = 2
# Without a tokenizer: room kept for the server's chat template around the message.
UNKNOWN_TEMPLATE_TOKENS = 64
DEFAULT_CONTEXT = 2048


class LLM(Protocol):
    name: str
    context_window: int

    def count_tokens(self, text: str) -> int: ...

    def complete(self, prompt: str, max_tokens: int, stop: list[str] | None = None,
                 on_token: TokenFn | None = None) -> str: ...


class _Notices:
    """Things an adapter says once (e.g. 'replaced 3 characters'); chains collect them."""

    def __init__(self, notice: NoticeFn | None) -> None:
        self._notice = notice
        self._said: set[str] = set()
        self.pending: list[str] = []

    def say_once(self, key: str, text: str) -> None:
        if key in self._said:
            return
        self._said.add(key)
        self.pending.append(text)
        if self._notice is not None:
            self._notice(text)

    def take(self) -> list[str]:
        out, self.pending = self.pending, []
        return out


# ----------------------------------------------------------------------------------------------
# In process: a lyre run through the engine


class RunPrompts:
    """A lyre run's side of answering: its tokenizer and chat template, so prompts are laid out
    and counted exactly as the model will see them. EngineLLM (in process) and the server's
    RAG route (through its scheduler) add how the model is run."""

    def __init__(self, run, template: str | None = None, notice: NoticeFn | None = None) -> None:
        from lyre.chat.templates import get_template, template_name_for_run

        self.run = run
        self.name = Path(run.run_dir).name
        self.tokenizer = run.tokenizer
        self.template = get_template(template or template_name_for_run(run.run_dir))
        self.block_size = run.config.model.block_size
        self.notices = _Notices(notice)
        overhead = len(self._encode(self._render("")))
        self.context_window = self.block_size - overhead - BOUNDARY_MARGIN

    def _render(self, text: str) -> str:
        return self.template.render([{"role": "user", "content": text}])

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(self.fit_vocabulary(text)) if text else []

    def fit_vocabulary(self, text: str) -> str:
        """Characters a char-level model never saw become close ones it knows ('é' -> 'e',
        '—' -> '-', else '?' or ' '); said once. Byte-level tokenizers know every character."""
        known = getattr(self.tokenizer, "_stoi", None)
        if self.tokenizer.kind != "char" or known is None:
            return text
        unknown = sorted(set(text) - known.keys())
        if not unknown:
            return text
        mapping = {c: _closest_known(c, known) for c in unknown}
        shown = ", ".join(repr(c) for c in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        self.notices.say_once("oov", f"the model {self.name} does not know some characters of the "
                                     f"retrieved text ({shown}); they are replaced by close ones")
        return text.translate(str.maketrans(mapping))

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def prompt_ids(self, prompt: str, max_tokens: int) -> list[int]:
        """The token ids of `prompt` laid out by the template; refuses to overflow the context."""
        ids = self._encode(self._render(prompt))
        if len(ids) + max_tokens > self.block_size:
            raise LyreError(f"the prompt ({len(ids)} tokens) and the answer budget ({max_tokens}) "
                            f"exceed {self.name}'s context of {self.block_size} tokens")
        return ids

    def sampling(self, max_tokens: int, stop: list[str] | None, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = 0):
        from lyre.engine import SamplingConfig

        return SamplingConfig(max_new_tokens=max_tokens, temperature=temperature, top_k=top_k,
                              top_p=top_p, seed=seed, overflow="stop",
                              stop=tuple(self.template.stop) + tuple(stop or ()))

    def take_notices(self) -> list[str]:
        return self.notices.take()


class EngineLLM(RunPrompts):
    """A lyre run answering in this process (`lyre rag ask --model RUN`)."""

    def __init__(self, run, *, template: str | None = None, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = 0,
                 notice: NoticeFn | None = None) -> None:
        from lyre.engine import Engine
        from lyre.generate.runs import load_run

        if isinstance(run, str | Path):
            run = load_run(run)
        super().__init__(run, template, notice)
        self.engine = Engine(run.model, run.tokenizer, device=run.device)
        self.temperature, self.top_k, self.top_p, self.seed = temperature, top_k, top_p, seed

    def complete(self, prompt: str, max_tokens: int, stop: list[str] | None = None,
                 on_token: TokenFn | None = None) -> str:
        from lyre.chat.templates import AnswerTrimmer

        ids = self.prompt_ids(prompt, max_tokens)
        params = self.sampling(max_tokens, stop, self.temperature, self.top_k, self.top_p, self.seed)
        trimmer = AnswerTrimmer(True)
        pieces = []
        for raw in self.engine.stream(ids, params):
            piece = trimmer.feed(raw)
            if piece:
                pieces.append(piece)
                if on_token is not None:
                    on_token(piece)
        return "".join(pieces)


_FOLDS = {"\u2014": "-", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
          "\u2026": "...", "\u00a0": " ", "\t": " "}


class _AllBut:
    """`c in known` for every character except the ones a server said it lacks."""

    def __init__(self, unknown: set[str]) -> None:
        self.unknown = unknown

    def __contains__(self, c: str) -> bool:
        return c not in self.unknown


def _closest_known(c: str, known) -> str:
    folded = _FOLDS.get(c) or "".join(
        ch for ch in unicodedata.normalize("NFKD", c) if not unicodedata.combining(ch))
    if folded and all(ch in known for ch in folded):
        return folded
    if c.isspace() and "\n" in known and c in "\r\n\v\f":
        return "\n"
    for fallback in ("?", " "):
        if fallback in known:
            return fallback
    return ""


# ----------------------------------------------------------------------------------------------
# Over HTTP: any OpenAI-compatible server (lyre serve, vLLM, Ollama, llama.cpp, OpenAI)


class OpenAILLM:
    """`POST /v1/chat/completions` with `stream: true` (`lyre rag ask --llm-url URL`).

    base_url: the server with or without `/v1` (http://localhost:8000 or .../v1).
    context_window: the model's context in tokens; by default asked from the server
    (`GET /v1/models/{model}`: lyre's `context_length`, vLLM's `max_model_len`), else 2048.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *,
                 context_window: int | None = None, temperature: float = 0.0,
                 timeout: float = 120.0, retry: RetryPolicy | None = None,
                 notice: NoticeFn | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not model:
            raise LyreError("--llm-model is empty; give the model name the server serves")
        self.client = OpenAIClient(base_url, api_key, timeout=timeout, retry=retry,
                                   what="--llm-url", transport=transport)
        self.root, self.api = self.client.root, self.client.api
        self.name = model
        self.temperature = temperature
        self.notices = _Notices(notice)
        self._counts: dict[str, int] = {}
        self._tokenize: str | bool | None = None  # the server's tokenize URL; False: none
        self._unknown: set[str] = set()  # characters the served model lacks (lyre serve says)
        info = self._model_info()
        window = context_window or info.get("context_length") or info.get("max_model_len") \
            or info.get("context_window")
        if not window:
            window = DEFAULT_CONTEXT
            self.notices.say_once("ctx", f"{self.api} does not say {model}'s context length; "
                                         f"assuming {DEFAULT_CONTEXT} tokens (set --llm-context)")
        overhead = self._template_overhead()
        self.context_window = int(window) - overhead

    # ---- HTTP plumbing (lyre/core/openai_client.py: the one client and its retry policy) -------

    def _request(self, method: str, url: str, **kw) -> httpx.Response:
        try:
            return self.client.request(method, url, **kw)
        except EndpointError as e:
            raise _unreachable(e) from None

    def _model_info(self) -> dict:
        try:
            r = self.client.request("GET", f"{self.api}/models/{self.name}")
        except EndpointError as e:
            if e.status is None:
                raise _unreachable(e) from None
            return {}  # a 5xx on an optional route: the chat call will tell
        if r.status_code == 404:
            listed = self._request("GET", f"{self.api}/models")
            names = _model_names(listed)
            if names and self.name not in names:
                raise LyreError(f"{self.api} does not serve the model {self.name!r}; "
                                f"it serves {', '.join(names[:5])}")
            return {}
        if r.status_code in (401, 403):
            raise LyreError(f"{self.api} refused the API key ({r.status_code}); "
                            "pass the right one with --api-key")
        if r.status_code >= 400:
            return {}  # some servers have no per-model route; the chat call will tell
        try:
            info = r.json()
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    # ---- tokens --------------------------------------------------------------------------

    def _server_count(self, messages: list[dict]) -> int | None:
        """Exact count from the server's tokenize route (lyre serve's /v1/tokenize, vLLM's
        /tokenize: {"count": n}), or None when it has neither."""
        if self._tokenize is False:
            return None
        body = {"model": self.name, "messages": messages, "add_generation_prompt": True}
        paths = [self._tokenize] if isinstance(self._tokenize, str) else \
            [f"{self.api}/tokenize", f"{self.root}/tokenize"]
        for url in paths:
            try:  # a probe of an optional route: one try, no retries
                r = self.client.request("POST", url, retried=False, json=body)
                reply = r.json() if r.status_code == 200 else {}
                count = reply.get("count")
            except (EndpointError, ValueError, AttributeError):
                count, reply = None, {}
            if isinstance(count, int):
                self._tokenize = url
                self._note_unknown(reply.get("unknown"))
                return count
        if self._tokenize is None:
            self._tokenize = False
            self.notices.say_once("count", f"{self.root} has no tokenize route; counting one "
                                           "token per UTF-8 byte, a bound that never undercounts")
        return None

    def _note_unknown(self, chars) -> None:
        """lyre serve's tokenize lists the characters a char-level model lacks; they are
        replaced before sending (the server refuses them), as EngineLLM does in process."""
        if not isinstance(chars, list):
            return
        new = {c for c in chars if isinstance(c, str) and len(c) == 1} - self._unknown
        if new:
            self._unknown |= new
            shown = ", ".join(repr(c) for c in sorted(self._unknown)[:8])
            self.notices.say_once("oov", f"the model {self.name} does not know some characters of "
                                         f"the retrieved text ({shown}); they are replaced")

    def fit_vocabulary(self, text: str) -> str:
        if not self._unknown or not (set(text) & self._unknown):
            return text
        known = _AllBut(self._unknown)
        return text.translate(str.maketrans({c: _closest_known(c, known) for c in self._unknown}))

    def _template_overhead(self) -> int:
        self._empty = self._server_count([{"role": "user", "content": ""}])
        return self._empty + BOUNDARY_MARGIN if self._empty is not None else UNKNOWN_TEMPLATE_TOKENS

    def count_tokens(self, text: str) -> int:
        if text in self._counts:
            return self._counts[text]
        full = self._server_count([{"role": "user", "content": text}]) \
            if text and self._empty is not None else None
        n = max(0, full - self._empty) if full is not None else len(text.encode("utf-8"))
        if len(self._counts) > 4096:
            self._counts.clear()
        self._counts[text] = n
        return n

    # ---- completion ----------------------------------------------------------------------

    def complete(self, prompt: str, max_tokens: int, stop: list[str] | None = None,
                 on_token: TokenFn | None = None) -> str:
        prompt = self.fit_vocabulary(prompt)
        body = {"model": self.name, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens, "temperature": self.temperature, "stream": True}
        if stop:
            body["stop"] = list(stop)[:4]
        url = f"{self.api}/chat/completions"
        pieces: list[str] = []
        try:
            with self.client.stream("POST", url, json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    raise LyreError(f"the LLM endpoint answered {r.status_code}: {_error_text(r)}")
                other: list[str] = []  # lines that are not `data:` (a server that ignored stream)
                for data in _sse_data(r.iter_lines(), other):
                    if data == "[DONE]":
                        break
                    piece = _delta_text(data, url)
                    if piece:
                        pieces.append(piece)
                        if on_token is not None:
                            on_token(piece)
                if not pieces and other:
                    text = _whole_reply("\n".join(other), url)
                    if text and on_token is not None:
                        on_token(text)
                    pieces.append(text)
        except EndpointError as e:
            raise _unreachable(e) from None
        return "".join(pieces).strip()

    def take_notices(self) -> list[str]:
        return self.notices.take()

    def close(self) -> None:
        self.client.close()


def _sse_data(lines, other: list[str]):
    for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()
        elif line.strip() and not line.startswith(":"):  # ":" starts an SSE comment
            other.append(line)


def _whole_reply(body: str, url: str) -> str:
    """The answer of a non-streamed chat completion (some servers ignore `stream: true`)."""
    try:
        return json.loads(body)["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        raise LyreError(f"{url} answered something that is not an OpenAI chat completion "
                        f"({body[:60]!r}); is it an OpenAI-compatible server?") from None


def _delta_text(data: str, url: str) -> str:
    """The text of one streamed chunk; an error event or garbage is a LyreError."""
    try:
        obj = json.loads(data)
    except ValueError:
        raise LyreError(f"{url} streamed something that is not JSON ({data[:60]!r}); "
                        "is it an OpenAI-compatible server?") from None
    if not isinstance(obj, dict):
        raise LyreError(f"{url} streamed {data[:60]!r}, not an OpenAI chat completion chunk")
    if "error" in obj:
        err = obj["error"]
        raise LyreError(f"the LLM endpoint failed mid-answer: {_message_of(err)}")
    choices = obj.get("choices")
    if not isinstance(choices, list):
        raise LyreError(f"{url} streamed a chunk without choices ({data[:60]!r}); "
                        "is it an OpenAI-compatible server?")
    if not choices:
        return ""  # e.g. a usage-only chunk
    delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def _message_of(err) -> str:
    if isinstance(err, dict):
        return str(err.get("message") or err)[:300]
    return str(err)[:300]


def _error_text(r: httpx.Response) -> str:
    try:
        return _message_of(r.json().get("error", r.text))
    except (ValueError, AttributeError):
        return r.text[:200].replace("\n", " ") or r.reason_phrase


def _model_names(r: httpx.Response) -> list[str]:
    try:
        return [m["id"] for m in r.json()["data"]]
    except (ValueError, KeyError, TypeError):
        return []


def _unreachable(e: EndpointError) -> LyreError:
    """The client's failure, said for `lyre rag`: what failed and what to check."""
    if e.status is not None:
        return LyreError(f"the LLM endpoint answered {e.reason.removeprefix('HTTP ')}")
    if e.reason.startswith("no reply"):
        return LyreError(f"the LLM endpoint {e.url} timed out ({e.reason}); is it overloaded?")
    return LyreError(f"cannot reach the LLM endpoint {e.url} ({e.reason}); "
                     "is the server running and the URL right?")
