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

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections


@contextmanager
def prepared_cursor() -> Iterator[psycopg.Cursor]:
    """A cursor whose statements are prepared on the connection at their first execution.

    Errors are Django's, as from `connection.cursor()`, and the statements are logged where
    Django logs queries (tests counting queries see them). Without query logging the cursor
    is psycopg's own, unwrapped: the wrapper costs as much Python as the claim's own. Only
    cursors made here prepare: Django's (client-side binding) never do, whatever the threshold.
    """
    db = connections[DEFAULT_DB_ALIAS]  # this thread's connection, looked up once
    db.ensure_connection()
    if settings.DATABASE_PREPARED_STATEMENTS:
        db.connection.prepare_threshold = 0
    cursor = psycopg.Cursor(db.connection)
    if db.queries_logged:
        with db.make_debug_cursor(cursor) as logged:
            yield logged
    else:
        with db.wrap_database_errors, cursor:
            yield cursor
