"""Django's PostgreSQL backend, with a connection health check that costs no round trip.

CONN_HEALTH_CHECKS is on (cicd/settings.py): a kept connection that the database ended
while it sat idle (a restart, a failover, an idle timeout, pg_terminate_backend) is
replaced before a request uses it, rather than failing that request. Django checks by
sending `SELECT 1` before the first query of every request: one round trip to the database
per request, which under load was the largest single cost of a webhook delivery
(bench/README.md, "webhook").

An idle connection has nothing to read. A server ending a session sends its reason and
closes the socket, which makes the socket readable. So a connection that is idle (no
transaction open) with nothing to read is usable without asking; one with anything to
read, or in any other state, gets Django's `SELECT 1`. What no socket shows (a network
that silently drops packets) neither check sees before its timeout.
"""

from __future__ import annotations

import select

from django.db.backends.postgresql import base
from psycopg.pq import TransactionStatus


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        connection = self.connection
        if connection is None or connection.closed:
            return False
        if connection.info.transaction_status == TransactionStatus.IDLE:
            poll = select.poll()
            poll.register(connection.fileno(), select.POLLIN)
            if not poll.poll(0):
                return True
        return super().is_usable()
