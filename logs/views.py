"""Log pages: a job's log (rendered, or live over the WebSocket) and raw text downloads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils.safestring import mark_safe

from logs.rendering import render_log
from logs.selectors import (
    job_for_viewer,
    log_chunks_from,
    log_chunks_iter,
    log_expired_at,
    log_tail_start,
    step_for_viewer,
)
from runs.models import Job, Step, StepStatus

RAW_BATCH = 64  # chunks per database read while streaming a raw log


@login_required
def job_log(request: HttpRequest, job_id) -> HttpResponse:
    job = job_for_viewer(user=request.user, job_id=job_id)
    if job is None:
        raise Http404("No such job")
    steps = Step.objects.filter(job=job).order_by("index")
    return render(request, "logs/job_log.html", {"job": job, "run": job.run, **job_log_context(job, steps)})


def job_log_context(job: Job, steps: Iterable[Step]) -> dict[str, Any]:
    """What logs/_job_log.html shows of a job: its steps' logs, or when retention deleted them."""
    expired_at = log_expired_at(job_id=job.pk)
    return {"steps": [_step_view(step, expired=expired_at is not None) for step in steps], "log_expired_at": expired_at}


def _step_view(step: Step, *, expired: bool = False) -> dict[str, Any]:
    """A finished step is rendered here (its tail if it is long); a pending or running one is
    left to the browser, which follows it over the WebSocket."""
    view: dict[str, Any] = {"step": step, "prefix": f"s{step.index}-L", "live": step.status not in StepStatus.TERMINAL}
    if view["live"] or expired:
        view["expired"] = expired
        return view
    start, lines_before, bytes_before = log_tail_start(
        step_id=step.pk, max_bytes=settings.CONVEYOR_LOG_RENDER_MAX_BYTES
    )
    chunks = ((c["content"], _parse_time(c["at"])) for c in log_chunks_iter(step_id=step.pk, offset=start))
    view["html"] = mark_safe(render_log(chunks, prefix=view["prefix"], first_line=lines_before + 1))  # noqa: S308 (escaped by render_log)
    view["bytes_before"] = bytes_before
    return view


def _parse_time(value: str | None):
    from datetime import datetime

    return datetime.fromisoformat(value) if value else None


@login_required
def step_log_raw(request: HttpRequest, step_id) -> StreamingHttpResponse:
    step = step_for_viewer(user=request.user, step_id=step_id)
    if step is None:
        raise Http404("No such step")
    expired_at = log_expired_at(job_id=step.job_id)
    if expired_at is not None:
        return _expired_response(expired_at)
    return _raw_response(request, [step.pk], filename=f"step-{step.pk}.log")


@login_required
def job_log_raw(request: HttpRequest, job_id) -> StreamingHttpResponse:
    """The whole job's log: its steps' logs one after the other."""
    job = job_for_viewer(user=request.user, job_id=job_id)
    if job is None:
        raise Http404("No such job")
    expired_at = log_expired_at(job_id=job.pk)
    if expired_at is not None:
        return _expired_response(expired_at)
    step_ids = list(Step.objects.filter(job=job).order_by("index").values_list("pk", flat=True))
    return _raw_response(request, step_ids, filename=f"job-{job.pk}.log")


def expired_message(expired_at) -> str:
    return f"This log expired: log retention deleted it on {expired_at:%Y-%m-%d} (CONVEYOR_LOG_RETENTION_DAYS)."


def _expired_response(expired_at) -> HttpResponse:
    response = HttpResponse(f"{expired_message(expired_at)}\n", status=410, content_type="text/plain; charset=utf-8")
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _raw_response(request: HttpRequest, step_ids: list, *, filename: str) -> StreamingHttpResponse:
    # Streamed in batches of chunks, never the whole log in memory. Under ASGI the iterator must
    # be asynchronous (Django would otherwise read a sync one into a list first).
    content = _raw_async(step_ids) if isinstance(request, ASGIRequest) else _raw_sync(step_ids)
    response = StreamingHttpResponse(content, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'inline; filename="{filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response


def _raw_sync(step_ids: list) -> Iterator[bytes]:
    for step_id in step_ids:
        for chunk in log_chunks_iter(step_id=step_id, batch=RAW_BATCH):
            yield chunk["content"].encode()


async def _raw_async(step_ids: list) -> AsyncIterator[bytes]:
    read = sync_to_async(log_chunks_from)
    for step_id in step_ids:
        offset = 0
        while True:
            chunks = await read(step_id=step_id, offset=offset, limit=RAW_BATCH)
            for chunk in chunks:
                yield chunk["content"].encode()
            if len(chunks) < RAW_BATCH:
                break
            offset = chunks[-1]["end"]
