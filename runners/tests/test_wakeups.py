"""How the long-polls' shared LISTEN fails: with the connection's own error, or saying the
connection closed, so that the long-poll falls back to polling (runners.api.request_job)."""

from __future__ import annotations

import asyncio
import contextlib

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


def test_after_a_failed_connect_the_next_long_poll_to_wait_connects_again(monkeypatch):
    attempts = []
    connection = EndsAtOnce()

    async def fails_once():
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("connection refused")
        await asyncio.sleep(10)  # connecting, slowly: the second waiter times out
        return connection

    monkeypatch.setattr(wakeups, "connect_listener", fails_once)
    queue_wakeups = wakeups.QueueWakeups()

    async def two_waiters_one_after_the_other() -> list[type]:
        errors = []
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(hold_waiting(queue_wakeups))  # keeps a waiter counted throughout
            for _ in range(2):
                try:
                    async with queue_wakeups.listening(timeout=0.2):
                        pass
                except Exception as exc:
                    errors.append(type(exc))
        return errors

    assert asyncio.run(two_waiters_one_after_the_other()) == [OSError, TimeoutError]
    assert len(attempts) == 2


@contextlib.asynccontextmanager
async def hold_waiting(queue_wakeups: wakeups.QueueWakeups):
    """Count one more waiter, as a long-poll stuck in its wait would be."""
    queue_wakeups._waiting += 1
    try:
        yield
    finally:
        queue_wakeups._waiting -= 1
