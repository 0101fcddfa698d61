"""store/sql.py and store/urls.py: placeholders, multi-row inserts, store URLs. No server."""

from __future__ import annotations

import pytest

from ctrlplane.store.sql import MAX_ROWS_PER_STATEMENT, copy_target, multi_row, numbered
from ctrlplane.store.urls import is_postgres_url, redact_store_url, store_url_problem


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", "SELECT 1"),
        (
            "SELECT a FROM t WHERE b = ? AND c IN (?, ?)",
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)",
        ),
        # A ? in a string literal or a quoted identifier is not a placeholder.
        ("SELECT '?', \"a?b\" FROM t WHERE x = ?", "SELECT '?', \"a?b\" FROM t WHERE x = $1"),
        ("SELECT 'it''s ?' WHERE y = ?", "SELECT 'it''s ?' WHERE y = $1"),
        ("INSERT INTO t VALUES (?, ?), (?, ?)", "INSERT INTO t VALUES ($1, $2), ($3, $4)"),
    ],
)
def test_placeholders_are_numbered_in_order_outside_quotes(sql: str, expected: str) -> None:
    assert numbered(sql) == expected


def test_an_insert_of_many_rows_becomes_few_statements() -> None:
    rows = [(i, f"r{i}") for i in range(1234)]
    out = multi_row("INSERT INTO t (a, b) VALUES (?, ?)", rows, max_params=32000, upsert_rows=True)
    assert [len(params) // 2 for _, params, _ in out] == [500, 500, 234]
    statement, params, many = out[2]
    assert not many
    assert statement.count("(?, ?)") == 234
    assert list(params[:4]) == [1000, "r1000", 1001, "r1001"]


def test_the_parameter_limit_bounds_a_statement() -> None:
    rows = [(1, 2, 3)] * 10
    out = multi_row("INSERT INTO t VALUES (?, ?, ?)", rows, max_params=9, upsert_rows=True)
    assert [len(p) for _, p, _ in out] == [9, 9, 9, 3]
    assert MAX_ROWS_PER_STATEMENT == 500


def test_a_conflict_clause_is_kept_after_the_rows() -> None:
    sql = "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO NOTHING"
    ((statement, params, many),) = multi_row(
        sql, [(1, 2), (3, 4)], max_params=100, upsert_rows=False
    )
    assert statement == "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) ON CONFLICT (a) DO NOTHING"
    assert list(params) == [1, 2, 3, 4] and not many


def test_an_upsert_stays_one_row_per_statement_where_the_backend_needs_it() -> None:
    # PostgreSQL refuses one statement that updates the same row twice.
    sql = "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO UPDATE SET b = excluded.b"
    rows = [(1, 2), (1, 3)]
    assert multi_row(sql, rows, max_params=100, upsert_rows=False) == [(sql, rows, True)]
    ((statement, _, many),) = multi_row(sql, rows, max_params=100, upsert_rows=True)
    assert statement.count("(?, ?)") == 2 and not many


@pytest.mark.parametrize(
    "sql",
    ["UPDATE t SET a = ? WHERE b = ?", "INSERT INTO t (a) SELECT ? WHERE 1", "DELETE FROM t"],
)
def test_anything_else_is_one_executemany(sql: str) -> None:
    rows = [(1, 2), (3, 4)]
    assert multi_row(sql, rows, max_params=100, upsert_rows=True) == [(sql, rows, True)]


def test_a_plain_insert_may_go_by_copy() -> None:
    sql = "INSERT INTO health_results (instance_id, time) VALUES (?, ?)"
    assert copy_target(sql) == ("health_results", ["instance_id", "time"])
    # Anything a COPY would not do the same way stays a statement.
    for other in (
        "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO NOTHING",
        "INSERT INTO t (a, b) VALUES (?, 'x')",
        "INSERT INTO t VALUES (?, ?)",
        "INSERT INTO t (a, b) SELECT ?, ?",
        "UPDATE t SET a = ?",
    ):
        assert copy_target(other) is None, other


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@w@h:1/db", "postgresql://u:***@h:1/db"),
        ("postgresql://u:p/w@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://u@h/db?sslmode=require&PASSWORD=pw",
            "postgresql://u@h/db?sslmode=require&PASSWORD=***",
        ),
        ("postgresql://h/db", "postgresql://h/db"),
        ("postgresql:///db?host=/run/postgresql", "postgresql:///db?host=/run/postgresql"),
    ],
)
def test_a_store_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_store_url(url) == shown


def test_which_urls_name_postgresql() -> None:
    assert is_postgres_url("postgresql://h/db") and is_postgres_url("POSTGRES://h/db")
    assert not is_postgres_url("/var/lib/ctrlplane/ctrlplane.db")
    assert not is_postgres_url("postgresql:h/db")
    assert store_url_problem("postgresql://u:pw@h:5432/db") is None
    problem = store_url_problem("postgresql://u:pw@h:port/db")
    assert problem is not None and "pw" not in problem
