"""ASGI layers of the webhook endpoints (wired in cicd/asgi.py).

WebhookBodyLimit refuses an oversized body while it streams in. Django's ASGI handler reads
a request's whole body (into a temporary file) before any view runs, so the view's own limit
(pipelines.views.read_body) cannot stop a client streaming gigabytes. Wrapped around the HTTP
application, this answers 413 as soon as the declared Content-Length, or the bytes received
so far, pass CONVEYOR_WEBHOOK_MAX_BYTES.

WebhookEndpoint serves the webhook paths with Django in a pool of threads that keep their
database connections, instead of a thread and a connection per request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import HttpResponseBase
from django.urls import set_script_prefix

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


class WebhookEndpoint(ASGIHandler):
    """Django's request handling for the webhook paths, in a fixed pool of threads.

    Django's own ASGI handler runs each request's sync code in a thread of its own (a
    ThreadSensitiveContext per request) and hops between threads at every sync middleware:
    every delivery paid for a new thread and a new database connection, and a burst of
    deliveries ran out of connections. Here the same middleware, URL resolution and view run
    as under WSGI, in one of `threads` long-lived threads that keep their connections between
    requests (CONN_MAX_AGE, CONN_HEALTH_CHECKS and the request signals apply as usual).
    Paths outside `prefix` go to `app`, Django's ASGI application.
    """

    def __init__(self, app: App, *, threads: int, prefix: str = "/webhooks/") -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self.app = app
        self.prefix = prefix
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or not str(scope.get("path", "")).startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self.executor, self._respond, scope, body_file)
        try:
            await self.send_response(response, send)
        finally:
            if response.streaming:
                await loop.run_in_executor(self.executor, response.close)

    def _respond(self, scope: Scope, body_file: Any) -> HttpResponseBase:
        try:
            set_script_prefix(get_script_prefix(scope))
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, response = self.create_request(scope, body_file)
            if request is not None:
                response = self.get_response(request)
            if not response.streaming:
                # The content is in hand: request_finished (which returns the database
                # connection, or closes an old or broken one) runs here, in this thread.
                response.close()
            return response
        finally:
            body_file.close()
