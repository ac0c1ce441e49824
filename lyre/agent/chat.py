"""`lyre chat RUN --tools ...`: the terminal chat, each answer through the agent loop.

AgentChatSession is a lyre.chat.templates.ChatSession (the REPL drives it the same way: fit the
conversation, answer, /set, /reset, /system) whose `answer` runs lyre.agent's Agent: the calls
and their results are written into the conversation as they happen ([call] / [result] lines),
then the answer streams. The conversation keeps the questions and the final answers; the calls
of earlier turns are not sent again (a small model's context is small).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lyre.agent.llm import EngineChat
from lyre.agent.loop import DEFAULT_MAX_STEPS, Agent
from lyre.agent.tools import Tool
from lyre.chat.templates import ChatSession, ChatSettings, ChatTemplate, PreparedTurn

MAX_SHOWN = 300  # characters of a tool result shown in the terminal


class _Shown:
    """Calls and results into the conversation's text, as they happen."""

    def __init__(self) -> None:
        self.write: Callable[[str], None] | None = None

    def on_tool_start(self, name, arguments, **kw) -> None:
        if self.write is not None:
            self.write(f"\n[call] {name}({arguments})\n")

    def on_tool_end(self, output, **kw) -> None:
        if self.write is not None:
            text = output if len(output) <= MAX_SHOWN else output[:MAX_SHOWN] + " ..."
            self.write(f"[{'error' if kw.get('error') else 'result'}] {text}\n")


class AgentChatSession(ChatSession):
    def __init__(self, run, template: ChatTemplate, tools: Sequence[Tool],
                 settings: ChatSettings | None = None, system: str | None = None,
                 max_steps: int = DEFAULT_MAX_STEPS, tool_choice: str | Sequence[str] = "auto",
                 ) -> None:
        super().__init__(run, template, settings, system)
        self.tools = list(tools)
        self.tool_names = [t.name for t in self.tools]
        self.llm = EngineChat(run, template=template.name)
        self.shown = _Shown()
        self.agent = Agent(self.llm, self.tools, max_steps=max_steps, callbacks=[self.shown],
                           tool_choice=tool_choice)
        self.last_notices: list[str] = []

    def answer(self, turn: PreparedTurn, write: Callable[[str], None] | None = None) -> str:
        s = self.settings
        self.llm.max_tokens, self.llm.temperature, self.llm.seed = (
            s.max_new_tokens, s.temperature, s.seed)
        self.shown.write = write
        system = self.conversation.system
        history = ([{"role": "system", "content": system}] if system else []) + turn.turns
        result = self.agent.run(turn.user_text, history=history, on_token=write)
        self.last_finish_reason = "length" if result.stopped == "length" else "stop"
        self.last_constraint_unfinished = False
        self.last_notices = list(result.notices)
        if result.stopped not in ("answer", "length") and write is not None:
            for notice in result.notices:
                write(f"[notice] {notice}\n")
        self.conversation.turns = turn.turns + [{"role": "user", "content": turn.user_text},
                                                {"role": "assistant", "content": result.answer}]
        return result.answer
