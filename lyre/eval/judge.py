"""An LLM as the judge: score each response 0-100 against its reference (the book's chapter 7).

Any OpenAI-compatible chat endpoint can judge (Ollama, vLLM, llama.cpp's server, `lyre serve`,
OpenAI itself): `POST {base_url}/chat/completions` with the prompt below, temperature 0. The
reply should be a number; the first integer from 0 to 100 in it is the score, and a reply
without one is counted and shown, never a crash.

Requests run `concurrency` at a time through lyre's one OpenAI-compatible client
(lyre/core/openai_client.py): a connection error, a timeout, a 429 or a 5xx is retried `retries`
times with exponential backoff (0.5 s, 1 s, 2 s, ...); what still fails is counted with its
reason. A first request is sent alone: an endpoint that is down, too slow, or refuses the key or
the model name stops the command at once with one line that says so, instead of failing every
response. A run in which no response got a score is an error too (judge_file, after saving the
replies): "mean score n/a over 0 of 55" is no result.
"""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lyre.core.errors import LyreError
from lyre.core.io import atomic_write_text
from lyre.core.openai_client import EndpointError, OpenAIClient, RetryPolicy

PROMPT = (
    "Given the input `{prompt}` and correct output `{reference}`, score the model response "
    "`{response}` on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only."
)
JUDGE_FILE = "judge.json"
_SCORE = re.compile(r"(?<![\d.])(\d{1,3})(?![\d.]*\d)")


@dataclass
class JudgeSettings:
    base_url: str
    model: str
    api_key: str | None = None
    concurrency: int = 4
    retries: int = 3
    timeout: float = 60.0  # seconds for one reply
    backoff: float = 0.5  # first retry after this many seconds, then twice as long each time
    max_tokens: int = 32

    def validate(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise LyreError(f"--base-url must start with http:// or https://; got {self.base_url!r}")
        if not 1 <= self.concurrency <= 256:
            raise LyreError(f"--concurrency must be in 1..256; got {self.concurrency}")
        if not 0 <= self.retries <= 20:
            raise LyreError(f"--retries must be in 0..20; got {self.retries}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise LyreError(f"--timeout must be a positive number of seconds; got {self.timeout}")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


def parse_score(reply: str) -> int | None:
    """The first integer 0..100 standing alone in the reply ("85", "Score: 85/100"), else None."""
    for match in _SCORE.finditer(reply):
        value = int(match.group(1))
        if 0 <= value <= 100:
            return value
    return None


# ----------------------------------------------------------------------------------------------
# Talking to the endpoint


def client(settings: JudgeSettings) -> OpenAIClient:
    """The endpoint, with lyre's one retry policy (lyre/core/openai_client.py)."""
    return OpenAIClient(settings.base_url, settings.api_key, timeout=settings.timeout,
                        retry=RetryPolicy(settings.retries, settings.backoff))


def _content(reply) -> str:
    content = reply["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise TypeError("the reply has no message content")
    return content


def ask(endpoint: OpenAIClient, settings: JudgeSettings, prompt: str) -> str:
    """One judge reply, retried as the policy says; EndpointError when it still fails
    (`.transient`: False for an answer retrying cannot change: 401, 404, an unknown model)."""
    body = {"model": settings.model, "temperature": 0, "max_tokens": settings.max_tokens,
            "messages": [{"role": "user", "content": prompt}]}
    return endpoint.post_json("/chat/completions", body, extract=_content,
                              expected="an OpenAI chat completion")


# ----------------------------------------------------------------------------------------------
# Judging a set of responses


@dataclass
class Verdict:
    index: int
    score: int | None = None
    reply: str | None = None
    error: str | None = None  # the request failed: why


@dataclass
class JudgeReport:
    settings: JudgeSettings
    items: list[dict[str, Any]]
    verdicts: list[Verdict]
    path: Path | None = None

    @property
    def scores(self) -> list[int]:
        return [v.score for v in self.verdicts if v.score is not None]

    @property
    def mean(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None

    @property
    def not_numbers(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.error is None and v.score is None]

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.error is not None]

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "judge": {"base_url": s.base_url, "model": s.model, "prompt": PROMPT},
            "mean": self.mean, "scored": len(self.scores), "count": len(self.verdicts),
            "not_numbers": len(self.not_numbers), "failed": len(self.failed),
            "items": [{**item, "score": v.score, "judge_reply": v.reply, "error": v.error}
                      for item, v in zip(self.items, self.verdicts, strict=True)],
        }

    def check_scored(self) -> None:
        """LyreError when no response got a score: a mean over nothing is no result."""
        if self.scores:
            return
        if self.failed:
            why = (f"{len(self.failed)} request(s) failed after {self.settings.retries} retries "
                   f"(first: {self.failed[0].error})")
            if self.not_numbers:
                why += f" and {len(self.not_numbers)} repl(ies) were not a number 0-100"
        else:
            why = (f"no reply was a number 0-100 (e.g. {(self.not_numbers[0].reply or '')[:60]!r}); "
                   "is the judge model able to follow the prompt?")
        saved = f"; every reply is in {self.path}" if self.path is not None else ""
        raise LyreError(f"the judge {self.settings.model} scored none of the "
                        f"{len(self.verdicts)} responses: {why}{saved}")

    def summary(self) -> str:
        mean = "n/a" if self.mean is None else f"{self.mean:.2f}"
        lines = [f"judge {self.settings.model}: mean score {mean} over {len(self.scores)} of "
                 f"{len(self.verdicts)} responses"]
        if self.not_numbers:
            shown = "; ".join(repr((v.reply or "")[:60]) for v in self.not_numbers[:3])
            lines.append(f"{len(self.not_numbers)} repl{'y was' if len(self.not_numbers) == 1 else 'ies were'} "
                         f"not a number 0-100 (not scored), e.g. {shown}")
        if self.failed:
            reasons: dict[str, int] = {}
            for v in self.failed:
                reasons[v.error] = reasons.get(v.error, 0) + 1
            shown = "; ".join(f"{n} x {r}" for r, n in reasons.items())
            lines.append(f"{len(self.failed)} request(s) failed after {self.settings.retries} retries: {shown}")
        if self.path is not None:
            lines.append(f"every score is in {self.path}")
        return "\n".join(lines)


def judge(items: list[dict[str, Any]], settings: JudgeSettings) -> JudgeReport:
    """Score every {"prompt", "reference", "response"} item; see the module docstring."""
    settings.validate()
    if not items:
        raise LyreError("nothing to judge: no responses")
    prompts = [PROMPT.format(prompt=i["prompt"], reference=i["reference"], response=i["response"])
               for i in items]
    with client(settings) as endpoint:

        def one(index: int) -> Verdict:
            try:
                reply = ask(endpoint, settings, prompts[index])
            except EndpointError as e:
                if not e.transient:
                    raise
                return Verdict(index, error=e.reason)
            return Verdict(index, parse_score(reply), reply)

        try:  # the first request alone: a dead endpoint is one clear error, not N failures
            first = ask(endpoint, settings, prompts[0])
        except EndpointError as e:
            raise LyreError(f"the judge at {settings.url} (model {settings.model!r}) failed: "
                            f"{e.reason}") from None
        verdicts = [Verdict(0, parse_score(first), first)]
        try:
            with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
                verdicts += list(pool.map(one, range(1, len(items))))
        except EndpointError as e:
            raise LyreError(f"the judge at {settings.url} refused a request: {e.reason}") from None
    return JudgeReport(settings, items, verdicts)


def judge_file(path: str | Path, settings: JudgeSettings, out: str | Path | None = None) -> JudgeReport:
    """Judge RUN/responses.json (or a file like it) and save every score beside it (judge.json).
    A judge that scored nothing is an error (after saving, so its replies can be read)."""
    from lyre.finetune.responses import read_responses

    settings.validate()  # before reading anything
    path = Path(path)
    items = read_responses(path)
    report = judge(items, settings)
    target = Path(out) if out else (path if path.is_dir() else path.parent) / JUDGE_FILE
    atomic_write_text(target, json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    report.path = target
    report.check_scored()
    return report


__all__ = ["JudgeSettings", "JudgeReport", "Verdict", "judge", "judge_file", "parse_score", "ask",
           "PROMPT"]
