"""What the Kubernetes executor and the deploy rollout share about the `kubernetes` client."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException


def describe_api_error(exc: ApiException) -> str:
    """A one-line reason for a job log: the status and the API's own message."""
    message = ""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if body:
        try:
            message = str(json.loads(body).get("message") or "")
        except (ValueError, AttributeError):
            message = body[:500]
    head = f"{exc.status} {exc.reason}".strip() if exc.status else str(exc.reason or "API error")
    return f"{head}: {message}" if message else head
