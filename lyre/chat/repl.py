"""`lyre chat` in the terminal: the REPL loop, its /commands, and `-p` for scripts.

In a terminal the lines are read with Python's readline (arrow keys, Ctrl-R search, Ctrl-A/E)
and kept in a history file between sessions (`history_path`); piped input is read line by line
without prompts, so scripts and tests drive the same loop. Everything about the conversation
(templates, fitting the context, streaming an answer) is `lyre.chat.templates.ChatSession`; this module
only talks to the person: notices about what fitting the prompt did come *before* the answer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lyre.chat.templates import ChatSession
from lyre.core.errors import LyreError

HELP = """commands:
  /reset              forget the conversation (keeps the system message)
  /system TEXT        set the system message (empty TEXT removes it) and reset
  /set NAME VALUE     change a sampling control: temperature, top_k, top_p,
                      repetition_penalty, max_new_tokens, seed (none for random)
  /set                show the current settings
  /help               this help
  /quit               leave (or Ctrl-D)"""


def history_path(path: str | Path | None = None) -> Path | None:
    """The REPL's history file: `path` ("" for none), else $LYRE_HISTORY, else
    $XDG_STATE_HOME/lyre/chat_history (~/.local/state/lyre/chat_history)."""
    if path is None:
        path = os.environ.get("LYRE_HISTORY")
    if path is not None:
        return Path(path).expanduser() if str(path) else None
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "lyre" / "chat_history"


class LineReader:
    """The user's lines. When stdin and stdout are this process's terminal, `input()` with
    readline: line editing, arrow keys, Ctrl-R, and the history file read at the start and
    written at the end. Otherwise (pipes, tests) plain lines from the stream, no prompt."""

    def __init__(self, stdin, stdout, history: Path | None = None) -> None:
        self.stdin, self.stdout, self.history = stdin, stdout, history
        self.interactive = hasattr(stdin, "isatty") and stdin.isatty()
        self.readline = None
        if self.interactive and stdin is sys.stdin and stdout is sys.stdout and stdout.isatty():
            try:
                import readline
            except ImportError:  # Python built without it: input() still works, unedited
                readline = None
            self.readline = readline
        if self.readline is not None:
            self.readline.clear_history()
            self.readline.set_history_length(1000)
            if history is not None:
                try:
                    self.readline.read_history_file(history)
                except OSError:  # no history yet, or unreadable: start empty
                    pass

    def read(self, prompt: str) -> str | None:
        """One line without its newline; None at the end of input (Ctrl-D)."""
        if self.readline is not None:
            try:
                return input(prompt)
            except EOFError:
                return None
        if self.interactive:
            self.stdout.write(prompt)
            self.stdout.flush()
        line = self.stdin.readline()
        return line.rstrip("\n") if line else None

    def close(self) -> str | None:
        """Save the history (atomically); a notice when it cannot be written, never an error."""
        if self.readline is None or self.history is None:
            return None
        tmp = self.history.with_name(self.history.name + ".tmp")
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(tmp)
            os.replace(tmp, self.history)
        except OSError as e:
            return (f"history not saved to {self.history} ({e.strerror or e}); "
                    "--history FILE chooses another")
        return None


def run_repl(session: ChatSession, stdin=None, stdout=None, history: Path | None = None) -> None:
    """The interactive loop. Reads lines until /quit or end of input; `history` is the readline
    history file used when stdin is a terminal (None: no file)."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout

    def say(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    template = session.conversation.template
    mode = "continues your text (base model)" if template.name == "plain" else f"template {template.name}"
    tools = getattr(session, "tool_names", None)  # `--tools`: lyre.agent's session
    if tools:
        mode += f"; tools: {', '.join(tools)}"
    say(f"lyre chat: {session.run.run_dir} ({mode}). /help for commands, /quit to leave.\n")
    reader = LineReader(stdin, stdout, history)
    try:
        while True:
            try:
                line = reader.read("you> ")
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as in Python's REPL
                say("\n")
                continue
            if line is None:  # end of input
                say("\n" if reader.interactive else "")
                return
            if not line.strip():
                continue
            if line.startswith("/"):
                if _command(session, line, say):
                    return
                continue
            _turn(session, line, say)
    finally:
        notice = reader.close()
        if notice:
            say(f"[notice] {notice}\n")


def _turn(session: ChatSession, line: str, say) -> None:
    """One exchange: notices about fitting the prompt first, then the streamed answer."""
    try:
        turn = session.prepare(line)
    except LyreError as e:
        say(f"[error] {e}\n")
        return
    for notice in session.notices(turn):
        say(f"[notice] {notice}\n")
    say("lyre> " if session.conversation.template.name != "plain" else "")
    try:
        session.answer(turn, say)
    except KeyboardInterrupt:
        say("\n[interrupted]\n")
        return
    except LyreError as e:
        say(f"[error] {e}\n")
        return
    say("\n")
    if session.last_finish_reason == "length":
        say(f"[notice] stopped at max_new_tokens={session.settings.max_new_tokens} "
            "or the end of the context (/set max_new_tokens N)\n")
        if session.last_constraint_unfinished:
            say("[notice] the answer does not complete its constraint (--json-schema/--regex/...)\n")


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
        try:
            session.set_system(rest)
        except LyreError as e:
            say(f"[error] {e}\n")
            return False
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


def one_answer(session: ChatSession, prompt: str, stdout=None, stderr=None) -> str:
    """`lyre chat -p TEXT`: notices to stderr, then the answer streamed to stdout; returns it."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr

    def write(piece: str) -> None:
        stdout.write(piece)
        stdout.flush()

    turn = session.prepare(prompt)
    for notice in session.notices(turn):
        stderr.write(f"[notice] {notice}\n")
    stderr.flush()
    answer = session.answer(turn, write)
    stdout.write("\n")
    stdout.flush()
    if session.last_constraint_unfinished:
        stderr.write(f"[notice] the answer does not complete its constraint (finish_reason "
                     f"{session.last_finish_reason}: raise --max-new-tokens)\n")
    return answer
