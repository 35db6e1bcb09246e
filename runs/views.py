"""Server-rendered pages of runs: the runs list (also the landing page), a run with its
graph, a job with its steps and live log, runners, status badges; the small JSON endpoints
the pages poll for live statuses; and the POST buttons (cancel, retry, play).

Thin: reads come from runs.page_selectors (which start from pipelines.permissions'
visible_* querysets, so a private run an outsider asks for is a 404, like a missing one),
writes from runs.actions (which check the role: a viewer pressing Retry gets a 403).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from django.views.decorators.http import require_GET, require_POST

from artifacts.selectors import job_artifacts, job_test_report, run_artifacts, run_test_summary
from logs.selectors import job_for_viewer
from logs.views import job_log_context
from pipelines.models import Repository, Trigger
from pipelines.permissions import can_run, can_view_badge, visible_repositories
from runs import actions
from runs.deployment_selectors import run_deployments
from runs.models import Job, JobStatus, PipelineRun, RunStatus, Step
from runs.page_selectors import (
    FilterError,
    RunFilters,
    duration_s,
    run_for_viewer,
    run_graph_layout,
    run_live_status,
    run_statuses,
    runners_with_current_jobs,
    runs_for_list,
    text_param,
)
from runs.services import TransitionError

RUNS_PER_PAGE = 25
MAX_POLLED_RUNS = 100


@login_required
@require_GET
def runs_list(request: HttpRequest) -> HttpResponse:
    """Runs the user may see, newest first, filtered by repository, branch, status, trigger."""
    try:
        filters = RunFilters.parse(request.GET)
    except FilterError as exc:
        return HttpResponseBadRequest(escape(str(exc)))
    paginator = Paginator(runs_for_list(user=request.user, filters=filters), RUNS_PER_PAGE)
    page = paginator.get_page(request.GET.get("page"))
    runs = list(page.object_list)
    now = timezone.now()
    for run in runs:
        # What a running run has taken so far (the page counts on from it, live).
        run.elapsed_s = (
            run.duration_s if run.duration_s is not None else duration_s(run.started_at, run.finished_at, now=now)
        )
    context = {
        "page": page,
        "runs": runs,
        "filters": filters,
        "query": filters.as_query(),
        "query_json": json.dumps(filters.as_query()),
        "repositories": list(visible_repositories(request.user).order_by("name").values_list("name", flat=True)),
        "statuses": RunStatus.choices,
        "triggers": Trigger.choices,
        "active_statuses": sorted(RunStatus.ACTIVE),
    }
    return render(request, "runs/list.html", context)


home = runs_list


@login_required
@require_GET
def runs_status(request: HttpRequest) -> JsonResponse:
    """{"runs": [{"id", "status", "duration_s"}]} for ?id=...&id=... (the runs list polls it)."""
    ids = request.GET.getlist("id")[:MAX_POLLED_RUNS]
    try:
        rows = run_statuses(user=request.user, run_ids=[_uuid(value) for value in ids])
    except ValueError:
        return JsonResponse({"error": "id: run ids (UUIDs)"}, status=400)
    return JsonResponse({"runs": rows})


def _uuid(value: str) -> uuid.UUID:
    return uuid.UUID(value)


def _run_or_404(request: HttpRequest, run_id: Any) -> PipelineRun:
    run = run_for_viewer(user=request.user, run_id=run_id)
    if run is None:
        raise Http404("No such run")
    return run


@login_required
@require_GET
def run_detail(request: HttpRequest, run_id: Any) -> HttpResponse:
    run = _run_or_404(request, run_id)
    context = {
        "run": run,
        "repository": run.pipeline.repository,
        "graph": run_graph_layout(run=run),
        "duration_s": run.duration_s if run.duration_s is not None else _running_for(run),
        "artifacts": run_artifacts(run=run),
        "tests": run_test_summary(run=run),
        "deployments": run_deployments(run=run),
        "can_run": can_run(request.user, run.pipeline.repository),
        "active": run.status in RunStatus.ACTIVE,
        "retryable": sorted(actions.RETRYABLE),
    }
    return render(request, "runs/run_detail.html", context)


def _running_for(run: PipelineRun) -> float | None:
    return duration_s(run.started_at, run.finished_at, now=timezone.now())


@login_required
@require_GET
def run_status(request: HttpRequest, run_id: Any) -> JsonResponse:
    """The run's and its jobs' statuses and durations (the run page polls it)."""
    return JsonResponse(run_live_status(run=_run_or_404(request, run_id)))


def _after_action(request: HttpRequest, call: Callable[[], str], *, success: str, fallback: str) -> HttpResponse:
    """Run a runs.actions write; PermissionDenied goes up (Django's 403), a refused transition
    comes back as a message on the page."""
    try:
        url = call()
    except TransitionError as exc:
        messages.error(request, str(exc))
        return redirect(fallback)
    messages.success(request, success)
    return redirect(url)


@login_required
@require_POST
def run_cancel(request: HttpRequest, run_id: Any) -> HttpResponse:
    run = _run_or_404(request, run_id)
    url = reverse("runs:run", args=[run.pk])

    def call() -> str:
        actions.run_cancel_as(run=run, user=request.user)
        return url

    return _after_action(request, call, success="Run cancelled.", fallback=url)


@login_required
@require_POST
def run_retry(request: HttpRequest, run_id: Any) -> HttpResponse:
    run = _run_or_404(request, run_id)
    url = reverse("runs:run", args=[run.pk])

    def call() -> str:
        actions.run_retry_failed_as(run=run, user=request.user)
        return url

    return _after_action(request, call, success="Failed jobs retried.", fallback=url)


def _job_or_404(request: HttpRequest, job_id: Any) -> Job:
    job = job_for_viewer(user=request.user, job_id=job_id)
    if job is None:
        raise Http404("No such job")
    return job


@login_required
@require_GET
def job_detail(request: HttpRequest, job_id: Any) -> HttpResponse:
    job = _job_or_404(request, job_id)
    steps = list(Step.objects.filter(job=job).order_by("index"))
    now = timezone.now()
    for step in steps:
        step.duration_s = duration_s(step.started_at, step.finished_at, now=now)
    attempts = list(
        Job.objects.filter(run=job.run, name=job.name).order_by("attempt").values("id", "attempt", "status")
    )
    context = {
        "job": job,
        "run": job.run,
        "repository": job.run.pipeline.repository,
        "step_rows": steps,
        **job_log_context(job, steps),
        "duration_s": duration_s(job.started_at, job.finished_at, now=now),
        "artifacts": job_artifacts(job=job),
        "test_report": job_test_report(job=job),
        "attempts": attempts,
        "can_run": can_run(request.user, job.run.pipeline.repository),
        "retryable": not job.retried and job.status in {JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED},
        "playable": not job.retried and job.status == JobStatus.MANUAL,
    }
    return render(request, "runs/job_detail.html", context)


@login_required
@require_POST
def job_retry(request: HttpRequest, job_id: Any) -> HttpResponse:
    job = _job_or_404(request, job_id)

    def call() -> str:
        new = actions.job_retry_as(job=job, user=request.user)
        return reverse("runs:job", args=[new.pk])

    return _after_action(request, call, success=f"{job.name} retried.", fallback=reverse("runs:job", args=[job.pk]))


@login_required
@require_POST
def job_play(request: HttpRequest, job_id: Any) -> HttpResponse:
    job = _job_or_404(request, job_id)
    url = reverse("runs:job", args=[job.pk])

    def call() -> str:
        actions.job_play_as(job=job, user=request.user)
        return reverse("runs:run", args=[job.run_id]) if request.POST.get("next") == "run" else url

    return _after_action(request, call, success=f"{job.name} started.", fallback=url)


@login_required
@require_GET
def runners_list(request: HttpRequest) -> HttpResponse:
    return render(request, "runs/runners.html", {"runners": runners_with_current_jobs(user=request.user)})


# --- Status badges: /badges/<repository>/<branch>.svg[?pipeline=name]

BADGE_TEXT = {
    RunStatus.SUCCESS: ("passed", "#1a7f37"),
    RunStatus.FAILURE: ("failed", "#cf222e"),
    RunStatus.RUNNING: ("running", "#0969da"),
    RunStatus.PENDING: ("pending", "#9a6700"),
    RunStatus.BLOCKED: ("blocked", "#9a6700"),
    RunStatus.CANCELLED: ("canceled", "#6e7781"),
}


@require_GET
def badge(request: HttpRequest, repository: str, branch: str) -> HttpResponse:
    """The status of the branch's latest run as an SVG for READMEs. A public repository's
    badge needs no login; a private one's is a 404 to anyone who cannot see it."""
    found = Repository.objects.filter(name=repository).first()
    if found is None or not can_view_badge(request.user, found):
        raise Http404("No such repository")
    try:
        pipeline = text_param(request.GET, "pipeline")
    except FilterError as exc:
        return HttpResponseBadRequest(escape(str(exc)))
    if "\x00" in branch:
        raise Http404("No such branch")
    runs = PipelineRun.objects.filter(pipeline__repository=found, branch=branch)
    if pipeline:
        runs = runs.filter(pipeline__name=pipeline)
    status = runs.order_by("-created_at").values_list("status", flat=True).first()
    text, colour = BADGE_TEXT.get(status, ("unknown", "#6e7781"))
    response = HttpResponse(_badge_svg("pipeline", text, colour), content_type="image/svg+xml")
    # Forge image proxies cache badges: ask them not to; a private badge is nobody else's to keep.
    response["Cache-Control"] = "no-cache, max-age=0" if not found.is_private else "private, no-cache, max-age=0"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _badge_svg(label: str, text: str, colour: str) -> str:
    left, right = 6 * len(label) + 12, 6 * len(text) + 12
    width = left + right
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
        f'aria-label="{escape(label)}: {escape(text)}"><title>{escape(label)}: {escape(text)}</title>'
        f'<rect width="{left}" height="20" fill="#555"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{colour}"/>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="{left / 2}" y="14">{escape(label)}</text>'
        f'<text x="{left + right / 2}" y="14">{escape(text)}</text></g></svg>'
    )
