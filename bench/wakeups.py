"""Idle runners: what a queued job costs while many runners wait for work.

Idle HTTP runners long-poll `jobs/request`; the long-polls of a web process share one LISTEN
and a NOTIFY wakes some of them (runners/wakeups.py). Here `waiting` runners long-poll a real
server (cicd.web, as `make run` starts it), then jobs are queued one at a time, each with its
NOTIFY, and for each number of runners waiting, side by side:

- dispatch: from the commit that queued the job to its claim answer read by the runner that
  got it;
- claims per job: the claims the server ran while the jobs were queued, per job (the one that
  got it, and those that found nothing). PostgreSQL counts them: each claim scans the queue's
  index once (pg_stat_user_indexes.idx_scan of job_queue_idx), read after the server stopped
  (a server process reports its counts when it exits). A runner that got a job stops polling,
  so nothing else claims. Waking every waiting long-poll would make this grow with the runners
  waiting; waking as many as jobs were queued keeps it near 1 + the web processes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid

from bench.common import server_params, summary_ms

LONG_POLL_S = 30  # the API's longest; every measured phase is far shorter, so no long-poll ends


def idle_runners(*, waiting: int, jobs: int) -> dict[str, object]:
    from bench.claims import seed_queue
    from bench.webhooks import ROOT, _free_port, _server_env, _wait_healthy, web_command
    from runners.models import Runner
    from runners.services import registration_token_create, runner_register
    from runs.models import Job, JobStatus

    run = seed_queue(0)
    prefix = f"bench-idle-{uuid.uuid4().hex[:6]}"
    registration, secret = registration_token_create(description="bench idle runners")
    tokens = [runner_register(registration_token=secret, name=f"{prefix}-{i}", tags=[])[1] for i in range(waiting)]
    registration.delete()
    # PENDING now, QUEUED one at a time later: what the runners see is a job being queued.
    job_ids = [
        str(job.pk)
        for job in Job.objects.bulk_create(
            Job(run=run, name=f"{prefix}-job-{i}", stage="test", stage_index=0, status=JobStatus.PENDING)
            for i in range(jobs)
        )
    ]
    port = _free_port()
    server = subprocess.Popen([*web_command(port), "--log-level", "warning"], cwd=ROOT, env=_server_env())  # noqa: S603
    try:
        _wait_healthy(port, server)
        scans_before = _queue_index_scans()
        latencies, claimed = asyncio.run(_queue_while_idle(port, tokens, job_ids))
    finally:
        server.terminate()
        server.wait(timeout=60)
    from django.db import connections

    connections.close_all()  # so that the server's connections are the ones awaited below
    scans = _queue_index_scans(after=scans_before)
    Job.objects.filter(name__startswith=prefix).delete()
    Runner.objects.filter(name__startswith=prefix).delete()
    # Before the first job, each long-poll claimed twice: at once, and again once LISTEN was in place.
    during = scans - 2 * waiting
    return {
        "waiting": waiting,
        "jobs": jobs,
        "claimed": claimed,
        "claims_per_job": round(during / jobs, 2) if jobs else float("nan"),
        **summary_ms(latencies),
    }


def _queue_index_scans(after: int | None = None) -> int:
    """The queue index's scans so far; with `after` (the count before), once every server process that
    claimed has reported (they report as they exit), the count since."""
    import psycopg

    with psycopg.connect(autocommit=True, **server_params()) as conn:
        deadline = time.monotonic() + 10
        while True:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            scans = conn.execute(
                "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'job_queue_idx'"
            ).fetchone()[0]
            if after is None:
                return scans
            exiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            ).fetchone()[0]
            if not exiting or time.monotonic() > deadline:
                return scans - after
            time.sleep(0.05)


async def _queue_while_idle(port: int, tokens: list[str], job_ids: list[str]) -> tuple[list[float], int]:
    import psycopg

    from bench.webhooks import read_response

    answered: dict[str, float] = {}
    got_job = asyncio.Event()

    async def long_poll(token: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"wait": LONG_POLL_S}).encode()
        writer.write(
            f"POST /api/runner/jobs/request HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        try:
            status, answer = await read_response(reader)
            if status == 200:
                answered[json.loads(answer)["id"]] = time.perf_counter()
                got_job.set()
        finally:
            writer.close()

    polls = [asyncio.create_task(long_poll(token)) for token in tokens]
    await asyncio.sleep(3 + len(tokens) / 100)  # every long-poll has claimed, found nothing, and waits
    latencies = []
    async with await psycopg.AsyncConnection.connect(**server_params()) as conn:
        for job_id in job_ids:
            await conn.execute(
                "UPDATE runs_job SET status = 'QUEUED', queued_at = now(), queue_key = now() WHERE id = %s", [job_id]
            )
            await conn.execute("SELECT pg_notify('conveyor_jobs', '[[1,[]]]')")  # as runs.services says it
            committed = time.perf_counter()  # the job (and the NOTIFY) exist from the commit on
            await conn.commit()
            try:
                await asyncio.wait_for(_answered(answered, job_id, got_job), timeout=10)
            except TimeoutError:
                continue  # lost: counted as unclaimed
            latencies.append(answered[job_id] - committed)
            await asyncio.sleep(0.05)
    for poll in polls:
        poll.cancel()
    await asyncio.gather(*polls, return_exceptions=True)
    return latencies, len(answered)


async def _answered(answered: dict[str, float], job_id: str, got_job: asyncio.Event) -> None:
    while job_id not in answered:
        got_job.clear()
        await got_job.wait()
