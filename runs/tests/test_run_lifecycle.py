"""Runs and jobs through their lives: creation, the job lifecycle, retries, cancel, the sweep."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from cicd.follow_ups import follow_ups_collected
from logs.models import StepLog
from pipelines.config.spec import Need
from pipelines.models import Trigger
from runners.models import Runner
from runs.models import Job, JobDependency, JobStatus, PipelineRun, RunStatus, Step, StepKind, StepStatus
from runs.selectors import run_graph
from runs.services import (
    InvalidSpec,
    TransitionError,
    job_finish,
    job_requeue,
    job_retry,
    job_start,
    jobs_reap_expired_leases,
    run_cancel,
    run_create,
    run_create_invalid,
    run_promote,
    runs_sweep,
)
from runs.tasks import sweep_runs
from runs.tests.factories import PipelineFactory, create_run, current_job, execute, job, run_status, spec, statuses

S, F, C = JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED
Q, P, SK = JobStatus.QUEUED, JobStatus.PENDING, JobStatus.SKIPPED


def _create(pipeline, the_spec, **kw):
    return run_create(pipeline=pipeline, spec=the_spec, commit_sha="abc", branch="main", trigger=Trigger.PUSH, **kw)


# --- Creation.


@pytest.mark.django_db
def test_runs_are_numbered_per_pipeline() -> None:
    pipeline, other = PipelineFactory(), PipelineFactory()
    numbers = [_create(pipeline, spec(job("a"))).number for _ in range(3)]
    assert numbers == [1, 2, 3]
    assert _create(other, spec(job("a"))).number == 1
    assert (
        run_create_invalid(
            pipeline=pipeline, error_message="bad", commit_sha="abc", branch="main", trigger=Trigger.PUSH
        ).number
        == 4
    )


@pytest.mark.django_db
def test_run_create_maps_the_job_spec_to_columns_and_spec_json() -> None:
    pipeline = PipelineFactory()
    build = job(
        "build",
        "build",
        before_script=["set -e"],
        script=["make\n  --jobs 4", "x" * 300],
        after_script=["rm -rf tmp"],
        tags=["linux", "docker"],
        timeout_s=120,
        retry_max=2,
        retry_when=["script_failure"],
        interruptible=True,
        resource_group="prod",
        environment={"name": "production", "url": "https://example.com"},
        image={"name": "python:3.12"},
        variables={"A": "1"},
        artifacts={"paths": ["dist/"]},
        allow_failure_exit_codes=[42],
        dependencies=[],
    )
    test = job("test", "test", needs=[])
    test.needs = [Need(job="build", artifacts=False), Need(job="missing", optional=True)]
    run = _create(
        pipeline, spec(build, test), variables={"V": "x"}, triggered_by="alice", commit_message="msg", config_source="y"
    )
    row = current_job(run, "build")
    assert (row.stage, row.stage_index, row.when, row.uses_needs) == ("build", 0, "on_success", False)
    assert (row.tags, row.timeout_s, row.retry_max, row.retry_when) == (["linux", "docker"], 120, 2, ["script_failure"])
    assert (row.interruptible, row.resource_group, row.environment) == (True, "prod", "production")
    assert row.spec["image"] == {"name": "python:3.12"}
    assert row.spec["environment"]["url"] == "https://example.com"
    assert row.spec["allow_failure_exit_codes"] == [42]
    assert row.spec["artifacts"] == {"paths": ["dist/"]} and row.spec["variables"] == {"A": "1"}
    assert row.spec["dependencies"] == []
    assert current_job(run, "test").timeout_s == 3600

    steps = list(Step.objects.filter(job=row).values_list("index", "kind", "name"))
    assert steps == [
        (0, StepKind.BEFORE_SCRIPT, "set -e"),
        (1, StepKind.SCRIPT, "make"),
        (2, StepKind.SCRIPT, "x" * 254 + "…"),
        (3, StepKind.AFTER_SCRIPT, "rm -rf tmp"),
    ]
    # Only explicit needs are stored; the optional need of a missing job is dropped.
    edges = list(JobDependency.objects.filter(job__run=run).values_list("job__name", "depends_on__name", "artifacts"))
    assert edges == [("test", "build", False)]
    run.refresh_from_db()
    assert (run.variables, run.triggered_by, run.commit_message, run.config_source) == ({"V": "x"}, "alice", "msg", "y")


@pytest.mark.parametrize(
    ("jobs", "stages", "message"),
    [
        ([job("a", "nowhere")], None, "stage 'nowhere' is not in stages"),
        ([job("a"), job("a")], None, "defined twice"),
        ([job("a", needs=["ghost"])], None, "needs 'ghost'"),
        ([job("a", "build", needs=["b"]), job("b", "test")], None, "later stage"),
        ([job("a", needs=["b"]), job("b", needs=["a"])], None, "cycle"),
        ([job("a", when="never")], None, "when 'never'"),
    ],
)
@pytest.mark.django_db
def test_run_create_refuses_a_spec_that_would_corrupt_the_dag(jobs, stages, message) -> None:
    with pytest.raises(InvalidSpec, match=message):
        _create(PipelineFactory(), spec(*jobs, stages=stages))
    assert not PipelineRun.objects.exists()


@pytest.mark.django_db
def test_an_invalid_config_is_recorded_as_a_failed_run_without_jobs() -> None:
    run = run_create_invalid(
        pipeline=PipelineFactory(),
        error_message="line 3: unknown key 'scrpt'",
        commit_sha="abc",
        branch="main",
        trigger=Trigger.PUSH,
        config_source="scrpt: x",
    )
    run.refresh_from_db()
    assert run.status == RunStatus.FAILURE
    assert run.error_message == "line 3: unknown key 'scrpt'"
    assert run.finished_at == run.created_at and run.duration_s == 0
    assert not run.jobs.exists()


# --- The job lifecycle.


@pytest.mark.django_db
def test_starting_a_job_takes_it_off_the_queue_once() -> None:
    run = create_run(job("build", "build"))
    runner = Runner.objects.create(name="r1")
    build = current_job(run, "build")
    assert job_start(job=build, runner=runner, lease_seconds=60)
    assert not job_start(job=build, runner=runner, lease_seconds=60)
    build.refresh_from_db()
    assert (build.status, build.runner) == (JobStatus.RUNNING, runner)
    assert build.lease_expires_at > timezone.now() + timedelta(seconds=50)


@pytest.mark.django_db
def test_finishing_a_job_twice_is_a_no_op() -> None:
    run = create_run(job("build", "build"), job("test", "test"))
    build = execute(run, "build")
    assert not job_finish(job_id=build.pk, status=F, exit_code=1)
    assert statuses(run) == {"build": S, "test": Q}


@pytest.mark.django_db
def test_finishing_a_cancelled_job_is_refused() -> None:
    run = create_run(job("build", "build"))
    build = current_job(run, "build")
    job_start(job=build, runner=None, lease_seconds=60)
    run_cancel(run=run, by="bob")
    assert not job_finish(job_id=build.pk, status=S)
    assert current_job(run, "build").status == C
    assert run_status(run) == RunStatus.CANCELLED


@pytest.mark.django_db
def test_a_job_is_finished_only_by_its_runner_when_one_is_named() -> None:
    run = create_run(job("build", "build"))
    mine, other = Runner.objects.create(name="mine"), Runner.objects.create(name="other")
    build = current_job(run, "build")
    job_start(job=build, runner=mine, lease_seconds=60)
    assert not job_finish(job_id=build.pk, status=S, runner=other)
    assert job_finish(job_id=build.pk, status=S, runner=mine)


@pytest.mark.django_db
def test_a_job_finishes_only_as_success_failure_or_cancelled() -> None:
    run = create_run(job("build", "build"))
    with pytest.raises(ValueError, match="SKIPPED"):
        job_finish(job_id=current_job(run, "build").pk, status=JobStatus.SKIPPED)


# --- Retries.


@pytest.mark.django_db
def test_a_failed_job_with_retries_left_is_queued_again_as_a_new_attempt() -> None:
    run = create_run(job("build", "build", retry_max=1, script=["make"]), job("test", "test", needs=["build"]))
    first = current_job(run, "build")
    step = Step.objects.get(job=first)
    StepLog.objects.create(step=step, offset=0, content="boom\n")
    execute(run, "build", F, exit_code=2)

    second = current_job(run, "build")
    assert second.pk != first.pk
    assert (second.status, second.attempt) == (Q, 2)
    assert list(Step.objects.filter(job=second).values_list("status", "command")) == [(StepStatus.PENDING, "make")]
    first.refresh_from_db()
    assert (first.status, first.retried, first.exit_code) == (F, True, 2)
    assert StepLog.objects.filter(step=step).exists()  # the first attempt's log is kept
    # The dependent now waits for the new attempt.
    assert list(JobDependency.objects.filter(job__name="test").values_list("depends_on", flat=True)) == [second.pk]
    assert run_status(run) == RunStatus.RUNNING

    execute(run, "build", F, exit_code=2)
    assert statuses(run) == {"build": F, "test": SK}
    assert current_job(run, "build").attempt == 2
    assert run_status(run) == RunStatus.FAILURE


@pytest.mark.parametrize(
    ("retry_when", "reason", "exit_code", "retried"),
    [
        ([], "", 1, True),
        ([], "", None, True),
        (["always"], "", 1, True),
        (["script_failure"], "", 1, True),
        (["script_failure"], "runner_system_failure", None, False),
        (["runner_system_failure"], "runner_system_failure", None, True),
        (["runner_system_failure"], "exit status 1", 1, False),
        (["job_execution_timeout"], "timed out after 60s", None, True),
        (["script_failure"], "timed out after 60s", None, False),
        (["runner_system_failure"], "runner error: disk full", None, True),
        (["runner_system_failure"], "kubernetes API unreachable: refused", None, True),
    ],
)
@pytest.mark.django_db
def test_retry_when_decides_which_failures_are_retried(retry_when, reason, exit_code, retried) -> None:
    run = create_run(job("build", "build", retry_max=1, retry_when=retry_when))
    execute(run, "build", F, exit_code=exit_code, reason=reason)
    assert current_job(run, "build").status == (Q if retried else F)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("retry_when", "exit_code", "retried"),
    [
        ([], 137, True),
        ([], 1, False),
        ([], None, False),
        (["runner_system_failure"], 1, False),
        (["script_failure"], 1, True),
    ],
)
@pytest.mark.django_db
def test_retry_exit_codes_retry_only_those_codes_unless_retry_when_matches(retry_when, exit_code, retried) -> None:
    run = create_run(job("build", "build", retry_max=1, retry_when=retry_when, retry_exit_codes=[137]))
    build = current_job(run, "build")
    job_start(job=build, runner=None, lease_seconds=60)
    job_finish(job_id=build.pk, status=F, exit_code=exit_code)
    assert current_job(run, "build").status == (Q if retried else F)


@pytest.mark.django_db
def test_a_successful_job_is_not_retried() -> None:
    run = create_run(job("build", "build", retry_max=2))
    execute(run, "build")
    assert Job.objects.filter(run=run).count() == 1


@pytest.mark.django_db
def test_retrying_a_failed_job_reopens_the_run_and_reconsiders_what_it_skipped() -> None:
    run = create_run(
        job("build", "build"),
        job("test", "test", needs=["build"]),
        job("cleanup", "test", when="on_failure"),
        job("deploy", "deploy"),
    )
    execute(run, "build", F)
    execute(run, "cleanup")
    assert statuses(run) == {"build": F, "test": SK, "cleanup": S, "deploy": SK}
    assert run_status(run) == RunStatus.FAILURE

    new = job_retry(job=current_job(run, "build"))
    assert (new.status, new.attempt) == (Q, 2)
    run.refresh_from_db()
    assert (run.status, run.finished_at, run.duration_s) == (RunStatus.RUNNING, None, None)
    # What ran (cleanup) stays as it is; what was skipped waits again.
    assert statuses(run) == {"build": Q, "test": P, "cleanup": S, "deploy": P}

    execute(run, "build")
    execute(run, "test")
    execute(run, "deploy")
    assert run_status(run) == RunStatus.SUCCESS
    assert Job.objects.filter(run=run, name="build").count() == 2


@pytest.mark.django_db
def test_retrying_a_job_of_a_cancelled_run_reopens_it() -> None:
    run = create_run(job("build", "build"), job("test", "test"))
    run_cancel(run=run)
    new = job_retry(job=current_job(run, "build"))
    assert new.status == Q
    assert run_status(run) == RunStatus.RUNNING
    execute(run, "build")
    # The other cancelled job stays cancelled: the run ends cancelled, not successful.
    assert statuses(run) == {"build": S, "test": C}
    assert run_status(run) == RunStatus.CANCELLED


@pytest.mark.parametrize("status", [JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SKIPPED])
@pytest.mark.django_db
def test_only_a_finished_job_can_be_retried(status) -> None:
    run = create_run(job("build", "build"))
    build = current_job(run, "build")
    Job.objects.filter(pk=build.pk).update(status=status, lease_expires_at=timezone.now())
    with pytest.raises(TransitionError):
        job_retry(job=build)


@pytest.mark.django_db
def test_an_old_attempt_cannot_be_retried_again() -> None:
    run = create_run(job("build", "build"))
    old = execute(run, "build", F)
    job_retry(job=old)
    with pytest.raises(TransitionError):
        job_retry(job=old)


# --- Cancel.


@pytest.mark.django_db
def test_cancelling_a_run_cancels_every_unfinished_job_running_ones_too() -> None:
    run = create_run(
        job("build", "build"),
        job("lint", "build"),
        job("manual", "build", when="manual", needs=[]),
        job("test", "test"),
    )
    execute(run, "build")
    job_start(job=current_job(run, "lint"), runner=None, lease_seconds=60)
    run_cancel(run=run, by="bob")
    assert statuses(run) == {"build": S, "lint": C, "manual": C, "test": C}
    assert current_job(run, "test").status_reason == "cancelled by bob"
    assert set(Step.objects.filter(job__name__in=["lint", "test"]).values_list("status", flat=True)) == {C}
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.finished_at is not None and run.duration_s >= 0
    # Promotion leaves a cancelled run alone.
    assert run_promote(run_id=run.pk) == []


@pytest.mark.django_db
def test_cancelling_a_finished_run_changes_nothing() -> None:
    run = create_run(job("build", "build"))
    execute(run, "build")
    run_cancel(run=run)
    assert run_status(run) == RunStatus.SUCCESS


# --- Lost runners.


@pytest.mark.django_db
def test_a_requeued_job_ends_its_attempt_and_queues_the_next() -> None:
    run = create_run(job("build", "build"))
    runner = Runner.objects.create(name="r")
    build = current_job(run, "build")
    job_start(job=build, runner=runner, lease_seconds=60)
    assert job_requeue(job_id=build.pk, reason="runner shut down", runner=Runner.objects.create(name="x")) is None
    new = job_requeue(job_id=build.pk, reason="runner shut down", runner=runner)
    assert (new.status, new.attempt) == (Q, 2)
    build.refresh_from_db()
    assert (build.status, build.retried, build.status_reason) == (F, True, "runner shut down")
    assert not job_finish(job_id=build.pk, status=S)  # the old attempt's runner cannot finish the new one


@pytest.mark.django_db
def test_expired_leases_are_requeued_then_failed_after_three_attempts() -> None:
    run = create_run(job("build", "build"), job("test", "test"))
    for attempt in (1, 2, 3):
        build = current_job(run, "build")
        assert build.attempt == attempt
        job_start(job=build, runner=None, lease_seconds=1)
        assert jobs_reap_expired_leases() == {"requeued": 0, "failed": 0, "locked_elsewhere": 0}
        counts = jobs_reap_expired_leases(now=timezone.now() + timedelta(seconds=5))
        assert counts == {"requeued": int(attempt < 3), "failed": int(attempt == 3), "locked_elsewhere": 0}
    assert statuses(run) == {"build": F, "test": SK}
    assert "lease expired" in current_job(run, "build").status_reason
    assert run_status(run) == RunStatus.FAILURE


# --- Sweep, queries, the graph.


@pytest.mark.django_db
def test_the_sweep_promotes_what_event_driven_promotion_missed() -> None:
    run = create_run(job("build", "build"), job("test", "test"))
    # A write that bypassed the engine (as a crash between commit and promotion would leave it).
    Job.objects.filter(run=run, name="build").update(status=S)
    counts = runs_sweep()
    assert counts["runs_checked"] >= 1 and counts["jobs_moved"] == 1
    assert statuses(run) == {"build": S, "test": Q}
    assert runs_sweep()["jobs_moved"] == 0


@pytest.mark.django_db
def test_the_sweep_task_calls_the_sweep() -> None:
    run = create_run(job("build", "build"), job("test", "test"))
    Job.objects.filter(run=run, name="build").update(status=S)
    assert sweep_runs.name == "runs.tasks.sweep_runs"
    counts = sweep_runs.apply().get()
    assert counts["jobs_moved"] == 1 and counts["reaped_requeued"] == 0


def _wide_run(width: int) -> PipelineRun:
    return create_run(
        *[job(f"build-{i}", "build") for i in range(width)],
        *[job(f"test-{i}", "test", needs=[f"build-{i}"]) for i in range(width)],
        *[job(f"deploy-{i}", "deploy") for i in range(width)],
    )


def _promotion_queries(width: int) -> int:
    run = _wide_run(width)
    Job.objects.filter(run=run, name__startswith="build-").update(status=S)
    with CaptureQueriesContext(connection) as ctx:
        moved = run_promote(run_id=run.pk)
    assert len(moved) == width
    return len(ctx.captured_queries)


@pytest.mark.django_db
def test_promotion_costs_the_same_queries_for_a_small_and_a_large_run() -> None:
    assert _promotion_queries(2) == _promotion_queries(30) <= 10


@pytest.mark.django_db
def test_creating_a_run_costs_the_same_queries_whatever_its_size() -> None:
    def count(width: int) -> int:
        with CaptureQueriesContext(connection) as ctx:
            _wide_run(width)
        return len(ctx.captured_queries)

    PipelineFactory()  # warm the factory sequence
    assert count(2) == count(25)


@pytest.mark.django_db
def test_the_run_graph_lists_stages_jobs_and_needs_edges_in_two_queries(django_assert_num_queries) -> None:
    run = create_run(
        job("build", "build"), job("lint", "build"), job("test", "test", needs=["build"]), job("pkg", "deploy")
    )
    with django_assert_num_queries(2):
        graph = run_graph(run=run)
    assert [(s["name"], [j["name"] for j in s["jobs"]]) for s in graph["stages"]] == [
        ("build", ["build", "lint"]),
        ("test", ["test"]),
        ("deploy", ["pkg"]),
    ]
    assert graph["edges"] == [{"from": "build", "to": "test", "artifacts": True}]
    test = graph["stages"][1]["jobs"][0]
    assert (test["uses_needs"], test["needs"], test["status"]) == (True, ["build"], P)
    assert graph["stages"][2]["jobs"][0]["uses_needs"] is False
    assert graph["run"]["status"] == RunStatus.RUNNING


@pytest.mark.django_db
def test_queueing_a_job_sends_a_notify_and_schedules_the_run_hook(django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks() as callbacks, CaptureQueriesContext(connection) as ctx:
        run = create_run(job("build", "build"), job("test", "test"))
    assert sum("pg_notify" in q["sql"] for q in ctx.captured_queries) == 1
    assert [cb.args for cb in callbacks] == [(run.pk,)]
    with CaptureQueriesContext(connection) as ctx:
        create_run(job("approve", "build", when="manual"))
    assert not any("pg_notify" in q["sql"] for q in ctx.captured_queries)


@pytest.mark.django_db(transaction=True)
def test_the_notify_says_how_many_jobs_were_queued_with_which_tags() -> None:
    from runners.backends import listen_connection
    from runners.wakeups import jobs_queued

    listener = listen_connection()
    try:
        create_run(
            job("build", "build"),
            job("lint", "build"),
            job("train", "build", tags=["gpu", "cuda"]),
            job("test", "test"),
        )
        (notification,) = listener.notifies(timeout=10, stop_after=1)
    finally:
        listener.close()

    assert sorted(jobs_queued(notification.payload), key=lambda queued: len(queued[1])) == [
        (2, frozenset()),
        (1, {"cuda", "gpu"}),
    ]


@pytest.mark.django_db
def test_a_finish_within_follow_ups_collected_hands_its_follow_ups_to_the_caller(
    monkeypatch, django_capture_on_commit_callbacks
) -> None:
    import runs.services

    ran = []
    monkeypatch.setattr(runs.services, "_after_commit_run_changed", lambda run_id, **_: ran.append(run_id))
    run = create_run(job("build", "build"))
    target = current_job(run, "build")
    assert job_start(job=target, runner=None, lease_seconds=60)
    ran.clear()

    with follow_ups_collected() as follow_ups, django_capture_on_commit_callbacks(execute=True):
        assert job_finish(job_id=target.pk, status=JobStatus.SUCCESS, exit_code=0)

    assert ran == [], "a follow-up ran at commit"
    assert len(follow_ups) == 1
    follow_ups[0]()
    assert ran == [run.pk]


@pytest.mark.django_db
def test_a_rolled_back_change_hands_no_follow_up_to_the_caller(monkeypatch, django_capture_on_commit_callbacks) -> None:
    import runs.services

    monkeypatch.setattr(runs.services, "_after_commit_run_changed", lambda run_id, **_: None)
    run = create_run(job("build", "build"))

    with (
        follow_ups_collected() as follow_ups,
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        run_cancel(run=run)
        raise RuntimeError("rolled back")

    assert follow_ups == []
    with follow_ups_collected() as follow_ups, django_capture_on_commit_callbacks(execute=True):
        run_cancel(run=run)
    assert len(follow_ups) == 1
