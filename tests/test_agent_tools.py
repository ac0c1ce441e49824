"""The built-in tools (calculator, sql, search) and @tool: what they compute, what they refuse,
and that a refusal leaves no trace (the database file's bytes unchanged)."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Literal, Optional

import pytest

from lyre.agent import ToolError, builtin_tool, parse_tools, tool
from lyre.agent.calculator import calculate, calculator
from lyre.agent.sql import format_table, sql_tool
from lyre.core.errors import LyreError

# ----------------------------------------------------------------------------------------------
# calculator


@pytest.mark.parametrize("expression, value", [
    ("48213 * 371", "17887023"),
    ("48,213 * 371", "17887023"),  # thousands separators, as people write them
    ("48213 × 371", "17887023"),
    ("(2 + 3) ** 2", "25"),
    ("-7 // 2", "-4"),
    ("17 % 5", "2"),
    ("10 / 4", "2.5"),
    ("7 / 7", "1"),  # a whole float reads as an integer
    ("1e3 + 0.5", "1000.5"),
    ("2 ** -1", "0.5"),
    ("2 ** 4000 // 2 ** 3999", "2"),
    ("+(3)", "3"),
])
def test_calculator_computes(expression, value):
    assert calculator(expression) == value


@pytest.mark.parametrize("expression, error", [
    ("__import__('os').system('touch /tmp/pwned')", "only numbers"),
    ("open('/etc/passwd').read()", "only numbers"),
    ("(1).__class__", "only numbers"),
    ("[1, 2][0]", "not an arithmetic expression|only numbers"),
    ("2**10**10", "exponent .* too large"),
    ("10 ** 100000", "exponent .* too large"),
    ("9 ** 9999", "more than 4096 bits"),
    ("(2 ** 3000) * (2 ** 3000)", "more than 4096 bits"),
    ("10.0 ** 400", "too large"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("(-8) ** 0.5", "not a real number"),
    ("2 ^ 8", r"write \*\*"),
    ("1 < 2", "only numbers"),
    ("", "empty"),
    ("1 +", "not an arithmetic expression"),
    ("(" * 300 + "1" + ")" * 300, "longer than 500|nested|not an arithmetic"),
    ("9" * 600, "longer than 500"),
    ("True + 1", "only numbers"),
])
def test_calculator_refuses(expression, error):
    started = time.perf_counter()
    with pytest.raises(ToolError, match=error):
        calculate(expression)
    assert time.perf_counter() - started < 1.0  # refused before any large work


# The declaration tool-use models are fine-tuned on (lyre data calculator), character for
# character: it is part of the prompt they learned.
CALCULATOR_DECLARATION = (
    '{"type": "function", "function": {"name": "calculator", "description": "Evaluate an '
    'arithmetic expression: numbers, + - * / // % ** and parentheses.", "parameters": {"type": '
    '"object", "properties": {"expression": {"type": "string", "description": "the expression, '
    'e.g. \\"48213 * 371\\" or \\"(2 + 3) ** 2\\""}}, "required": ["expression"]}}}')


def test_the_calculator_tool_contract():
    import json

    calc = builtin_tool("calculator")
    assert json.dumps(calc.spec().declaration()) == CALCULATOR_DECLARATION
    assert calc.name == "calculator"
    assert calc.parameters["properties"]["expression"]["type"] == "string"
    assert calc.parameters["required"] == ["expression"]
    assert calc.invoke({"expression": "6 * 7"}) == "42"
    with pytest.raises(ToolError, match="'expression' is a required property"):
        calc.invoke({"expr": "6 * 7"})
    with pytest.raises(TypeError):  # an extra argument: the loop answers it as an error
        calc.invoke({"expression": "1", "x": 2})


# ----------------------------------------------------------------------------------------------
# sql


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def shop(tmp_path) -> Path:
    db = tmp_path / "shop.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    conn.executemany("INSERT INTO items (name, price) VALUES (?, ?)",
                     [("pen", 1.5), ("book", 12.0), ("lamp", 30.25), ("cup", None)])
    conn.commit()
    conn.close()
    return db


def test_sql_selects_rows_as_a_table(shop):
    sql = builtin_tool(f"sql:{shop}")
    assert sql.name == "sql" and "CREATE TABLE items" in sql.description
    out = sql.invoke({"query": "SELECT name, price FROM items ORDER BY id"})
    assert out.splitlines() == ["name | price", "-----+------", "pen  | 1.5", "book | 12.0",
                                "lamp | 30.25", "cup  | NULL"]
    assert "(no rows)" in sql.invoke({"query": "SELECT * FROM items WHERE price > 100"})
    out = sql.invoke({"query": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n "
                               "WHERE x < 3) SELECT x FROM n"})
    assert out.splitlines()[2:] == ["1", "2", "3"]
    assert "name" in sql.invoke({"query": "PRAGMA table_info(items)"})  # reading the schema


def test_sql_caps_the_rows(shop):
    sql = sql_tool(shop, max_rows=2)
    out = sql.invoke({"query": "SELECT name FROM items"})
    assert out.splitlines()[2:] == ["pen", "book", "(more rows not shown: the first 2 only)"]


@pytest.mark.parametrize("query, error", [
    ("DROP TABLE items", r"only reading is allowed, not DELETE \(on sqlite_master\)"),
    ("DELETE FROM items", r"only reading is allowed, not DELETE \(on items\)"),
    ("INSERT INTO items (name) VALUES ('x')", r"only reading is allowed, not INSERT \(on items\)"),
    ("UPDATE items SET price = 0", "only reading is allowed, not UPDATE"),
    ("ATTACH DATABASE '{other}' AS other", "only reading is allowed, not ATTACH"),
    ("PRAGMA user_version = 7", "only reading is allowed, not PRAGMA user_version"),
    ("PRAGMA journal_mode = DELETE", "only reading is allowed, not PRAGMA journal_mode"),
    ("CREATE TABLE t (x)", "only reading is allowed, not INSERT"),
    ("BEGIN", "only reading is allowed, not TRANSACTION"),
    ("SELECT 1; DROP TABLE items", "only one statement"),
    ("SELECT * FROM missing", "SQL error: no such table"),
    ("VACUUM INTO '{other}'", "only reading is allowed"),
    ("", "the query is empty"),
])
def test_sql_refuses_anything_but_reading_and_leaves_the_file_unchanged(shop, tmp_path, query, error):
    other = tmp_path / "other.sqlite"
    before = _digest(shop)
    files = sorted(p.name for p in tmp_path.iterdir())
    sql = builtin_tool(f"sql:{shop}")
    with pytest.raises(ToolError, match=error):
        sql.invoke({"query": query.format(other=other)})
    assert _digest(shop) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # nothing created beside it


def test_a_slow_recursive_query_hits_the_time_limit(shop):
    sql = sql_tool(shop, time_limit_s=0.3)
    before = _digest(shop)
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"longer than 0.3 s"):
        sql.invoke({"query": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) "
                             "SELECT count(*) FROM n"})
    assert time.monotonic() - started < 3
    assert _digest(shop) == before


def test_format_table_cuts_long_cells():
    out = format_table(["t"], [("x" * 200,), (b"\x00\x01",)])
    assert out.splitlines()[2].endswith("...") and len(out.splitlines()[2]) == 80
    assert out.splitlines()[3] == "<2 bytes>"


def test_a_missing_or_broken_database_is_an_error_now(tmp_path):
    with pytest.raises(LyreError, match="sql: no database file"):
        builtin_tool(f"sql:{tmp_path / 'missing.sqlite'}")
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database at all, but long enough to have a header" * 10)
    with pytest.raises(LyreError, match="not a SQLite database"):
        builtin_tool(f"sql:{bad}")
    assert not (tmp_path / "missing.sqlite").exists()  # mode=ro never creates one


# ----------------------------------------------------------------------------------------------
# search


@pytest.fixture
def index(tmp_path) -> Path:
    from lyre.rag import SplitConfig, index_paths, open_store

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "troy.txt").write_text("Andromache was the wife of Hector, prince of Troy.\n\n"
                                   "Hector was killed by Achilles before the walls.")
    (docs / "ships.txt").write_text("The Achaeans came to Troy in a thousand black ships.")
    store = open_store(tmp_path / "idx", create=True)
    index_paths([docs], store, split=SplitConfig(80, 0))
    store.close()
    return tmp_path / "idx"


def test_search_returns_passages_with_their_sources(index):
    search = builtin_tool(f"search:{index}")
    assert search.name == "search" and list(search.parameters["properties"]) == ["query"]
    out = search.invoke({"query": "Who was the wife of Hector?"})
    first = out.split("\n\n")[0]
    assert first.startswith("[1] ") and "troy.txt" in first and "Andromache" in first
    assert "chars " in first


def test_search_needs_an_index(tmp_path):
    with pytest.raises(LyreError, match="search: no index"):
        builtin_tool(f"search:{tmp_path / 'nothing'}")
    with pytest.raises(LyreError, match="needs its index: search:INDEX"):
        builtin_tool("search")


# ----------------------------------------------------------------------------------------------
# names and @tool


def test_tool_names_are_checked():
    with pytest.raises(LyreError, match=r"unknown tool 'calculater' \(did you mean calculator\?\)"):
        parse_tools("calculater")
    with pytest.raises(LyreError, match="--tools is empty"):
        parse_tools(" , ")
    with pytest.raises(LyreError, match="names calculator twice"):
        parse_tools("calculator,calculator")
    with pytest.raises(LyreError, match="takes no argument"):
        parse_tools("calculator:x")


def test_the_schema_comes_from_type_hints_defaults_and_the_docstring():
    @tool
    def find(city: str, unit: Literal["c", "f"] = "c", days: list[int] | None = None,
             exact: bool = False, scale: Optional[float] = None) -> dict:  # noqa: UP045
        """Look up the weather.

        More text that is not the description.

        Args:
            city: the city's name,
                in English
            unit: c or f
        Returns:
            a dict
        """
        return {"city": city, "unit": unit}

    assert find.name == "find" and find.description == "Look up the weather."
    assert find.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "the city's name, in English"},
            "unit": {"type": "string", "enum": ["c", "f"], "description": "c or f", "default": "c"},
            "days": {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "null"}],
                     "default": None},
            "exact": {"type": "boolean", "default": False},
            "scale": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None},
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    assert find("Troy") == {"city": "Troy", "unit": "c"}  # still a function
    assert find.invoke({"city": "Troy", "unit": "f"}) == '{"city": "Troy", "unit": "f"}'
    with pytest.raises(ToolError, match="'k' is not one of"):
        find.invoke({"city": "Troy", "unit": "k"})


def test_unsupported_hints_are_one_line_errors():
    with pytest.raises(LyreError, match="parameter x has no type hint"):
        @tool
        def f(x):  # noqa: ANN001
            return x
    with pytest.raises(LyreError, match="parameter x has the type"):
        @tool
        def g(x: set[int]) -> int:
            return 0
    with pytest.raises(LyreError, match=r"\*args"):
        @tool
        def h(*xs: int) -> int:
            return 0
