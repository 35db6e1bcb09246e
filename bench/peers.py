"""A peer queue on the same database server: procrastinate (a PostgreSQL job queue for Python)
processing the same number of no-op jobs with the same number of worker processes.

Its schema lives in a database of its own, recreated each run, so nothing is shared with
Conveyor's tables but the server.
"""

from __future__ import annotations

import multiprocessing
import time

from bench.common import server_params

PEER_DB = "conveyor_bench_procrastinate"
BATCH = 1000


def _app():
    import procrastinate

    params = server_params(dbname=PEER_DB)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(kwargs=params))

    @app.task(name="noop", queue="bench")
    def noop() -> None:
        return None

    return app, noop


def _worker(ready, go, done) -> None:
    import logging

    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    app, _ = _app()
    with app.open():
        ready.release()
        go.wait()
        # wait=False: the worker exits once the queue is empty; one job at a time per process.
        app.run_worker(queues=["bench"], concurrency=1, wait=False, install_signal_handlers=False, delete_jobs="never")
    done.put(True)


def _recreate_database() -> None:
    import psycopg

    with psycopg.connect(autocommit=True, **server_params(dbname="postgres")) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PEER_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{PEER_DB}"')


def procrastinate_throughput(*, jobs: int, concurrency: int) -> dict[str, object]:
    import psycopg

    _recreate_database()
    app, noop = _app()
    with app.open():
        app.schema_manager.apply_schema()
        for start in range(0, jobs, BATCH):
            noop.batch_defer(*({} for _ in range(min(BATCH, jobs - start))))
    context = multiprocessing.get_context("spawn")
    ready, go, done = context.Semaphore(0), context.Event(), context.Queue()
    processes = [context.Process(target=_worker, args=(ready, go, done)) for _ in range(concurrency)]
    for process in processes:
        process.start()
    for _ in processes:  # the clock starts once every worker is connected and waiting
        ready.acquire(timeout=120)
    started = time.perf_counter()
    go.set()
    for _ in processes:
        done.get(timeout=600)
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join()
    with psycopg.connect(**server_params(dbname=PEER_DB)) as conn:
        succeeded, repeated = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE attempts > 1) "
            "FROM procrastinate_jobs"
        ).fetchone()
    return {
        "jobs": jobs,
        "claimed": succeeded,
        "double_claims": repeated,
        "claims_per_s": round(succeeded / elapsed),
        "p50_ms": "n/a",
        "p99_ms": "n/a",
    }
