"""The ASGI guard refuses an oversized webhook body while it streams in, before Django spools it."""

from __future__ import annotations

import asyncio

from django.core.asgi import get_asgi_application

from pipelines.asgi import WebhookBodyLimit


class Client:
    """Feeds a request body in chunks and records what was read and what was answered."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.read = 0
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if self.read < len(self.chunks):
            self.read += 1
            return {
                "type": "http.request",
                "body": self.chunks[self.read - 1],
                "more_body": self.read < len(self.chunks),
            }
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.sent if m["type"] == "http.response.start")


def scope(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"repository=web",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *(headers or [])],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }


async def echo_app(scope, receive, send) -> None:
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def test_a_streamed_body_over_the_limit_is_refused_before_it_is_all_read(settings) -> None:
    settings.CONVEYOR_WEBHOOK_MAX_BYTES = 10_000
    client = Client([b"x" * 4096] * 100)

    asyncio.run(WebhookBodyLimit(get_asgi_application())(scope("/webhooks/generic/"), client.receive, client.send))

    assert client.status == 413
    assert client.read == 3  # 12 KiB read of 400 KiB
    assert b"over the limit of 10000 bytes" in client.sent[-1]["body"]


def test_a_declared_length_over_the_limit_is_refused_without_reading(settings) -> None:
    settings.CONVEYOR_WEBHOOK_MAX_BYTES = 10_000
    client = Client([b"x" * 20_000])
    app = WebhookBodyLimit(echo_app)

    asyncio.run(app(scope("/webhooks/github/", [(b"content-length", b"20000")]), client.receive, client.send))

    assert (client.status, client.read) == (413, 0)


def test_bodies_within_the_limit_and_other_paths_pass_through(settings) -> None:
    settings.CONVEYOR_WEBHOOK_MAX_BYTES = 10_000
    small = Client([b"x" * 4000, b"y" * 4000])
    asyncio.run(WebhookBodyLimit(echo_app)(scope("/webhooks/gitlab/"), small.receive, small.send))
    assert (small.status, small.sent[-1]["body"]) == (200, b"8000")

    elsewhere = Client([b"x" * 50_000])
    asyncio.run(WebhookBodyLimit(echo_app)(scope("/api/runner/jobs/"), elsewhere.receive, elsewhere.send))
    assert elsewhere.status == 200
