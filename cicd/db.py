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

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.utils import CursorWrapper


def prepared_cursor() -> CursorWrapper:
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
    cursor = psycopg.Cursor(connection)
    return db.make_debug_cursor(cursor) if db.queries_logged else db.make_cursor(cursor)
