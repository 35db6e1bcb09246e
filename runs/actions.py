"""What a person does to runs and jobs from the dashboard or the API: the engine's services
behind the permission check (pipelines.permissions.can_run), in one place for both.

Callers must already have found the object through a `visible_*` queryset (outsiders get a
404 there). Here someone who can see but not run gets PermissionDenied (a 403), and a
change the current state does not allow raises runs.services.TransitionError (a 409).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction

from pipelines.models import Pipeline
from pipelines.permissions import can_run
from runs import services
from runs.models import Job, JobStatus, PipelineRun

RETRYABLE = frozenset({JobStatus.FAILURE, JobStatus.CANCELLED})


def _require_run_permission(user: Any, repository: Any) -> None:
    if not can_run(user, repository):
        raise PermissionDenied(f"{user.get_username()} is not a developer of {repository.name}")


def run_cancel_as(*, run: PipelineRun, user: Any) -> PipelineRun:
    _require_run_permission(user, run.pipeline.repository)
    services.run_cancel(run=run, by=user.get_username(), user=user)
    run.refresh_from_db()
    return run


def job_retry_as(*, job: Job, user: Any) -> Job:
    _require_run_permission(user, job.run.pipeline.repository)
    return services.job_retry(job=job, user=user)


def job_play_as(*, job: Job, user: Any) -> Job:
    _require_run_permission(user, job.run.pipeline.repository)
    return services.job_play(job=job, user=user)


@transaction.atomic
def run_retry_failed_as(*, run: PipelineRun, user: Any) -> list[Job]:
    """Retry every failed or cancelled job of the run (their latest attempts), all or none."""
    _require_run_permission(user, run.pipeline.repository)
    jobs = list(Job.objects.filter(run=run, retried=False, status__in=sorted(RETRYABLE)).order_by("stage_index"))
    if not jobs:
        raise services.TransitionError("the run has no failed or cancelled job to retry")
    return [services.job_retry(job=job, user=user) for job in jobs]


def pipeline_run_as(*, pipeline: Pipeline, user: Any, ref: str, variables: dict[str, str], source: str) -> PipelineRun:
    """A person runs the pipeline on a branch or tag ("web": the Run pipeline form, "api").
    Raises PermissionDenied, or pipelines.services.TriggerError / RunNotCreated."""
    from pipelines.services import run_manual

    _require_run_permission(user, pipeline.repository)
    return run_manual(pipeline=pipeline, ref=ref, user=user, variables=variables, source=source)
