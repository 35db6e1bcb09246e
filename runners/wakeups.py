"""One LISTEN for all the long-poll claims waiting in a web process, and who of them wakes.

A long-poll (runners.api.request_job) that found no job waits for the job queue's NOTIFY
(runners.backends.QUEUE_CHANNEL). Each used to open a PostgreSQL connection of its own for
its LISTEN: a connection per idle runner, and a new backend process (about 2 ms of the
server's CPU) every time a runner went idle, that is once per job. Here the long-polls of an
event loop (a web process) share one LISTEN connection, opened when the first starts to wait
and closed when the last stops.

A notification does not wake them all: with a thousand idle runners, a thousand claims would
run for each job queued, all but one finding nothing. It says how many jobs were queued with
which tags (runs.services), and the waiting long-polls are grouped by what their runner can
claim (`RunnerKind`: its tags, whether it is paused). Of each kind, as many wake as jobs were
queued that it can run (their tags among its own), the longest waiting first. A waiter whose
claim finds a job wakes the next of its kind, unless another of its kind is about to claim or
claiming: the queue may hold more than it was told (PostgreSQL folds identical notifications
of one transaction into one). One whose claim finds nothing ends its kind's chain, since none
of its kind would find one. A woken waiter that leaves before it claims (its wait over, its
client gone) hands its wakeup to another of its kind. So a NOTIFY of n jobs costs about n
claims per kind of runner that can run them, not one per runner waiting.

Waiting is race-free: a long-poll arms its waiter *before* it claims and waits on it after
the claim found nothing, so a notification that arrives in between is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import NamedTuple

logger = logging.getLogger(__name__)


async def connect_listener():
    """A connection LISTENing on the job queue's channel."""
    import psycopg

    from runners.backends import QUEUE_CHANNEL, listen_params

    conn = await psycopg.AsyncConnection.connect(autocommit=True, **listen_params())
    await conn.execute(f"LISTEN {QUEUE_CHANNEL}")
    return conn


class RunnerKind(NamedTuple):
    """What a runner can claim: jobs whose tags are all among its own, none while it is paused."""

    tags: frozenset[str]
    paused: bool


class Waiter:
    """One long-poll's place among those a notification may wake."""

    __slots__ = ("kind", "woken", "claiming")

    def __init__(self) -> None:
        # What its runner can claim, as the last claim said (runners.api); None before the first.
        self.kind: RunnerKind | None = None
        self.woken = asyncio.Event()
        self.claiming = True  # it claims first, then waits

    def arm(self) -> None:
        """Before each claim: from here on, a wakeup is for a claim still to come."""
        self.woken.clear()
        self.claiming = True


class QueueWakeups:
    """The job queue's notifications, for the long-polls of one event loop."""

    def __init__(self) -> None:
        self._waiting = 0
        self._listener: asyncio.Task | None = None
        self._listening = asyncio.Event()  # set once LISTEN is in place
        self._waiters: list[Waiter] = []  # in the order they came: the longest waiting wakes first

    @contextlib.contextmanager
    def waiter(self) -> Iterator[Waiter]:
        """A long-poll's waiter, from before its first claim to its answer."""
        waiter = Waiter()
        self._waiters.append(waiter)
        try:
            yield waiter
        finally:
            self._waiters.remove(waiter)
            if waiter.woken.is_set():  # a wakeup it will not act on: it goes to another of its kind
                self._wake(self._of_kind(waiter.kind), 1)

    def claimed(self, waiter: Waiter, *, kind: RunnerKind, found: bool) -> None:
        """A waiter's claim is over. It found a job: the queue may hold more, and unless another
        of its kind is about to claim or claiming, the next of its kind tries. It found none: none
        of its kind would, and its kind's chain of wakeups ends."""
        waiter.kind, waiter.claiming = kind, False
        if found:
            others = self._of_kind(kind, besides=waiter)
            if not any(w.woken.is_set() or w.claiming for w in others):
                self._wake(others, 1)

    def _of_kind(self, kind: RunnerKind | None, besides: Waiter | None = None) -> list[Waiter]:
        return [w for w in self._waiters if w.kind == kind and w is not besides]

    @staticmethod
    def _wake(waiters: list[Waiter], count: int) -> None:
        """Wake `count` more of these: those waiting first (they claim at once), in the order they
        came, then those claiming (they claim again after)."""
        asleep = [w for w in waiters if not w.woken.is_set()]
        for waiter in sorted(asleep, key=lambda w: w.claiming)[:count]:
            waiter.woken.set()

    def _wake_each_kind(self, queued: list[tuple[int, frozenset[str] | None]]) -> None:
        """A notification of jobs queued, (count, tags) pairs: as many more waiters of each kind
        claim as there are jobs it can run. A waiter yet to claim once, or jobs whose tags the
        notification does not say, count as a match (the claim decides)."""
        for kind in {w.kind for w in self._waiters}:
            jobs = sum(count for count, needed in queued if kind is None or can_run(kind.tags, needed))
            self._wake(self._of_kind(kind), jobs)

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
            async for notification in conn.notifies():
                self._wake_each_kind(jobs_queued(notification.payload))
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
        for waiter in self._waiters:
            waiter.woken.set()


def jobs_queued(payload: str) -> list[tuple[int, frozenset[str] | None]]:
    """The jobs a notification says were queued, as (count, tags) pairs (runs.services sends
    `[[count, [tag, ...]], ...]`, or the count alone when that would be too long). Tags None: it
    does not say. A payload that says nothing readable (a server of an earlier version sent
    none) is one job, tags unknown."""
    if payload.isdigit():
        return [(max(1, int(payload)), None)]
    try:
        pairs = json.loads(payload)
    except ValueError:
        pairs = None
    queued = [pair for pair in map(_queued_pair, pairs if isinstance(pairs, list) else []) if pair]
    return queued or [(1, None)]


def can_run(runner_tags: frozenset[str], needed: frozenset[str] | None) -> bool:
    """Whether a runner with these tags can run jobs needing these (None: not said, it may)."""
    return needed is None or needed <= runner_tags


def can_run_some(runner_tags: list[str], payload: str) -> bool:
    """Whether a runner with these tags can run one of the jobs a notification is about."""
    tags = frozenset(runner_tags)
    return any(can_run(tags, needed) for _, needed in jobs_queued(payload))


def _queued_pair(pair: object) -> tuple[int, frozenset[str]] | None:
    match pair:
        case [int(count), list(tags)] if count > 0 and all(isinstance(tag, str) for tag in tags):
            return count, frozenset(tags)
    return None


_of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, QueueWakeups] = weakref.WeakKeyDictionary()


def queue_wakeups() -> QueueWakeups:
    """This event loop's QueueWakeups (a web process has one loop; tests make several)."""
    loop = asyncio.get_running_loop()
    wakeups = _of_loop.get(loop)
    if wakeups is None:
        wakeups = _of_loop[loop] = QueueWakeups()
    return wakeups
