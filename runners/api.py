"""The runner API: what `manage.py runner --url ... --token ...` talks to.

Plain JSON views rather than DRF: it is a machine protocol, and the long-poll claim must
be an async view (under ASGI a blocking sync view would hold Django's shared thread).
Every call but `register` carries `Authorization: Bearer <runner token>`; job calls are
fenced: only the runner holding a RUNNING job may report on it.

The job calls (heartbeat, step start/log/finish, finish, release) are short and many: the
web server serves them in its "runner-api" pool of threads (cicd.pooled).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from cicd.pooled import pooled, without_middleware
from logs.services import LogGap
from runners import services
from runners.models import Executor, Runner
from runners.services import JobNotHeld, RunnerAuthError, StepNotFound
from runners.wakeups import RunnerKind, queue_wakeups

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_LONG_POLL_S = 30.0
# Exit codes are stored in a 32-bit integer column; concurrency in a small one.
EXIT_CODE_RANGE = range(-(2**31), 2**31)
CONCURRENCY_RANGE = range(1, 2**15)


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"detail": message, **extra}, status=status)


def _json_body(request: HttpRequest) -> dict[str, Any]:
    declared = request.META.get("CONTENT_LENGTH") or ""
    try:
        length = int(declared) if declared else 0
    except ValueError:
        raise BadRequest("invalid Content-Length header") from None
    if length > MAX_BODY_BYTES:
        raise BadRequest(f"the body is {length} bytes; the limit is {MAX_BODY_BYTES}", status=413)
    # read(), not .body: DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB, meant for forms) would refuse a log
    # chunk of 1 MB of non-ASCII text, which JSON escapes into up to 6 MB; this API has its own bound.
    body = request.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"the body is over the limit of {MAX_BODY_BYTES} bytes", status=413)
    if not body:
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _bearer(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() in {"bearer", "token"} else ""


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if name not in data:
        if default is ...:
            raise BadRequest(f"missing field {name!r}")
        return default
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON true/false are bools, and bool is an int in Python: refuse them where a number is meant.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise BadRequest(f"field {name!r} must be {names}")
    # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the database.
    if isinstance(value, str) and "\x00" in value:
        raise BadRequest(f"field {name!r} must not contain NUL characters")
    return value


def _exit_code(data: dict[str, Any]) -> int | None:
    exit_code = _field(data, "exit_code", (int, type(None)), None)
    if exit_code is not None and exit_code not in EXIT_CODE_RANGE:
        raise BadRequest("field 'exit_code' must be a 32-bit integer")
    return exit_code


def _answered(call: Callable[[], HttpResponse]) -> HttpResponse:
    """The answer of a job call: its own, or the status code its domain error maps to."""
    try:
        return call()
    except RunnerAuthError as exc:
        return _error(401, str(exc))
    except BadRequest as exc:
        return _error(exc.status, str(exc))
    except JobNotHeld as exc:
        return _error(409, str(exc), code="job_not_held")
    except StepNotFound as exc:
        return _error(404, str(exc))
    except LogGap as exc:
        return _error(409, str(exc), code="log_gap", expected_offset=exc.expected)


def runner_endpoint(view: Callable) -> Callable:
    """A job call: `view(request, runner, body, ...)` runs once the runner is authenticated
    and the body parsed."""

    @pooled("runner-api", middleware=False)
    @csrf_exempt
    @require_POST
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        def call() -> HttpResponse:
            runner = services.runner_authenticate(token=_bearer(request))
            return view(request, runner, _json_body(request), *args, **kwargs)

        return _answered(call)

    return wrapper


@csrf_exempt
@require_POST
def register(request: HttpRequest) -> JsonResponse:
    try:
        data = _json_body(request)
        tags = _field(data, "tags", list, [])
        if not all(isinstance(t, str) and 0 < len(t) <= 100 and "\x00" not in t for t in tags):
            raise BadRequest("tags must be non-empty strings of at most 100 characters")
        executor = _field(data, "executor", str, Executor.SHELL)
        if executor not in Executor.values:
            raise BadRequest(f"executor must be one of {', '.join(Executor.values)}")
        name = _field(data, "name", str).strip()
        if not name:
            raise BadRequest("field 'name' must not be empty")
        concurrency = _field(data, "concurrency", int, 1)
        if concurrency not in CONCURRENCY_RANGE:
            raise BadRequest(f"field 'concurrency' must be between 1 and {CONCURRENCY_RANGE[-1]}")
        runner, token = services.runner_register(
            registration_token=_field(data, "registration_token", str),
            name=name,
            tags=tags,
            concurrency=concurrency,
            executor=executor,
            version=_field(data, "version", str, ""),
        )
    except BadRequest as exc:
        return _error(exc.status, str(exc))
    except RunnerAuthError as exc:
        return _error(403, str(exc))
    return JsonResponse({"id": str(runner.id), "token": token}, status=201)


@sync_to_async(thread_sensitive=False)
def _authenticate_and_claim(token: str) -> tuple[dict[str, Any] | None, RunnerKind]:
    """The claim answer: the job, and the artifact lists the runner would ask for next
    (artifacts.views: dependencies, images), which saves it two requests per job. With it, the
    kind of runner that claimed (runners.wakeups): runners of one kind find the same jobs."""
    from django.db import close_old_connections

    from artifacts.views import claim_artifact_lists

    close_old_connections()
    runner = services.runner_authenticate(token=token)
    kind = RunnerKind(frozenset(runner.tags), runner.is_paused)
    claimed = services.job_claim(runner=runner)
    if claimed is None:
        return None, kind
    lists = claim_artifact_lists(job_id=claimed.id, run_id=claimed.run_id)
    return {**dataclasses.asdict(claimed), "artifact_lists": lists}, kind


@without_middleware  # served by cicd.pooled with no middleware: see there
@csrf_exempt
async def request_job(request: HttpRequest) -> HttpResponse:
    """Claim a job; with {"wait": N} long-poll up to N seconds, woken by LISTEN/NOTIFY
    (runners.wakeups says which long-polls a notification wakes). The answer is the job
    (runners.services.ClaimedJob) and its "artifact_lists"."""
    if request.method != "POST":
        return _error(405, "POST only")
    try:
        data = _json_body(request)
        wait = float(_field(data, "wait", (int, float), 0))
    except BadRequest as exc:
        return _error(exc.status, str(exc))
    token = _bearer(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, min(wait, MAX_LONG_POLL_S))
    wakeups = queue_wakeups()
    async with contextlib.AsyncExitStack() as listening:
        waiter = listening.enter_context(wakeups.waiter())
        listens = False
        while True:
            waiter.arm()  # before the claim: a NOTIFY during it is not missed
            try:
                answer, kind = await _authenticate_and_claim(token)
            except RunnerAuthError as exc:
                return _error(401, str(exc))
            wakeups.claimed(waiter, kind=kind, found=answer is not None)
            if answer is not None:
                return JsonResponse(answer)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return HttpResponse(status=204)  # no body: h11 aborts a 204 with one
            if not listens:
                try:
                    await listening.enter_async_context(wakeups.listening(timeout=remaining))
                except Exception as exc:  # the database away: poll, once a second, till it is back
                    logger.warning("long-poll: no LISTEN (%s); polling", exc)
                    await asyncio.sleep(min(remaining, 1.0))
                    continue
                listens = True
                # A job queued between the claim above and the LISTEN sent its NOTIFY before
                # anyone here listened: claim once more before waiting, or it would wait for
                # the next NOTIFY or the end of the long-poll (up to MAX_LONG_POLL_S).
                continue
            try:
                await asyncio.wait_for(waiter.woken.wait(), remaining)
            except TimeoutError:
                return HttpResponse(status=204)  # no body: h11 aborts a 204 with one


@runner_endpoint
def heartbeat(request: HttpRequest, runner: Runner, data: dict, job_id) -> JsonResponse:
    services.job_heartbeat(job_id=job_id, runner=runner)
    return JsonResponse({"continue": True})


@runner_endpoint
def step_start(request: HttpRequest, runner: Runner, data: dict, job_id, step_id) -> JsonResponse:
    services.step_start(job_id=job_id, step_id=step_id, runner=runner)
    return JsonResponse({})


@runner_endpoint
def step_finish(request: HttpRequest, runner: Runner, data: dict, job_id, step_id) -> JsonResponse:
    exit_code = _exit_code(data)
    try:
        services.step_finish(
            job_id=job_id, step_id=step_id, runner=runner, status=_field(data, "status", str), exit_code=exit_code
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return JsonResponse({})


@pooled("runner-api", middleware=False)
@csrf_exempt
@require_POST
def step_log(request: HttpRequest, job_id, step_id) -> HttpResponse:
    """Append a chunk to a step's log: {"offset": <UTF-8 byte offset>, "content": "..."}.

    Authenticated like every job call by the token of the runner holding the job, or by the
    job's own token (CI_JOB_TOKEN), which is good for this job's steps only while it runs.
    Answers {"next_offset": N}: for a new chunk and for a resent one alike. A gap or an
    overlap is a 409 with code "log_gap" and "expected_offset": where to resend from.
    """

    def call() -> JsonResponse:
        token = _bearer(request)
        auth: dict[str, Any] = {"job_token": token}
        if not token.startswith(services.JOB_TOKEN_PREFIX):
            auth = {"runner": services.runner_authenticate(token=token)}
        data = _json_body(request)
        offset = _field(data, "offset", int)
        if offset < 0:
            raise BadRequest("offset must be >= 0")
        next_offset = services.step_log(
            job_id=job_id, step_id=step_id, offset=offset, text=_field(data, "content", str), **auth
        )
        return JsonResponse({"next_offset": next_offset})

    def call_refusing_bad_values() -> JsonResponse:
        try:
            return call()
        except ValueError as exc:  # a chunk the log service cannot take (logs.services)
            raise BadRequest(str(exc)) from None

    return _answered(call_refusing_bad_values)


@runner_endpoint
def finish(request: HttpRequest, runner: Runner, data: dict, job_id) -> JsonResponse:
    exit_code = _exit_code(data)
    # The job's end is committed (and the jobs it unblocks queued, their runners woken) before
    # the answer; what follows the run's change (its viewers' events, commit status,
    # notifications) runs after it, served in the pool (cicd.pooled): the runner, free for
    # its next job, need not wait for it.
    try:
        services.job_complete(
            job_id=job_id,
            runner=runner,
            status=_field(data, "status", str),
            exit_code=exit_code,
            reason=_field(data, "reason", str, "")[:500],
            step_ends=_step_ends(data),
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return JsonResponse({})


# More than a job has steps is a malformed report, not a job.
MAX_STEP_ENDS = 1000


def _step_ends(data: dict[str, Any]) -> list[services.StepEnd]:
    """The optional "steps" of a finish: [{"id", "status", "exit_code"}], the ends of steps
    the runner did not report on their own (ClaimedJob.finish_takes_step_ends)."""
    ends = _field(data, "steps", list, [])
    if len(ends) > MAX_STEP_ENDS:
        raise BadRequest(f"field 'steps' must have at most {MAX_STEP_ENDS} entries")
    if not all(isinstance(end, dict) for end in ends):
        raise BadRequest("field 'steps' must be a list of objects")
    return [
        services.StepEnd(step_id=_step_id(end), status=_field(end, "status", str), exit_code=_exit_code(end))
        for end in ends
    ]


def _step_id(end: dict[str, Any]) -> str:
    step_id = _field(end, "id", str)
    try:
        return str(uuid.UUID(step_id))
    except ValueError:
        raise BadRequest(f"{step_id!r} is not a step id") from None


@runner_endpoint
def release(request: HttpRequest, runner: Runner, data: dict, job_id) -> JsonResponse:
    services.job_release(job_id=job_id, runner=runner, reason=_field(data, "reason", str, "")[:500])
    return JsonResponse({})
