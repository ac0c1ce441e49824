"""Fine-tuning data: the accepted layouts, bad records counted with their place and reason, the
split, and the token ids + loss mask made through the template chat and serve use."""

from __future__ import annotations

import json

import pytest
from finetune_util import base_run, colour_records, write_json, write_jsonl

from lyre.chat.templates import ChatTemplate, get_template
from lyre.core.errors import LyreError
from lyre.finetune.encode import answer_text, encode_all, encode_pair, encode_sequences, require_eot
from lyre.finetune.records import Record, read_records, split_records, to_record
from lyre.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(base_run(tmp_path_factory) / "tokenizer")


def test_alpaca_json_with_bad_records_counted_by_index(tmp_path):
    records = colour_records(6) + [{"instruction": "x"}, {"instruction": "y", "output": "  "},
                                   "not an object", {"instruction": 3, "output": "z"}]
    recs, problems = read_records(write_json(tmp_path / "d.json", records))
    assert len(recs) == 6 and problems.total == 10 and problems.skipped == 4
    summary = problems.summary("d.json")
    assert "4 of 10 records of d.json skipped" in summary
    assert "missing key 'output' (first: record 6)" in summary
    assert "empty 'output' (first: record 7)" in summary
    assert "not a JSON object (first: record 8)" in summary
    # Alpaca's input joins the instruction under its own heading: the book's layout.
    assert recs[0].messages[0]["content"] == "What colour is the sky?\n\n### Input:\nAnswer in one sentence."
    assert recs[1].messages == [{"role": "user", "content": "What colour is the grass?"},
                                {"role": "assistant", "content": "The grass is green."}]


def test_jsonl_chat_and_prompt_completion_layouts(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                      {"role": "assistant", "content": "Goodbye."}]},
        {"prompt": "2+2=", "completion": "4"},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "robot", "content": "beep"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]},
                      {"role": "assistant", "content": "ok"}]},
    ]
    recs, problems = read_records(write_jsonl(tmp_path / "d.jsonl", rows))
    assert [len(r.messages) for r in recs] == [5, 2, 2]
    assert recs[2].messages[0]["content"] == "parts"
    reasons = problems.summary("d.jsonl")
    assert "no assistant message to learn (first: line 3)" in reasons
    assert "role 'robot'" in reasons and "(first: line 4)" in reasons


def test_malformed_empty_and_all_bad_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n')
    with pytest.raises(LyreError, match=r"bad.jsonl line 2 is not valid JSON"):
        read_records(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a",\n "output": }]')
    with pytest.raises(LyreError, match=r"not valid JSON: .* line 2"):
        read_records(broken)
    with pytest.raises(LyreError, match="holds no records"):
        read_records(write_json(tmp_path / "empty.json", []))
    with pytest.raises(LyreError, match=r"no usable record; 2 x missing key 'output' \(first: record 0\)"):
        read_records(write_json(tmp_path / "allbad.json", [{"instruction": "a"}, {"instruction": "b"}]))
    with pytest.raises(LyreError, match="not found"):
        read_records(tmp_path / "missing.json")
    (tmp_path / "latin1.json").write_bytes('[{"instruction": "caf\xe9"}]'.encode("latin-1"))
    with pytest.raises(LyreError, match="not UTF-8"):
        read_records(tmp_path / "latin1.json")


def test_preference_records_need_both_answers(tmp_path):
    rows = [{"instruction": "a", "chosen": "good", "rejected": "bad"},
            {"prompt": "b", "chosen": "good"},
            {"messages": [{"role": "user", "content": "c"}], "chosen": "x", "rejected": "y"}]
    recs, problems = read_records(write_json(tmp_path / "p.json", rows), preference=True)
    assert len(recs) == 2 and recs[0].chosen == "good" and recs[0].rejected == "bad"
    assert "missing key 'rejected' (first: record 1)" in problems.summary("p")


def test_split_is_seeded_85_10_5():
    recs = [to_record({"prompt": f"p{i}", "completion": "c"}) for i in range(1100)]
    a = split_records(recs, 0.10, 0.05, seed=123)
    b = split_records(recs, 0.10, 0.05, seed=123)
    assert (len(a.train), len(a.val), len(a.test)) == (935, 110, 55)
    assert [r.messages for r in a.val] == [r.messages for r in b.val]
    assert {id(r) for r in a.train} | {id(r) for r in a.val} | {id(r) for r in a.test} == {id(r) for r in recs}
    assert [r.messages for r in split_records(recs, 0.10, 0.05, seed=1).val] != [r.messages for r in a.val]
    with pytest.raises(LyreError, match="too few"):
        split_records(recs[:2], 0.10, 0.05, seed=1)


def test_ids_are_chat_prompt_then_answer_then_eot(tokenizer):
    """The prompt part is exactly what chat/serve send: tokenizer.encode(template.render(...))."""
    eot = require_eot(tokenizer)
    record = to_record({"instruction": "What colour is the sky?", "output": "Blue."})
    for name in ("alpaca", "chatml", "simple", "plain"):
        template = get_template(name)
        (seq,) = encode_sequences(record, template, tokenizer)
        prompt = tokenizer.encode(template.render(record.messages[:1]))
        assert seq.ids[:len(prompt)] == prompt and not any(seq.mask[:len(prompt)])
        answer = seq.ids[len(prompt):]
        assert all(seq.mask[len(prompt):]) and answer[-1] == eot
        assert tokenizer.decode(answer[:-1]).strip() == "Blue."
    # simple's answer follows "Assistant:" after a space, as the history renders it
    assert answer_text(get_template("simple"), record.messages, 1) == " Blue."


def test_multi_turn_gives_one_sequence_per_answer(tokenizer):
    record = to_record({"messages": [{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Hello."},
                                     {"role": "user", "content": "Bye"},
                                     {"role": "assistant", "content": "Goodbye."}]})
    template = get_template("chatml")
    first, second = encode_sequences(record, template, tokenizer)
    # Each is the prompt chat shows at that turn: the second one's history has the first answer.
    prompt2 = tokenizer.encode(template.render(record.messages[:3]))
    assert second.ids[:len(prompt2)] == prompt2 and not any(second.mask[:len(prompt2)])
    assert tokenizer.decode(second.ids[len(prompt2):-1]) == "Goodbye."
    answer = [t for t, m in zip(first.ids, first.mask, strict=True) if m]
    assert tokenizer.decode(answer[:-1]) == "Hello."


def test_truncation_is_counted_and_prompt_only_sequences_skipped(tokenizer):
    long_answer = to_record({"prompt": "Tell me.", "completion": "word " * 200})
    long_prompt = to_record({"prompt": "word " * 300, "completion": "ok"})
    short = to_record({"prompt": "Hi", "completion": "Hello."})
    for r, where in ((long_answer, "record 0"), (long_prompt, "record 1"), (short, "record 2")):
        r.where = where
    items, report = encode_all([long_answer, long_prompt, short], get_template("simple"), tokenizer,
                               block_size=64, what="train")
    assert len(items) == 2 and report.truncated == 1 and len(items[0].ids) == 65
    assert report.problems.skipped == 1
    assert "the prompt alone is longer than the context (64 tokens) (first: record 1)" in \
        report.problems.summary("x")


def test_preference_pair_shares_the_prompt(tokenizer):
    record = Record([{"role": "user", "content": "Q?"}], chosen="Yes.", rejected="No.")
    pair = encode_pair(record, get_template("alpaca"), tokenizer)
    assert pair.prompt == tokenizer.encode(get_template("alpaca").render(record.messages))
    assert pair.chosen[-1] == pair.rejected[-1] == tokenizer.eot_id
    assert tokenizer.decode(pair.chosen[:-1]) == "Yes."


def test_a_template_that_cannot_train_and_a_tokenizer_without_eot():
    odd = ChatTemplate("odd", "answers quoted", lambda ms: "".join(
        f"<{m['content']}>" if m["role"] == "assistant" else m["content"] for m in ms) + "A: ")
    with pytest.raises(LyreError, match="cannot be used for fine-tuning"):
        answer_text(odd, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], 1)
    from lyre.tokenizers import CharTokenizer

    char = CharTokenizer("abc", eot=False)  # saved before char tokenizers reserved <|endoftext|>
    with pytest.raises(LyreError, match="needs a tokenizer with <\\|endoftext\\|>.*train the base again"):
        require_eot(char)


def test_records_round_trip_through_the_run_copy(tmp_path):
    from lyre.finetune.records import write_records

    recs, _ = read_records(write_json(tmp_path / "d.json", colour_records(5)))
    write_records(tmp_path / "train.jsonl", recs)
    again, problems = read_records(tmp_path / "train.jsonl")
    assert [r.messages for r in again] == [r.messages for r in recs] and not problems.skipped
    assert json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])["messages"][0]["role"] == "user"


def test_no_sequence_left_says_why_in_its_one_line(tokenizer):
    """The notes are printed only after a successful preparation, so the error itself carries
    the reason every record was dropped (it said "see the reasons above" with nothing above)."""
    from lyre.finetune.prepare import encode_splits
    from lyre.finetune.records import Splits
    from lyre.finetune.tasks import get_task

    records = [to_record(r) for r in colour_records(6)]
    splits = Splits(train=records, val=[], test=[])
    with pytest.raises(LyreError) as e:
        encode_splits(get_task("sft"), splits, get_template("alpaca"), tokenizer, 8, [])
    message = str(e.value)
    assert "\n" not in message and "6 of 6 records of the train split skipped" in message
    assert "block_size" in message and "above" not in message
