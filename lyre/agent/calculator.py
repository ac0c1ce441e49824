"""The `calculator` tool: arithmetic, safe by construction.

    calculator(expression="48213 * 371")  ->  "17887023"

The expression is parsed with Python's `ast` and walked node by node; only numbers, the
operators + - * / // % ** (and unary + -) and parentheses are evaluated. Nothing else exists in
this little language, so `__import__('os')`, names, calls, attributes and subscripts are
refused by construction; `eval` is never called. Size is bounded before it is spent: an
exponent's result is estimated from the operands' sizes first, so `2**10**10` is refused in
microseconds instead of filling the memory, and every intermediate result is checked.

Numbers may be written with thousands separators ("48,213") and the signs x, ×, ÷, − that
people (and small models trained on people's text) write; `^` is refused with a hint, since in
Python it is not a power.
"""

from __future__ import annotations

import ast
import math
import operator
import re

from lyre.agent.tools import Tool, ToolError

MAX_CHARS = 500  # of an expression
MAX_BITS = 4096  # of an integer result (about 1,233 digits)
MAX_EXPONENT = 10_000

_OPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_SIGNS = str.maketrans({"×": "*", "÷": "/", "−": "-", "x": "*", "X": "*"})
_EXPONENT = re.compile(r"(?<=[\d.])[eE](?=[+-]?\d)")  # 1e5, 2.5E-3
_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d])")


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression; ToolError for anything else."""
    if not isinstance(expression, str) or not expression.strip():
        raise ToolError("the expression is empty")
    if len(expression) > MAX_CHARS:
        raise ToolError(f"the expression is longer than {MAX_CHARS} characters")
    text = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), expression)
    if "^" in text:
        raise ToolError("^ is not a power here; write ** (2**8)")
    text = text.translate(_SIGNS).strip()
    if re.search(r"[A-Za-z_]", _EXPONENT.sub("", text)):  # names: nothing to look up here
        raise ToolError(f"only numbers and + - * / // % ** ( ) are allowed: {expression!r}")
    try:
        return _eval(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError):  # ValueError: a literal with too many digits
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None
    except RecursionError:
        raise ToolError("the expression is nested too deeply") from None


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            return _checked(_OPS[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large") from None
    raise ToolError(f"only numbers and + - * / // % ** ( ) are allowed, not {_what(node)}")


def _check_power(base: int | float, exponent: int | float) -> None:
    """Refuse a power whose result would be too large, before computing it."""
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"the exponent {exponent:g} is too large (at most {MAX_EXPONENT})")
    if base == 0 and exponent < 0:
        raise ToolError("division by zero (0 to a negative power)")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 \
            and abs(base) > 1 and (abs(base).bit_length() - 1) * exponent > MAX_BITS:
        raise ToolError(f"the result has more than {MAX_BITS} bits; too large")
    if base < 0 and not float(exponent).is_integer():
        raise ToolError("a negative number to a fractional power is not a real number")


def _checked(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ToolError(f"the result has more than {MAX_BITS} bits; too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is too large")
    if isinstance(value, complex):
        raise ToolError("the result is not a real number")
    return value


def _what(node: ast.AST) -> str:
    if isinstance(node, ast.Constant):
        return f"the constant {node.value!r}"
    return {ast.Call: "calls", ast.Name: "names", ast.Attribute: "attributes",
            ast.Subscript: "subscripts", ast.Compare: "comparisons", ast.BoolOp: "and/or",
            ast.Tuple: "commas"}.get(type(node), type(node).__name__)


def format_number(value: int | float) -> str:
    """An integer as its digits; a float in its shortest form, whole ones without '.0'
    (7/7 -> '1'), so that an exact answer reads exactly."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses.

    Args:
        expression: the expression, e.g. "48213 * 371" or "(2 + 3) ** 2"
    """
    return format_number(calculate(expression))


def calculator_tool(timeout_s: float = 2.0) -> Tool:
    """The built-in `calculator`. Its declaration is what tool-use models are fine-tuned on
    (lyre.data.calculator's CALCULATOR_TOOL, `lyre data calculator`), character for character:
    the tool list is part of the prompt a model learned. So it is written out here, not derived
    by @tool, and its schema stays as trained (no "additionalProperties": a call with extra
    arguments is answered as an error)."""
    import inspect

    from lyre.agent.tools import function_schema, parse_docstring

    description, arg_docs = parse_docstring(inspect.getdoc(calculator) or "")
    parameters = function_schema(calculator, arg_docs)
    del parameters["additionalProperties"]
    return Tool("calculator", description, parameters, calculator, timeout_s)
