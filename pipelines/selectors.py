"""Reads for triggers: which repository a webhook is for, which pipelines an event runs,
whether a commit already ran, which schedules are due."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.db.models import Min, Q
from django.db.models.functions import Lower

from pipelines.models import UNSETTLED_STATES, Pipeline, PipelineSchedule, Repository, Trigger
from runs.models import PipelineRun, RunStatus

# Which pipelines an event runs, by the run's trigger: PUSH pipelines run for every
# push and pull request (their rules pick the jobs), PR pipelines for pull requests only.
_PIPELINE_TRIGGERS = {
    Trigger.PUSH: (Trigger.PUSH,),
    Trigger.PR: (Trigger.PUSH, Trigger.PR),
}


def _url_variants(urls: Iterable[str]) -> set[str]:
    variants: set[str] = set()
    for url in urls:
        bare = url.strip().rstrip("/")
        if not bare:
            continue
        stem = bare.removesuffix(".git")
        variants.update({bare, stem, f"{stem}.git"})
    return variants


def repositories_for_payload(*, paths: Iterable[str], urls: Iterable[str]) -> list[Repository]:
    """Repositories whose forge_project is one of `paths` (any case) or whose clone URL is one
    of `urls` (with or without `.git`), oldest first. Served by repository_forge_project_idx
    and repository_clone_url_idx."""
    lowered = sorted({path.strip().lower() for path in paths if path.strip()})
    variants = sorted(_url_variants(urls))
    if not lowered and not variants:
        return []
    condition = Q(clone_url__in=variants)
    if lowered:
        condition |= Q(forge_project_lower__in=lowered)
    return list(
        Repository.objects.annotate(forge_project_lower=Lower("forge_project")).filter(condition).order_by("pk")
    )


def pipelines_for_event(*, repository: Repository, trigger: str) -> list[Pipeline]:
    return list(
        Pipeline.objects.filter(repository=repository, is_active=True, trigger__in=_PIPELINE_TRIGGERS[trigger])
        .select_related("repository")
        .order_by("pk")
    )


def run_for_commit(
    *, pipeline: Pipeline, commit_sha: str, ref: str, is_tag: bool, triggers: Iterable[str]
) -> PipelineRun | None:
    """The run that already exists for this commit on this branch or tag (the canonical run of a
    (pipeline, sha, event)), if any. Served by run_branch_recent_idx."""
    return (
        PipelineRun.objects.filter(
            pipeline=pipeline, branch=ref, commit_sha=commit_sha, is_tag=is_tag, trigger__in=list(triggers)
        )
        .order_by("created_at")
        .first()
    )


def runs_superseded_by(*, run: PipelineRun) -> list[PipelineRun]:
    """Active runs of the same pipeline, branch and trigger for another commit: what a new push
    may make redundant. Each has `event_time`: when its earliest webhook delivery arrived
    (None for runs not started by a webhook). Served by run_branch_recent_idx."""
    return list(
        PipelineRun.objects.filter(
            pipeline_id=run.pipeline_id,
            branch=run.branch,
            is_tag=False,
            trigger=run.trigger,
            status__in=sorted(RunStatus.ACTIVE),
        )
        .exclude(pk=run.pk)
        .exclude(commit_sha=run.commit_sha)
        .annotate(event_time=Min("webhook_deliveries__received_at"))
        .order_by("created_at")
    )


def schedules_due(*, now: datetime) -> list[int]:
    """Ids of active schedules whose next run is due, oldest first. Served by schedule_due_idx."""
    return list(
        PipelineSchedule.objects.filter(is_active=True, next_run_at__lte=now)
        .order_by("next_run_at")
        .values_list("pk", flat=True)
    )


def runs_needing_commit_status() -> list[PipelineRun]:
    """Runs whose commit status may be out of date, with what was last reported: active runs
    (served by run_active_idx) and runs whose last reported state is not final (served by
    commit_status_unsettled_idx), of repositories that report commit statuses."""
    reporting = PipelineRun.objects.exclude(pipeline__repository__forge="").exclude(
        pipeline__repository__forge_token=""
    )
    active = reporting.filter(status__in=sorted(RunStatus.ACTIVE))
    unsettled = reporting.filter(commit_status_report__state__in=sorted(UNSETTLED_STATES))
    runs = {
        run.pk: run
        for query in (active, unsettled)
        for run in query.select_related("pipeline__repository", "commit_status_report")
    }
    return sorted(runs.values(), key=lambda run: run.created_at)
