"""How the long-polls' shared LISTEN fails: with the connection's own error, or saying the
connection closed, so that the long-poll falls back to polling (runners.api.request_job).
And which waiting long-polls a notification wakes (through the API: runners/tests/test_api.py)."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

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


# --- Who wakes.


class Notifications:
    """A LISTEN connection whose notifications the test sends; `end()` closes it, as a
    server that went away would."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    def send(self, payload: str) -> None:
        self.queue.put_nowait(SimpleNamespace(channel="conveyor_jobs", payload=payload))

    async def notifies(self):
        while (notification := await self.queue.get()) is not None:
            yield notification

    def end(self) -> None:
        self.queue.put_nowait(None)

    async def close(self) -> None:
        pass


async def settle() -> None:
    """Let the listener task hand out what was sent."""
    for _ in range(10):
        await asyncio.sleep(0)


def woken(waiters) -> list[bool]:
    return [waiter.woken.is_set() for waiter in waiters]


KINDS = {
    "plain": wakeups.RunnerKind(frozenset(), paused=False),
    "gpu": wakeups.RunnerKind(frozenset({"gpu"}), paused=False),
}


def with_waiters(monkeypatch, kinds: list[str], scenario) -> None:
    """Run `scenario(queue_wakeups, connection, waiters, leave)` with a waiter of each of these
    kinds, idle on the LISTEN (each has claimed and found nothing); `leave(waiter)` ends a
    waiter's long-poll."""
    connections_made = []

    async def connect():
        connections_made.append(Notifications())
        return connections_made[0]

    monkeypatch.setattr(wakeups, "connect_listener", connect)
    queue_wakeups = wakeups.QueueWakeups()
    places = [queue_wakeups.waiter() for _ in kinds]
    waiters = [place.__enter__() for place in places]

    def leave(waiter: wakeups.Waiter) -> None:
        places[waiters.index(waiter)].__exit__(None, None, None)

    async def run() -> None:
        for waiter, kind in zip(waiters, kinds, strict=True):
            queue_wakeups.claimed(waiter, kind=KINDS[kind], found=False)
        async with queue_wakeups.listening(timeout=5):
            await scenario(queue_wakeups, connections_made[0], waiters, leave)

    asyncio.run(run())


def test_a_notification_of_one_job_wakes_the_longest_waiting_of_each_kind(monkeypatch):
    async def scenario(queue_wakeups, connection, waiters, leave):
        connection.send("1")
        await settle()
        assert woken(waiters) == [True, False, True, False, False]

    with_waiters(monkeypatch, ["plain", "plain", "gpu", "gpu", "plain"], scenario)


def test_a_job_with_tags_wakes_only_runners_that_have_them_and_one_without_wakes_every_kind(monkeypatch):
    async def scenario(queue_wakeups, connection, waiters, leave):
        connection.send('[[1,["gpu"]]]')
        await settle()
        assert woken(waiters) == [False, True, False]
        connection.send("[[1,[]]]")
        await settle()
        assert woken(waiters) == [True, True, False]  # the one gpu waiter is woken already

    with_waiters(monkeypatch, ["plain", "gpu", "plain"], scenario)


def test_a_notification_of_two_jobs_wakes_two_more_of_each_kind_if_there_are(monkeypatch):
    async def scenario(queue_wakeups, connection, waiters, leave):
        connection.send("2")
        await settle()
        assert woken(waiters) == [True, True, False, True]
        connection.send("2")  # two more jobs, before those woken claimed
        await settle()
        assert woken(waiters) == [True, True, True, True]

    with_waiters(monkeypatch, ["plain", "plain", "plain", "gpu"], scenario)


def test_a_claim_that_finds_a_job_wakes_the_next_of_its_kind_and_one_that_finds_none_ends_the_chain(monkeypatch):
    async def scenario(queue_wakeups, connection, waiters, leave):
        first, second, third = waiters
        connection.send("1")  # one job said, two queued: identical notifications were folded
        await settle()
        first.arm()
        queue_wakeups.claimed(first, kind=KINDS["plain"], found=True)
        leave(first)
        assert woken(waiters[1:]) == [True, False]
        second.arm()
        queue_wakeups.claimed(second, kind=KINDS["plain"], found=True)
        leave(second)
        assert woken([third]) == [True]
        third.arm()
        queue_wakeups.claimed(third, kind=KINDS["plain"], found=False)
        assert woken([third]) == [False]

    with_waiters(monkeypatch, ["plain", "plain", "plain"], scenario)


def test_a_claim_that_finds_a_job_while_another_of_its_kind_claims_wakes_no_other(monkeypatch):
    async def scenario(queue_wakeups, connection, waiters, leave):
        first, second, third = waiters
        connection.send("2")
        await settle()
        first.arm()
        second.arm()
        queue_wakeups.claimed(first, kind=KINDS["plain"], found=True)
        leave(first)
        assert woken([second, third]) == [False, False]  # the second's claim would find a third job
        queue_wakeups.claimed(second, kind=KINDS["plain"], found=True)
        leave(second)
        assert woken([third]) == [True]

    with_waiters(monkeypatch, ["plain", "plain", "plain"], scenario)


def test_a_woken_waiter_that_leaves_before_it_claims_hands_its_wakeup_to_another_of_its_kind(monkeypatch):
    async def scenario(queue_wakeups, connection, waiters, leave):
        first, second, third, unwoken = waiters
        first.arm()  # these two claim again (their runners came back for more)
        second.arm()
        connection.send("1")
        await settle()
        assert woken(waiters) == [False, False, True, False]  # the one waiting, not one claiming
        leave(unwoken)
        assert woken(waiters[:3]) == [False, False, True]  # it had nothing to hand on
        leave(third)  # its long-poll ends (its wait over) before it claims
        assert woken([first, second]) == [True, False]

    with_waiters(monkeypatch, ["plain", "plain", "plain", "plain"], scenario)


def test_a_lost_listen_wakes_every_waiter_to_claim_once_more(monkeypatch):
    async def scenario(queue_wakeups, connection, waiters, leave):
        connection.end()
        await settle()
        assert woken(waiters) == [True, True, True]

    with_waiters(monkeypatch, ["plain", "plain", "gpu"], scenario)


@pytest.mark.parametrize(
    ("payload", "queued"),
    [
        ('[[2,["gpu"]],[1,[]]]', [(2, {"gpu"}), (1, set())]),
        ("3", [(3, None)]),
        ("", [(1, None)]),
        ("0", [(1, None)]),
        ("[[0,[]]]", [(1, None)]),
        ('[[1,"gpu"]]', [(1, None)]),
        ('{"gpu":1}', [(1, None)]),
        ("not json", [(1, None)]),
    ],
)
def test_a_notification_says_which_jobs_were_queued_and_one_that_does_not_counts_as_one_for_anyone(payload, queued):
    assert wakeups.jobs_queued(payload) == queued


# --- A trusted runner's own LISTEN (runners.backends.OrmBackend): it wakes for jobs it can run.


@pytest.mark.parametrize(
    ("runner_tags", "payload", "can_run"),
    [
        ([], "[[1,[]]]", True),
        (["gpu", "linux"], '[[1,["gpu"]]]', True),
        ([], '[[1,["gpu"]]]', False),
        (["linux"], '[[2,["gpu"]],[1,["linux"]]]', True),
        (["linux"], "1", True),  # a notification that does not say which tags: it may
    ],
)
def test_a_runner_can_run_a_notified_job_when_the_jobs_tags_are_among_its_own(runner_tags, payload, can_run):
    assert wakeups.can_run_some(runner_tags, payload) is can_run


@pytest.mark.django_db(transaction=True)
def test_a_trusted_runner_waiting_sleeps_through_a_job_for_other_runners_and_wakes_for_its_own():
    import threading

    from runners.backends import OrmBackend
    from runners.models import Runner
    from runs.tests.factories import create_run, job

    backend = OrmBackend(runner=Runner.objects.create(name="plain", tags=[]))
    backend.wait_for_work(0.01)  # its LISTEN in place
    woke = threading.Event()
    try:
        create_run(job("train", "build", tags=["gpu"]))
        waiting = threading.Thread(target=lambda: (backend.wait_for_work(30), woke.set()), daemon=True)
        waiting.start()
        waiting.join(timeout=1)
        assert not woke.is_set(), "a job it cannot run woke it"
        create_run(job("compile", "build"))
        waiting.join(timeout=15)  # well before its 30 s: the notification woke it
        assert woke.is_set()
    finally:
        backend._listener.close()
