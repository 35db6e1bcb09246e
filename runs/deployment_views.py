"""POST endpoints for deploy decisions, for the run page: approve, reject, override a freeze,
redeploy. Thin: each calls one service and answers JSON.

Session authentication with Django's CSRF protection (send the csrftoken cookie's value as
X-CSRFToken, or a csrfmiddlewaretoken field). Answers: 200 with the deployment (or, for a
redeploy, 201 with the new run), 401 when not logged in, 403 without the right (nothing
changes), 404 for an unknown deployment, 409 when it no longer waits, 400 for a bad request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_POST

from runs import deployments
from runs.deployment_selectors import deployment_summary
from runs.models import Deployment
from runs.services import TransitionError

_MAX_COMMENT = 5000


def _comment(request: HttpRequest) -> str:
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            raise ValueError("the body is not JSON") from None
        comment = data.get("comment", "") if isinstance(data, dict) else ""
    else:
        comment = request.POST.get("comment", "")
    if not isinstance(comment, str) or len(comment) > _MAX_COMMENT:
        raise ValueError(f"comment must be text of at most {_MAX_COMMENT} characters")
    return comment.strip()


def _answer(request: HttpRequest, deployment_id: Any, call: Callable[[Deployment, str], Any]) -> JsonResponse:
    if not request.user.is_authenticated:
        return JsonResponse({"error": "log in first"}, status=401)
    deployment = get_object_or_404(Deployment, pk=deployment_id)
    try:
        result = call(deployment, _comment(request))
    except PermissionDenied as exc:
        return JsonResponse({"error": str(exc) or "permission denied"}, status=403)
    except TransitionError as exc:
        return JsonResponse({"error": str(exc)}, status=409)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    if result is not None:
        return result
    deployment = Deployment.objects.select_related("environment", "job").get(pk=deployment.pk)
    return JsonResponse({"deployment": deployment_summary(deployment=deployment)})


@require_POST
def deployment_approve(request: HttpRequest, deployment_id: Any) -> JsonResponse:
    def call(deployment: Deployment, comment: str) -> None:
        deployments.deployment_approve(deployment=deployment, user=request.user, comment=comment)

    return _answer(request, deployment_id, call)


@require_POST
def deployment_reject(request: HttpRequest, deployment_id: Any) -> JsonResponse:
    def call(deployment: Deployment, comment: str) -> None:
        deployments.deployment_reject(deployment=deployment, user=request.user, comment=comment)

    return _answer(request, deployment_id, call)


@require_POST
def deployment_override_freeze(request: HttpRequest, deployment_id: Any) -> JsonResponse:
    def call(deployment: Deployment, comment: str) -> None:
        deployments.deployment_override_freeze(deployment=deployment, user=request.user, comment=comment)

    return _answer(request, deployment_id, call)


@require_POST
def deployment_redeploy(request: HttpRequest, deployment_id: Any) -> JsonResponse:
    def call(deployment: Deployment, comment: str) -> JsonResponse:
        run = deployments.deployment_redeploy(deployment=deployment, user=request.user)
        return JsonResponse({"run": {"id": str(run.pk), "number": run.number, "status": run.status}}, status=201)

    return _answer(request, deployment_id, call)
