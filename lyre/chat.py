"""Talking to a model: prompt templates, a conversation that fits the context, and the REPL.

A *base* model only continues text, so its "chat" is one growing document: what you type is
appended and the model writes what comes next (template `plain`). A chat or instruction model
was fine-tuned on conversations laid out by a prompt template; it must be prompted with the same
layout, and its answer ends where the template's next turn would begin (the template's stop
strings) or at <|endoftext|>.

Which template a run uses is read from its run directory: `RUN_DIR/chat.json` holding
`{"chat_template": "alpaca"}` (written by the fine-tuning stage), else a top-level
`"chat_template"` key of `RUN_DIR/config.json`, else `plain`. `lyre chat --template NAME`
overrides it.

The conversation is kept within the context window: before each answer the oldest turns are
dropped (the system message stays) until the prompt plus room for the answer fits, and the REPL
says so.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lyre.engine.sampling import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
)
from lyre.errors import LyreError

# ----------------------------------------------------------------------------------------------
# Prompt templates

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class ChatTemplate:
    """How a list of {"role", "content"} messages becomes the prompt text of one model."""

    name: str
    description: str
    render_fn: Callable[[Sequence[dict]], str]
    stop: tuple[str, ...] = ()  # strings that end an assistant turn (cut from the answer)
    strip_answer: bool = True  # strip surrounding whitespace from the answer

    def render(self, messages: Sequence[dict]) -> str:
        """The prompt: every message, then the opening of the assistant's next turn."""
        for m in messages:
            if m.get("role") not in ("system", "developer", "user", "assistant"):
                raise LyreError(f"unknown message role {m.get('role')!r}; use system, user or assistant")
        return self.render_fn(messages)


def _system_text(messages: Sequence[dict]) -> str | None:
    parts = [m["content"] for m in messages if m["role"] in ("system", "developer")]
    return "\n".join(parts) if parts else None


def _render_plain(messages: Sequence[dict]) -> str:
    # A base model continues one document: the system text (if any), then every turn as typed.
    return "".join(m["content"] for m in messages)


def _render_alpaca(messages: Sequence[dict]) -> str:
    # The instruction format of "Build a Large Language Model (From Scratch)", chapter 7, with
    # turns chained: each user message is an instruction, each assistant message its response.
    system = _system_text(messages)
    text = system if system is not None else ALPACA_PREAMBLE
    for m in messages:
        if m["role"] == "user":
            text += f"\n\n### Instruction:\n{m['content']}"
        elif m["role"] == "assistant":
            text += f"\n\n### Response:\n{m['content']}"
    return text + "\n\n### Response:\n"


def _render_chatml(messages: Sequence[dict]) -> str:
    text = ""
    for m in messages:
        role = "system" if m["role"] == "developer" else m["role"]
        text += f"<|im_start|>{role}\n{m['content']}<|im_end|>\n"
    return text + "<|im_start|>assistant\n"


def _render_simple(messages: Sequence[dict]) -> str:
    system = _system_text(messages)
    text = f"{system}\n\n" if system else ""
    for m in messages:
        if m["role"] == "user":
            text += f"User: {m['content']}\n"
        elif m["role"] == "assistant":
            text += f"Assistant: {m['content']}\n"
    return text + "Assistant:"


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate("plain", "base model: the conversation is one text the model continues",
                     _render_plain, strip_answer=False),
        ChatTemplate("alpaca", "Alpaca-style ### Instruction / ### Response (LLMs-from-scratch ch07)",
                     _render_alpaca, stop=("### Instruction:", "### Response:", "### Input:")),
        ChatTemplate("chatml", "<|im_start|>role ... <|im_end|> turns",
                     _render_chatml, stop=("<|im_end|>", "<|im_start|>")),
        ChatTemplate("simple", "User: ... / Assistant: ... lines",
                     _render_simple, stop=("\nUser:", "\nAssistant:")),
    )
}


def get_template(name: str) -> ChatTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise LyreError(
            f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)}"
        ) from None


def template_name_for_run(run_dir: str | Path) -> str:
    """The run's `chat_template` (chat.json, then config.json), or `plain` for a base model."""
    run_dir = Path(run_dir)
    for path in (run_dir / "chat.json", run_dir / "config.json"):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(raw, dict) and raw.get("chat_template"):
            name = raw["chat_template"]
            if not isinstance(name, str):
                raise LyreError(f"{path}: chat_template must be a template name; got {name!r}")
            get_template(name)  # fail early on an unknown name
            return name
    return "plain"


# ----------------------------------------------------------------------------------------------
# A conversation that fits the context


def fit_messages(
    messages: list[dict],
    template: ChatTemplate,
    encode: Callable[[str], list[int]],
    budget: int,
) -> tuple[list[int], list[dict], int]:
    """Drop the oldest non-system messages until the rendered prompt has <= `budget` tokens.

    Returns (prompt ids, the messages kept, how many were dropped). The last message is never
    dropped; when it alone is too long, a base-model (`plain`) prompt keeps its last `budget`
    tokens and a chat prompt is an error.
    """
    if budget < 1:
        raise LyreError("no room for a prompt: the context is too small for this many new tokens")
    system = [m for m in messages if m["role"] in ("system", "developer")]
    turns = [m for m in messages if m["role"] not in ("system", "developer")]
    dropped = 0
    while True:
        kept = system + turns
        ids = encode(template.render(kept))
        if len(ids) <= budget:
            return ids, kept, dropped
        if len(turns) > 1:
            # Drop a whole exchange when we can, so the conversation keeps alternating.
            n = 2 if len(turns) > 2 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant" else 1
            turns = turns[n:]
            dropped += n
            continue
        if template.name == "plain":
            return ids[-budget:], kept, dropped
        raise LyreError(
            f"the message is {len(ids)} tokens with its template; the context leaves room for {budget}"
        )


class AnswerTrimmer:
    """Strip the whitespace around a streamed answer without holding back anything else.

    Leading whitespace is dropped; trailing whitespace is held until more text follows it, and
    dropped at the end. With `enabled=False` pieces pass through unchanged (base models).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.started = False
        self.pending = ""

    def feed(self, piece: str) -> str:
        if not self.enabled:
            return piece
        if not self.started:
            piece = piece.lstrip()
            if not piece:
                return ""
            self.started = True
        text = self.pending + piece
        kept = text.rstrip()
        self.pending = text[len(kept):]
        return kept


@dataclass
class ChatSettings:
    """The sampling controls `/set` changes; names as in the server and `lyre sample`."""

    temperature: float = DEFAULT_TEMPERATURE  # the defaults of lyre.engine.sampling
    top_k: int = DEFAULT_TOP_K
    top_p: float = DEFAULT_TOP_P
    repetition_penalty: float = DEFAULT_REPETITION_PENALTY
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int | None = None

    def set(self, name: str, value: str) -> None:
        name = name.replace("-", "_")
        if name not in self.__dataclass_fields__:
            raise LyreError(f"unknown setting {name!r}; one of {', '.join(self.__dataclass_fields__)}")
        if name == "seed" and value.lower() in ("none", "off", ""):
            self.seed = None
            return
        kind = int if name in ("top_k", "max_new_tokens", "seed") else float
        try:
            parsed = kind(value)
        except ValueError:
            raise LyreError(f"{name} must be {'an integer' if kind is int else 'a number'}; got {value!r}") from None
        old = getattr(self, name)
        setattr(self, name, parsed)
        try:
            self.validate()
        except LyreError:
            setattr(self, name, old)
            raise

    def validate(self) -> None:
        for name in ("temperature", "top_p", "repetition_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise LyreError(f"{name} must be a finite number; got {getattr(self, name)}")
        if self.temperature < 0:
            raise LyreError(f"temperature must be >= 0; got {self.temperature}")
        if self.top_k < 0:
            raise LyreError(f"top_k must be >= 0; got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise LyreError(f"top_p must be in (0, 1]; got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise LyreError(f"repetition_penalty must be > 0; got {self.repetition_penalty}")
        if not 1 <= self.max_new_tokens <= 1_000_000:
            raise LyreError(f"max_new_tokens must be in 1..1000000; got {self.max_new_tokens}")

    def describe(self) -> str:
        return "  ".join(f"{k}={getattr(self, k)}" for k in self.__dataclass_fields__)


@dataclass
class Conversation:
    template: ChatTemplate
    system: str | None = None
    turns: list[dict] = field(default_factory=list)

    def messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.turns

    def reset(self) -> None:
        self.turns.clear()


HELP = """commands:
  /reset              forget the conversation (keeps the system message)
  /system TEXT        set the system message (empty TEXT removes it) and reset
  /set NAME VALUE     change a sampling control: temperature, top_k, top_p,
                      repetition_penalty, max_new_tokens, seed (none for random)
  /set                show the current settings
  /help               this help
  /quit               leave (or Ctrl-D)"""


class ChatSession:
    """One conversation with one model, through the engine. Used by the REPL and by `-p`."""

    def __init__(self, run, template: ChatTemplate, settings: ChatSettings | None = None,
                 system: str | None = None) -> None:
        from lyre.engine import Engine

        self.settings = settings or ChatSettings()
        self.settings.validate()
        self.run = run
        self.tokenizer = run.tokenizer
        self.block_size = run.config.model.block_size
        self.engine = Engine(run.model, run.tokenizer, device=run.device)
        self.conversation = Conversation(template, system)
        self.last_finish_reason: str | None = None
        self.last_new_tokens = 0

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def prompt_for(self, user_text: str) -> tuple[list[int], int]:
        """Prompt ids of the conversation plus `user_text`, and how many old turns were dropped."""
        conv = self.conversation
        messages = conv.messages() + [{"role": "user", "content": user_text}]
        reserve = min(self.settings.max_new_tokens, max(1, self.block_size // 2))
        ids, kept, dropped = fit_messages(messages, conv.template, self._encode, self.block_size - reserve)
        if dropped:
            conv.turns = [m for m in kept if m["role"] not in ("system", "developer")][:-1]
        if not ids:
            ids = [self.tokenizer.eot_id] if self.tokenizer.eot_id is not None else self._encode("\n")
        return ids, dropped

    def reply(self, user_text: str, write: Callable[[str], None] | None = None) -> tuple[str, int]:
        """Stream the answer to `user_text` through `write`; returns (answer, turns dropped)."""
        from lyre.engine import SamplingConfig

        ids, dropped = self.prompt_for(user_text)
        s = self.settings
        template = self.conversation.template
        params = SamplingConfig(
            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
            repetition_penalty=s.repetition_penalty, seed=s.seed, stop=template.stop,
            # A chat answer ends at the context's end; a base model's text slides on.
            overflow="slide" if template.name == "plain" else "stop",
        )
        stream = self.engine.stream(ids, params)
        trimmer = AnswerTrimmer(template.strip_answer)
        pieces: list[str] = []
        for raw in stream:
            piece = trimmer.feed(raw)
            if piece:
                pieces.append(piece)
                if write is not None:
                    write(piece)
        result = stream.completion
        self.last_finish_reason = result.finish_reason
        self.last_new_tokens = len(result.tokens)
        answer = "".join(pieces)
        self.conversation.turns += [{"role": "user", "content": user_text},
                                    {"role": "assistant", "content": answer}]
        return answer, dropped


def run_repl(session: ChatSession, stdin=None, stdout=None) -> None:
    """The interactive loop. Reads lines until /quit or end of input."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout

    def say(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    template = session.conversation.template
    mode = "continues your text (base model)" if template.name == "plain" else f"template {template.name}"
    say(f"lyre chat: {session.run.run_dir} ({mode}). /help for commands, /quit to leave.\n")
    interactive = hasattr(stdin, "isatty") and stdin.isatty()
    while True:
        if interactive:
            say("you> ")
        line = stdin.readline()
        if not line:  # end of input
            say("\n" if interactive else "")
            return
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            if _command(session, line, say):
                return
            continue
        say("lyre> " if template.name != "plain" else "")
        try:
            _, dropped = session.reply(line, say)
        except KeyboardInterrupt:
            say("\n[interrupted]\n")
            continue
        except LyreError as e:
            say(f"[error] {e}\n")
            continue
        say("\n")
        if dropped:
            say(f"[notice] the conversation outgrew the context of {session.block_size} tokens: "
                f"its {dropped} oldest message(s) were dropped\n")
        if session.last_finish_reason == "length":
            say(f"[notice] stopped at max_new_tokens={session.settings.max_new_tokens} "
                "or the end of the context (/set max_new_tokens N)\n")


def _command(session: ChatSession, line: str, say) -> bool:
    """Run one /command; True means quit."""
    name, _, rest = line.partition(" ")
    rest = rest.strip()
    if name in ("/quit", "/exit", "/q"):
        return True
    if name == "/help":
        say(HELP + "\n")
    elif name == "/reset":
        session.conversation.reset()
        say("[conversation reset]\n")
    elif name == "/system":
        session.conversation.system = rest or None
        session.conversation.reset()
        say(f"[system message {'set' if rest else 'removed'}; conversation reset]\n")
    elif name == "/set":
        if not rest:
            say(session.settings.describe() + "\n")
            return False
        key, _, value = rest.partition(" ")
        if not value.strip():
            say("[error] usage: /set NAME VALUE, e.g. /set temperature 0.7\n")
            return False
        try:
            session.settings.set(key, value.strip())
            say(f"[{key} = {getattr(session.settings, key.replace('-', '_'))}]\n")
        except LyreError as e:
            say(f"[error] {e}\n")
    else:
        say(f"[error] unknown command {name}; /help lists them\n")
    return False


def one_answer(session: ChatSession, prompt: str, stdout=None) -> str:
    """`lyre chat -p TEXT`: stream one answer to stdout and return it."""
    stdout = stdout or sys.stdout

    def write(piece: str) -> None:
        stdout.write(piece)
        stdout.flush()

    answer, _ = session.reply(prompt, write)
    stdout.write("\n")
    stdout.flush()
    return answer
