"""The ASGI layer of the webhook endpoints (wired in cicd/asgi.py).

WebhookBodyLimit refuses an oversized body while it streams in. Django's ASGI handler reads
a request's whole body (into a temporary file) before any view runs, so the view's own limit
(pipelines.views.read_body) cannot stop a client streaming gigabytes. Wrapped around the HTTP
application, this answers 413 as soon as the declared Content-Length, or the bytes received
so far, pass CONVEYOR_WEBHOOK_MAX_BYTES. The webhook views themselves are served in a pool
of threads (cicd.pooled).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class _TooLarge(Exception):
    pass


class WebhookBodyLimit:
    def __init__(self, app: App, *, prefix: str = "/webhooks/") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or not str(scope.get("path", "")).startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        limit = settings.CONVEYOR_WEBHOOK_MAX_BYTES
        for name, value in scope.get("headers") or []:
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break
                if declared > limit:
                    await self._refuse(send, f"the body is {declared} bytes; the limit is {limit}")
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, f"the body is over the limit of {limit} bytes")

    @staticmethod
    async def _refuse(send: Send, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
