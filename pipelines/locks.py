"""PostgreSQL advisory locks, for work that must not run twice at once but may not hold a
transaction open (a git fetch, a call to a forge)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator

from django.db import DatabaseError, connection

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def advisory_lock(*parts: object) -> Iterator[None]:
    """A PostgreSQL session advisory lock named by `parts`, held for the block. A session lock,
    not a transaction one, so no transaction stays open while git or a forge is called."""
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [key])
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
        except DatabaseError:
            # The connection is broken: the server dropped the lock with the session.
            logger.warning("could not release advisory lock %s", parts)
