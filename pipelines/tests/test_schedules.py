"""Cron schedules: due schedules fire SCHEDULE runs once, on their branch, with their variables."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from pipelines import schedules
from pipelines.models import Pipeline, PipelineSchedule, Trigger
from pipelines.tasks import run_due_schedules
from runs.models import PipelineRun

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 2, 10, 7, tzinfo=UTC)


@pytest.fixture
def nightly(forge) -> PipelineSchedule:
    return schedules.schedule_create(
        pipeline=forge.pipeline,
        description="nightly",
        cron_expression="0 2 * * *",
        ref="main",
        variables={"NIGHTLY": "1"},
        now=NOW,
    )


def test_a_new_schedule_knows_its_next_run(nightly) -> None:
    assert nightly.next_run_at == datetime(2026, 3, 3, 2, 0, tzinfo=UTC)


def test_a_due_schedule_creates_a_schedule_run_on_its_branch_and_moves_on(forge, nightly) -> None:
    at_two = datetime(2026, 3, 3, 2, 0, 20, tzinfo=UTC)

    counts = schedules.schedules_run_due(now=at_two)

    assert counts == {"due": 1, "fired": 1, "runs": 1}
    run = PipelineRun.objects.get()
    assert (run.trigger, run.branch, run.commit_sha) == (Trigger.SCHEDULE, "main", forge.sha)
    assert run.triggered_by == "schedule: nightly"
    assert run.variables == {"NIGHTLY": "1"}
    # CI_PIPELINE_SOURCE is "schedule": branch rules match, merge request rules do not.
    assert sorted(run.jobs.values_list("name", flat=True)) == ["branch-only", "build"]
    nightly.refresh_from_db()
    assert nightly.next_run_at == datetime(2026, 3, 4, 2, 0, tzinfo=UTC)
    assert (nightly.last_run, nightly.last_run_at, nightly.last_error) == (run, at_two, "")


def test_a_schedule_that_is_not_due_does_nothing(nightly) -> None:
    assert schedules.schedules_run_due(now=NOW) == {"due": 0, "fired": 0, "runs": 0}
    assert not PipelineRun.objects.exists()


def test_after_downtime_a_schedule_fires_once_not_once_per_missed_time(nightly) -> None:
    a_week_later = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
    schedules.schedules_run_due(now=a_week_later)
    schedules.schedules_run_due(now=a_week_later + timedelta(seconds=30))

    assert PipelineRun.objects.count() == 1
    nightly.refresh_from_db()
    assert nightly.next_run_at == datetime(2026, 3, 10, 2, 0, tzinfo=UTC)


def test_an_inactive_schedule_or_pipeline_fires_no_run(forge, nightly) -> None:
    PipelineSchedule.objects.filter(pk=nightly.pk).update(is_active=False)
    assert schedules.schedules_run_due(now=datetime(2026, 3, 3, 2, 1, tzinfo=UTC))["fired"] == 0

    PipelineSchedule.objects.filter(pk=nightly.pk).update(is_active=True)
    Pipeline.objects.filter(pk=forge.pipeline.pk).update(is_active=False)
    schedules.schedules_run_due(now=datetime(2026, 3, 3, 2, 1, tzinfo=UTC))
    nightly.refresh_from_db()
    assert not PipelineRun.objects.exists()
    assert nightly.last_error == "the pipeline is not active"


def test_a_schedule_on_a_branch_that_does_not_exist_records_why(forge) -> None:
    schedule = schedules.schedule_create(
        pipeline=forge.pipeline, description="gone", cron_expression="* * * * *", ref="nope", now=NOW
    )
    schedules.schedules_run_due(now=NOW + timedelta(minutes=5))
    schedule.refresh_from_db()
    assert "no branch or tag named 'nope'" in schedule.last_error
    assert not PipelineRun.objects.exists()


def test_the_beat_task_fires_due_schedules(nightly) -> None:
    PipelineSchedule.objects.filter(pk=nightly.pk).update(next_run_at=datetime(2020, 1, 1, tzinfo=UTC))
    assert run_due_schedules()["runs"] == 1


def test_an_invalid_cron_is_refused_when_the_schedule_is_created(forge) -> None:
    with pytest.raises(schedules.cron.CronError):
        schedules.schedule_create(pipeline=forge.pipeline, description="x", cron_expression="61 * * * *", ref="main")


@pytest.mark.django_db(transaction=True)
def test_two_beats_at_once_fire_a_due_schedule_once(forge, nightly, settings) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True  # nothing reaches the real broker from this committed test
    at_two = datetime(2026, 3, 3, 2, 0, 5, tzinfo=UTC)
    barrier = threading.Barrier(2)
    results: list[dict] = []

    def beat() -> None:
        try:
            barrier.wait()
            results.append(schedules.schedules_run_due(now=at_two))
        finally:
            connection.close()

    threads = [threading.Thread(target=beat) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(r["fired"] for r in results) == [0, 1]
    assert PipelineRun.objects.count() == 1


# --- The admin.


def test_the_admin_creates_a_schedule_with_its_next_run_and_refuses_a_bad_cron(admin_client, forge) -> None:
    url = "/admin/pipelines/pipelineschedule/add/"
    form = {
        "pipeline": forge.pipeline.pk,
        "description": "hourly",
        "cron": "0 * * * *",
        "timezone": "UTC",
        "ref": "main",
        "variables": "{}",
        "is_active": "on",
    }
    bad = admin_client.post(url, {**form, "cron": "0 * * *"})
    assert bad.status_code == 200
    assert "five fields" in bad.content.decode()
    assert admin_client.post(url, {**form, "timezone": "Nowhere/Land"}).status_code == 200
    assert not PipelineSchedule.objects.exists()

    assert admin_client.post(url, form).status_code == 302
    schedule = PipelineSchedule.objects.get()
    assert schedule.next_run_at is not None and schedule.next_run_at.minute == 0
    assert schedule.created_by.username == "admin"


def test_the_admin_runs_a_schedule_now(admin_client, nightly) -> None:
    response = admin_client.post(
        "/admin/pipelines/pipelineschedule/",
        {"action": "run_now", "_selected_action": [str(nightly.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert PipelineRun.objects.get().trigger == Trigger.SCHEDULE
