"""`lyre chat`: prompt templates, the conversation kept within the context, the REPL, `-p`."""

from __future__ import annotations

import io
import json

import pytest
from serve_util import tiny_served_run, with_template

from lyre.chat import (
    TEMPLATES,
    AnswerTrimmer,
    ChatSession,
    ChatSettings,
    fit_messages,
    get_template,
    one_answer,
    run_repl,
    template_name_for_run,
)
from lyre.errors import LyreError
from lyre.runs import load_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_served_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir, device="cpu")


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
    assert get_template("plain").render(msgs) == "Sing, O goddess, the anger"
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
    ids, kept, dropped = fit_messages(msgs, t, encode, full)
    assert dropped == 0 and len(ids) == full
    ids, kept, dropped = fit_messages(msgs, t, encode, full - 10)
    assert dropped == 2 and kept[0]["role"] == "system" and kept[1]["content"] == "question 1"
    assert kept[-1]["content"] == "last" and len(ids) <= full - 10
    with pytest.raises(LyreError, match="room"):
        fit_messages(msgs, t, encode, 5)
    plain = get_template("plain")
    ids, _, _ = fit_messages([{"role": "user", "content": "abcdefgh"}], plain, encode, 3)
    assert len(ids) == 3  # a base model keeps the end of an over-long text


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
    ids, _ = session.prompt_for("one more")
    assert len(ids) <= run.config.model.block_size - 8


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
