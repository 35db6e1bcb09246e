"""Queue benchmarks: claim throughput beside the database's own limit, and dispatch latency.

Throughput: the same number of no-op jobs is claimed and completed by the same number of
concurrent processes, (a) through Conveyor's claim service (the ORM, tag matching, lease,
job token), (b) by a raw psycopg loop doing `UPDATE ... WHERE id = (SELECT ... FOR UPDATE
SKIP LOCKED LIMIT 1) RETURNING` + complete: what PostgreSQL itself allows here.
Dispatch: an idle runner waits on LISTEN; a job is queued; how long until it is claimed.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid

from bench.common import raw_connect, setup_django, summary_ms

RAW_CLAIM = """
UPDATE runs_job SET status = 'RUNNING', started_at = now(), lease_expires_at = now() + interval '30 seconds'
WHERE id = (
    SELECT id FROM runs_job WHERE status = 'QUEUED' ORDER BY queue_key LIMIT 1 FOR UPDATE SKIP LOCKED
) RETURNING id
"""
RAW_COMPLETE = "UPDATE runs_job SET status = 'SUCCESS', finished_at = now(), lease_expires_at = NULL WHERE id = %s"


def seed_queue(count: int):
    """`count` QUEUED no-op jobs, in the benchmarks' one run (made once), alone in the queue: the run."""
    from django.utils import timezone

    from pipelines.models import Pipeline, Repository
    from runs.models import Job, JobStatus, PipelineRun

    Job.objects.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).delete()
    repository, _ = Repository.objects.get_or_create(name="bench", defaults={"clone_url": "/nonexistent"})
    pipeline, _ = Pipeline.objects.get_or_create(repository=repository, name="bench")
    run, _ = PipelineRun.objects.get_or_create(pipeline=pipeline, number=1, defaults={"status": "RUNNING"})
    now = timezone.now()
    Job.objects.bulk_create(
        (
            Job(
                run=run,
                name=f"noop-{i}",
                stage="test",
                stage_index=0,
                status=JobStatus.QUEUED,
                queued_at=now,
                queue_key=now,
            )
            for i in range(count)
        ),
        batch_size=2000,
    )
    if count:
        # Every loop starts from the same table: the previous loop's rows vacuumed away, and
        # statistics that know the queue (autovacuum's job, soon after, in production).
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE runs_job")
    return run


def _orm_claimer(runner_id: str, ready, go, results) -> None:
    setup_django()
    from django.db import transaction

    from cicd.db import prepared_cursor
    from runners.models import Runner
    from runners.services import job_claim

    runner = Runner.objects.get(pk=runner_id)  # connects before the clock starts
    with transaction.atomic():  # warm-up, undone (_raw_claimer does the same)
        job_claim(runner=runner)
        transaction.set_rollback(True)
    ready.release()
    go.wait()
    latencies, claimed = [], 0
    while True:
        started = time.perf_counter()
        job = job_claim(runner=runner)
        if job is None:
            break
        latencies.append(time.perf_counter() - started)
        # The same completion statement as the raw loop's, prepared as psycopg prepares the raw
        # loop's, so that the two differ by the claim alone (Conveyor's own completion path,
        # job_finish, is measured end to end: bench/e2e.py).
        with prepared_cursor() as cursor:
            cursor.execute(RAW_COMPLETE, [job.id])
        claimed += 1
    results.put((claimed, latencies))


def _raw_claimer(_runner_id: str, ready, go, results) -> None:
    setup_django()
    conn = raw_connect()
    # Warm-up before the clock, on both sides: one claim, rolled back. A connection's first claim
    # reads the catalog and plans its statements (Conveyor's also compiles conveyor_claim_job);
    # with the quick sizes (1,000 jobs a half, a third of a second) that weighs on the rate.
    with conn.transaction(force_rollback=True):
        conn.execute(RAW_CLAIM).fetchone()
    ready.release()
    go.wait()
    latencies, claimed = [], 0
    while True:
        started = time.perf_counter()
        row = conn.execute(RAW_CLAIM).fetchone()
        if row is None:
            break
        latencies.append(time.perf_counter() - started)
        conn.execute(RAW_COMPLETE, [row[0]])
        claimed += 1
    conn.close()
    results.put((claimed, latencies))


def claim_rounds(*, jobs: int, concurrency: int, first, second) -> tuple[dict[str, object], dict[str, object]]:
    """`first` and `second` (claimer targets) each claim `jobs` jobs, in halves, in the order
    first, second, second, first: the host's speed drifts over a run (the raw loop alone has
    swung 25% between two halves of a minute here), and in this order a drift hits both alike.
    Each side's figures are over both its halves; `rounds_per_s` gives each half's rate."""
    halves = (jobs // 2, jobs - jobs // 2)
    done: dict[int, list[dict[str, object]]] = {0: [], 1: []}
    for side, size in ((0, halves[0]), (1, halves[0]), (1, halves[1]), (0, halves[1])):
        target = (first, second)[side]
        done[side].append(claim_throughput(jobs=size, concurrency=concurrency, target=target, detail=True))
    return _combined(done[0]), _combined(done[1])


def _combined(rounds: list[dict[str, object]]) -> dict[str, object]:
    claimed = sum(r["claimed"] for r in rounds)
    elapsed = sum(r.pop("_elapsed") for r in rounds)
    latencies = [sample for r in rounds for sample in r.pop("_latencies")]
    return {
        "jobs": sum(r["jobs"] for r in rounds),
        "claimed": claimed,
        "double_claims": sum(r["double_claims"] for r in rounds),
        "claims_per_s": round(claimed / elapsed),
        "rounds_per_s": [r["claims_per_s"] for r in rounds],
        **summary_ms(latencies),
    }


def claim_throughput(*, jobs: int, concurrency: int, target, detail: bool = False) -> dict[str, object]:
    from runners.models import Runner

    seed_queue(jobs)
    runners = [str(Runner.objects.create(name=f"bench-{uuid.uuid4().hex[:6]}").pk) for _ in range(concurrency)]
    from django.db import connections

    connections.close_all()
    context = multiprocessing.get_context("spawn")
    results, ready, go = context.Queue(), context.Semaphore(0), context.Event()
    processes = [context.Process(target=target, args=(runner_id, ready, go, results)) for runner_id in runners]
    for process in processes:
        process.start()
    for _ in processes:  # the clock starts once every claimer is connected and waiting
        ready.acquire(timeout=120)
    started = time.perf_counter()
    go.set()
    outcomes = [results.get(timeout=600) for _ in processes]
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join()
    claimed = sum(count for count, _ in outcomes)
    latencies = [sample for _, samples in outcomes for sample in samples]
    from runs.models import Job, JobStatus

    double = claimed - Job.objects.filter(status=JobStatus.SUCCESS, name__startswith="noop-").count()
    Job.objects.filter(name__startswith="noop-").delete()
    # Runners left behind would make every later claim's foreign-key check read more rows.
    Runner.objects.filter(pk__in=runners).delete()
    return {
        "jobs": jobs,
        "claimed": claimed,
        "double_claims": max(0, double),
        "claims_per_s": round(claimed / elapsed),
        **summary_ms(latencies),
        **({"_elapsed": elapsed, "_latencies": latencies} if detail else {}),
    }


def dispatch_latency(*, samples: int) -> dict[str, object]:
    """Queue one job at a time while a real RunnerLoop-style waiter idles on LISTEN."""
    from django.db import transaction
    from django.utils import timezone

    from runners.backends import OrmBackend
    from runners.models import Runner
    from runners.services import job_claim
    from runs.models import Job, JobStatus

    run = seed_queue(0)
    runner = Runner.objects.create(name=f"bench-idle-{uuid.uuid4().hex[:6]}")
    backend = OrmBackend(runner=runner)
    claimed_at: dict[str, float] = {}
    done = threading.Event()

    def idle_runner() -> None:
        while not done.is_set():
            job = job_claim(runner=runner)
            if job is not None:
                claimed_at[job.id] = time.perf_counter()
                Job.objects.filter(pk=job.id).update(status=JobStatus.SUCCESS, lease_expires_at=None)
                continue
            backend.wait_for_work(1.0)
        backend.close_thread()

    thread = threading.Thread(target=idle_runner, daemon=True)
    thread.start()
    time.sleep(0.3)
    latencies = []
    for i in range(samples):
        with transaction.atomic():
            job = Job.objects.create(
                run=run,
                name=f"dispatch-{i}",
                stage="test",
                stage_index=0,
                status=JobStatus.QUEUED,
                queued_at=timezone.now(),
                queue_key=timezone.now(),
            )
            from django.db import connection

            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_notify('conveyor_jobs', '')")
            # The clock starts as the commit begins: the job (and the NOTIFY) exist from then on.
            committed = time.perf_counter()
        deadline = committed + 5
        while str(job.pk) not in claimed_at and time.perf_counter() < deadline:
            time.sleep(0.0002)
        if str(job.pk) in claimed_at:
            latencies.append(claimed_at[str(job.pk)] - committed)
        time.sleep(0.01)
    done.set()
    thread.join(timeout=5)
    Job.objects.filter(name__startswith="dispatch-").delete()
    runner.delete()
    return {"samples": len(latencies), "lost": samples - len(latencies), **summary_ms(latencies)}
