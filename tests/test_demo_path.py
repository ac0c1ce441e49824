"""From `make demo` to an assistant: a fresh char-level run can be fine-tuned (issue 19.11).

A tiny char run on a corpus with no digits and no '#' (like the Iliad) is fine-tuned with SFT on
instructions that use both, through the CLI, then answers in `lyre chat -p`.
"""

from __future__ import annotations

import json
from pathlib import Path

from cli_util import assert_one_line_error, run_cli

TINY = ["n_layer=1", "n_head=2", "n_embd=16", "block_size=64", "threads=1", "batch_size=2"]
CORPUS = "Sing, O goddess, the anger of Achilles son of Peleus! Who brought countless ills?\n" * 40
INSTRUCTIONS = [
    {"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"The sum is {2 * i + 1}."}
    for i in range(8)
] + [{"instruction": "Name a hero.", "input": "", "output": "Achilles, son of Peleus."}] * 4


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def make_base(tmp_path: Path, capsys) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    base = tmp_path / "base"
    code, _, err = run_cli(capsys, "train", "--config", "iliad-char", "--out", base,
                           *sets(f"data.corpus=['{corpus}']", "max_iters=2", "eval_interval=2", *TINY))
    assert code == 0, err
    return base


def test_fresh_char_run_is_fine_tuned_and_chats(tmp_path, capsys):
    base = make_base(tmp_path, capsys)
    data = tmp_path / "instructions.json"
    data.write_text(json.dumps(INSTRUCTIONS), encoding="utf-8")
    out = tmp_path / "assistant"
    code, stdout, err = run_cli(capsys, "finetune", base, "--data", data, "--out", out,
                                *sets("max_iters=2", "threads=1", "batch_size=2"))
    assert code == 0, err
    said = stdout + err
    # Digits are outside the corpus's vocabulary: replaced, and said so.
    assert "'1'" in said and "become '?'" in said, said
    # alpaca's opening alone would fill the 64-character context: the default becomes simple.
    assert "template simple" in said and json.loads((out / "config.json").read_text())[
        "chat_template"] == "simple"
    saved = json.loads((out / "tokenizer" / "tokenizer.json").read_text())
    assert saved["unk"] == "?" and saved["special_tokens"] == {"<|endoftext|>": len(saved["chars"])}
    # The base's own tokenizer is left as it was: it still refuses unknown characters.
    assert json.loads((base / "tokenizer" / "tokenizer.json").read_text())["unk"] is None
    code, _, err = run_cli(capsys, "chat", out, "-p", "Add 2 and 3.", "--max-new-tokens", "8",
                           "--seed", "1")
    assert code == 0, err


def test_char_base_without_endoftext_is_refused_clearly(tmp_path, capsys):
    """A char run saved before char tokenizers reserved <|endoftext|>: a one-line reason."""
    base = make_base(tmp_path, capsys)
    meta_path = base / "tokenizer" / "tokenizer.json"
    meta = json.loads(meta_path.read_text())
    del meta["special_tokens"]
    meta_path.write_text(json.dumps(meta))
    data = tmp_path / "instructions.json"
    data.write_text(json.dumps(INSTRUCTIONS), encoding="utf-8")
    code, _, err = run_cli(capsys, "finetune", base, "--data", data, "--out", tmp_path / "ft",
                           *sets("max_iters=2"))
    assert_one_line_error(code, err, r"<\|endoftext\|>.*train the base again")
