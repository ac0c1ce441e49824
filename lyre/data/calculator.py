"""A synthetic tool-use task: arithmetic questions a model answers by calling a calculator.

Each record is an OpenAI-format chat conversation (what `lyre finetune` reads):

    {"tools": [the calculator's declaration],
     "messages": [
       {"role": "user", "content": "What is 48,213 times 371?"},
       {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function",
         "function": {"name": "calculator", "arguments": "{\"expression\": \"48213 * 371\"}"}}]},
       {"role": "tool", "tool_call_id": "call_0", "content": "17887023"},
       {"role": "assistant", "content": "The product is 17887023."}]}

The model learns to copy two numbers out of a question (dropping thousands separators, putting
them in the order the operation needs) and to copy the tool's result into its answer; the
arithmetic itself is the tool's. The no-tool variant (`tool=False`) answers in one assistant
turn with the same sentence: the baseline that must do the arithmetic itself.

Held-out numbers. An operand is *reserved* when a hash of its value says so (about one number
in eight, `is_reserved`). Training questions use only unreserved operands, held-out questions
only reserved ones, so a held-out question never shows the model a number it was trained on
(as an operand). The split depends on nothing but the numbers: any seed, any count.

Everything depends only on (count, seed, split, tool): the same records every time.
Torch-free; nothing here knows about tokens or templates.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lyre.core.errors import LyreError
from lyre.core.io import atomic_write_text

# The declaration of lyre's built-in calculator (lyre.agent: `calculator(expression: str)`),
# character for character: a model is trained on the prompt it will see at use, and the tool
# list is part of that prompt. tests/test_calculator.py checks the two agree.
CALCULATOR_TOOL: dict = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses.",
        "parameters": {
            "type": "object",
            "properties": {
                "expression": {
                    "type": "string",
                    "description": 'the expression, e.g. "48213 * 371" or "(2 + 3) ** 2"',
                },
            },
            "required": ["expression"],
        },
    },
}

OPERATORS = ("+", "-", "*", "//")
RESERVED_ONE_IN = 8  # about this share of numbers is held out
MIN_DIGITS, MAX_DIGITS = 1, 5  # of each operand (the first has 2 at least)

# Ways to ask, per operator: {a} and {b} are the operands as written (with or without thousands
# separators). "Subtract {b} from {a}" names them in the other order on purpose: the call must
# put them in the order the operation needs. A sum is written in the question's order ("add
# {a} to {b}" -> "a + b"): swapping the operands of + would teach an order nothing depends on.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "+": ("What is {a} plus {b}?", "Add {a} and {b}.", "What is the sum of {a} and {b}?",
          "How much is {a} + {b}?", "Calculate {a} + {b}.", "What do you get if you add {a} to {b}?"),
    "-": ("What is {a} minus {b}?", "Subtract {b} from {a}.", "How much is {a} minus {b}?",
          "What is {a} - {b}?", "What is the difference between {a} and {b}?",
          "Calculate {a} - {b}."),
    "*": ("What is {a} times {b}?", "Multiply {a} by {b}.", "What is the product of {a} and {b}?",
          "How much is {a} * {b}?", "What is {a} multiplied by {b}?", "Calculate {a} * {b}."),
    "//": ("What is {a} divided by {b}, rounded down?", "Divide {a} by {b}, dropping the remainder.",
           "What is {a} // {b}?", "How many whole times does {b} go into {a}?",
           "What is the integer quotient of {a} and {b}?", "Calculate {a} // {b}."),
}
# The final sentence names the result the way the operator calls it.
RESULT_NAMES = {"+": "sum", "-": "difference", "*": "product", "//": "quotient"}


@dataclass(frozen=True)
class Problem:
    """One question: `a OP b`, and how the question writes the numbers."""

    a: int
    op: str
    b: int
    phrasing: int = 0  # index into PHRASINGS[op]
    separators: bool = False  # "48,213" instead of "48213"

    @property
    def expression(self) -> str:
        """What the model must send the calculator."""
        return f"{self.a} {self.op} {self.b}"

    @property
    def result(self) -> int:
        return _APPLY[self.op](self.a, self.b)

    @property
    def question(self) -> str:
        fmt = "{:,}" if self.separators else "{}"
        return PHRASINGS[self.op][self.phrasing].format(a=fmt.format(self.a), b=fmt.format(self.b))

    @property
    def answer(self) -> str:
        """The final sentence; it holds the exact result (digits only, as the tool wrote it)."""
        return f"The {RESULT_NAMES[self.op]} is {self.result}."


_APPLY: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b,
    "*": lambda a, b: a * b, "//": lambda a, b: a // b,
}


def is_reserved(n: int) -> bool:
    """Whether `n` is one of the held-out numbers: a hash of its digits, one in RESERVED_ONE_IN."""
    digest = hashlib.blake2b(str(n).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % RESERVED_ONE_IN == 0


def _operand(rng: random.Random, reserved: bool, min_digits: int) -> int:
    digits = rng.randint(min_digits, MAX_DIGITS)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    while True:  # rejection: about RESERVED_ONE_IN tries for a reserved number
        n = rng.randint(low, 10 ** digits - 1)
        if is_reserved(n) == reserved and not (n == 0 and min_digits > 0):
            return n


def draw_problem(rng: random.Random, held_out: bool = False) -> Problem:
    """A random problem whose operands are reserved (held_out) or not (training)."""
    op = rng.choice(OPERATORS)
    a = _operand(rng, held_out, 2)
    b = _operand(rng, held_out, MIN_DIGITS)
    if op == "//":
        if b == 0:
            b = _operand(rng, held_out, 2)  # two digits: never zero
        a, b = max(a, b), min(a, b)  # a quotient worth asking for (not 0 every other time)
    return Problem(a, op, b, rng.randrange(len(PHRASINGS[op])), rng.random() < 0.5)


def problems(n: int, seed: int = 0, held_out: bool = False) -> list[Problem]:
    """`n` problems from (seed, split): the same list every time."""
    if n <= 0:
        raise LyreError(f"the number of records must be positive; got {n}")
    # Distinct streams for the two splits, so --seed S gives unrelated train and held-out sets.
    rng = random.Random(f"calculator:{seed}:{'held-out' if held_out else 'train'}")
    return [draw_problem(rng, held_out) for _ in range(n)]


def record(problem: Problem, tool: bool = True, call_id: str = "call_0") -> dict:
    """One problem as an OpenAI-format chat record (see the module docstring)."""
    question = {"role": "user", "content": problem.question}
    if not tool:
        return {"messages": [question, {"role": "assistant", "content": problem.answer}]}
    arguments = json.dumps({"expression": problem.expression})
    call = {"id": call_id, "type": "function",
            "function": {"name": "calculator", "arguments": arguments}}
    return {"tools": [CALCULATOR_TOOL], "messages": [
        question,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": str(problem.result)},
        {"role": "assistant", "content": problem.answer},
    ]}


def records(n: int, seed: int = 0, held_out: bool = False, tool: bool = True) -> Iterator[dict]:
    for i, p in enumerate(problems(n, seed, held_out)):
        yield record(p, tool, call_id=f"call_{i}")


def write_jsonl(path: str | Path, rows: Iterator[dict] | list[dict]) -> int:
    """Write records as JSONL (atomically); returns how many."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    write_text(path, text)
    return text.count("\n")


def write_text(path: str | Path, text: str) -> None:
    """Write a data file atomically, making its folder; a path it cannot write is one line."""
    path = Path(path)
    if path.is_dir():
        raise LyreError(f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError as e:
        raise LyreError(f"cannot write {path}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------------------------
# Scoring an answer

_SEPARATED = re.compile(r"(?<=\d),(?=\d{3})")
_INTEGER = re.compile(r"-?\d+")


def numbers_in(text: str) -> list[int]:
    """The integers a text states, thousands separators read ("17,887,023" is one number)."""
    return [int(m) for m in _INTEGER.findall(_SEPARATED.sub("", text or ""))]


def is_exact(answer: str | None, expected: int) -> bool:
    """Whether the answer states the exact result (as a whole number, not inside another)."""
    return expected in numbers_in(answer or "")


def expected_result(rec: dict) -> int:
    """The result a record's question asks for: its tool message, else its final answer's
    last number (the no-tool variant)."""
    for m in rec["messages"]:
        if m.get("role") == "tool":
            return int(m["content"])
    return numbers_in(rec["messages"][-1]["content"])[-1]
