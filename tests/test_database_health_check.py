"""cicd.postgresql: the health check of kept connections, without a round trip when idle."""

from __future__ import annotations

import select

import psycopg
import pytest
from django.db import connections

from runners.backends import listen_params

pytestmark = pytest.mark.django_db


@pytest.fixture
def kept():
    """A connection of its own, in autocommit (idle between queries), as a web thread keeps one."""
    wrapper = connections.create_connection("default")
    wrapper.ensure_connection()
    yield wrapper
    wrapper.close()


def _last_query_of(wrapper) -> str:
    with psycopg.connect(autocommit=True, **listen_params()) as observer:
        row = observer.execute(
            "SELECT query FROM pg_stat_activity WHERE pid = %s", [wrapper.connection.info.backend_pid]
        ).fetchone()
    return row[0]


def _wait_for_something_to_read(wrapper) -> None:
    """The server's message (a notification, the end of the session) is sent asynchronously."""
    arrived = select.poll()
    arrived.register(wrapper.connection.fileno(), select.POLLIN)
    assert arrived.poll(10_000), "nothing reached the connection's socket"


def test_an_idle_sound_connection_is_usable_without_a_query_sent(kept):
    with kept.cursor() as cursor:
        cursor.execute("SELECT 'the last query'")

    assert kept.is_usable()
    assert _last_query_of(kept) == "SELECT 'the last query'"


def test_a_connection_the_server_ended_is_not_usable_and_is_replaced(kept):
    with psycopg.connect(autocommit=True, **listen_params()) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [kept.connection.info.backend_pid])
    _wait_for_something_to_read(kept)

    assert not kept.is_usable()
    kept.close_if_unusable_or_obsolete()  # what a request's start does: the next query checks first
    with kept.cursor() as cursor:  # on a new connection
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def test_a_connection_with_something_to_read_is_asked(kept):
    kept.connection.execute("LISTEN health_check_test")
    with psycopg.connect(autocommit=True, **listen_params()) as other:
        other.execute("NOTIFY health_check_test")
    _wait_for_something_to_read(kept)

    assert kept.is_usable()
    assert _last_query_of(kept) == "SELECT 1"
