"""The live log WebSocket through the real ASGI stack (sessions, origin check, routing) and the
real channel layer (Redis Pub/Sub), with chunks stored and published by the real ingest service."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import Client

from cicd.asgi import application
from logs.models import StepLog
from logs.services import log_chunk_append, step_status_publish
from runs.models import JobStatus, Step, StepStatus

from .conftest import make_running_job, websocket_communicator

WebsocketCommunicator = websocket_communicator()

pytestmark = pytest.mark.django_db(transaction=True)

WAIT_S = 20  # an upper bound for a message to arrive, never a measurement


def cookie_of(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def open_socket(step, cookie: bytes | None, *, offset: int | None = None):
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if cookie:
        headers.append((b"cookie", cookie))
    path = f"/ws/steps/{step.pk}/" + ("" if offset is None else f"?offset={offset}")
    socket = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await socket.connect(timeout=WAIT_S)
    return socket, connected


class Viewer:
    """What a browser would assemble from the messages."""

    def __init__(self, offset: int = 0):
        self.text = ""
        self.offset = offset
        self.statuses: list[dict] = []
        self.ready = False

    async def read(
        self, socket, *, until_offset: int | None = None, until_status: str | None = None, until_ready: bool = False
    ) -> None:
        while True:
            if until_offset is not None and self.offset >= until_offset:
                return
            if until_ready and self.ready:
                return
            if until_status is not None and any(s.get("step", {}).get("status") == until_status for s in self.statuses):
                return
            message = await socket.receive_json_from(timeout=WAIT_S)
            if message["type"] == "log":
                # Exactly contiguous: each piece starts where the previous one ended.
                assert message["offset"] == self.offset, f"gap or overlap at {message['offset']} (had {self.offset})"
                self.text += message["content"]
                self.offset = message["end"]
            elif message["type"] == "status":
                self.statuses.append(message)
            elif message["type"] == "ready":
                self.ready = True


class Appender(threading.Thread):
    """Appends chunks through the ingest service (commit, then publish), as runners do."""

    def __init__(self, step: Step, pieces: list[str], *, started: threading.Event | None = None, after: int = 0):
        super().__init__(daemon=True)
        self.step, self.pieces = step, pieces
        self.started, self.after = started, after
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            offset = 0
            for n, piece in enumerate(self.pieces):
                offset = log_chunk_append(step=self.step, offset=offset, content=piece)
                if self.started is not None and n + 1 == self.after:
                    self.started.set()
                if n % 7 == 0:
                    threading.Event().wait(random.random() / 500)  # let the viewers interleave
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            connection.close()


def pieces_of(count: int, *, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [f"{n:05d} {'ü✓x' * rnd.randint(0, 40)}{'' if rnd.random() < 0.2 else chr(10)}" for n in range(count)]


# --- Who may look.


@pytest.mark.parametrize(
    ("private", "who", "allowed"),
    [
        (True, "staff", True),
        (False, "member", True),
        (True, "outsider", False),
        (True, "anonymous", False),
        (False, "anonymous", False),
    ],
)
def test_only_people_allowed_to_see_the_repository_can_watch_its_logs(private, who, allowed, request):
    running = make_running_job(private=private)
    cookie = None if who == "anonymous" else cookie_of(request.getfixturevalue(who))

    async def scenario():
        socket, connected = await open_socket(running.step, cookie)
        await socket.disconnect()
        return connected

    assert async_to_sync(scenario)() is allowed


def test_a_step_that_does_not_exist_is_refused_like_a_forbidden_one(staff):
    running = make_running_job()
    cookie = cookie_of(staff)
    gone = Step(pk=running.step.pk)
    running.step.delete()

    async def scenario():
        socket, connected = await open_socket(gone, cookie)
        await socket.disconnect()
        return connected

    assert async_to_sync(scenario)() is False


# --- History, then live, without gaps or duplicates.


def test_a_viewer_gets_the_history_then_live_chunks_then_the_status(staff):
    running = make_running_job()
    cookie = cookie_of(staff)
    log_chunk_append(step=running.step, offset=0, content="before\n")

    async def scenario():
        socket, _ = await open_socket(running.step, cookie)
        viewer = Viewer()
        await viewer.read(socket, until_ready=True)
        await asyncio.to_thread(_append_and_finish, running.step)
        await viewer.read(socket, until_status=StepStatus.SUCCESS)
        await socket.disconnect()
        return viewer

    viewer = async_to_sync(scenario)()

    assert viewer.text == "before\nafter\n"
    assert viewer.ready
    assert viewer.statuses[0]["step"]["status"] == StepStatus.PENDING  # as it was on connect
    assert viewer.statuses[0]["job"]["status"] == JobStatus.RUNNING
    assert viewer.statuses[-1]["step"] == {"id": str(running.step.pk), "status": "SUCCESS", "exit_code": 0}


def _append_and_finish(step: Step) -> None:
    try:
        log_chunk_append(step=step, offset=7, content="after\n")
        Step.objects.filter(pk=step.pk).update(status=StepStatus.RUNNING)
        Step.objects.filter(pk=step.pk).update(status=StepStatus.SUCCESS, exit_code=0)
        step_status_publish(step_id=step.pk)
    finally:
        connection.close()


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_viewers_joining_and_reconnecting_mid_stream_each_end_with_exactly_the_produced_text(staff, seed):
    running = make_running_job()
    cookie = cookie_of(staff)
    pieces = pieces_of(400, seed=seed)
    produced = "".join(pieces)
    total = len(produced.encode())
    midway = threading.Event()
    appender = Appender(running.step, pieces, started=midway, after=60)

    async def mid_stream_viewer():
        socket, _ = await open_socket(running.step, cookie)
        viewer = Viewer()
        await viewer.read(socket, until_offset=total)
        await socket.disconnect()
        return viewer.text

    async def reconnecting_viewer(drops: int):
        viewer = Viewer()
        for attempt in range(drops + 1):
            socket, _ = await open_socket(running.step, cookie, offset=viewer.offset)
            target = total if attempt == drops else min(total, viewer.offset + random.randint(1, total // drops))
            await viewer.read(socket, until_offset=target)
            await socket.disconnect()  # the browser loses the connection, then resumes from viewer.offset
        return viewer.text

    async def scenario():
        await asyncio.to_thread(midway.wait, WAIT_S)
        return await asyncio.gather(mid_stream_viewer(), reconnecting_viewer(3), reconnecting_viewer(8))

    appender.start()
    texts = async_to_sync(scenario)()
    appender.join(WAIT_S)

    assert appender.error is None
    assert texts == [produced, produced, produced]


def test_reconnecting_with_any_byte_offset_gives_exactly_the_bytes_after_it_while_chunks_keep_coming(staff):
    running = make_running_job()
    cookie = cookie_of(staff)
    pieces = [f"{n:04d} {'abcdefghij' * (n % 9)}\n" for n in range(300)]  # ASCII: every byte starts a character
    produced = "".join(pieces)
    midway = threading.Event()
    appender = Appender(running.step, pieces, started=midway, after=100)
    offsets = sorted(random.Random(11).sample(range(1, len(produced) // 2), 6))

    async def from_offset(offset: int):
        socket, _ = await open_socket(running.step, cookie, offset=offset)
        viewer = Viewer(offset)
        await viewer.read(socket, until_offset=len(produced))
        await socket.disconnect()
        return viewer.text

    async def scenario():
        await asyncio.to_thread(midway.wait, WAIT_S)
        return await asyncio.gather(*(from_offset(offset) for offset in offsets))

    appender.start()
    texts = async_to_sync(scenario)()
    appender.join(WAIT_S)

    assert appender.error is None
    assert texts == [produced[offset:] for offset in offsets]


def test_a_viewer_of_a_finished_step_gets_the_whole_log_and_the_final_status(staff):
    running = make_running_job()
    cookie = cookie_of(staff)
    log_chunk_append(step=running.step, offset=0, content="all done\n")
    Step.objects.filter(pk=running.step.pk).update(status=StepStatus.FAILURE, exit_code=2)

    async def scenario():
        socket, _ = await open_socket(running.step, cookie)
        viewer = Viewer()
        await viewer.read(socket, until_status=StepStatus.FAILURE)
        await socket.disconnect()
        return viewer

    viewer = async_to_sync(scenario)()

    assert viewer.text == "all done\n"
    assert viewer.statuses[-1]["step"]["exit_code"] == 2


def test_a_live_chunk_whose_event_was_lost_is_fetched_from_the_database_before_the_next_one(staff):
    running = make_running_job()
    cookie = cookie_of(staff)

    async def scenario():
        socket, _ = await open_socket(running.step, cookie)
        viewer = Viewer()
        await viewer.read(socket, until_ready=True)  # subscribed, and the (empty) history is sent
        await asyncio.to_thread(_append_with_a_lost_event, running.step)
        await viewer.read(socket, until_offset=len("lost\nseen\n"))
        await socket.disconnect()
        return viewer.text

    assert async_to_sync(scenario)() == "lost\nseen\n"


def _append_with_a_lost_event(step: Step) -> None:
    try:
        # Stored, but its event never reaches Redis (as when Redis is away at that moment).
        StepLog.objects.create(step=step, offset=0, size=5, content="lost\n")
        log_chunk_append(step=step, offset=5, content="seen\n")
    finally:
        connection.close()
