"""The little our own SQL needs to run on both backends: placeholders and multi-row inserts.

The table modules write SQL once, with ``?`` placeholders, in the dialect
SQLite and PostgreSQL share. Two things differ, and are handled here, in one
place each: PostgreSQL numbers its placeholders (``$1, $2, ...``), and how
many bound parameters one statement may carry.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

# "INSERT ... VALUES (?, ?, ...) [ON CONFLICT ...]": such a statement can take
# many rows at once, by repeating its row of placeholders.
_INSERT_RE = re.compile(
    r"^(?P<head>\s*INSERT\b.*?\bVALUES\s*)(?P<row>\(\s*\?(?:\s*,\s*\?)*\s*\))"
    r"(?P<tail>\s*(?:ON\s+CONFLICT\b.*)?)$",
    re.IGNORECASE | re.DOTALL,
)
_DO_UPDATE_RE = re.compile(r"\bDO\s+UPDATE\b", re.IGNORECASE)
# "INSERT INTO table (a, b) VALUES (?, ?)" and nothing more: rows a COPY can take.
_PLAIN_INSERT_RE = re.compile(
    r"^\s*INSERT\s+INTO\s+(?P<table>\w+)\s*\((?P<columns>\s*\w+(?:\s*,\s*\w+)*\s*)\)"
    r"\s*VALUES\s*\(\s*\?(?:\s*,\s*\?)*\s*\)\s*$",
    re.IGNORECASE,
)

MAX_ROWS_PER_STATEMENT = 500
"""Rows one multi-row INSERT takes at most: past this the statement text and
its parameter list cost more to build than the round trips they save."""


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """``sql`` with each ``?`` placeholder replaced by ``$1``, ``$2``, ... in order.

    For our own SQL only: a ``?`` inside a string literal (``'...'``, with
    ``''`` as an escaped quote) or a quoted identifier (``"..."``) is left
    alone; comments are not expected and not parsed.
    """
    out: list[str] = []
    n = 0
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            # A doubled quote closes and reopens: the same state either way.
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    return "".join(out)


def copy_target(sql: str) -> tuple[str, list[str]] | None:
    """The table and columns of ``sql`` if it is a plain INSERT of one row of
    placeholders (no conflict clause, no literal values), else ``None``.

    Rows for such a statement may go by ``COPY`` instead: the same rows in
    the same columns, the same defaults for the others, far less work per row.
    """
    match = _PLAIN_INSERT_RE.match(sql)
    if match is None:
        return None
    columns = [c.strip() for c in match["columns"].split(",")]
    if len(columns) != sql.count("?"):
        return None
    return match["table"], columns


def multi_row(
    sql: str, rows: Sequence[Sequence[Any]], *, max_params: int, upsert_rows: bool
) -> list[tuple[str, Sequence[Any], bool]]:
    """``rows`` for ``sql`` as few statements as possible.

    An INSERT of many rows becomes multi-row ``VALUES (...), (...)``
    statements of at most ``max_params`` parameters: far less per-row work
    than one statement per row. Anything else is one ``executemany``.

    ``upsert_rows`` says whether an ``ON CONFLICT ... DO UPDATE`` may take
    several rows in one statement: SQLite applies them one by one, while
    PostgreSQL refuses one statement that updates the same row twice, so
    there such a statement stays an ``executemany``.

    Returns:
        (statement, parameters, whether the parameters are many rows for
        ``executemany``) for each statement to run, in order.
    """
    match = _INSERT_RE.match(sql)
    if (
        match is None
        or len(rows) < 2
        or (not upsert_rows and _DO_UPDATE_RE.search(match["tail"]) is not None)
    ):
        return [(sql, rows, True)]
    width = match["row"].count("?")
    per = max(1, min(MAX_ROWS_PER_STATEMENT, max_params // width))
    out: list[tuple[str, Sequence[Any], bool]] = []
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        statement = match["head"] + ", ".join([match["row"]] * len(chunk)) + match["tail"]
        out.append((statement, [value for row in chunk for value in row], False))
    return out
