"""One LISTEN for all the long-poll claims waiting in a web process.

A long-poll (runners.api.request_job) that found no job waits for the job queue's NOTIFY
(runners.backends.QUEUE_CHANNEL). Each used to open a PostgreSQL connection of its own for
its LISTEN: a connection per idle runner, and a new backend process (about 2 ms of the
server's CPU) every time a runner went idle, that is once per job. Here the long-polls of an
event loop (a web process) share one LISTEN connection, opened when the first starts to wait
and closed when the last stops; a notification wakes all of them, and each claims again.

Waiting is race-free: a long-poll takes `next_wakeup()` *before* it claims, and waits on it
after the claim found nothing, so a notification that arrives in between is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator

logger = logging.getLogger(__name__)


async def connect_listener():
    """A connection LISTENing on the job queue's channel."""
    import psycopg

    from runners.backends import QUEUE_CHANNEL, listen_params

    conn = await psycopg.AsyncConnection.connect(autocommit=True, **listen_params())
    await conn.execute(f"LISTEN {QUEUE_CHANNEL}")
    return conn


class QueueWakeups:
    """The job queue's notifications, for the long-polls of one event loop."""

    def __init__(self) -> None:
        self._waiting = 0
        self._listener: asyncio.Task | None = None
        self._listening = asyncio.Event()  # set once LISTEN is in place
        self._wakeup = asyncio.Event()  # set (and replaced) at each notification

    def next_wakeup(self) -> asyncio.Event:
        """The event the next notification sets (take it before claiming, wait on it after)."""
        return self._wakeup

    @contextlib.asynccontextmanager
    async def listening(self, timeout: float) -> AsyncIterator[None]:
        """Inside, notifications are heard: entered once LISTEN is in place. Raises
        TimeoutError (or the connection's error) if it cannot be within `timeout` seconds."""
        self._waiting += 1
        try:
            if self._listener is None or self._listener.done():  # none yet, or one that could not connect
                self._listener = asyncio.create_task(self._listen())
            listener = self._listener  # its own reference: a failed listener clears the attribute
            listened = asyncio.ensure_future(self._listening.wait())
            await asyncio.wait([listened, listener], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if listener.done():
                listened.cancel()
                listener.result()  # raises what ended it
                raise ConnectionError("the LISTEN connection closed")
            if not listened.done():
                listened.cancel()
                raise TimeoutError("LISTEN was not in place in time")
            yield
        finally:
            self._waiting -= 1
            if self._waiting == 0:
                await self._stop()

    async def _stop(self) -> None:
        listener, self._listener = self._listener, None
        self._listening = asyncio.Event()
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener

    async def _listen(self) -> None:
        conn = await connect_listener()
        try:
            self._listening.set()
            async for _ in conn.notifies():
                self._wake_all()
        except Exception:
            logger.warning("the long-polls' LISTEN connection failed", exc_info=True)
            raise
        finally:
            # Whoever waits claims once more; a lost connection is opened again by the next
            # long-poll that starts to wait (those waiting now end at their deadline).
            if self._listener is asyncio.current_task():  # not when _stop cancelled it
                self._listener = None
            self._listening = asyncio.Event()
            self._wake_all()
            await conn.close()

    def _wake_all(self) -> None:
        wakeup, self._wakeup = self._wakeup, asyncio.Event()
        wakeup.set()


_of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, QueueWakeups] = weakref.WeakKeyDictionary()


def queue_wakeups() -> QueueWakeups:
    """This event loop's QueueWakeups (a web process has one loop; tests make several)."""
    loop = asyncio.get_running_loop()
    wakeups = _of_loop.get(loop)
    if wakeups is None:
        wakeups = _of_loop[loop] = QueueWakeups()
    return wakeups
