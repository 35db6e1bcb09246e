"""Short, frequent requests served by Django in fixed pools of threads (wired in cicd/asgi.py).

Under ASGI, Django runs each request's sync code in a thread made for the request, and its
middleware hops to that thread for each of its hooks (Django 5.2's MiddlewareMixin: about
11 hops a request here). The thread opens a database connection of its own and closes it at
the end: a connection per request was most of what a runner's step report cost, and a burst
of webhooks ran out of connections.

A view marked `@pooled("name")` is served here instead, as under WSGI: the same middleware,
URL resolution and view, run in one of the named pool's long-lived threads, which keep
their database connections between requests (CONN_MAX_AGE, CONN_HEALTH_CHECKS and the
request signals apply as usual). Everything else goes to Django's ASGI application: pages,
and the artifact calls that stream a body, which would hold one of a pool's few threads for
the whole transfer.

A pooled view marked `middleware=False` (the webhooks, the runner's job calls) is served
without Django's middleware, the host checked and SecurityMiddleware applied as below: the
8 middlewares' calls were a tenth of a webhook request's CPU.

An async view marked `@without_middleware` (the runner's long-poll) is served by Django's ASGI
handler with no middleware: URL resolution, the view, and errors made responses, as usual.
Each of the 8 middlewares' hooks is sync code that Django runs through sync_to_async, in a
thread made for the request, and these hops were 70% of the long-poll's CPU (py-spy --gil,
bench e2e), paid on every job's claim. A runner's bearer-token JSON call has no use for what
they add (sessions, users, CSRF, messages, the browser's security headers).

What a request's committed changes announce (cicd.follow_ups: viewer events, commit
statuses, notifications) runs in the pool once the response is sent: a runner's report is
answered without waiting for it. Under any other server (WSGI, the test client) it runs at
commit, before the answer, as anywhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.core.handlers.exception import convert_exception_to_response
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponseBase
from django.middleware.security import SecurityMiddleware
from django.urls import Resolver404, resolve, set_script_prefix

from cicd.follow_ups import follow_ups_collected

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
Work = list[Callable[[], None]]

# Request paths whose pool (or none) PooledViews remembers.
PATHS_REMEMBERED = 4096


def pooled(pool: str, *, middleware: bool = True) -> Callable[[Callable], Callable]:
    """Mark a sync view to be served in the pool named `pool` (outermost decorator).
    `middleware=False`: served there without Django's middleware, as a @without_middleware
    view is (the host checked, SecurityMiddleware's redirect and headers applied): for the
    machine-to-machine calls, which have no use for sessions, users, CSRF, messages or a
    browser's page headers."""

    def mark(view: Callable) -> Callable:
        view.served_in_pool = pool
        view.pool_middleware = middleware
        return view

    return mark


def without_middleware(view: Callable) -> Callable:
    """Mark an async view to be served without Django's middleware (outermost decorator)."""
    view.served_without_middleware = True
    return view


# _pool_of's answer for a view marked @without_middleware.
_NO_MIDDLEWARE = "<no middleware>"


class _WithoutMiddleware:
    """A Django handler with no middleware chain: its `_checked` checks the host against
    ALLOWED_HOSTS (a 400 otherwise) and applies SecurityMiddleware's redirect to HTTPS and
    headers (plain code, no I/O) around the view."""

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware, self._template_response_middleware, self._exception_middleware = [], [], []
        # Only its process_request and process_response are called, around the view.
        self._security = SecurityMiddleware(self._get_response)
        self._middleware_chain = convert_exception_to_response(self._checked)


class _HandlerWithoutMiddleware(_WithoutMiddleware, ASGIHandler):
    """Django's ASGI handler with no middleware chain: the checks done in the event loop,
    without a hop."""

    async def _checked(self, request: HttpRequest) -> HttpResponseBase:
        request.get_host()  # DisallowedHost: a 400, as through CommonMiddleware
        response = self._security.process_request(request) or await self._get_response_async(request)
        return _finished(self._security, request, response)


def _finished(security: SecurityMiddleware, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """SecurityMiddleware's headers, and the Content-Length CommonMiddleware gives an answer
    in hand (the server would send it chunked otherwise)."""
    if not response.streaming and not response.has_header("Content-Length"):
        response.headers["Content-Length"] = str(len(response.content))
    return security.process_response(request, response)


class _PoolHandlerWithoutMiddleware(_WithoutMiddleware, BaseHandler):
    """The sync handler of the pooled views marked `middleware=False`: the same checks, in the
    pool's thread. The chain of 8 middlewares was a tenth of a webhook request's CPU (py-spy,
    sequential deliveries)."""

    def _checked(self, request: HttpRequest) -> HttpResponseBase:
        request.get_host()  # DisallowedHost: a 400, as through CommonMiddleware
        response = self._security.process_request(request) or self._get_response(request)
        return _finished(self._security, request, response)


def _run(work: Work) -> None:
    for item in work:
        try:
            item()
        except Exception:  # what the request changed is committed; the sweeps catch up
            logger.exception("work after the response %r failed", item)


def _in_pool_thread(work: Work) -> None:
    # What the request signals do around a request: a connection past CONN_MAX_AGE, broken,
    # or left in a failed transaction is closed (the next query reconnects).
    close_old_connections()
    try:
        _run(work)
    finally:
        close_old_connections()


class PooledViews(ASGIHandler):
    """Serves the `@pooled` views of `pools` ({name: threads}); passes the rest to `app`."""

    def __init__(self, app: App, *, pools: dict[str, int]) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self.app = app
        self.executors = {
            name: ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"pool-{name}")
            for name, threads in pools.items()
        }
        # Each path's pool ("" for none, _NO_MIDDLEWARE) and whether its middleware runs.
        self._pools_by_path: dict[str, tuple[str, bool]] = {}
        self.without_middleware = _HandlerWithoutMiddleware()
        self.pool_without_middleware = _PoolHandlerWithoutMiddleware()
        self.pool_without_middleware.load_middleware()

    def _route(self, scope: Scope) -> tuple[str, bool]:
        if scope.get("type") != "http":
            return "", True
        path = str(scope.get("path", ""))
        root = str(scope.get("root_path", ""))
        return self._pool_of(path[len(root) :] if root and path.startswith(root) else path)

    def executor_for(self, scope: Scope) -> ThreadPoolExecutor | None:
        return self.executors.get(self._route(scope)[0])

    def _pool_of(self, path: str) -> tuple[str, bool]:
        # Resolving the URL here, and again in Django's handler, was a twentieth of a webhook's
        # CPU (py-spy, under a burst); the URLs do not change while the server runs.
        try:
            return self._pools_by_path[path]
        except KeyError:
            pass
        try:
            view = resolve(path).func
            pool = _NO_MIDDLEWARE if getattr(view, "served_without_middleware", False) else ""
            route = (getattr(view, "served_in_pool", pool), getattr(view, "pool_middleware", True))
        except Resolver404:
            route = ("", True)
        if len(self._pools_by_path) >= PATHS_REMEMBERED:  # paths with ids in them: keep it bounded
            self._pools_by_path.clear()
        self._pools_by_path[path] = route
        return route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pool, middleware = self._route(scope)
        if pool == _NO_MIDDLEWARE:
            await self.without_middleware(scope, receive, send)
            return
        executor = self.executors.get(pool)
        if executor is None:
            await self.app(scope, receive, send)
            return
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        loop = asyncio.get_running_loop()
        handler = self if middleware else self.pool_without_middleware
        response, follow_ups = await loop.run_in_executor(executor, self._respond, scope, body_file, handler)
        try:
            await self.send_response(response, send)
        finally:
            if response.streaming:
                await loop.run_in_executor(executor, response.close)
            if follow_ups:
                executor.submit(_in_pool_thread, follow_ups)  # not waited for

    def _respond(self, scope: Scope, body_file: Any, handler: BaseHandler) -> tuple[HttpResponseBase, Work]:
        try:
            set_script_prefix(get_script_prefix(scope))
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, response = self.create_request(scope, body_file)
            with follow_ups_collected() as follow_ups:
                if request is not None:
                    response = handler.get_response(request)
            if not response.streaming:
                # The content is in hand: request_finished (which returns the database
                # connection, or closes an old or broken one) runs here, in this thread.
                response.close()
            return response, follow_ups
        finally:
            body_file.close()
