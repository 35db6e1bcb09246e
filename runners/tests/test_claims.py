from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import DatabaseError, connection, transaction

from runners.models import Runner
from runners.services import JobNotHeld, job_claim, job_heartbeat
from runners.variables import JobFacts, job_variables
from runs.models import Job, JobStatus, PipelineRun


def test_a_claim_takes_the_oldest_queued_job_and_marks_it_running(make_queued_jobs, runner):
    first, second = make_queued_jobs(2)
    Job.objects.filter(pk=second.pk).update(queue_key=first.queue_key.replace(year=2000))

    claimed = job_claim(runner=runner)

    assert claimed.id == str(second.pk)
    second.refresh_from_db()
    assert second.status == JobStatus.RUNNING
    assert second.runner == runner
    assert second.lease_expires_at > second.started_at
    assert claimed.job_token.startswith("cvj_")
    assert claimed.variables["CI_JOB_TOKEN"] == claimed.job_token


def test_a_runner_only_claims_jobs_whose_tags_it_has(make_queued_jobs, db):
    [gpu_job] = make_queued_jobs(1, tags=["gpu", "linux"])
    plain = Runner.objects.create(name="plain", tags=["linux"])
    gpu = Runner.objects.create(name="gpu", tags=["gpu", "linux", "x86"])

    assert job_claim(runner=plain) is None
    assert job_claim(runner=gpu).id == str(gpu_job.pk)


def test_an_untagged_job_runs_on_any_runner(make_queued_jobs, runner):
    [job] = make_queued_jobs(1)
    assert job_claim(runner=runner).id == str(job.pk)


def test_a_paused_runner_claims_nothing(make_queued_jobs, runner):
    make_queued_jobs(1)
    runner.is_paused = True
    assert job_claim(runner=runner) is None


def test_a_claim_returns_the_steps_in_order(make_queued_jobs, runner):
    make_queued_jobs(1, steps=3)
    claimed = job_claim(runner=runner)
    assert [s.command for s in claimed.steps] == ["echo 0", "echo 1", "echo 2"]


def test_the_claimed_variables_hold_no_server_secret(make_queued_jobs, runner, settings):
    make_queued_jobs(1)
    claimed = job_claim(runner=runner)
    text = json.dumps(claimed.variables)
    assert settings.SECRET_KEY not in text
    assert settings.DATABASES["default"]["NAME"] not in text


def _prepared_claims() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s", ["%conveyor_claim_job%"])
        return [row[0] for row in cursor.fetchall()]


def test_the_claim_is_prepared_once_on_the_connection_and_reused(make_queued_jobs, runner):
    make_queued_jobs(3)

    claims = [job_claim(runner=runner) for _ in range(3)]

    assert all(claims)
    assert len(_prepared_claims()) == 1


@pytest.mark.django_db(transaction=True)
def test_with_prepared_statements_off_the_claim_prepares_nothing(make_queued_jobs, runner, settings):
    settings.DATABASE_PREPARED_STATEMENTS = False
    connection.close()  # a new connection: nothing prepared on it yet
    make_queued_jobs(2)

    assert job_claim(runner=runner) and job_claim(runner=runner)
    assert _prepared_claims() == []


def _plans_of_a_claim(runner) -> list[str]:
    """The plans of the statements a claim runs inside conveyor_claim_job, as auto_explain
    prints them (set for this test's transaction only)."""
    plans: list[str] = []
    psycopg_connection = connection.connection

    def collect(notice) -> None:
        plans.append(notice.message_primary)

    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not cursor.fetchone()[0]:
            pytest.skip("reading the claim's plans needs LOAD 'auto_explain', which only a superuser may run")
        try:
            with transaction.atomic():
                cursor.execute("LOAD 'auto_explain'")
        except DatabaseError as exc:
            pytest.skip(f"this PostgreSQL has no auto_explain (contrib) to read the claim's plans with: {exc}")
        cursor.execute("SET LOCAL auto_explain.log_min_duration = 0")
        cursor.execute("SET LOCAL auto_explain.log_nested_statements = on")
        cursor.execute("SET LOCAL auto_explain.log_level = notice")
    psycopg_connection.add_notice_handler(collect)
    try:
        assert job_claim(runner=runner) is not None
    finally:
        psycopg_connection.remove_notice_handler(collect)
    return plans


def test_the_claim_reads_every_row_through_an_index_however_small_the_tables(make_queued_jobs, runner):
    make_queued_jobs(3, steps=2)
    with connection.cursor() as cursor:
        # Statistics of a new install: a handful of rows, where reading a table whole looks
        # cheapest to the planner (and then costs more with every row the table gains).
        cursor.execute("ANALYZE runs_job, runs_step, runs_pipelinerun, pipelines_pipeline, pipelines_repository")

    plans = "\n".join(_plans_of_a_claim(runner))

    assert "job_queue_idx" in plans  # the claim's own statements were seen
    for table in ("runs_job", "runs_step", "runs_pipelinerun", "pipelines_pipeline", "pipelines_repository"):
        assert f"Seq Scan on {table}" not in plans
    assert "Hash Join" not in plans
    assert "Merge Join" not in plans


def test_a_claims_facts_are_the_jobs_run_and_repository_as_the_orm_reads_them(make_queued_jobs, runner):
    # The claim reads its row by position (JobFacts first, field by field): a field out of place shows here.
    (job,) = make_queued_jobs(1, steps=2)
    Job.objects.filter(pk=job.pk).update(
        spec={"environment": {"name": "staging", "url": "https://staging.example"}, "variables": {"MODE": "fast"}},
        attempt=2,
        timeout_s=900,
    )
    PipelineRun.objects.filter(pk=job.run_id).update(
        commit_sha="a" * 40, commit_message="Fix the build", branch="v1.2", is_tag=True, variables={"EXTRA": "1"}
    )

    claimed = job_claim(runner=runner)

    expected = job_variables(job=JobFacts.of(Job.objects.get(pk=job.pk)), runner=runner, job_token=claimed.job_token)
    assert claimed.variables == expected
    assert (claimed.attempt, claimed.timeout_s, claimed.ref, claimed.commit_sha) == (2, 900, "v1.2", "a" * 40)
    assert [step.name for step in claimed.steps] == ["step 0", "step 1"]


def test_a_heartbeat_extends_the_lease_only_for_the_holder(make_queued_jobs, runner):
    make_queued_jobs(1)
    claimed = job_claim(runner=runner)
    other = Runner.objects.create(name="other")
    before = Job.objects.get(pk=claimed.id).lease_expires_at

    job_heartbeat(job_id=claimed.id, runner=runner)
    assert Job.objects.get(pk=claimed.id).lease_expires_at >= before
    with pytest.raises(JobNotHeld):
        job_heartbeat(job_id=claimed.id, runner=other)


CLAIMER = """
import json, os, sys, time
import django
os.environ["DJANGO_SETTINGS_MODULE"] = "cicd.settings"
from django.conf import settings
django.setup()
settings.DATABASES["default"]["NAME"] = sys.argv[1]
from django.db import DatabaseError, connection, transaction
connection.settings_dict["NAME"] = sys.argv[1]
from runners.models import Runner
from runners.services import job_claim
from runs.models import Job, JobStatus
runner = Runner.objects.get(pk=sys.argv[2])
claimed = []
idle = 0
while idle < 3:
    job = job_claim(runner=runner)
    if job is None:
        idle += 1
        time.sleep(0.05)
        continue
    idle = 0
    claimed.append(job.id)
    Job.objects.filter(pk=job.id, status=JobStatus.RUNNING).update(status=JobStatus.SUCCESS, lease_expires_at=None)
print(json.dumps(claimed))
"""


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_eight_concurrent_claimer_processes_never_claim_a_job_twice_and_lose_none(make_queued_jobs, tmp_path: Path):
    jobs = make_queued_jobs(2000)
    runners = [Runner.objects.create(name=f"claimer-{i}") for i in range(8)]
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, connection.settings_dict["NAME"], str(r.pk)],
            stdout=subprocess.PIPE,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
        for r in runners
    ]
    claimed: list[str] = []
    for process in processes:
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0
        claimed.extend(json.loads(out))

    assert len(claimed) == len(set(claimed)), "a job was claimed twice"
    assert set(claimed) == {str(j.pk) for j in jobs}, "a job was never claimed"
    assert Job.objects.filter(status=JobStatus.SUCCESS).count() == len(jobs)
    # Every process did some of the work: the claims really were concurrent.
    assert sum(1 for p in processes if p.returncode == 0) == 8


def test_a_huge_run_does_not_starve_a_run_queued_after_it(db):
    from runs.tests.factories import create_run, job

    huge = create_run(*[job(f"shard-{i:03}") for i in range(200)])
    small = create_run(job("lint"))
    runner = Runner.objects.create(name="fair", tags=[])

    first_claims = [job_claim(runner=runner) for _ in range(3)]

    # The huge run's first job was queued first and goes first; the small run's only job
    # comes right after it rather than after all 200 shards.
    assert [c.run_id for c in first_claims] == [str(huge.pk), str(small.pk), str(huge.pk)]


def test_a_run_alone_in_the_queue_has_its_jobs_claimed_in_stage_and_name_order(db):
    from runs.tests.factories import create_run, job

    run = create_run(job("b-test"), job("a-test"), job("c-test"))
    runner = Runner.objects.create(name="solo", tags=[])

    names = [job_claim(runner=runner).name for _ in range(3)]

    assert names == ["a-test", "b-test", "c-test"]
    assert job_claim(runner=runner) is None
    assert not Job.objects.filter(run=run, status=JobStatus.QUEUED).exists()


def test_a_runs_running_jobs_count_against_the_place_of_its_next_job(db):
    from runs.services import job_finish
    from runs.tests.factories import create_run, job

    busy = create_run(job("b0", "build"), job("b1", "build"), job("b2", "build"), job("t", "test", needs=["b0"]))
    runner = Runner.objects.create(name="fair", tags=[])
    b0, b1 = job_claim(runner=runner), job_claim(runner=runner)
    assert [b0.name, b1.name] == ["b0", "b1"]
    # b0 finishes: t is queued while b1 still runs and b2 still waits, so it is busy's
    # third job in flight and queues two fair-share steps back.
    assert job_finish(job_id=b0.id, status=JobStatus.SUCCESS, exit_code=0, runner=runner)
    create_run(job("n0"), job("n1"), job("n2"))  # a newcomer

    order = [job_claim(runner=runner) for _ in range(5)]

    assert [(c.run_id == str(busy.pk), c.name) for c in order] == [
        (False, "n0"),
        (False, "n1"),
        (True, "b2"),
        (True, "t"),
        (False, "n2"),
    ]
