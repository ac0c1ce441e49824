"""Use a classifier: texts in, a label and its probability out (`lyre classify`, the API, serve).

    clf = load_classifier("runs/spam")
    clf.classify(["Congratulations! You have won a free prize. Call 09061701461 now to claim"])[0]
    # Prediction(label='spam', probability=0.9985, probabilities={'ham': 0.0015, 'spam': 0.9985},
    #            tokens=31, truncated=False)       (the classifier of bench/classify.py)

The probability is the softmax of the head's logits. Texts longer than the model's context
keep their first tokens; each Prediction says whether its text was cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lyre.classify.build import load_classifier_model
from lyre.classify.encode import encode_text, run_token_limit
from lyre.classify.model import score
from lyre.core.errors import LyreError
from lyre.tokenizers import load_tokenizer


@dataclass
class Prediction:
    label: str
    probability: float  # of `label`
    probabilities: dict[str, float]  # every label's, in the run's label order
    tokens: int  # tokens the model read
    truncated: bool  # the text was longer than the context and lost its end

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probability": self.probability,
                "probabilities": self.probabilities, "tokens": self.tokens,
                "truncated": self.truncated}


class Classifier:
    """A classifier run loaded for inference (eval mode, LoRA merged)."""

    def __init__(self, run_dir: str | Path, checkpoint: str = "best",
                 device: str | torch.device = "auto") -> None:
        from lyre.core.devices import resolve_device

        self.run_dir = Path(run_dir)
        device = resolve_device(str(device))
        self.config, self.model, self.checkpoint = load_classifier_model(self.run_dir, checkpoint, device)
        self.section = self.config.extras["classify"]
        self.labels: list[str] = list(self.section.labels)
        self.tokenizer = load_tokenizer(self.run_dir / "tokenizer")
        self.limit = run_token_limit(self.config)

    def classify(self, texts: str | list[str], batch_size: int = 32) -> list[Prediction]:
        """One Prediction per text, in order. An empty text is a LyreError naming it."""
        if isinstance(texts, str):
            texts = [texts]
        seqs, cut = [], []
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                where = f"text {i + 1}" if len(texts) > 1 else "the text"
                raise LyreError(f"{where} is empty; give the classifier something to read")
            seq = encode_text(self.tokenizer, text)
            cut.append(len(seq) > self.limit)
            seqs.append(seq[: self.limit] or [self.section.pad_id])
        if not seqs:
            return []
        probs = torch.softmax(score(self.model, seqs, self.section.pad_id, self.section.pad_to,
                                    batch_size), dim=-1)
        out = []
        for row, seq, was_cut in zip(probs.tolist(), seqs, cut, strict=True):
            best = max(range(len(row)), key=row.__getitem__)
            out.append(Prediction(self.labels[best], row[best], dict(zip(self.labels, row, strict=True)),
                                  len(seq), was_cut))
        return out


def load_classifier(run_dir: str | Path, checkpoint: str = "best",
                    device: str | torch.device = "auto") -> Classifier:
    return Classifier(run_dir, checkpoint, device)


def classify(run_dir: str | Path, texts: str | list[str], **kwargs: Any) -> list[Prediction]:
    """Load RUN_DIR and classify `texts` (for one-off use; keep a Classifier for many calls)."""
    return load_classifier(run_dir, **kwargs).classify(texts)


def read_texts(given: list[str], file: Path | None, stdin: Any) -> list[str]:
    """The texts `lyre classify` was given: arguments, else a file or stdin, one per line
    (blank lines skipped). Not UTF-8, nothing to classify, or both sources: a LyreError."""
    from lyre.classify.data import read_text_file

    if given and file is not None:
        raise LyreError("give texts on the command line or --file, not both")
    if given:
        return list(given)
    if file is not None and str(file) != "-":
        lines, where = read_text_file(file).splitlines(), str(file)
    else:
        if file is None and stdin.isatty():
            raise LyreError("nothing to classify: give a TEXT, --file FILE, or pipe texts in (one per line)")
        data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8")
        try:
            lines, where = data.decode("utf-8-sig").splitlines(), "stdin"
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise LyreError(f"stdin is not UTF-8 text (byte {e.start}, line {line})") from None
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise LyreError(f"{where} holds no text to classify (one text per line)")
    return texts
