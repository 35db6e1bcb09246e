"""Cron schedules of pipelines: SCHEDULE runs on a branch, fired by Celery beat.

The beat task (`pipelines.tasks.run_due_schedules`, every CONVEYOR_SCHEDULE_INTERVAL_S)
calls `schedules_run_due`. Each due schedule is claimed by moving its `next_run_at` forward
with a guarded update (compare-and-swap), so two beat ticks, or two beats by mistake, fire
it once. After downtime a schedule fires once, not once per missed time.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from pipelines import cron, selectors
from pipelines.models import Pipeline, PipelineSchedule, Trigger

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from runs.models import PipelineRun

logger = logging.getLogger(__name__)


def _variables(variables: object) -> dict[str, str]:
    if not isinstance(variables, dict):
        raise cron.CronError("variables must be a mapping of names to values")
    return {str(k): str(v) for k, v in variables.items()}


@transaction.atomic
def schedule_create(
    *,
    pipeline: Pipeline,
    description: str,
    cron_expression: str,
    ref: str,
    timezone_name: str = "UTC",
    variables: dict[str, str] | None = None,
    is_active: bool = True,
    user: AbstractBaseUser | None = None,
    now: datetime | None = None,
) -> PipelineSchedule:
    """Raises cron.CronError for an invalid cron expression or time zone."""
    next_run_at = cron.next_run(cron_expression, timezone_name, after=now or timezone.now())
    return PipelineSchedule.objects.create(
        pipeline=pipeline,
        description=description,
        cron=cron_expression,
        timezone=timezone_name,
        ref=ref,
        variables=_variables(variables or {}),
        is_active=is_active,
        next_run_at=next_run_at,
        created_by=user,
    )


def schedule_refresh(*, schedule: PipelineSchedule, now: datetime | None = None) -> PipelineSchedule:
    """Recompute the next run after the cron, time zone or activity changed (the admin's
    save). Does not save: the caller saves the edited schedule with it."""
    schedule.next_run_at = cron.next_run(schedule.cron, schedule.timezone, after=now or timezone.now())
    return schedule


def _claim(schedule_id: int, *, now: datetime) -> PipelineSchedule | None:
    schedule = (
        PipelineSchedule.objects.select_related("pipeline__repository", "created_by").filter(pk=schedule_id).first()
    )
    due_at = schedule.next_run_at if schedule is not None else None
    if schedule is None or not schedule.is_active or due_at is None or due_at > now:
        return None
    try:
        following = cron.next_run(schedule.cron, schedule.timezone, after=now)
    except cron.CronError as exc:
        # An expression that was valid once (tzdata changed, a row edited by hand): switch it off.
        PipelineSchedule.objects.filter(pk=schedule.pk, next_run_at=due_at).update(
            is_active=False, last_error=f"switched off: {exc}"
        )
        return None
    # The compare-and-swap: whoever moves next_run_at on from the value it read fires the run.
    if (
        PipelineSchedule.objects.filter(pk=schedule.pk, is_active=True, next_run_at=due_at).update(
            next_run_at=following, last_run_at=now
        )
        != 1
    ):
        return None
    schedule.next_run_at, schedule.last_run_at = following, now
    return schedule


def schedule_fire(*, schedule: PipelineSchedule) -> PipelineRun | None:
    """Run the schedule's pipeline on its branch now. The outcome goes into last_run / last_error."""
    from pipelines.services import RunNotCreated, TriggerError, run_trigger

    pipeline = schedule.pipeline
    if not pipeline.is_active:
        PipelineSchedule.objects.filter(pk=schedule.pk).update(last_error="the pipeline is not active")
        return None
    try:
        run = run_trigger(
            pipeline=pipeline,
            ref=schedule.ref,
            trigger=Trigger.SCHEDULE,
            triggered_by=f"schedule: {schedule.description}"[:255],
            user=schedule.created_by,
            variables=schedule.variables if isinstance(schedule.variables, dict) else {},
        )
    except RunNotCreated as exc:
        PipelineSchedule.objects.filter(pk=schedule.pk).update(last_error=f"no run: {exc}")
        return None
    except TriggerError as exc:
        PipelineSchedule.objects.filter(pk=schedule.pk).update(last_error=str(exc))
        return None
    PipelineSchedule.objects.filter(pk=schedule.pk).update(last_run=run, last_error="")
    from pipelines.commit_status import commit_status_enqueue

    commit_status_enqueue(run_id=run.pk)
    return run


def schedules_run_due(*, now: datetime | None = None) -> dict[str, int]:
    """Fire every schedule that is due. Safe to run twice at once: each fires once.

    The claim and the run it fires commit together: a tick that dies in between (its beat or
    worker killed while the repository is fetched) takes its claim with it, and the next
    tick fires the slot. A concurrent tick waits on the claimed row, then finds it taken.
    An error while firing is recorded on the schedule and keeps the claim, so a schedule
    that cannot fire is not retried on every tick."""
    now = now or timezone.now()
    counts = {"due": 0, "fired": 0, "runs": 0}
    for schedule_id in selectors.schedules_due(now=now):
        counts["due"] += 1
        with transaction.atomic():
            schedule = _claim(schedule_id, now=now)
            if schedule is None:
                continue
            counts["fired"] += 1
            try:
                with transaction.atomic():  # a savepoint: a failure here leaves the claim to commit
                    run = schedule_fire(schedule=schedule)
            except Exception as exc:
                logger.exception("schedule %s: firing failed", schedule.pk)
                PipelineSchedule.objects.filter(pk=schedule.pk).update(
                    last_error=f"internal error: {type(exc).__name__}: {exc}"[:2000]
                )
                run = None
        if run is not None:
            counts["runs"] += 1
    return counts
