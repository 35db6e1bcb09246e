"""Response headers that Django's SecurityMiddleware does not set."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse


class ContentSecurityPolicyMiddleware:
    """Adds CONVEYOR_CONTENT_SECURITY_POLICY to every response that has no policy of its own
    (a view that needs another one sets the header itself). Empty setting: no header.

    Sync and async: under ASGI a sync-only middleware costs every request a hop to a thread
    and back (Django adapts it with sync_to_async around async_to_sync), async views included.
    It only sets a header, so it runs in whichever mode the chain below it has.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]):
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            # Django tells an async middleware from a sync one by this mark on the instance.
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.async_mode:
            return self.__acall__(request)
        return self._with_policy(self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        return self._with_policy(await self.get_response(request))

    @staticmethod
    def _with_policy(response: HttpResponse) -> HttpResponse:
        policy = settings.CONVEYOR_CONTENT_SECURITY_POLICY
        if policy and "Content-Security-Policy" not in response.headers:
            response.headers["Content-Security-Policy"] = policy
        return response
