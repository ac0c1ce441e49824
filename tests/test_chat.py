"""`lyre chat`: prompt templates, the conversation kept within the context, the REPL, `-p`,
line editing and history in a terminal, characters a char-level model does not know."""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serve_util import with_template

from lyre.chat.repl import LineReader, history_path, one_answer, run_repl
from lyre.chat.templates import (
    TEMPLATES,
    AnswerTrimmer,
    ChatSession,
    ChatSettings,
    check_messages,
    fit_messages,
    get_template,
    template_name_for_run,
)
from lyre.core.errors import LyreError
from lyre.generate.runs import load_run
from lyre.tokenizers import load_tokenizer
from lyre.tokenizers.char import CharTokenizer, replace_unknown

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# Templates


def test_alpaca_template_matches_the_book_layout():
    t = get_template("alpaca")
    prompt = t.render([{"role": "user", "content": "Name a Greek hero."}])
    assert prompt == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a Greek hero.\n\n### Response:\n"
    )
    two = t.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}])
    assert two == ("Be brief.\n\n### Instruction:\na\n\n### Response:\nb\n\n### Instruction:\nc"
                   "\n\n### Response:\n")
    assert "### Instruction:" in t.stop


def test_plain_chatml_simple_templates():
    msgs = [{"role": "user", "content": "Sing, O goddess, "}, {"role": "assistant", "content": "the anger"}]
    # A base model's conversation: a turn per line, as the terminal shows it.
    assert get_template("plain").render(msgs) == "Sing, O goddess, \nthe anger\n"
    assert get_template("plain").render([{"role": "user", "content": "two\n"}]) == "two\n"
    assert get_template("chatml").render(msgs[:1]) == (
        "<|im_start|>user\nSing, O goddess, <|im_end|>\n<|im_start|>assistant\n")
    assert get_template("simple").render(msgs[:1]).endswith("User: Sing, O goddess, \nAssistant:")
    assert set(TEMPLATES) >= {"plain", "alpaca", "chatml", "simple"}
    with pytest.raises(LyreError, match="unknown chat template"):
        get_template("llama9")
    with pytest.raises(LyreError, match="role"):
        get_template("alpaca").render([{"role": "robot", "content": "x"}])


def test_template_name_read_from_run_dir(run_dir, tmp_path):
    assert template_name_for_run(run_dir) == "plain"
    assert template_name_for_run(with_template(run_dir, tmp_path / "a", "alpaca")) == "alpaca"
    bad = with_template(run_dir, tmp_path / "b", "nope")
    with pytest.raises(LyreError, match="unknown chat template"):
        template_name_for_run(bad)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text(json.dumps({"chat_template": "chatml"}))
    assert template_name_for_run(tmp_path / "c") == "chatml"


def test_fit_messages_drops_oldest_exchanges_keeps_system():
    def encode(text):
        return list(range(len(text)))  # one token per character

    t = get_template("simple")
    msgs = [{"role": "system", "content": "S"}]
    for i in range(5):
        msgs += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    msgs.append({"role": "user", "content": "last"})
    full = len(t.render(msgs))
    fitted = fit_messages(msgs, t, encode, full)
    assert fitted.dropped == 0 and len(fitted.ids) == full and fitted.cut == 0
    fitted = fit_messages(msgs, t, encode, full - 10)
    kept = fitted.kept
    assert fitted.dropped == 2 and kept[0]["role"] == "system" and kept[1]["content"] == "question 1"
    assert kept[-1]["content"] == "last" and len(fitted.ids) <= full - 10
    with pytest.raises(LyreError, match="room"):
        fit_messages(msgs, t, encode, 5)
    plain = get_template("plain")
    fitted = fit_messages([{"role": "user", "content": "abcdefgh"}], plain, encode, 3)
    assert len(fitted.ids) == 3 and fitted.cut == 6  # a base model keeps the end of a long text


def test_answer_trimmer_streams_without_surrounding_whitespace():
    t = AnswerTrimmer()
    pieces = [t.feed(p) for p in ["\n ", " Hel", "lo ", "\n", "world", " \n"]]
    assert "".join(pieces) == "Hello \nworld"
    assert AnswerTrimmer(enabled=False).feed(" x ") == " x "


def test_settings_set_and_validate():
    s = ChatSettings()
    s.set("temperature", "0.5")
    s.set("top-k", "10")
    s.set("seed", "none")
    assert (s.temperature, s.top_k, s.seed) == (0.5, 10, None)
    with pytest.raises(LyreError, match="top_p"):
        s.set("top_p", "2")
    assert s.top_p == 1.0  # unchanged after a bad value
    with pytest.raises(LyreError, match="unknown setting"):
        s.set("warmth", "1")
    with pytest.raises(LyreError, match="integer"):
        s.set("max_new_tokens", "lots")
    with pytest.raises(LyreError, match="finite"):
        s.set("temperature", "nan")


# ----------------------------------------------------------------------------------------------
# Sessions with a real (tiny) model


def test_base_model_continues_text_and_is_seeded(run):
    settings = ChatSettings(max_new_tokens=12, seed=3)
    a = ChatSession(run, get_template("plain"), settings)
    out = io.StringIO()
    answer = one_answer(a, "Sing, O goddess", stdout=out)
    assert out.getvalue() == answer + "\n"
    b = ChatSession(run, get_template("plain"), ChatSettings(max_new_tokens=12, seed=3))
    assert b.reply("Sing, O goddess")[0] == answer
    assert a.last_new_tokens <= 12
    assert answer == answer.strip()  # no leading blank: a turn is a line of its own


def test_chat_template_conversation_drops_old_turns_with_notice(run):
    settings = ChatSettings(max_new_tokens=8, temperature=0)
    session = ChatSession(run, get_template("alpaca"), settings, system="Answer.")
    long = "Tell me about the wrath of Achilles and the ships of the Achaeans. " * 1
    script = "\n".join([long] * 4 + ["/quit"]) + "\n"
    out = io.StringIO()
    run_repl(session, stdin=io.StringIO(script), stdout=out)
    text = out.getvalue()
    assert "oldest message(s) were dropped" in text
    assert session.conversation.system == "Answer."
    turn = session.prepare("one more")
    assert len(turn.ids) <= run.config.model.block_size - 8


def test_notices_come_before_the_answer(run):
    # A conversation that already fills the context: the next message drops old turns, and the
    # REPL says so before the answer streams, where the reader is looking.
    session = ChatSession(run, get_template("simple"), ChatSettings(max_new_tokens=8, seed=0))
    long = "Tell me about the wrath of Achilles and the ships of the Achaeans. " * 2
    session.conversation.turns = [{"role": "user", "content": long}, {"role": "assistant", "content": long}] * 2
    out = io.StringIO()
    run_repl(session, stdin=io.StringIO("And Hector?\n"), stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("[notice] the conversation outgrew the context of 256 tokens: its 2 ")
    assert lines[2].startswith("lyre> ")
    assert [m["content"] for m in session.conversation.turns[::2]] == [long, "And Hector?"]


def test_an_over_long_message_is_cut_with_a_notice(run):
    # A base model keeps the end of a 5,000-character line, and says so first.
    session = ChatSession(run, get_template("plain"), ChatSettings(max_new_tokens=16, seed=0))
    out = io.StringIO()
    run_repl(session, stdin=io.StringIO("Sing, O goddess. " * 300 + "\n"), stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("[notice] your message did not fit the context of 256 tokens")
    assert "the model sees the last 240" in lines[1]
    assert len(lines) >= 3 and not lines[2].startswith("[notice] your")
    # -p prints the same notice on stderr, and only the answer on stdout.
    out, err = io.StringIO(), io.StringIO()
    session = ChatSession(run, get_template("plain"), ChatSettings(max_new_tokens=4, seed=0))
    answer = one_answer(session, "Sing, O goddess. " * 300, stdout=out, stderr=err)
    assert out.getvalue() == answer + "\n" and "[notice] your message did not fit" in err.getvalue()


def test_repl_commands(run):
    session = ChatSession(run, get_template("simple"), ChatSettings(max_new_tokens=4, seed=1))
    script = "\n".join([
        "/help", "/set temperature 0.3", "/set top_p 7", "/set", "/set bogus 1", "/set temperature",
        "/system You are Homer.", "hello", "/reset", "/frobnicate", "/quit", "never read",
    ]) + "\n"
    out = io.StringIO()
    run_repl(session, stdin=io.StringIO(script), stdout=out)
    text = out.getvalue()
    assert "/reset" in text and "/system TEXT" in text  # the help
    assert "[temperature = 0.3]" in text
    assert "[error] top_p must be in (0, 1]" in text
    assert "temperature=0.3" in text  # /set alone lists the settings
    assert "[error] unknown setting" in text and "usage: /set NAME VALUE" in text
    assert "[system message set; conversation reset]" in text
    assert "[conversation reset]" in text and session.conversation.turns == []
    assert "unknown command /frobnicate" in text
    assert session.conversation.system == "You are Homer."


def test_repl_ends_at_end_of_input(run):
    session = ChatSession(run, get_template("plain"), ChatSettings(max_new_tokens=3))
    out = io.StringIO()
    run_repl(session, stdin=io.StringIO("Achilles\n"), stdout=out)
    assert len(session.conversation.turns) == 2


def test_cli_chat_one_prompt(run_dir, capsys):
    from lyre.cli import main

    assert main(["chat", str(run_dir), "-p", "Sing", "--max-new-tokens", "5", "--seed", "1",
                 "--device", "cpu"]) == 0
    first = capsys.readouterr().out
    assert main(["chat", str(run_dir), "-p", "Sing", "--max-new-tokens", "5", "--seed", "1",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out == first and first.endswith("\n")
    assert main(["chat", str(run_dir), "-p", "x", "--top-p", "3"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert main(["chat", str(run_dir), "-p", "x", "--template", "nope"]) == 2


# ----------------------------------------------------------------------------------------------
# Characters a char-level model does not know


CHAR_TOML = """\
[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 64

[data]
corpus = ["{corpus}"]
tokenizer = "char"

[train]
batch_size = 2
max_iters = 4
warmup_iters = 1
eval_interval = 4
eval_windows = 1
log_interval = 2
final_eval = false
device = "cpu"
seed = 3
"""


@pytest.fixture(scope="module")
def char_run_dir(tmp_path_factory):
    """A tiny char-level run on an Iliad excerpt: no 'é', no '>', but '?' in its vocabulary."""
    from lyre.run.config import BUNDLED_ILIAD, load_config
    from lyre.train.trainer import train

    root = tmp_path_factory.mktemp("char-run")
    text = BUNDLED_ILIAD.read_text(encoding="utf-8")
    start = text.index("Sing, O goddess")
    (root / "corpus.txt").write_text(text[start : start + 8000], encoding="utf-8")
    (root / "char.toml").write_text(CHAR_TOML.format(corpus=(root / "corpus.txt").as_posix()))
    train(load_config(root / "char.toml"), root / "run", progress=False, plot=False)
    return root / "run"


def test_char_tokenizer_unknown_policies(run, tmp_path):
    tok = CharTokenizer.from_texts(["hello world?\n"])
    with pytest.raises(LyreError) as err:
        tok.encode("hello\nwörld")
    message = str(err.value)
    assert "'ö' (U+00F6) at position 7 (line 2, column 2" in message and "\n" not in message
    assert "--replace-unknown" in message and '"unk": "?"' in message  # what to do about it
    assert tok.encode("wörld", unknown="replace") == tok.encode("w?rld")
    assert tok.count_unknown("héllo wörld") == 2
    with pytest.raises(LyreError, match="'error' or 'replace'"):
        tok.encode("x", unknown="drop")
    # The replacement is always a character the model knows: '?', else a space, else the first.
    assert CharTokenizer.from_texts(["ab c"]).replacement == " "
    assert CharTokenizer.from_texts(["cab"]).replacement == "a"
    with pytest.raises(LyreError, match="not in this char tokenizer's vocabulary"):
        tok.replace_unknown("é")
    size = tok.vocab_size
    assert tok.replace_unknown().encode("wörld") == tok.encode("w?rld") and tok.vocab_size == size
    # Recorded with the run: tokenizer.json's "unk", which must be one of its characters.
    tok.save(tmp_path / "t")
    assert load_tokenizer(tmp_path / "t").encode("é") == tok.encode("?")
    meta = json.loads((tmp_path / "t" / "tokenizer.json").read_text())
    meta["unk"] = "é"
    (tmp_path / "t" / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(LyreError, match="unk 'é' is not one of its 'chars'"):
        load_tokenizer(tmp_path / "t")
    # A byte-level tokenizer has no unknown characters: --replace-unknown changes nothing.
    assert replace_unknown(run.tokenizer) is run.tokenizer


def test_unknown_character_is_placed_in_the_typed_text(char_run_dir):
    char_run = load_run(char_run_dir, device="cpu")
    session = ChatSession(char_run, get_template("plain"), ChatSettings(max_new_tokens=4, seed=0))
    session.reply("Sing, O goddess, the anger of Achilles")
    # Position 5 (column 6) of what was typed, not of the whole rendered conversation.
    with pytest.raises(LyreError, match=r"^your message: character 'é' \(U\+00E9\) at position 5 "
                                        r"\(line 1, column 6, near 'the héro'\)"):
        session.prepare("the héro")
    out = io.StringIO()
    run_repl(session, stdin=io.StringIO("the héro\nthe hero\n"), stdout=out)
    assert "[error] your message: character 'é'" in out.getvalue()
    assert session.conversation.turns[-2]["content"] == "the hero"  # the REPL went on
    with pytest.raises(LyreError, match="^the system message: character 'ü'"):
        ChatSession(char_run, get_template("simple"), system="Be über brief.")
    with pytest.raises(LyreError, match=r"^messages\[1\]\.content: character 'é' .* at position 1 "):
        check_messages(char_run.tokenizer, [{"role": "user", "content": "hi"},
                                            {"role": "user", "content": "hé"}])
    # --replace-unknown: the message goes through, and a notice says what was replaced.
    replace_unknown(char_run.tokenizer)
    out = io.StringIO()
    run_repl(session, stdin=io.StringIO("the héro, the ëël\n"), stdout=out)
    assert out.getvalue().splitlines()[1] == \
        "[notice] 3 character(s) this model does not know were replaced with '?'"


def test_cli_replace_unknown_flag_and_run_setting(char_run_dir, tmp_path, capsys):
    from lyre.cli import main

    assert main(["chat", str(char_run_dir), "-p", "the héro", "--max-new-tokens", "3", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "your message: character 'é'" in err and "at position 5" in err and "--replace-unknown" in err
    assert main(["chat", str(char_run_dir), "-p", "the héro", "--max-new-tokens", "3", "--device", "cpu",
                 "--replace-unknown"]) == 0
    assert "replaced with '?'" in capsys.readouterr().err
    assert main(["sample", str(char_run_dir), "--prompt", "héro", "--max-new-tokens", "3",
                 "--device", "cpu"]) == 2
    assert "--replace-unknown" in capsys.readouterr().err
    assert main(["sample", str(char_run_dir), "--prompt", "héro", "--max-new-tokens", "3",
                 "--device", "cpu", "--replace-unknown"]) == 0
    # Recorded with the run ("unk" in its tokenizer.json): no flag needed.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(char_run_dir, copy)
    meta = json.loads((copy / "tokenizer" / "tokenizer.json").read_text())
    (copy / "tokenizer" / "tokenizer.json").write_text(json.dumps({**meta, "unk": "?"}))
    assert main(["chat", str(copy), "-p", "the héro", "--max-new-tokens", "3", "--device", "cpu"]) == 0


def test_serve_replace_unknown(char_run_dir, monkeypatch):
    # `lyre serve --replace-unknown`: the served run's tokenizer replaces (served in this process).
    import httpx

    import lyre.serve.server as server
    from lyre.cli import main

    codes = []

    def serve_in_background(run, host, port, settings, log_level):
        with server.start_background(run, settings) as srv:
            for path, body in (("/v1/completions", {"prompt": "the héro"}),
                               ("/v1/chat/completions", {"messages": [{"role": "user", "content": "héro"}]})):
                r = httpx.post(srv.url + path, timeout=60,
                               json={"model": char_run_dir.name, "max_tokens": 3, **body})
                codes.append(r.status_code)

    monkeypatch.setattr(server, "run_server", serve_in_background)
    assert main(["serve", str(char_run_dir), "--device", "cpu"]) == 0
    assert codes == [400, 400]  # without the flag: refused, as before
    assert main(["serve", str(char_run_dir), "--device", "cpu", "--replace-unknown"]) == 0
    assert codes[2:] == [200, 200]


# ----------------------------------------------------------------------------------------------
# Line editing and history


def test_history_path(monkeypatch, tmp_path):
    monkeypatch.delenv("LYRE_HISTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert history_path() == tmp_path / "state" / "lyre" / "chat_history"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert history_path() == Path.home() / ".local" / "state" / "lyre" / "chat_history"
    monkeypatch.setenv("LYRE_HISTORY", str(tmp_path / "h"))
    assert history_path() == tmp_path / "h"
    assert history_path("~/x") == Path.home() / "x"
    assert history_path("") is None
    monkeypatch.setenv("LYRE_HISTORY", "")
    assert history_path() is None


def test_unwritable_history_is_a_notice_not_an_error(tmp_path):
    import readline

    (tmp_path / "file").write_text("")
    reader = LineReader(io.StringIO(), io.StringIO(), tmp_path / "file" / "history")
    reader.readline = readline  # as in a terminal
    notice = reader.close()
    assert notice and notice.startswith(f"history not saved to {tmp_path / 'file' / 'history'}")
    reader = LineReader(io.StringIO(), io.StringIO(), tmp_path / "new" / "history")
    reader.readline = readline
    readline.clear_history()
    readline.add_history("hello")
    assert reader.close() is None
    assert (tmp_path / "new" / "history").read_text().splitlines() == ["hello"]
    assert not (tmp_path / "new" / "history.tmp").exists()


def test_terminal_arrow_keys_ctrl_r_and_history_file(char_run_dir, tmp_path):
    """`lyre chat` in a pseudo-terminal: the up arrow and Ctrl-R recall earlier lines, those of
    an earlier session included, and the history file holds them afterwards."""
    import pty

    history = tmp_path / "state" / "history"
    history.parent.mkdir()
    history.write_text("the anger of Achilles\n")  # an earlier session's

    def session(keys: list[bytes]) -> str:
        master, slave = pty.openpty()
        env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "lyre", "chat", str(char_run_dir), "--history", str(history),
             "--max-new-tokens", "3", "--device", "cpu"],
            stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        seen = b""

        def wait_for_prompt(count: int) -> None:
            nonlocal seen
            deadline = time.monotonic() + 60
            while seen.count(b"you> ") < count:
                assert time.monotonic() < deadline, seen.decode(errors="replace")
                if select.select([master], [], [], 0.5)[0]:
                    try:
                        seen += os.read(master, 4096)
                    except OSError:  # the child closed the terminal
                        break
        try:
            for i, key in enumerate(keys, start=1):
                wait_for_prompt(i)
                os.write(master, key)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(master)
        return seen.decode(errors="replace")

    shown = session([b"Sing, O goddess\r", b"\x1b[A\x1b[A\r", b"\x12godd\r", b"/quit\r"])
    # Up twice recalled the earlier session's line; Ctrl-R "godd" found this session's first.
    assert history.read_text().splitlines() == [
        "the anger of Achilles", "Sing, O goddess", "the anger of Achilles", "Sing, O goddess", "/quit"]
    assert "lyre chat:" in shown
