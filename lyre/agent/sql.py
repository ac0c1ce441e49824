"""The `sql` tool: one read-only SELECT on a SQLite file.

    sql = sql_tool("shop.sqlite")
    sql.invoke({"query": "SELECT name, price FROM items ORDER BY price LIMIT 3"})
    # name  | price
    # ------+------
    # pen   | 1.5
    # ...

Safe by construction, three locks deep:
1. The file is opened read-only by SQLite itself (URI `file:...?mode=ro`): no statement can
   write to it, whatever this module gets wrong.
2. An authorizer (sqlite3.Connection.set_authorizer) is asked by SQLite for every action a
   statement would take while it is compiled; only reading (SELECT, reading columns, functions,
   recursive CTEs, a few schema-reading PRAGMAs) is allowed, so DROP, INSERT, ATTACH or a
   PRAGMA that sets something is refused before it runs. SQLite parses the SQL, not us: no
   string matching to get wrong.
3. A time limit (a progress handler called every few thousand virtual-machine instructions
   interrupts the query past its deadline) and a row cap, so a recursive CTE that never ends
   or a cross join of millions of rows costs at most the limit.
One statement per call: sqlite3 refuses a second one. The connection is opened per call, in the
thread that runs it (SQLite connections belong to their thread).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from lyre.agent.tools import Tool, ToolError
from lyre.core.errors import LyreError

MAX_ROWS = 50
MAX_CELL_CHARS = 80
PROGRESS_EVERY = 10_000  # virtual-machine instructions between two looks at the clock
DEFAULT_TIME_LIMIT_S = 2.0
# PRAGMAs that only read the schema: the model may look at the tables this way.
READ_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info",
                "foreign_key_list"}
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
            getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
# The authorizer's action codes by name, for the refusal's message.
_ACTIONS = {getattr(sqlite3, f"SQLITE_{n}", None): n.replace("_", " ") for n in (
    "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE",
    "CREATE_TEMP_TRIGGER", "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "DELETE",
    "DROP_INDEX", "DROP_TABLE", "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER",
    "DROP_TEMP_VIEW", "DROP_TRIGGER", "DROP_VIEW", "INSERT", "PRAGMA", "TRANSACTION", "UPDATE",
    "ATTACH", "DETACH", "ALTER_TABLE", "REINDEX", "ANALYZE", "CREATE_VTABLE", "DROP_VTABLE",
    "SAVEPOINT")}


def open_readonly(path: Path) -> sqlite3.Connection:
    """A connection that SQLite itself will not let write (URI mode=ro)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)


class SqlTool:
    """The database behind the tool; `run(query)` is one call."""

    def __init__(self, path: str | Path, max_rows: int = MAX_ROWS,
                 time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise LyreError(f"sql: no database file {self.path}")
        self.max_rows, self.time_limit_s = max_rows, time_limit_s
        try:
            conn = open_readonly(self.path)
            try:
                rows = conn.execute("SELECT sql FROM sqlite_master WHERE type IN ('table', 'view') "
                                    "AND sql IS NOT NULL ORDER BY name").fetchall()
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            raise LyreError(f"sql: {self.path} is not a SQLite database ({e})") from None
        self.schema = "\n".join(" ".join(r[0].split()) for r in rows)

    def description(self) -> str:
        schema = self.schema if len(self.schema) <= 2000 else self.schema[:2000] + " ..."
        return ("Run one read-only SQL SELECT on the SQLite database "
                f"{self.path.name} and get the rows as a table (at most {self.max_rows}). "
                f"Its tables: {schema or '(none)'}")

    def run(self, query: str) -> str:
        if not isinstance(query, str) or not query.strip():
            raise ToolError("the query is empty")
        conn = open_readonly(self.path)
        refused: list[str] = []
        conn.set_authorizer(lambda *a: _authorize(refused, *a))
        deadline = time.monotonic() + self.time_limit_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_EVERY)
        try:
            cursor = conn.execute(query)
            rows = cursor.fetchmany(self.max_rows + 1)
            columns = [d[0] for d in cursor.description or ()]
        except sqlite3.Warning:  # sqlite3's "You can only execute one statement at a time."
            raise ToolError("only one statement per call") from None
        except sqlite3.ProgrammingError as e:
            raise ToolError(f"only one statement per call ({e})") from None
        except sqlite3.DatabaseError as e:
            if refused:
                raise ToolError(f"refused: only reading is allowed, not {refused[0]}") from None
            if "interrupted" in str(e):
                raise ToolError(f"the query took longer than {self.time_limit_s:g} s; "
                                "it was stopped") from None
            raise ToolError(f"SQL error: {e}") from None
        finally:
            conn.close()
        if not columns:
            raise ToolError("only SELECT queries are allowed")
        return format_table(columns, rows[:self.max_rows], more=len(rows) > self.max_rows)


def _authorize(refused: list[str], action: int, arg1, arg2, db_name, trigger) -> int:
    """SQLite asks before each action of a statement being compiled: read, or nothing."""
    if action in _ALLOWED:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in READ_PRAGMAS:  # (their argument is a table)
        return sqlite3.SQLITE_OK
    what = _ACTIONS.get(action, f"action {action}")
    refused.append(f"{what} {arg1}" if arg1 and action == sqlite3.SQLITE_PRAGMA
                   else f"{what} (on {arg1})" if arg1 else what)
    return sqlite3.SQLITE_DENY


def format_table(columns: list[str], rows: list[tuple], more: bool = False) -> str:
    """Rows as a small text table: a header, a rule, one line per row."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(columns), "-+-".join("-" * w for w in widths)] + [line(r) for r in cells]
    if not rows:
        out.append("(no rows)")
    if more:
        out.append(f"(more rows not shown: the first {len(rows)} only)")
    return "\n".join(out)


def _cell(value) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, bytes):
        text = f"<{len(value)} bytes>"
    else:
        text = str(value).replace("\n", " ")
    return text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS - 3] + "..."


def sql_tool(path: str | Path, max_rows: int = MAX_ROWS,
             time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> Tool:
    """The `sql(query)` tool over the SQLite file `path` (a LyreError now if it is missing)."""
    db = SqlTool(path, max_rows, time_limit_s)

    def sql(query: str) -> str:
        return db.run(query)

    return Tool("sql", db.description(),
                {"type": "object",
                 "properties": {"query": {"type": "string",
                                          "description": "one SQLite SELECT statement"}},
                 "required": ["query"], "additionalProperties": False},
                sql, timeout_s=time_limit_s + 2.0)
