"""POST /api/pipelines/<id>/trigger/: start a run with a pipeline trigger token.

    curl -X POST -H "Authorization: Bearer cvt_..." -H "Content-Type: application/json" \
         -d '{"ref": "main", "variables": {"DEPLOY": "1"}}' https://ci.example.com/api/pipelines/3/trigger/

Also form-encoded, GitLab style: token=...&ref=main&variables[DEPLOY]=1. The run is created
before the answer (201 with its id and number), with CI_PIPELINE_SOURCE "api".
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from pipelines import services
from pipelines.commit_status import run_url
from pipelines.deliveries import clean_text
from pipelines.views import read_body
from pipelines.webhooks import WebhookError

MAX_BODY_BYTES = 64 * 1024
MAX_VARIABLES = 100
_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_FORM_VARIABLE = re.compile(r"^variables\[(.*)\]$")


def _parameters(request: HttpRequest, body: bytes) -> dict[str, Any]:
    media_type = request.META.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookError(400, "the body is not valid UTF-8") from None
    if media_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_VARIABLES + 10)
        except ValueError as exc:
            raise WebhookError(400, f"the form cannot be read: {exc}") from None
        params: dict[str, Any] = {"variables": {}}
        for name, value in pairs:
            match = _FORM_VARIABLE.match(name)
            if match:
                params["variables"][match.group(1)] = value
            else:
                params[name] = value
        return params
    if not text.strip():
        return {}
    try:
        params = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise WebhookError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise WebhookError(400, "the body must be a JSON object")
    return params


def _variables(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise WebhookError(400, "'variables' must be an object of names to values")
    if len(raw) > MAX_VARIABLES:
        raise WebhookError(400, f"at most {MAX_VARIABLES} variables")
    variables = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _VARIABLE_NAME.match(name):
            raise WebhookError(400, f"invalid variable name {str(name)[:80]!r}")
        if not isinstance(value, str | int | float | bool) or len(str(value)) > 10_000:
            raise WebhookError(400, f"variable {name}: the value must be a string of at most 10000 characters")
        variables[name] = clean_text(str(value), 10_000)
    return variables


def _token(request: HttpRequest, params: dict[str, Any]) -> str:
    authorization = request.headers.get("Authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    token = params.get("token")
    return token if isinstance(token, str) else ""


def _trigger(request: HttpRequest, pipeline_id: int) -> JsonResponse:
    params = _parameters(request, read_body(request, MAX_BODY_BYTES))
    try:
        token = services.trigger_token_authenticate(pipeline_id=pipeline_id, token=_token(request, params))
    except services.InvalidTriggerToken:
        return JsonResponse({"error": "missing or invalid trigger token for this pipeline"}, status=401)
    ref = params.get("ref")
    if not isinstance(ref, str) or not ref.strip() or len(ref) > 255 or clean_text(ref, 255) != ref:
        raise WebhookError(400, "'ref' (a branch or tag name) is required")
    variables = _variables(params.get("variables"))
    try:
        run = services.run_manual(
            pipeline=token.pipeline,
            ref=ref.strip(),
            triggered_by=f"api: {token.description}"[:255],
            user=token.created_by,
            variables=variables,
            source="api",
        )
    except services.RunNotCreated as exc:
        return JsonResponse({"error": f"no run: the config's workflow rules filtered it out ({exc})"}, status=400)
    except services.TriggerError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse(
        {
            "id": str(run.pk),
            "number": run.number,
            "status": run.status,
            "ref": run.branch,
            "sha": run.commit_sha,
            "url": run_url(run),
        },
        status=201,
    )


@csrf_exempt
@require_POST
def trigger_pipeline(request: HttpRequest, pipeline_id: int) -> JsonResponse:
    try:
        return _trigger(request, pipeline_id)
    except WebhookError as exc:
        return JsonResponse({"error": exc.message}, status=exc.status)
    except (OperationalError, InterfaceError):
        return JsonResponse({"error": "the database is unavailable; try again later"}, status=503)
