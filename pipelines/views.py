"""Webhook endpoints: POST /webhooks/github/, /webhooks/gitlab/, /webhooks/generic/.

Thin: read the body (never more than CONVEYOR_WEBHOOK_MAX_BYTES), hand it to
deliveries.webhook_receive, answer with JSON. Status codes: 202 queued or ignored, 200 ping
or redelivery, 400 malformed, 401 bad signature, 404 unknown repository, 405 not a POST,
413 too large, 503 database unavailable (deliver again later).
"""

from __future__ import annotations

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from cicd.pooled import pooled
from pipelines import deliveries, webhooks
from pipelines.models import WebhookProvider
from pipelines.webhooks import WebhookError


def read_body(request: HttpRequest, limit: int) -> bytes:
    """The raw body, refusing (413) one over `limit` bytes without reading more than limit + 1."""
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared:
        try:
            length = int(declared)
        except ValueError:
            raise WebhookError(400, "invalid Content-Length header") from None
        if length > limit:
            raise WebhookError(413, f"the body is {length} bytes; the limit is {limit}")
    body = request.read(limit + 1)
    if len(body) > limit:
        raise WebhookError(413, f"the body is over the limit of {limit} bytes")
    return body


def request_headers(request: HttpRequest) -> dict[str, str]:
    return {name.lower(): deliveries.clean_text(value, 2000) for name, value in request.headers.items()}


def _receive(request: HttpRequest, provider: str) -> JsonResponse:
    try:
        body = read_body(request, settings.CONVEYOR_WEBHOOK_MAX_BYTES)
        query_repository = request.GET.get("repository", "")
        if len(query_repository) > 200 or deliveries.clean_text(query_repository, 200) != query_repository:
            raise WebhookError(404, "no repository with such a name")
        answer = deliveries.webhook_receive(
            request=webhooks.Request(
                provider=provider,
                headers=request_headers(request),
                body=body,
                query_repository=query_repository,
                content_type=request.META.get("CONTENT_TYPE", ""),
            )
        )
    except WebhookError as exc:
        return JsonResponse({"error": exc.message}, status=exc.status)
    except (OperationalError, InterfaceError):
        return JsonResponse({"error": "the database is unavailable; deliver the event again later"}, status=503)
    return JsonResponse(answer.body, status=answer.status)


@pooled("webhooks", middleware=False)
@csrf_exempt
@require_POST
def github_webhook(request: HttpRequest) -> JsonResponse:
    return _receive(request, WebhookProvider.GITHUB)


@pooled("webhooks", middleware=False)
@csrf_exempt
@require_POST
def gitlab_webhook(request: HttpRequest) -> JsonResponse:
    return _receive(request, WebhookProvider.GITLAB)


@pooled("webhooks", middleware=False)
@csrf_exempt
@require_POST
def generic_webhook(request: HttpRequest) -> JsonResponse:
    return _receive(request, WebhookProvider.GENERIC)
