"""Calling an ASGI application in a test as the web server would: a scope, a body, and the
messages sent back (cicd.pooled, the webhook endpoint, the runner API)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.asgi import get_asgi_application
from django.db import connections

from cicd.pooled import PooledViews


class Answer:
    def __init__(self) -> None:
        self.messages: list[dict] = []

    async def send(self, message: dict) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.messages if m["type"] == "http.response.start")

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        return {name.decode().lower(): value.decode() for name, value in start["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    def json(self) -> dict:
        return json.loads(self.body)


def scope(
    path: str, *, body: bytes, headers: dict[str, str], query: str = "", host: str = "testserver", method: str = "POST"
) -> dict:
    sent = {"host": host, "content-type": "application/json", "content-length": str(len(body)), **headers}
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in sent.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }


async def call(app, request_scope: dict, body: bytes) -> Answer:
    answer = Answer()
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if chunks:
            return chunks.pop(0)
        # As a server does while the client waits for its answer: nothing more until it hangs
        # up (Django's handler listens for that, and would drop the request on it).
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    await app(request_scope, receive, answer.send)
    return answer


def close_pool(app: PooledViews, pool: str, threads: int) -> None:
    """Close the database connection of every thread of the pool (before the test database
    goes), then the pool: one task per thread, held at a barrier so that each runs on its own."""
    barrier = threading.Barrier(threads)

    def close() -> None:
        barrier.wait(timeout=10)
        connections.close_all()

    executor = app.executors[pool]
    for future in [executor.submit(close) for _ in range(threads)]:
        future.result(timeout=20)
    executor.shutdown(wait=True)


@contextmanager
def web_application(pools: dict[str, int]) -> Iterator[PooledViews]:
    """The web server's HTTP application, as cicd/asgi.py builds it: the pooled views (in
    `pools` of their own) over Django's ASGI handler. Their threads' connections are closed after."""
    app = PooledViews(get_asgi_application(), pools=pools)
    try:
        yield app
    finally:
        for pool, threads in pools.items():
            close_pool(app, pool, threads)
