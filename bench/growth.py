"""Growth: the claim benchmark with 0, 10x and 100x as many finished jobs in the table.

A real installation keeps every finished job (and its steps, and its run) for months: the
queue is a sliver of the Job table. The claim must not notice: its index (job_queue_idx,
partial on status = 'QUEUED') holds queued jobs only, so its cost should stay flat however
much history piles up.

History is inserted with `INSERT ... SELECT FROM generate_series` (no Python per row) as
finished runs of 10 jobs with one step each, shaped like the rows the e2e benchmark's runs
leave behind; then the queue is seeded and VACUUM ANALYZE runs (what autovacuum does soon
after in production). At each
size the same claim benchmark as bench.claims runs (the claim service, `concurrency`
processes claim -> complete), and the claim statement's candidate scan is EXPLAINed with
ANALYZE and BUFFERS: buffers touched per claim is the noise-free view of the same cost.
The history is deleted again at the end.
"""

from __future__ import annotations

import json
import time

from django.db import connection, transaction

JOBS_PER_RUN = 10
HISTORY_PIPELINE = "bench-growth-history"
# The spec column as the config parser stores it for a plain script job (see bench/e2e.py).
_SPEC = {
    "cache": [],
    "image": None,
    "deploy": None,
    "coverage": None,
    "parallel": None,
    "services": [],
    "artifacts": None,
    "variables": {},
    "environment": None,
    "dependencies": None,
    "retry_exit_codes": [],
    "allow_failure_exit_codes": [],
}
_INSERT_RUNS = """
INSERT INTO runs_pipelinerun (id, pipeline_id, number, commit_sha, commit_message, branch, is_tag, trigger,
    triggered_by, status, error_message, variables, config_source, created_at, started_at, finished_at, duration_s)
SELECT gen_random_uuid(), %(pipeline)s, %(start)s + g, md5(g::text) || substr(md5((-g)::text), 1, 8),
    'history ' || g, 'main', false, 'PUSH', 'bench', 'SUCCESS', '', '{}', '',
    now() - interval '30 days' + g * interval '1 second', now() - interval '30 days' + g * interval '1 second',
    now() - interval '30 days' + g * interval '1 second' + interval '5 minutes', 300
FROM generate_series(1, %(runs)s) AS g
"""
_INSERT_JOBS = """
INSERT INTO runs_job (id, run_id, name, stage, stage_index, status, status_reason, "when", uses_needs, allow_failure,
    blocking, tags, timeout_s, retry_max, retry_when, attempt, interruptible, resource_group, environment, spec,
    exit_code, created_at, queued_at, queue_key, started_at, finished_at, retried, token_hash)
SELECT gen_random_uuid(), run.id, 'job-' || j, 'test', 1, 'SUCCESS', '', 'on_success', true, false,
    false, '{}', 3600, 0, '{}', 1, false, '', '', %(spec)s::jsonb,
    0, run.created_at, run.started_at, run.started_at, run.started_at, run.finished_at, false,
    md5(run.id::text || j) || md5(j || run.id::text)
FROM runs_pipelinerun AS run CROSS JOIN generate_series(1, %(per_run)s) AS j
WHERE run.pipeline_id = %(pipeline)s AND run.number > %(start)s
"""
_INSERT_STEPS = """
INSERT INTO runs_step (id, job_id, index, kind, name, command, status, exit_code, started_at, finished_at)
SELECT gen_random_uuid(), job.id, 0, 'script', 'true', 'true', 'SUCCESS', 0, job.started_at, job.finished_at
FROM runs_job AS job JOIN runs_pipelinerun AS run ON run.id = job.run_id
WHERE run.pipeline_id = %(pipeline)s AND run.number > %(start)s
"""
# The candidate scan of the claim (conveyor_claim_job, runners/migrations/0004; a runner without tags).
_CANDIDATE = """
EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
SELECT id FROM runs_job WHERE status = 'QUEUED' AND tags <@ '{}'::varchar[] ORDER BY queue_key LIMIT 1
FOR UPDATE SKIP LOCKED
"""


def history_pipeline():
    from pipelines.models import Pipeline, Repository

    repository, _ = Repository.objects.get_or_create(name=HISTORY_PIPELINE, defaults={"clone_url": "/nonexistent"})
    pipeline, _ = Pipeline.objects.get_or_create(repository=repository, name="default")
    return pipeline


def add_history(pipeline, *, jobs: int) -> float:
    """Insert `jobs` finished jobs (in runs of 10, one step each); returns the seconds it took."""
    from runs.models import PipelineRun

    started = time.perf_counter()
    start = PipelineRun.objects.filter(pipeline=pipeline).count()
    params = {
        "pipeline": pipeline.pk,
        "start": start,
        "runs": jobs // JOBS_PER_RUN,
        "per_run": JOBS_PER_RUN,
        "spec": json.dumps(_SPEC),
    }
    with transaction.atomic(), connection.cursor() as cursor:
        for statement in (_INSERT_RUNS, _INSERT_JOBS, _INSERT_STEPS):
            cursor.execute(statement, params)
    return time.perf_counter() - started


def vacuum() -> None:
    """What autovacuum does soon after a bulk insert (must run outside a transaction)."""
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE runs_job, runs_step, runs_pipelinerun")


def drop_history(pipeline) -> None:
    runs = "SELECT id FROM runs_pipelinerun WHERE pipeline_id = %(pipeline)s"
    jobs = f"SELECT id FROM runs_job WHERE run_id IN ({runs})"  # noqa: S608 (constant text)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM runs_step WHERE job_id IN ({jobs})", {"pipeline": pipeline.pk})  # noqa: S608
        cursor.execute(f"DELETE FROM runs_job WHERE run_id IN ({runs})", {"pipeline": pipeline.pk})  # noqa: S608
        cursor.execute("DELETE FROM runs_pipelinerun WHERE pipeline_id = %(pipeline)s", {"pipeline": pipeline.pk})
        deleted = cursor.rowcount
    if deleted:
        vacuum()


def candidate_plan() -> dict[str, object]:
    """Buffers the claim's candidate scan touches, and how it scans (an index name or Seq Scan)."""
    with transaction.atomic(), connection.cursor() as cursor:
        # The planner settings conveyor_claim_job runs its statements with (its SET clauses).
        cursor.execute("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off")
        cursor.execute(_CANDIDATE)
        (plan,) = cursor.fetchone()
        # Rolled back: the row lock the scan takes must not stay behind.
        transaction.set_rollback(True)
    plan = json.loads(plan) if isinstance(plan, str) else plan
    top = plan[0]["Plan"]
    scans = []

    def walk(node: dict) -> None:
        if "Scan" in node.get("Node Type", ""):
            scans.append(node.get("Index Name") or node["Node Type"])
        for child in node.get("Plans", []):
            walk(child)

    walk(top)
    return {
        "buffers": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0),
        "scan": ",".join(scans),
    }


def _job_table_rows() -> int:
    from runs.models import Job

    return Job.objects.count()


def claim_growth(*, queued: int, concurrency: int, factors: tuple[int, ...] = (0, 10, 100)) -> list[dict[str, object]]:
    """One row per history size: the claim benchmark's figures with `factor` x `queued` finished jobs."""
    from bench import claims

    pipeline = history_pipeline()
    drop_history(pipeline)  # what an interrupted earlier run may have left
    rows, history = [], 0
    try:
        for factor in factors:
            target = factor * queued
            insert_s = add_history(pipeline, jobs=target - history) if target > history else 0.0
            history = target
            claims.seed_queue(queued)
            vacuum()  # the history and the queue as autovacuum would leave them
            plan = candidate_plan()
            result = claims.claim_throughput(jobs=queued, concurrency=concurrency, target=claims._orm_claimer)
            rows.append(
                {
                    "history": f"{factor}x",
                    "finished_jobs": history,
                    "job_rows": _job_table_rows(),
                    "insert_s": round(insert_s, 1),
                    "claims_per_s": result["claims_per_s"],
                    "claim_ms_p50": result["p50_ms"],
                    "claim_ms_p99": result["p99_ms"],
                    "double_claims": result["double_claims"],
                    "buffers_per_claim": plan["buffers"],
                    "scan": plan["scan"],
                }
            )
    finally:
        drop_history(pipeline)
    return rows


COLUMNS = [
    "history",
    "finished_jobs",
    "job_rows",
    "insert_s",
    "claims_per_s",
    "claim_ms_p50",
    "claim_ms_p99",
    "double_claims",
    "buffers_per_claim",
    "scan",
]


def figures(rows: list[dict[str, object]]) -> dict[str, object]:
    """The `growth` section of latest.json. Claim cost = the claim's p50 latency under the benchmark's load."""
    base, *_, top = rows
    return {
        "claim_ms_p50_0x": base["claim_ms_p50"],
        "claim_ms_p50_10x": rows[1]["claim_ms_p50"] if len(rows) > 2 else None,
        "claim_ms_p50_100x": top["claim_ms_p50"],
        "claims_per_s_0x": base["claims_per_s"],
        "claims_per_s_100x": top["claims_per_s"],
        "buffers_per_claim_0x": base["buffers_per_claim"],
        "buffers_per_claim_100x": top["buffers_per_claim"],
        "finished_jobs_100x": top["finished_jobs"],
        "claim_cost_ratio_100x": round(top["claim_ms_p50"] / base["claim_ms_p50"], 2),
        "double_claims": sum(row["double_claims"] for row in rows),
    }
