"""How the long-polls' shared LISTEN fails: with the connection's own error, or saying the
connection closed, so that the long-poll falls back to polling (runners.api.request_job)."""

from __future__ import annotations

import asyncio

import pytest

from runners import wakeups


def enter_listening(timeout: float = 5.0) -> wakeups.QueueWakeups:
    queue_wakeups = wakeups.QueueWakeups()

    async def enter() -> None:
        async with queue_wakeups.listening(timeout=timeout):
            pass

    asyncio.run(enter())
    return queue_wakeups


def test_a_listener_that_cannot_connect_raises_the_connections_error(monkeypatch):
    async def refused():
        raise OSError("connection refused")

    monkeypatch.setattr(wakeups, "connect_listener", refused)

    with pytest.raises(OSError, match="connection refused"):
        enter_listening()


class EndsAtOnce:
    """A LISTEN connection the server closes at once: its notifications end."""

    closed = False

    async def notifies(self):
        return
        yield  # an async generator that yields nothing

    async def close(self) -> None:
        self.closed = True


def test_a_listen_connection_that_ends_is_an_error_and_is_closed(monkeypatch):
    connection = EndsAtOnce()

    async def connect():
        await asyncio.sleep(0.05)  # in place a moment after the long-poll starts to wait
        return connection

    monkeypatch.setattr(wakeups, "connect_listener", connect)

    with pytest.raises(ConnectionError):
        enter_listening()
    assert connection.closed


def test_a_listen_not_in_place_in_time_is_a_timeout(monkeypatch):
    async def slow():
        await asyncio.sleep(10)

    monkeypatch.setattr(wakeups, "connect_listener", slow)

    with pytest.raises(TimeoutError):
        enter_listening(timeout=0.1)
