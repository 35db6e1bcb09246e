"""Log retention: the logs of jobs that finished more than CONVEYOR_LOG_RETENTION_DAYS ago are
deleted by a nightly task; the job keeps its log's size, and its pages and downloads say the log
expired."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from logs.models import JobLog, StepLog
from logs.services import log_chunk_append, logs_expire
from logs.tasks import expire_logs
from runs.models import Job, JobStatus, Step, StepStatus

from .conftest import RunningJob, make_running_job

pytestmark = pytest.mark.django_db

LOG = ("line one\n", "line two\n")


def job_with_log(*, finished_days_ago: float | None) -> RunningJob:
    """A job with two chunks of log in its first step, finished that many days ago (None: running)."""
    running = make_running_job()
    offset = 0
    for text in LOG:
        offset = log_chunk_append(step=running.steps[0], offset=offset, content=text)
    if finished_days_ago is not None:
        Step.objects.filter(job=running.job).update(status=StepStatus.SUCCESS)
        Job.objects.filter(pk=running.job.pk).update(
            status=JobStatus.SUCCESS, finished_at=timezone.now() - timedelta(days=finished_days_ago)
        )
    return running


def chunks_of(running: RunningJob) -> int:
    return StepLog.objects.filter(step__job=running.job).count()


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def ninety_days(settings):
    settings.CONVEYOR_LOG_RETENTION_DAYS = 90


def test_the_log_of_a_job_finished_longer_ago_than_the_retention_goes_and_its_size_stays():
    old = job_with_log(finished_days_ago=91)
    recent = job_with_log(finished_days_ago=89)
    running = job_with_log(finished_days_ago=None)

    assert logs_expire() == 1

    assert chunks_of(old) == 0
    log = JobLog.objects.get(pk=old.job.pk)
    assert log.expired_at is not None
    assert log.stored_bytes == len("".join(LOG))
    assert chunks_of(recent) == 2 and JobLog.objects.get(pk=recent.job.pk).expired_at is None
    assert chunks_of(running) == 2


def test_an_expiry_run_again_finds_nothing_left_to_do():
    job_with_log(finished_days_ago=120)
    assert logs_expire() == 1

    assert logs_expire() == 0


def test_logs_expire_batch_by_batch_until_none_is_left(settings):
    settings.CONVEYOR_LOG_EXPIRE_BATCH = 2
    olds = [job_with_log(finished_days_ago=100) for _ in range(5)]

    assert logs_expire() == 5

    assert StepLog.objects.filter(step__job__in=[old.job for old in olds]).count() == 0


def test_a_retention_of_zero_days_keeps_logs_for_good(settings):
    settings.CONVEYOR_LOG_RETENTION_DAYS = 0
    old = job_with_log(finished_days_ago=3650)

    assert logs_expire() == 0
    assert chunks_of(old) == 2


def test_the_nightly_task_expires_logs_and_beat_runs_it(settings):
    old = job_with_log(finished_days_ago=100)

    assert expire_logs() == 1
    assert chunks_of(old) == 0
    assert settings.CELERY_BEAT_SCHEDULE["logs-expire"]["task"] == "logs.tasks.expire_logs"


# --- What people see of an expired log.


@pytest.fixture
def expired() -> RunningJob:
    old = job_with_log(finished_days_ago=100)
    logs_expire()
    return old


def test_the_job_pages_of_an_expired_log_say_it_expired(staff, expired):
    for url in (reverse("logs:job", args=[expired.job.pk]), reverse("runs:job", args=[expired.job.pk])):
        html = client_for(staff).get(url).content.decode()

        assert "log retention deleted it on" in html, url
        assert "Log expired." in html, url
        assert "line one" not in html, url


def test_raw_downloads_of_an_expired_log_answer_410_with_the_reason(staff, expired):
    client = client_for(staff)
    for url in (reverse("logs:job-raw", args=[expired.job.pk]), reverse("logs:step-raw", args=[expired.step.pk])):
        response = client.get(url)

        assert response.status_code == 410, url
        assert "This log expired" in response.content.decode()


def test_the_api_answers_410_for_an_expired_log(staff, expired):
    client = client_for(staff)
    for url in (f"/api/v1/jobs/{expired.job.pk}/log/", f"/api/v1/steps/{expired.step.pk}/log/"):
        response = client.get(url)

        assert response.status_code == 410, url
        assert "This log expired" in response.json()["detail"]


def test_an_outsider_learns_nothing_of_an_expired_log(outsider, expired):
    client = client_for(outsider)
    for url in (
        reverse("logs:job", args=[expired.job.pk]),
        reverse("logs:job-raw", args=[expired.job.pk]),
        f"/api/v1/jobs/{expired.job.pk}/log/",
    ):
        assert client.get(url).status_code == 404, url
