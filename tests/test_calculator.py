"""The calculator data set (`lyre data calculator`, lyre.data.calculator): records, held-out
numbers, the no-tool variant, scoring, and the command's bad input."""

from __future__ import annotations

import json
import re

import pytest

from lyre.data import calculator as C
from lyre.data.calculator import Problem


def test_a_record_is_an_openai_tool_conversation():
    rec = C.record(Problem(48213, "*", 371, phrasing=0, separators=True), call_id="call_7")
    assert rec["tools"] == [C.CALCULATOR_TOOL]
    user, call, result, final = rec["messages"]
    assert user == {"role": "user", "content": "What is 48,213 times 371?"}
    assert call["content"] is None
    (tc,) = call["tool_calls"]
    assert tc["id"] == "call_7" and tc["type"] == "function"
    assert tc["function"]["name"] == "calculator"
    assert json.loads(tc["function"]["arguments"]) == {"expression": "48213 * 371"}
    assert result == {"role": "tool", "tool_call_id": "call_7", "content": "17887023"}
    assert final["role"] == "assistant" and "17887023" in final["content"]


def test_records_are_readable_by_finetune_and_answers_are_right():
    from lyre.finetune.records import to_record

    for rec in C.records(200, seed=3):
        r = to_record(rec)
        assert r.tools and r.messages[-1]["role"] == "assistant"
        expression = json.loads(rec["messages"][1]["tool_calls"][0]["function"]["arguments"])["expression"]
        a, op, b = expression.split(" ")
        assert op in C.OPERATORS
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b),
                 "//": int(a) // int(b) if op == "//" else 0}[op]
        assert rec["messages"][2]["content"] == str(value) == str(C.expected_result(rec))
        assert C.is_exact(rec["messages"][3]["content"], value)
        # the question states both operands (with or without thousands separators)
        assert {int(a), int(b)} <= set(C.numbers_in(rec["messages"][0]["content"]))


def test_same_seed_same_records_and_every_operator_and_phrasing_appears():
    first, again = list(C.records(300, seed=5)), list(C.records(300, seed=5))
    assert first == again
    assert first != list(C.records(300, seed=6))
    problems = C.problems(2000, seed=5)
    assert {p.op for p in problems} == set(C.OPERATORS)
    assert {(p.op, p.phrasing) for p in problems} == {(op, i) for op, ps in C.PHRASINGS.items()
                                                      for i in range(len(ps))}
    assert {p.separators for p in problems} == {True, False}
    assert all(p.b != 0 for p in problems if p.op == "//")


def test_held_out_numbers_never_appear_in_training():
    train = C.problems(5000, seed=0)
    held = C.problems(500, seed=0, held_out=True)
    train_numbers = {n for p in train for n in (p.a, p.b)}
    held_numbers = {n for p in held for n in (p.a, p.b)}
    assert train_numbers.isdisjoint(held_numbers)
    assert all(C.is_reserved(n) for n in held_numbers)
    assert not any(C.is_reserved(n) for n in train_numbers)
    # about one number in RESERVED_ONE_IN is reserved: the split is a fixed function of the number
    share = sum(C.is_reserved(n) for n in range(100_000)) / 100_000
    assert abs(share - 1 / C.RESERVED_ONE_IN) < 0.01
    # another seed draws other problems from the same two sets
    assert all(C.is_reserved(p.a) for p in C.problems(100, seed=9, held_out=True))


def test_no_tool_variant_answers_directly():
    rec = C.record(Problem(1204, "-", 386, phrasing=2), tool=False)
    assert "tools" not in rec
    assert rec["messages"] == [{"role": "user", "content": "How much is 1204 minus 386?"},
                               {"role": "assistant", "content": "The difference is 818."}]
    assert C.expected_result(rec) == 818


def test_subtract_from_names_the_operands_in_the_other_order():
    p = Problem(500, "-", 1234, phrasing=C.PHRASINGS["-"].index("Subtract {b} from {a}."))
    assert p.question == "Subtract 1234 from 500." and p.expression == "500 - 1234"
    assert p.answer == "The difference is -734."


def test_a_sum_is_called_in_the_questions_order():
    # + commutes: the call names the operands as the question does, whatever the phrasing.
    for phrasing in range(len(C.PHRASINGS["+"])):
        p = Problem(803, "+", 7277, phrasing=phrasing)
        assert p.question.index("803") < p.question.index("7277"), p.question
        assert p.expression == "803 + 7277"


@pytest.mark.parametrize("answer, ok", [
    ("The product is 17887023.", True), ("It is 17,887,023.", True), ("17887023", True),
    ("The product is 178870230.", False), ("The product is 1788702.", False), ("", False),
    (None, False), ("-17887023", False),
])
def test_exact_means_the_whole_number(answer, ok):
    assert C.is_exact(answer, 17887023) is ok


def test_declaration_is_the_agents_calculator():
    agent = pytest.importorskip("lyre.agent", reason="lyre.agent (the agent loop) not merged yet")
    declared = agent.builtin_tool("calculator")
    spec = declared.spec() if hasattr(declared, "spec") else declared
    decl = spec.declaration() if hasattr(spec, "declaration") else spec
    assert decl == C.CALCULATOR_TOOL


# ----------------------------------------------------------------------------------------------
# The command


def test_cli_writes_train_held_out_and_text(tmp_path, capsys):
    from lyre.cli import main

    out, held, text = tmp_path / "c.jsonl", tmp_path / "h.jsonl", tmp_path / "c.txt"
    assert main(["data", "calculator", "--n", "50", "--out", str(out), "--seed", "2", "--held-out",
                 "20", "--held-out-out", str(held), "--text-out", str(text)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == list(C.records(50, seed=2))
    assert [json.loads(line) for line in held.read_text().splitlines()] == \
        list(C.records(20, seed=2, held_out=True))
    corpus = text.read_text()
    assert corpus.count("# Tools") == 50 and corpus.count("User: ") == 50
    assert "wrote 50 records" in capsys.readouterr().out


def test_cli_no_tool(tmp_path):
    from lyre.cli import main

    out = tmp_path / "n.jsonl"
    assert main(["data", "calculator", "--n", "5", "--out", str(out), "--no-tool"]) == 0
    assert all(len(json.loads(line)["messages"]) == 2 for line in out.read_text().splitlines())


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n must be positive"),
    (["--n", "-3"], "--n must be positive"),
    (["--n", "5", "--held-out", "3"], "needs --held-out-out"),
    (["--n", "5", "--held-out", "-1", "--held-out-out", "x"], "must not be negative"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    from lyre.cli import main

    assert main(["data", "calculator", "--out", str(tmp_path / "x.jsonl"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lyre: error:") and message in err and "\n" not in err


def test_cli_unwritable_out(tmp_path, capsys):
    from lyre.cli import main

    assert main(["data", "calculator", "--n", "3", "--out", str(tmp_path)]) == 2
    assert re.search(r"cannot write .*directory", capsys.readouterr().err)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["data", "calculator", "--n", "3", "--out", str(blocker / "sub" / "x.jsonl")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_cli_text_without_the_tool_list(tmp_path):
    from lyre.cli import main

    text = tmp_path / "c.txt"
    assert main(["data", "calculator", "--n", "10", "--out", str(tmp_path / "c.jsonl"),
                 "--text-out", str(text), "--text-tools-share", "0"]) == 0
    corpus = text.read_text()
    assert corpus.count("User: ") == 10
    assert "# Tools" not in corpus
