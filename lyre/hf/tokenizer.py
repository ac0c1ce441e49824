"""Tokenizers between Hugging Face files and lyre's three kinds, in both directions.

In: GPT-2's BPE (vocab.json + merges.txt, or the same vocabulary inside tokenizer.json) becomes
lyre's gpt2 tokenizer (tiktoken, files encoder.json + vocab.bpe); another byte-level BPE
tokenizer.json becomes a bpe tokenizer; a single-character WordLevel (what export writes for
char models) becomes a char tokenizer.

Out: files that transformers' AutoTokenizer loads and that give exactly lyre's ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lyre.core.errors import LyreError, first_line
from lyre.hf.files import read_json
from lyre.tokenizers import (
    EOT,
    BPETokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    load_tokenizer,
)

GPT2_VOCAB_SIZE = 50257  # what lyre's gpt2 tokenizer (GPT-2's own vocabulary) holds


# ----------------------------------------------------------------------------------------------
# In


def import_tokenizer(src: Path, dest: Path) -> Tokenizer:
    """Write the tokenizer of a Hugging Face directory as a lyre tokenizer directory and load it.

    GPT-2's BPE (vocab.json + merges.txt, or the same inside tokenizer.json) becomes lyre's gpt2
    tokenizer (tiktoken); another byte-level BPE tokenizer.json becomes a bpe tokenizer; a
    single-character WordLevel (what export_hf writes for char models) becomes a char tokenizer.
    """
    src, dest = Path(src), Path(dest)
    if (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
        vocab = read_json(src / "vocab.json")
        if _is_gpt2_vocab(vocab):
            _write_gpt2_files(dest, vocab, read_merges(src / "merges.txt"))
            return GPT2Tokenizer(dest)  # checks that the merges belong to the vocabulary
    path = src / "tokenizer.json"
    if not path.is_file():
        raise LyreError(
            f"no usable tokenizer in {src} (GPT-2's vocab.json + merges.txt, or tokenizer.json); "
            "pass one with --tokenizer gpt2:DIR or a lyre tokenizer directory"
        )
    data = read_json(path)
    if (chars := _char_vocab(data)) is not None:
        tokenizer: Tokenizer = CharTokenizer(chars[0], unk=chars[1], eot=_has_eot_after(data, chars[0]))
    elif (bpe := _byte_level_bpe(data)) is not None:
        if _is_gpt2_vocab(bpe[0]):  # GPT-2's own: run it on tiktoken, like every gpt2 run
            _write_gpt2_files(dest, *bpe)
            return GPT2Tokenizer(dest)
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tokenizer = BPETokenizer(HFTokenizer.from_str(json.dumps(data)))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise LyreError(f"{path} is not a valid tokenizers file ({first_line(e)})") from None
    else:
        raise LyreError(f"{path} is neither a byte-level BPE nor a char vocabulary; lyre cannot use it")
    tokenizer.save(dest)
    return tokenizer


def tokenizer_for_import(src: Path, dest: Path, spec: str | None) -> Tokenizer:
    """The tokenizer of SRC, or the one `spec` names ("gpt2:DIR" or a lyre directory), at dest."""
    if spec is None:
        return import_tokenizer(src, dest)
    tokenizer = load_tokenizer(spec)
    tokenizer.save(dest)
    return load_tokenizer(dest)


def tokenizer_spec(tokenizer: Tokenizer, directory: Path) -> str:
    """A data.tokenizer spec for the run's config (gpt2 points at the run's own files)."""
    if tokenizer.kind == "gpt2":
        return f"gpt2:{directory.resolve()}"
    return "char" if tokenizer.kind == "char" else f"bpe:{tokenizer.vocab_size}"


def read_merges(path: Path) -> list[str]:
    """The merge lines of merges.txt / vocab.bpe, without the "#version" header."""
    lines = path.read_text(encoding="utf-8").split("\n")
    return [line for line in lines if line and not line.startswith("#version")]


def _is_gpt2_vocab(vocab: Any) -> bool:
    return isinstance(vocab, dict) and len(vocab) == GPT2_VOCAB_SIZE and vocab.get(EOT) == GPT2_VOCAB_SIZE - 1


def _byte_level_bpe(data: dict[str, Any]) -> tuple[dict[str, int], list[str]] | None:
    """vocab and merges of a byte-level BPE tokenizer.json (None if it is not one)."""
    model = data.get("model") or {}
    if model.get("type") != "BPE" or (data.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        return None
    vocab = dict(model.get("vocab") or {})
    for added in data.get("added_tokens") or []:
        vocab.setdefault(added["content"], added["id"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return vocab, merges


def _write_gpt2_files(dest: Path, vocab: dict[str, int], merges: list[str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "encoder.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (dest / "tokenizer.json").write_text(json.dumps({"kind": "gpt2", "vocab_size": len(vocab)}) + "\n")


def _char_vocab(data: dict[str, Any]) -> tuple[list[str], str | None] | None:
    """The characters of a tokenizer.json written by export_hf for a char tokenizer."""
    model = data.get("model") or {}
    if model.get("type") != "WordLevel":
        return None
    vocab = model.get("vocab") or {}
    chars = sorted(vocab, key=vocab.get)
    if any(len(c) != 1 for c in chars) or chars != sorted(chars):
        return None
    if sorted(vocab.values()) != list(range(len(chars))):  # ids must be 0..n-1, no gaps
        return None
    return chars, model.get("unk_token") if model.get("unk_token") in vocab else None


def _has_eot_after(data: dict[str, Any], chars: list[str]) -> bool:
    """True if <|endoftext|> is an added token with the id after the last character."""
    return any(t.get("content") == EOT and t.get("id") == len(chars) for t in data.get("added_tokens") or [])


# ----------------------------------------------------------------------------------------------
# Out


def hf_tokenizer_files(tokenizer: Tokenizer, block_size: int) -> dict[str, str]:
    """File name -> text of a tokenizer that AutoTokenizer loads and that gives lyre's ids."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,  # would turn "a ." into "a." on decode
    }
    files: dict[str, str] = {}
    if tokenizer.kind == "gpt2":
        vocab = read_json(tokenizer.directory / "encoder.json")
        merges = read_merges(tokenizer.directory / "vocab.bpe")
        bpe = models.BPE(vocab, [tuple(m.split(" ")) for m in merges])
        hf = HFTokenizer(bpe)
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        hf.post_processor = processors.ByteLevel(trim_offsets=False)
        hf.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
        files["vocab.json"] = json.dumps(vocab, ensure_ascii=False)
        files["merges.txt"] = "#version: 0.2\n" + "\n".join(merges) + "\n"
        config.update(tokenizer_class="GPT2Tokenizer", add_prefix_space=False, add_bos_token=False)
    elif tokenizer.kind == "bpe":
        hf = HFTokenizer.from_str(tokenizer.hf.to_str())
    elif tokenizer.kind == "char":
        # One WordLevel token per character; the Split isolates every character, newlines too.
        vocab = {c: i for i, c in enumerate(tokenizer.chars)}
        hf = HFTokenizer(models.WordLevel(vocab, unk_token=tokenizer.unk))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        hf.decoder = decoders.Fuse()
        if tokenizer.eot_id is not None:  # the id after the last character, as in lyre
            hf.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
        if tokenizer.unk is not None:
            config["unk_token"] = tokenizer.unk
    else:
        raise LyreError(f"cannot export a {tokenizer.kind!r} tokenizer to Hugging Face format")
    if tokenizer.eot_id is not None:
        config.update(bos_token=EOT, eos_token=EOT)
    files["tokenizer.json"] = hf.to_str(pretty=True)
    files["tokenizer_config.json"] = json.dumps(config, indent=2)
    return files
