"""Runner administration: pausing and resuming from the admin, and what a runner page shows."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from runners.models import Runner
from runners.services import job_claim

pytestmark = pytest.mark.django_db


def _act(client, action: str, *runners: Runner):
    return client.post(
        reverse("admin:runners_runner_changelist"),
        {"action": action, "_selected_action": [str(r.pk) for r in runners]},
        follow=True,
    )


def test_a_paused_runner_claims_nothing_until_it_is_resumed(admin_client, make_queued_jobs, runner):
    make_queued_jobs(1)

    _act(admin_client, "pause", runner)
    runner.refresh_from_db()
    assert runner.is_paused
    assert job_claim(runner=runner) is None

    _act(admin_client, "resume", runner)
    runner.refresh_from_db()
    assert not runner.is_paused
    assert job_claim(runner=runner) is not None


def test_a_runner_page_lists_the_jobs_it_is_running(admin_client, make_queued_jobs, runner):
    queued, waiting = make_queued_jobs(2)
    claimed = job_claim(runner=runner)

    page = admin_client.get(reverse("admin:runners_runner_change", args=[runner.pk])).content.decode()

    assert claimed.name in page
    other = waiting if claimed.name == queued.name else queued
    assert other.name not in page


def _list_queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("admin:runners_runner_changelist")).status_code == 200
    return len(queries)


def test_the_runner_list_counts_running_jobs_without_a_query_per_runner(admin_client, make_queued_jobs):
    make_queued_jobs(6)
    Runner.objects.create(name="first", tags=[])
    job_claim(runner=Runner.objects.get(name="first"))
    few = _list_queries(admin_client)

    for i in range(5):
        job_claim(runner=Runner.objects.create(name=f"r{i}", tags=[]))

    assert _list_queries(admin_client) == few
