"""Commit statuses back to the forge: GitHub's statuses API, GitLab's commit status API.

A run's status maps to a forge state; `commit_status_report` posts it when it differs from
what was last reported (CommitStatusReport). It runs in a Celery task that retries
transient failures (network, 5xx, 429) with backoff; nothing here ever touches the run.

Two paths lead to a report: `commit_status_enqueue(run_id=...)` after a run is created or
changes (the engine's after-commit hook may call it), and the beat sweep
(`commit_statuses_sweep`), which catches every change the hook did not announce.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from pipelines.locks import advisory_lock
from pipelines.models import CommitStatusReport, Forge, Repository
from runs.models import PipelineRun, RunStatus

logger = logging.getLogger(__name__)

DEFAULT_API_URLS = {Forge.GITHUB: "https://api.github.com", Forge.GITLAB: "https://gitlab.com/api/v4"}

_GITHUB_STATES = {
    RunStatus.PENDING: "pending",
    RunStatus.RUNNING: "pending",
    RunStatus.BLOCKED: "pending",
    RunStatus.SUCCESS: "success",
    RunStatus.FAILURE: "failure",
    RunStatus.CANCELLED: "error",
}
_GITLAB_STATES = {
    RunStatus.PENDING: "pending",
    RunStatus.RUNNING: "running",
    RunStatus.BLOCKED: "pending",
    RunStatus.SUCCESS: "success",
    RunStatus.FAILURE: "failed",
    RunStatus.CANCELLED: "canceled",
}
_DESCRIPTIONS = {
    RunStatus.PENDING: "Run #{n} is pending",
    RunStatus.RUNNING: "Run #{n} is running",
    RunStatus.BLOCKED: "Run #{n} waits for a manual job",
    RunStatus.SUCCESS: "Run #{n} passed",
    RunStatus.FAILURE: "Run #{n} failed",
    RunStatus.CANCELLED: "Run #{n} was cancelled",
}


class ForgeError(Exception):
    """The forge refused the status (4xx): retrying will not help."""


class ForgeUnavailable(Exception):
    """The forge could not be reached or failed (network, 5xx, 429): retry later."""


@dataclass(frozen=True)
class StatusPost:
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    state: str
    description: str


def reports_statuses(repository: Repository) -> bool:
    return bool(repository.forge and repository.forge_project and repository.forge_token)


def run_url(run: PipelineRun) -> str:
    return settings.CONVEYOR_BASE_URL + reverse("admin:runs_pipelinerun_change", args=[run.pk])


def status_post(run: PipelineRun) -> StatusPost:
    """The request that tells the forge about the run's current status."""
    repository = run.pipeline.repository
    api = (repository.forge_api_url or DEFAULT_API_URLS[Forge(repository.forge)]).rstrip("/")
    status = RunStatus(run.status)
    description = _DESCRIPTIONS[status].format(n=run.number)[:140]
    context = f"conveyor/{run.pipeline.name}"
    if repository.forge == Forge.GITHUB:
        state = _GITHUB_STATES[status]
        return StatusPost(
            url=f"{api}/repos/{quote(repository.forge_project, safe='/')}/statuses/{run.commit_sha}",
            headers={
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {repository.forge_token}",
                "X-GitHub-Api-Version": "2022-11-28",
            },
            body={"state": state, "target_url": run_url(run), "description": description, "context": context},
            state=state,
            description=description,
        )
    state = _GITLAB_STATES[status]
    return StatusPost(
        url=f"{api}/projects/{quote(repository.forge_project, safe='')}/statuses/{run.commit_sha}",
        headers={"PRIVATE-TOKEN": repository.forge_token},
        body={
            "state": state,
            "ref": run.branch,
            "name": context,
            "target_url": run_url(run),
            "description": description,
        },
        state=state,
        description=description,
    )


def _send(post: StatusPost) -> None:
    request = urllib.request.Request(  # noqa: S310 (the admin sets the forge's https API URL)
        post.url,
        data=json.dumps(post.body).encode(),
        headers={**post.headers, "Content-Type": "application/json", "User-Agent": "Conveyor-CI"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.CONVEYOR_COMMIT_STATUS_TIMEOUT_S) as response:  # noqa: S310
            response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode(errors="replace").strip()
        message = f"{exc.code} from {post.url.split('?')[0]}: {detail}"
        if exc.code >= 500 or exc.code == 429:
            raise ForgeUnavailable(message) from None
        raise ForgeError(message) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ForgeUnavailable(f"{post.url.split('?')[0]}: {exc}") from None


def commit_status_report(*, run_id: Any) -> str:
    """Post the run's current status to its forge if it changed since the last report.

    Returns what happened: "sent", "unchanged", "not configured" or "refused" (a 4xx, kept in
    last_error). Raises ForgeUnavailable for a transient failure (the task retries)."""
    # Two reports of one run must not overtake each other: a late "running" posted after
    # "success" would stick on the forge.
    with advisory_lock("conveyor.commit-status", run_id):
        run = PipelineRun.objects.select_related("pipeline__repository").filter(pk=run_id).first()
        if run is None or not run.commit_sha or not reports_statuses(run.pipeline.repository):
            return "not configured"
        post = status_post(run)
        report, _ = CommitStatusReport.objects.get_or_create(run=run)
        if (report.state, report.description) == (post.state, post.description):
            return "unchanged"
        CommitStatusReport.objects.filter(pk=report.pk).update(attempts=report.attempts + 1)
        try:
            _send(post)
        except ForgeUnavailable as exc:
            CommitStatusReport.objects.filter(pk=report.pk).update(last_error=str(exc)[:2000])
            raise
        except ForgeError as exc:
            # Record the state as reported anyway: the forge will refuse it again, and the sweep
            # must not hammer it. The next change of the run is tried afresh.
            CommitStatusReport.objects.filter(pk=report.pk).update(
                state=post.state, description=post.description, last_error=str(exc)[:2000]
            )
            logger.warning("commit status of run %s refused: %s", run_id, exc)
            return "refused"
        CommitStatusReport.objects.filter(pk=report.pk).update(
            state=post.state, description=post.description, reported_at=timezone.now(), last_error=""
        )
        return "sent"


def commit_status_enqueue(*, run_id: Any) -> None:
    """Report the run's status after the current transaction commits (if its repository
    reports statuses). Never raises: a broker outage is caught up by the sweep."""
    from pipelines.tasks import report_commit_status

    # Most repositories report nothing: one indexed lookup spares the broker a task per change.
    reporting = (
        PipelineRun.objects.filter(pk=run_id)
        .exclude(pipeline__repository__forge="")
        .exclude(pipeline__repository__forge_project="")
        .exclude(pipeline__repository__forge_token="")
    )
    if reporting.exists():
        transaction.on_commit(partial(report_commit_status.delay, str(run_id)), robust=True)


def commit_statuses_sweep() -> int:
    """Queue a report for every run whose forge state differs from the last one reported.
    Safe to run twice at once (reports are serialized per run and post only changes)."""
    from pipelines.selectors import runs_needing_commit_status
    from pipelines.tasks import report_commit_status

    queued = 0
    for run in runs_needing_commit_status():
        if not run.commit_sha or not reports_statuses(run.pipeline.repository):
            continue
        post = status_post(run)
        report = getattr(run, "commit_status_report", None)
        if report is not None and (report.state, report.description) == (post.state, post.description):
            continue
        report_commit_status.delay(str(run.pk))
        queued += 1
    return queued
