"""The DAG engine's semantics (GitLab CI's), table by table."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import Job, JobStatus, RunStatus
from runs.services import job_play, run_promote, runs_sweep
from runs.tests.factories import create_run, current_job, execute, job, run_status, statuses

S, F, C = JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED
Q, P, M, SCH, SK = JobStatus.QUEUED, JobStatus.PENDING, JobStatus.MANUAL, JobStatus.SCHEDULED, JobStatus.SKIPPED


@dataclass
class Case:
    id: str
    jobs: list
    # ("name", outcome[, exit_code]): start the QUEUED job and finish it so.
    steps: list = field(default_factory=list)
    expected: dict = field(default_factory=dict)
    run: str = RunStatus.RUNNING
    reasons: dict = field(default_factory=dict)


CASES = [
    Case(
        "stages run in order: only the first stage is queued at first",
        [job("build", "build"), job("test", "test"), job("deploy", "deploy")],
        expected={"build": Q, "test": P, "deploy": P},
    ),
    Case(
        "a stage starts when every job of the earlier stages is done",
        [job("build_a", "build"), job("build_b", "build"), job("test", "test")],
        steps=[("build_a", S)],
        expected={"build_a": S, "build_b": Q, "test": P},
    ),
    Case(
        "needs: [] starts at once, whatever its stage",
        [job("build", "build"), job("lint", "deploy", needs=[])],
        expected={"build": Q, "lint": Q},
    ),
    Case(
        "a job with needs waits only for the jobs it needs",
        [job("build_a", "build"), job("build_b", "build"), job("test_a", "test", needs=["build_a"])],
        steps=[("build_a", S)],
        expected={"build_a": S, "build_b": Q, "test_a": Q},
    ),
    Case(
        "needs may name a job of the same stage",
        [job("compile", "build"), job("package", "build", needs=["compile"])],
        steps=[("compile", S)],
        expected={"compile": S, "package": Q},
    ),
    Case(
        "an on_failure job runs when an earlier stage failed",
        [job("build", "build"), job("cleanup", "deploy", when="on_failure")],
        steps=[("build", F)],
        expected={"build": F, "cleanup": Q},
    ),
    Case(
        "an on_failure job is skipped when nothing failed",
        [job("build", "build"), job("cleanup", "deploy", when="on_failure")],
        steps=[("build", S)],
        expected={"build": S, "cleanup": SK},
        run=RunStatus.SUCCESS,
        reasons={"cleanup": "when: on_failure, and no upstream job failed"},
    ),
    Case(
        "an on_failure job with needs runs when a needed job failed",
        [job("build", "build"), job("other", "build"), job("notify", "test", needs=["build"], when="on_failure")],
        steps=[("build", F)],
        expected={"build": F, "other": Q, "notify": Q},
    ),
    Case(
        "an always job runs after a failure",
        [job("build", "build"), job("report", "test", when="always")],
        steps=[("build", F)],
        expected={"build": F, "report": Q},
    ),
    Case(
        "a manual job waits for a person once its stage is reached",
        [job("build", "build"), job("deploy", "deploy", when="manual")],
        expected={"build": Q, "deploy": P},
    ),
    Case(
        "a delayed job is scheduled once its stage is reached",
        [job("build", "build"), job("later", "deploy", when="delayed", start_in_s=60)],
        steps=[("build", S)],
        expected={"build": S, "later": SCH},
    ),
    Case(
        "an allowed failure counts as success",
        [job("lint", "test", allow_failure=True), job("deploy", "deploy")],
        steps=[("lint", F)],
        expected={"lint": F, "deploy": Q},
    ),
    Case(
        "a failure with a listed exit code is allowed",
        [job("lint", "test", allow_failure_exit_codes=[3]), job("deploy", "deploy")],
        steps=[("lint", F, 3)],
        expected={"lint": F, "deploy": Q},
    ),
    Case(
        "a failure with an unlisted exit code is not allowed, whatever the boolean says",
        [job("lint", "test", allow_failure=True, allow_failure_exit_codes=[3]), job("deploy", "deploy")],
        steps=[("lint", F, 1)],
        expected={"lint": F, "deploy": SK},
        run=RunStatus.FAILURE,
        reasons={"deploy": "upstream job 'lint' failed"},
    ),
    Case(
        "stage ordering proceeds past a skipped job",
        [job("build", "build"), job("cleanup", "test", when="on_failure"), job("deploy", "deploy")],
        steps=[("build", S)],
        expected={"build": S, "cleanup": SK, "deploy": Q},
    ),
    Case(
        "needs does not proceed past a skipped job",
        [job("build", "build"), job("cleanup", "test", when="on_failure"), job("deploy", "deploy", needs=["cleanup"])],
        steps=[("build", S)],
        expected={"build": S, "cleanup": SK, "deploy": SK},
        run=RunStatus.SUCCESS,
        reasons={"deploy": "needed job 'cleanup' was skipped"},
    ),
    Case(
        "a failure skips its descendants transitively, through needs and stages",
        [
            job("build", "build"),
            job("unit", "test", needs=["build"]),
            job("package", "test", needs=["unit"]),
            job("deploy", "deploy"),
        ],
        steps=[("build", F)],
        expected={"build": F, "unit": SK, "package": SK, "deploy": SK},
        run=RunStatus.FAILURE,
        reasons={
            "unit": "upstream job 'build' failed",
            "package": "needed job 'unit' was skipped",
            "deploy": "upstream job 'build' failed",
        },
    ),
    Case(
        "an on_success job that needs an always job runs even after an earlier failure",
        [
            job("build", "build"),
            job("report", "test", when="always", needs=["build"]),
            job("pub", "test", needs=["report"]),
        ],
        steps=[("build", F), ("report", S)],
        expected={"build": F, "report": S, "pub": Q},
    ),
    Case(
        "a cancelled job skips what comes after it and the run ends cancelled",
        [job("build", "build"), job("test", "test")],
        steps=[("build", C)],
        expected={"build": C, "test": SK},
        run=RunStatus.CANCELLED,
        reasons={"test": "upstream job 'build' was cancelled"},
    ),
    Case(
        "a run whose jobs all succeed succeeds",
        [job("build", "build"), job("test", "test", needs=["build"])],
        steps=[("build", S), ("test", S)],
        expected={"build": S, "test": S},
        run=RunStatus.SUCCESS,
    ),
    Case(
        "a run with an allowed failure succeeds",
        [job("build", "build", allow_failure=True), job("test", "test")],
        steps=[("build", F), ("test", S)],
        expected={"build": F, "test": S},
        run=RunStatus.SUCCESS,
    ),
    Case(
        "a run with an unallowed failure fails even when an on_failure job ran",
        [job("build", "build"), job("cleanup", "test", when="on_failure")],
        steps=[("build", F), ("cleanup", S)],
        expected={"build": F, "cleanup": S},
        run=RunStatus.FAILURE,
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_engine_semantics(case: Case) -> None:
    run = create_run(*case.jobs)
    for name, outcome, *exit_code in case.steps:
        execute(run, name, outcome, exit_code=exit_code[0] if exit_code else None)
    assert statuses(run) == case.expected
    assert run_status(run) == case.run
    for name, reason in case.reasons.items():
        assert current_job(run, name).status_reason == reason


@pytest.mark.django_db
def test_a_manual_job_becomes_manual_when_its_stage_is_reached() -> None:
    run = create_run(job("build", "build"), job("deploy", "deploy", when="manual"))
    execute(run, "build")
    assert statuses(run) == {"build": S, "deploy": M}


@pytest.mark.django_db
def test_a_manual_job_after_a_failure_is_skipped() -> None:
    run = create_run(job("build", "build"), job("deploy", "deploy", when="manual", blocking=True))
    execute(run, "build", F)
    assert statuses(run) == {"build": F, "deploy": SK}
    assert run_status(run) == RunStatus.FAILURE


@pytest.mark.django_db
def test_a_blocking_manual_job_blocks_the_run_until_it_is_played() -> None:
    run = create_run(
        job("build", "build"),
        job("deploy_prod", "deploy", when="manual", blocking=True),
        job("smoke", "deploy", needs=["deploy_prod"]),
        job("announce", ".post"),
        stages=["build", "deploy", ".post"],
    )
    execute(run, "build")
    assert statuses(run) == {"build": S, "deploy_prod": M, "smoke": P, "announce": P}
    assert run_status(run) == RunStatus.BLOCKED
    assert current_job(run, "deploy_prod").allow_failure is False

    job_play(job=current_job(run, "deploy_prod"))
    assert run_status(run) == RunStatus.RUNNING
    execute(run, "deploy_prod")
    execute(run, "smoke")
    execute(run, "announce")
    assert run_status(run) == RunStatus.SUCCESS


@pytest.mark.django_db
def test_a_blocking_manual_job_does_not_block_the_run_while_other_jobs_run() -> None:
    run = create_run(job("approve", "build", when="manual", blocking=True, needs=[]), job("build", "build"))
    assert statuses(run) == {"approve": M, "build": Q}
    assert run_status(run) == RunStatus.RUNNING
    execute(run, "build")
    assert run_status(run) == RunStatus.BLOCKED


@pytest.mark.django_db
def test_a_run_finishes_without_its_optional_manual_job_and_reopens_when_it_is_played() -> None:
    run = create_run(
        job("build", "build"),
        job("deploy", "deploy", when="manual"),
        job("notify", ".post"),
        stages=["build", "deploy", ".post"],
    )
    execute(run, "build")
    # The optional manual job counts as skipped for stage ordering: .post proceeds.
    assert statuses(run) == {"build": S, "deploy": M, "notify": Q}
    execute(run, "notify")
    assert run_status(run) == RunStatus.SUCCESS
    first_finish = run.finished_at
    assert current_job(run, "deploy").allow_failure is True

    job_play(job=current_job(run, "deploy"))
    run.refresh_from_db()
    assert (run.status, run.finished_at, run.duration_s) == (RunStatus.RUNNING, None, None)
    execute(run, "deploy", F)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCESS  # optional manual jobs may fail
    assert run.finished_at > first_finish


@pytest.mark.django_db
def test_a_run_a_cancelled_job_ended_reopens_when_its_manual_job_is_played_and_decides_its_jobs_again() -> None:
    """Found by test_engine_properties: the jobs the played job's stage had skipped went back
    to PENDING, and a CANCELLED run was never promoted again, so they stayed PENDING for good."""
    run = create_run(
        job("manual", "build", when="manual"),
        job("build", "build"),
        job("test", "test"),
        stages=["build", "test"],
    )
    execute(run, "build", C)
    assert statuses(run) == {"manual": M, "build": C, "test": SK}
    assert run_status(run) == RunStatus.CANCELLED

    job_play(job=current_job(run, "manual"))
    assert run_status(run) == RunStatus.RUNNING
    assert statuses(run) == {"manual": Q, "build": C, "test": P}
    execute(run, "manual")
    assert statuses(run) == {"manual": S, "build": C, "test": SK}
    assert run_status(run) == RunStatus.CANCELLED


@pytest.mark.django_db
def test_a_later_stage_that_ran_while_a_needs_job_was_skipped_stays_as_it_ran_when_that_job_fails_later() -> None:
    """Found by test_engine_properties: what ran cannot be un-run. A job skipped because its
    manual need was not played lets the next stage run; played later, it runs and fails, and
    the run fails, but the next stage's jobs keep their results."""
    run = create_run(
        job("review", "test", when="manual"),
        job("after_review", "test", needs=["review"]),
        job("deploy", "deploy"),
    )
    assert statuses(run) == {"review": M, "after_review": SK, "deploy": Q}
    execute(run, "deploy")
    assert run_status(run) == RunStatus.SUCCESS

    job_play(job=current_job(run, "review"))
    execute(run, "review")
    execute(run, "after_review", F)
    assert statuses(run) == {"review": S, "after_review": F, "deploy": S}
    assert run_status(run) == RunStatus.FAILURE


@pytest.mark.django_db
def test_a_later_stage_queued_while_a_needs_job_was_skipped_stays_queued_when_that_job_is_played() -> None:
    """Found by test_engine_properties: a decided job stays decided, as in GitLab. The next
    stage was queued once the manual need's dependent was skipped; playing the manual job
    decides that dependent again, and the queued stage neither waits for it nor is stopped by
    its failure."""
    run = create_run(
        job("review", "test", when="manual"),
        job("after_review", "test", needs=["review"]),
        job("deploy", "deploy"),
    )
    assert statuses(run) == {"review": M, "after_review": SK, "deploy": Q}

    job_play(job=current_job(run, "review"))
    assert statuses(run) == {"review": Q, "after_review": P, "deploy": Q}
    execute(run, "review")
    execute(run, "after_review", F)
    assert statuses(run) == {"review": S, "after_review": F, "deploy": Q}
    execute(run, "deploy")
    assert statuses(run) == {"review": S, "after_review": F, "deploy": S}
    assert run_status(run) == RunStatus.FAILURE


@pytest.mark.django_db
def test_a_job_that_needs_an_optional_manual_job_is_skipped_at_run_end_and_reconsidered_when_it_is_played() -> None:
    run = create_run(
        job("build", "build"),
        job("review", "test", when="manual"),
        job("after_review", "test", needs=["review"]),
        job("deploy", "deploy"),
    )
    execute(run, "build")
    # after_review waits for the manual job; deploy waits for after_review (an earlier stage)
    # until nothing else can move, then after_review is skipped and deploy proceeds.
    assert statuses(run) == {"build": S, "review": M, "after_review": SK, "deploy": Q}
    assert current_job(run, "after_review").status_reason == "needed job 'review' was not run (manual)"
    execute(run, "deploy")
    assert run_status(run) == RunStatus.SUCCESS

    job_play(job=current_job(run, "review"))
    assert statuses(run) == {"build": S, "review": Q, "after_review": P, "deploy": S}
    execute(run, "review")
    execute(run, "after_review")
    assert run_status(run) == RunStatus.SUCCESS


@pytest.mark.django_db
def test_playing_a_job_that_is_not_manual_is_refused() -> None:
    from runs.services import TransitionError

    run = create_run(job("build", "build"))
    with pytest.raises(TransitionError):
        job_play(job=current_job(run, "build"))


@pytest.mark.django_db
def test_a_delayed_job_is_queued_by_the_sweep_when_its_time_comes() -> None:
    run = create_run(job("later", "build", when="delayed", start_in_s=300), job("test", "test"))
    later = current_job(run, "later")
    assert later.status == SCH
    assert abs((later.scheduled_at - timezone.now()).total_seconds() - 300) < 10
    # Nothing was ever queued: the run has not started.
    run.refresh_from_db()
    assert (run.status, run.started_at) == (RunStatus.PENDING, None)

    assert runs_sweep()["delayed_queued"] == 0
    assert current_job(run, "later").status == SCH

    Job.objects.filter(pk=later.pk).update(scheduled_at=timezone.now() - timedelta(seconds=1))
    counts = runs_sweep()
    assert counts["delayed_queued"] == 1
    assert current_job(run, "later").status == Q
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.started_at is not None


@pytest.mark.django_db
def test_a_run_where_nothing_can_run_finishes_at_once() -> None:
    run = create_run(job("cleanup", "build", when="on_failure"))
    run.refresh_from_db()
    assert statuses(run) == {"cleanup": SK}
    assert run.status == RunStatus.SUCCESS
    assert run.started_at is None
    assert run.finished_at is not None and run.duration_s is not None and run.duration_s >= 0


@pytest.mark.django_db
def test_a_run_becomes_running_when_its_first_job_is_queued() -> None:
    run = create_run(job("build", "build"))
    assert run.status == RunStatus.RUNNING
    assert run.started_at is not None
    assert run.finished_at is None


@pytest.mark.django_db
def test_duration_is_from_start_to_finish() -> None:
    run = create_run(job("build", "build"))
    execute(run, "build")
    run.refresh_from_db()
    assert run.duration_s == pytest.approx((run.finished_at - run.started_at).total_seconds())


@pytest.mark.django_db
def test_promotion_is_idempotent() -> None:
    run = create_run(job("build", "build"), job("test", "test"))
    assert run_promote(run_id=run.pk) == []
    execute(run, "build")
    assert run_promote(run_id=run.pk) == []
    assert statuses(run) == {"build": S, "test": Q}


@pytest.mark.django_db
def test_a_job_that_needs_an_optional_manual_job_keeps_waiting_while_the_run_is_blocked() -> None:
    run = create_run(
        job("review", "build", when="manual"),
        job("after_review", "build", needs=["review"]),
        job("approve", "build", when="manual", blocking=True),
    )
    assert statuses(run) == {"review": M, "after_review": P, "approve": M}
    assert run_status(run) == RunStatus.BLOCKED
    job_play(job=current_job(run, "approve"))
    execute(run, "approve")
    assert statuses(run) == {"review": M, "after_review": SK, "approve": S}
    assert run_status(run) == RunStatus.SUCCESS


@pytest.mark.django_db
def test_playing_a_manual_job_records_who_started_it() -> None:
    from django.contrib.auth import get_user_model

    alice = get_user_model().objects.create_user(username="alice")
    run = create_run(job("deploy", "build", when="manual"))
    played = job_play(job=current_job(run, "deploy"), user=alice)
    assert (played.status, played.status_reason) == (Q, "started by alice")
