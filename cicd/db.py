"""Hot statements as server-side prepared statements on Django's own connection.

Django turns psycopg's statement preparation off (its default OPTIONS["prepare_threshold"]
is None: a connection pooler in transaction mode, PgBouncer before 1.21, cannot keep a
prepared statement across transactions) and binds parameters client-side, so PostgreSQL
parses and plans every statement it is sent. For a statement run thousands of times a
second (the claim) that is a good part of its cost (bench/README.md, "claim"); through
`prepared_cursor` it is parsed and planned once per connection.
DATABASE_PREPARED_STATEMENTS=false turns preparing off again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.models import Model


def prepared_cursor() -> CursorWrapper | _ReusedCursor:
    """A cursor (use it in a `with`) whose statements are prepared on the connection at their
    first execution. Wrapped as `connection.cursor()` wraps its own: errors are Django's, and
    the statements are logged where Django logs queries (tests counting queries see them).
    Only cursors made here prepare: Django's (client-side binding) never do, whatever the
    threshold."""
    db = connections[DEFAULT_DB_ALIAS]  # this thread's connection, looked up once
    db.ensure_connection()
    connection = db.connection
    if connection.prepare_threshold is None and settings.DATABASE_PREPARED_STATEMENTS:
        connection.prepare_threshold = 0
    if db.queries_logged:
        return _LoggedPreparedCursor(psycopg.Cursor(connection), db)
    reused: _ReusedCursor | None = getattr(db, "_conveyor_prepared_cursor", None)
    if reused is None or reused.cursor.connection is not connection or reused.cursor.closed:
        reused = db._conveyor_prepared_cursor = _ReusedCursor(db, psycopg.Cursor(connection))
    if reused.in_use or db.execute_wrappers:  # a block inside another one's, or wrappers to run
        return db.make_cursor(psycopg.Cursor(connection))
    reused.in_use = True
    return reused


class _ReusedCursor:
    """The connection's cursor for prepared statements, handed to one `with` block at a time.

    Making a psycopg cursor and Django's wrapper around it for every statement was a fifth of
    the claimer's CPU in the claim benchmark (bench/README.md, "claim"), the statement's own
    execution included. Errors are still Django's, a transaction Django marked broken is still
    refused, and a connection Django replaced gets a cursor of its own. At the end of a block
    the cursor lets go of its result (a log's text can be megabytes)."""

    __slots__ = ("db", "cursor", "in_use")

    def __init__(self, db: Any, cursor: psycopg.Cursor) -> None:
        self.db, self.cursor, self.in_use = db, cursor, False

    def __enter__(self) -> _ReusedCursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cursor._reset()  # psycopg's own reset before each execute: drops the results
        self.in_use = False

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self.db.validate_no_broken_transaction()
        with self.db.wrap_database_errors:
            self.cursor.execute(sql, params)

    def fetchone(self) -> tuple | None:
        with self.db.wrap_database_errors:
            return self.cursor.fetchone()

    def fetchall(self) -> list[tuple]:
        with self.db.wrap_database_errors:
            return self.cursor.fetchall()

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount


class _LoggedPreparedCursor(CursorDebugWrapper):
    """Logs each statement as Django logs its own, its parameters bound: Django reads the
    text it logs from a client-side binding cursor, and from this one it read None."""

    def execute(self, sql, params=None):
        try:
            readable = self.db.ops.compose_sql(sql, params)
        except psycopg.Error:
            readable = sql
        with self.debug_sql(readable, params):
            return CursorWrapper.execute(self, sql, params)


def model_columns(model: type[Model], alias: str) -> str:
    """The select list of every concrete field of `model` (table alias `alias`), in the order
    models_from_rows reads them: for a prepared statement that reads whole rows."""
    return ", ".join(f'{alias}."{field.column}"' for field in model._meta.concrete_fields)


@cache
def _row_loading(model: type[Model]) -> tuple[list[str], list[tuple[int, Callable]]]:
    fields = model._meta.concrete_fields
    converters = [(i, field.from_db_value) for i, field in enumerate(fields) if hasattr(field, "from_db_value")]
    return [field.attname for field in fields], converters


def models_from_rows(model: type[Model], rows: Iterable[Sequence[Any]]) -> list[Model]:
    """Instances of `model` from rows read with model_columns, as the ORM builds them: each
    field's from_db_value applied (JSON decoded, encrypted values decrypted), then from_db."""
    names, converters = _row_loading(model)
    db = connections[DEFAULT_DB_ALIAS]
    instances = []
    for row in rows:
        if converters:
            row = list(row)
            for i, convert in converters:
                row[i] = convert(row[i], None, db)
        instances.append(model.from_db(DEFAULT_DB_ALIAS, names, row))
    return instances
