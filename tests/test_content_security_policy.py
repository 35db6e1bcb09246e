"""cicd.security.ContentSecurityPolicyMiddleware in both of Django's modes: under ASGI it is an
async middleware (no hop to a thread and back per request), under WSGI a sync one, and in
both it adds the policy to responses that have none of their own."""

from __future__ import annotations

import asyncio
import threading

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, RequestFactory

from cicd.security import ContentSecurityPolicyMiddleware

CSP = "Content-Security-Policy"


def own_policy(request: HttpRequest) -> HttpResponse:
    return HttpResponse(headers={CSP: "default-src 'none'"})


def test_over_a_sync_chain_the_middleware_is_sync_and_adds_the_policy(settings) -> None:
    settings.CONVEYOR_CONTENT_SECURITY_POLICY = "default-src 'self'"
    middleware = ContentSecurityPolicyMiddleware(lambda request: HttpResponse())

    response = middleware(RequestFactory().get("/"))

    assert not iscoroutinefunction(middleware)
    assert response[CSP] == "default-src 'self'"
    assert ContentSecurityPolicyMiddleware(own_policy)(RequestFactory().get("/"))[CSP] == "default-src 'none'"


def test_over_an_async_chain_the_middleware_is_async_and_adds_the_policy(settings) -> None:
    settings.CONVEYOR_CONTENT_SECURITY_POLICY = "default-src 'self'"

    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    async def own(request: HttpRequest) -> HttpResponse:
        return own_policy(request)

    middleware = ContentSecurityPolicyMiddleware(view)

    assert iscoroutinefunction(middleware)
    assert asyncio.run(middleware(RequestFactory().get("/")))[CSP] == "default-src 'self'"
    assert asyncio.run(ContentSecurityPolicyMiddleware(own)(RequestFactory().get("/")))[CSP] == "default-src 'none'"


def test_an_empty_setting_adds_no_header_in_either_mode(settings) -> None:
    settings.CONVEYOR_CONTENT_SECURITY_POLICY = ""

    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    assert CSP not in ContentSecurityPolicyMiddleware(lambda request: HttpResponse())(RequestFactory().get("/"))
    assert CSP not in asyncio.run(ContentSecurityPolicyMiddleware(view)(RequestFactory().get("/")))


def test_under_asgi_an_async_view_gets_the_policy_without_the_middleware_leaving_the_event_loop(
    settings, monkeypatch
) -> None:
    settings.CONVEYOR_CONTENT_SECURITY_POLICY = "default-src 'self'"
    threads: list[threading.Thread] = []
    add = ContentSecurityPolicyMiddleware._with_policy

    def spy(response: HttpResponse) -> HttpResponse:
        threads.append(threading.current_thread())
        return add(response)

    monkeypatch.setattr(ContentSecurityPolicyMiddleware, "_with_policy", staticmethod(spy))

    # The long-poll claim is an async view that refuses a GET before any database work.
    response = asyncio.run(AsyncClient().get("/api/runner/jobs/request"))

    assert response.status_code == 405
    assert response[CSP] == "default-src 'self'"
    # Adapted as a sync-only middleware it would run in a thread of sync_to_async's.
    assert threads == [threading.current_thread()]
