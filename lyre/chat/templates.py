"""Talking to a model: prompt templates, a conversation that fits the context, a chat session.

A *base* model only continues text, so its "chat" is one growing document: each turn on its
own line(s), as the terminal shows them, and the model writes the next line (template `plain`).
A chat or instruction model was fine-tuned on conversations laid out by a prompt template; it
must be prompted with the same layout, and its answer ends where the template's next turn would
begin (the template's stop strings) or at <|endoftext|>.

Which template a run uses is read from its run directory: `RUN_DIR/chat.json` holding
`{"chat_template": "alpaca"}` (written by the fine-tuning stage), else a top-level
`"chat_template"` key of `RUN_DIR/config.json`, else `plain`. `lyre chat --template NAME`
overrides it.

The conversation is kept within the context window: before each answer the oldest turns are
dropped (the system message stays) until the prompt plus room for the answer fits; the REPL
(lyre/chat/repl.py) says so before the answer, also when the message itself had to be cut or had
characters a char-level model does not know.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lyre.chat.tools import Tool, lower_messages
from lyre.constrain import Constraint, check_constraint
from lyre.core.errors import LyreError
from lyre.engine.sampling import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
)

# ----------------------------------------------------------------------------------------------
# Prompt templates

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True)
class ChatTemplate:
    """How a list of {"role", "content"} messages becomes the prompt text of one model."""

    name: str
    description: str
    render_fn: Callable[[Sequence[dict]], str]
    stop: tuple[str, ...] = ()  # strings that end an assistant turn (cut from the answer)
    strip_answer: bool = True  # strip surrounding whitespace from the answer
    default_system: str | None = None  # the system text of a conversation without one

    def render(self, messages: Sequence[dict], tools: Sequence[Tool] = ()) -> str:
        """The prompt: every message, then the opening of the assistant's next turn.

        With `tools`, their list joins the system part; assistant messages may carry
        `tool_calls` and role "tool" messages hold their results (lyre.chat.tools: one format,
        <tool_call> / <tool_response> blocks, for every template).
        """
        for m in messages:
            if m.get("role") not in ROLES:
                raise LyreError(f"unknown message role {m.get('role')!r}; use system, user, "
                                "assistant or tool")
        return self.render_fn(lower_messages(messages, tools, self.default_system))


def _system_text(messages: Sequence[dict]) -> str | None:
    parts = [m["content"] for m in messages if m["role"] in ("system", "developer")]
    return "\n".join(parts) if parts else None


def _render_plain(messages: Sequence[dict]) -> str:
    # A base model continues one document: the system text (if any), then every turn on its
    # own line(s), the document the terminal shows; the model writes the next line.
    return "".join(m["content"] if m["content"].endswith("\n") else m["content"] + "\n"
                   for m in messages)


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
        elif m["role"] == "tool":
            text += f"\n\n### Tool:\n{m['content']}"
    return text + "\n\n### Response:\n"


def _render_chatml(messages: Sequence[dict]) -> str:
    text = ""  # a tool turn is <|im_start|>tool
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
        elif m["role"] == "tool":
            text += f"Tool: {m['content']}\n"
    return text + "Assistant:"


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate("plain", "base model: the conversation is one text, a turn per line, "
                     "that the model continues", _render_plain),
        ChatTemplate("alpaca", "Alpaca-style ### Instruction / ### Response (LLMs-from-scratch ch07)",
                     _render_alpaca, stop=("### Instruction:", "### Response:", "### Input:", "### Tool:"),
                     default_system=ALPACA_PREAMBLE),
        ChatTemplate("chatml", "<|im_start|>role ... <|im_end|> turns",
                     _render_chatml, stop=("<|im_end|>", "<|im_start|>")),
        ChatTemplate("simple", "User: ... / Assistant: ... lines",
                     _render_simple, stop=("\nUser:", "\nAssistant:", "\nTool:")),
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
    from lyre.run.rundir import RunDir

    name = RunDir(run_dir).chat_template()
    if name is None:
        return "plain"
    get_template(name)  # fail early on an unknown name
    return name


# ----------------------------------------------------------------------------------------------
# A conversation that fits the context


@dataclass
class Fitted:
    """A conversation fitted to the context (`fit_messages`)."""

    ids: list[int]  # the prompt
    kept: list[dict]  # the messages it renders
    dropped: int  # oldest messages left out
    cut: int = 0  # tokens cut from the start of an over-long last message (base models)


def fit_messages(
    messages: list[dict],
    template: ChatTemplate,
    encode: Callable[[str], list[int]],
    budget: int,
) -> Fitted:
    """Drop the oldest non-system messages until the rendered prompt has <= `budget` tokens.

    The last message is never dropped; when it alone is too long, a base-model (`plain`) prompt
    keeps its last `budget` tokens (and says how many it cut) and a chat prompt is an error.
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
            return Fitted(ids, kept, dropped)
        if len(turns) > 1:
            # Drop a whole exchange when we can, so the conversation keeps alternating.
            n = 2 if len(turns) > 2 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant" else 1
            turns = turns[n:]
            dropped += n
            continue
        if template.name == "plain":
            return Fitted(ids[-budget:], kept, dropped, cut=len(ids) - budget)
        raise LyreError(
            f"your message is {len(ids)} tokens with its template; the context leaves room for "
            f"{budget} next to the answer: shorten it, or /set max_new_tokens lower"
        )


def check_text(tokenizer, text: str, what: str) -> int:
    """Encode `text` on its own so that a character a char-level model does not know is
    reported at its position in `text` (what the user typed), not in the rendered conversation.

    Returns how many unknown characters the tokenizer will replace (its --replace-unknown
    policy); raises LyreError starting with `what` when it would refuse them.
    """
    count = getattr(tokenizer, "count_unknown", None)  # only char tokenizers have unknowns
    if count is None:
        return 0
    try:
        tokenizer.encode(text)
    except LyreError as e:
        raise LyreError(f"{what}: {e}") from None
    return count(text)


def check_messages(tokenizer, messages: Sequence[dict]) -> None:
    """`check_text` for each message of an API request: the error names the message
    (`messages[2].content`) and the position in its own text."""
    for i, m in enumerate(messages):
        if isinstance(m.get("content"), str):
            check_text(tokenizer, m["content"], f"messages[{i}].content")


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


@dataclass
class PreparedTurn:
    """One user message made ready for an answer: the prompt and what fitting it cost."""

    user_text: str
    ids: list[int]
    turns: list[dict]  # the earlier turns still in the prompt
    dropped: int = 0  # earlier messages left out to fit the context
    cut: int = 0  # tokens cut from the start of the message itself
    replaced: int = 0  # unknown characters replaced (--replace-unknown)


class ChatSession:
    """One conversation with one model, through the engine. Used by the REPL and by `-p`."""

    def __init__(self, run, template: ChatTemplate, settings: ChatSettings | None = None,
                 system: str | None = None, constraint: Constraint | None = None) -> None:
        from lyre.engine import Engine

        self.settings = settings or ChatSettings()
        self.settings.validate()
        self.run = run
        self.tokenizer = run.tokenizer
        self.block_size = run.config.model.block_size
        self.engine = Engine(run.model, run.tokenizer, device=run.device)
        self.conversation = Conversation(template)
        self.set_system(system)
        self.last_finish_reason: str | None = None
        self.last_new_tokens = 0
        self.last_constraint_unfinished = False
        self.constraint = constraint  # every answer must match it (docs/structured.md)
        if constraint is not None:
            check_constraint(constraint, self.tokenizer)  # a bad one fails before the first turn

    def set_system(self, text: str | None) -> None:
        """Set (or with None/"" remove) the system message; its characters are checked now."""
        if text:
            check_text(self.tokenizer, text, "the system message")
        self.conversation.system = text or None

    def reserve(self) -> int:
        """Tokens kept free for the answer: max_new_tokens, at most half the context."""
        return min(self.settings.max_new_tokens, max(1, self.block_size // 2))

    def prepare(self, user_text: str) -> PreparedTurn:
        """The prompt for the conversation plus `user_text`, fitted to the context."""
        replaced = check_text(self.tokenizer, user_text, "your message")
        conv = self.conversation
        messages = conv.messages() + [{"role": "user", "content": user_text}]
        fitted = fit_messages(messages, conv.template, self.tokenizer.encode,
                              self.block_size - self.reserve())
        ids = fitted.ids
        if not ids:  # an empty conversation starts from the start of text
            eot = self.tokenizer.eot_id
            ids = [eot] if eot is not None else self.tokenizer.encode("\n")
        turns = [m for m in fitted.kept if m["role"] not in ("system", "developer")][:-1]
        return PreparedTurn(user_text, ids, turns, fitted.dropped, fitted.cut, replaced)

    def notices(self, turn: PreparedTurn) -> list[str]:
        """What fitting the prompt did, said before the answer."""
        out = []
        if turn.replaced:
            out.append(f"{turn.replaced} character(s) this model does not know were replaced "
                       f"with {self.tokenizer.replacement!r}")
        if turn.dropped:
            out.append(f"the conversation outgrew the context of {self.block_size} tokens: its "
                       f"{turn.dropped} oldest message(s) were dropped")
        if turn.cut:
            out.append(f"your message did not fit the context of {self.block_size} tokens next to "
                       f"room for the answer: its first {turn.cut} tokens were cut, the model sees "
                       f"the last {len(turn.ids)}")
        return out

    def answer(self, turn: PreparedTurn, write: Callable[[str], None] | None = None) -> str:
        """Stream the answer to a prepared turn through `write`; the turn joins the conversation."""
        from lyre.engine import SamplingConfig

        s = self.settings
        template = self.conversation.template
        params = SamplingConfig(
            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
            repetition_penalty=s.repetition_penalty, seed=s.seed, stop=template.stop,
            # A chat answer ends at the context's end; a base model's text slides on.
            overflow="slide" if template.name == "plain" else "stop",
            constraint=self.constraint,
        )
        stream = self.engine.stream(turn.ids, params)
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
        self.last_constraint_unfinished = result.constraint_unfinished
        answer = "".join(pieces)
        self.conversation.turns = turn.turns + [{"role": "user", "content": turn.user_text},
                                                {"role": "assistant", "content": answer}]
        return answer

    def reply(self, user_text: str,
              write: Callable[[str], None] | None = None) -> tuple[str, PreparedTurn]:
        """`prepare` then `answer`: returns (answer, the prepared turn with its notices' facts)."""
        turn = self.prepare(user_text)
        return self.answer(turn, write), turn
