"""The engine under concurrent callers: real transactions, real threads, real NOTIFY."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone

from runs.models import Job, JobStatus, RunStatus
from runs.services import job_finish, job_start, run_create, runs_sweep
from runs.tests.factories import PipelineFactory, create_run, current_job, job, run_status, spec, statuses


def _in_threads(*calls: Callable[[], object]) -> list[object]:
    """Run the calls at the same moment, one thread each; re-raise the first error."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)
    errors: list[BaseException] = []

    def target(i: int, call: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = call()
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=target, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_completions_and_sweeps_promote_every_dependent_exactly_once() -> None:
    width = 4
    for _ in range(3):
        run = create_run(
            *[job(f"build-{i}", "build") for i in range(width)],
            *[job(f"test-{i}", "test", needs=[f"build-{i}"]) for i in range(width)],
            job("report", "test"),
            job("deploy", "deploy"),
        )
        builds = [current_job(run, f"build-{i}") for i in range(width)]
        for build in builds:
            assert job_start(job=build, runner=None, lease_seconds=60)
        results = _in_threads(
            *[lambda b=b: job_finish(job_id=b.pk, status=JobStatus.SUCCESS, exit_code=0) for b in builds],
            runs_sweep,
            runs_sweep,
        )
        assert results[:width] == [True] * width
        expected = {f"build-{i}": JobStatus.SUCCESS for i in range(width)}
        expected |= {f"test-{i}": JobStatus.QUEUED for i in range(width)}
        expected |= {"report": JobStatus.QUEUED, "deploy": JobStatus.PENDING}
        assert statuses(run) == expected
        assert Job.objects.filter(run=run).count() == 2 * width + 2
        assert run_status(run) == RunStatus.RUNNING


@pytest.mark.django_db(transaction=True)
def test_a_job_finished_twice_at_once_is_finished_once() -> None:
    run = create_run(job("build", "build", retry_max=1), job("test", "test"))
    build = current_job(run, "build")
    job_start(job=build, runner=None, lease_seconds=60)
    results = _in_threads(
        lambda: job_finish(job_id=build.pk, status=JobStatus.FAILURE, exit_code=1),
        lambda: job_finish(job_id=build.pk, status=JobStatus.FAILURE, exit_code=1),
        runs_sweep,
    )
    assert sorted(results[:2]) == [False, True]
    # One failure, one retry: exactly one new attempt.
    assert Job.objects.filter(run=run, name="build").count() == 2
    assert current_job(run, "build").attempt == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_sweeps_queue_a_due_delayed_job_once() -> None:
    run = create_run(job("later", "build", when="delayed", start_in_s=600))
    Job.objects.filter(run=run).update(scheduled_at=timezone.now() - timedelta(seconds=1))
    results = _in_threads(runs_sweep, runs_sweep, runs_sweep)
    assert sum(r["delayed_queued"] for r in results) == 1
    assert statuses(run) == {"later": JobStatus.QUEUED}


@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_of_one_pipeline_get_distinct_numbers() -> None:
    pipeline = PipelineFactory()

    def create() -> int:
        return run_create(
            pipeline=pipeline, spec=spec(job("a")), commit_sha="abc", branch="main", trigger="PUSH"
        ).number

    assert sorted(_in_threads(*[create] * 5)) == [1, 2, 3, 4, 5]


def _listener() -> psycopg.Connection:
    db = connection.settings_dict
    params = {
        "dbname": db["NAME"],
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
    }
    conn = psycopg.connect(autocommit=True, **{k: v for k, v in params.items() if v is not None})
    conn.execute("LISTEN conveyor_jobs")
    return conn


@pytest.mark.django_db(transaction=True)
def test_runners_are_notified_at_commit_and_not_after_a_rollback() -> None:
    listener = _listener()
    try:

        class Abort(Exception):
            pass

        with pytest.raises(Abort), transaction.atomic():
            create_run(job("build", "build"))
            raise Abort
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []

        create_run(job("build", "build"))
        received = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.channel for n in received] == ["conveyor_jobs"]
    finally:
        listener.close()
