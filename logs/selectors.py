"""Reads of step logs, and who may read them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db.models import Subquery, Sum, Value
from django.db.models.functions import Coalesce, Length, Replace

from cicd.db import prepared_cursor
from logs.models import JobLog, LogChunkKind, StepLog
from pipelines.models import Repository
from pipelines.permissions import can_view
from runs.models import Job, PipelineRun, Step

# --- Permissions.


def user_can_view_repository(*, user: Any, repository: Repository) -> bool:
    """Who may read a repository's runs, jobs and logs (pages, raw downloads, WebSockets):
    decided in one place for the whole project, pipelines.permissions.can_view."""
    return can_view(user, repository)


def user_can_view_run(*, user: Any, run: PipelineRun) -> bool:
    return user_can_view_repository(user=user, repository=run.pipeline.repository)


def step_for_viewer(*, user: Any, step_id: Any) -> Step | None:
    """The step with its job, run, pipeline and repository, or None if it does not exist or the
    user may not see it (the two are not told apart, so ids cannot be probed)."""
    step = Step.objects.select_related("job__run__pipeline__repository").filter(pk=step_id).first()
    if step is None or not user_can_view_run(user=user, run=step.job.run):
        return None
    return step


def job_for_viewer(*, user: Any, job_id: Any) -> Job | None:
    job = Job.objects.select_related("run__pipeline__repository").filter(pk=job_id).first()
    if job is None or not user_can_view_run(user=user, run=job.run):
        return None
    return job


# --- Masking.


def job_masked_values(*, job_id: Any) -> list[str]:
    """Values to mask in this job's log at ingest (defence in depth: the runner masks first):
    the masked CI/CD variables of the job's repository. The job token is known only as a
    hash; the ingest service masks it when a chunk arrives authenticated with it."""
    from pipelines.variables import masked_values_of_job

    return masked_values_of_job(job_id=job_id)


# --- Retention.


def log_expired_at(*, job_id: Any):
    """When the job's log was deleted by retention (logs.services.logs_expire), or None."""
    return JobLog.objects.filter(pk=job_id).values_list("expired_at", flat=True).first()


# --- Offsets and history.


def log_end_offset(*, step: Step | Any) -> int:
    """The byte offset just past the stored log: where the next chunk must start."""
    step_id = getattr(step, "pk", step)
    last = StepLog.objects.filter(step_id=step_id).order_by("-offset").values_list("offset", "size").first()
    return 0 if last is None else last[0] + last[1]


def log_chunks_from(*, step_id: Any, offset: int, limit: int = 64) -> list[dict[str, Any]]:
    """Up to `limit` chunks of a step that end past `offset`, in order, as event-shaped dicts.

    The chunk that contains `offset` (a reader resuming mid-chunk) is cut so that exactly the
    bytes from `offset` on are returned; a cut that would split a UTF-8 character skips its
    continuation bytes. A truncation notice that starts before `offset` is skipped: the
    reader already went past it."""
    steps = StepLog.objects.filter(step_id=step_id)
    # One statement, hence one snapshot: the chunk that may contain `offset` (the last one
    # starting before it) and those from `offset` on. Two queries could each miss a chunk
    # committed between them.
    containing = steps.filter(offset__lt=offset).order_by("-offset").values("offset")[:1]
    rows = (
        steps.filter(offset__gte=Coalesce(Subquery(containing), Value(offset)))
        .order_by("offset")
        .values("offset", "size", "kind", "content", "created_at")[: limit + 1]
    )
    chunks = []
    for row in rows:
        end = row["offset"] + row["size"]
        if end <= offset:
            continue
        content = row["content"]
        if row["offset"] < offset:
            if row["kind"] != LogChunkKind.OUTPUT:
                continue
            content = text_from_byte(content, offset - row["offset"])
        chunks.append(_chunk(row, content, start=max(offset, row["offset"]), end=end))
    return chunks[:limit]


def log_chunks_iter(*, step_id: Any, offset: int = 0, batch: int = 64) -> Iterator[dict[str, Any]]:
    """Every chunk from `offset` on, fetched in batches (keyset pagination, no long transaction)."""
    while True:
        chunks = log_chunks_from(step_id=step_id, offset=offset, limit=batch)
        yield from chunks
        if len(chunks) < batch:
            return
        offset = chunks[-1]["end"]


def _chunk(row: dict[str, Any], content: str, *, start: int, end: int) -> dict[str, Any]:
    return {
        "offset": start,
        "end": end,
        "content": content,
        "kind": row["kind"],
        "at": row["created_at"].isoformat() if row["created_at"] else None,
    }


def text_from_byte(text: str, index: int) -> str:
    """`text` from its UTF-8 byte `index` on (skipping the rest of a character cut there)."""
    data = text.encode()
    index = min(index, len(data))
    while index < len(data) and (data[index] & 0xC0) == 0x80:
        index += 1  # inside a multi-byte character: skip the rest of it
    return data[index:].decode()


def log_text(*, step: Step) -> str:
    return "".join(StepLog.objects.filter(step=step).order_by("offset").values_list("content", flat=True))


def log_stored_bytes(*, step: Step) -> int:
    return StepLog.objects.filter(step=step).aggregate(total=Sum("size"))["total"] or 0


# --- Status snapshots (what viewers are told on connect and on every change).


# The live events' snapshots are read after every step report and every change of a run
# (logs.services, after commit): prepared statements (cicd.db), not queries the ORM compiles
# each time.
_STEP_STATUS_SQL = (
    "SELECT step.id::text, step.status, step.exit_code, job.id::text, job.status, run.id::text, run.status "  # noqa: S608 (our tables)
    f"FROM {Step._meta.db_table} AS step JOIN {Job._meta.db_table} AS job ON job.id = step.job_id "
    f"JOIN {PipelineRun._meta.db_table} AS run ON run.id = job.run_id WHERE step.id = %s::uuid"
)
_RUN_STATUS_SQL = f"SELECT id::text, status FROM {PipelineRun._meta.db_table} WHERE id = %s::uuid"  # noqa: S608
_RUN_JOBS_SQL = (
    f"SELECT id::text, name, status FROM {Job._meta.db_table} "  # noqa: S608 (our table)
    "WHERE run_id = %s::uuid AND NOT retried ORDER BY stage_index, name"
)


def step_status_snapshot(*, step_id: Any) -> dict[str, Any] | None:
    with prepared_cursor() as cursor:
        cursor.execute(_STEP_STATUS_SQL, [step_id])
        row = cursor.fetchone()
    if row is None:
        return None
    step_id, step_status, exit_code, job_id, job_status, run_id, run_status = row
    return {
        "run": {"id": run_id, "status": run_status},
        "job": {"id": job_id, "status": job_status},
        "step": {"id": step_id, "status": step_status, "exit_code": exit_code},
    }


def run_status_snapshot(*, run_id: Any) -> dict[str, Any] | None:
    with prepared_cursor() as cursor:
        cursor.execute(_RUN_STATUS_SQL, [run_id])
        run = cursor.fetchone()
        if run is None:
            return None
        cursor.execute(_RUN_JOBS_SQL, [run_id])
        jobs = cursor.fetchall()
    return {
        "run": {"id": run[0], "status": run[1]},
        "jobs": [{"id": job_id, "name": name, "status": status} for job_id, name, status in jobs],
    }


def log_tail_start(*, step_id: Any, max_bytes: int) -> tuple[int, int, int]:
    """Where to start showing the last `max_bytes` of a step's log, at a chunk boundary.

    Returns (offset to start from, lines before it, bytes before it); (0, 0, 0) if the whole
    log fits. Reads only the tail's chunks; the lines before are counted in the database."""
    taken = 0
    start = None
    rows = StepLog.objects.filter(step_id=step_id).order_by("-offset").values_list("offset", "content")
    for offset, content in rows.iterator(chunk_size=16):
        taken += len(content.encode())
        if taken > max_bytes:
            break
        start = offset
    else:
        return 0, 0, 0
    if start is None:  # even the last chunk alone is too big: show it anyway
        start = StepLog.objects.filter(step_id=step_id).order_by("-offset").values_list("offset", flat=True).first()
    before = StepLog.objects.filter(step_id=step_id, offset__lt=start).aggregate(
        lines=Sum(Length("content") - Length(Replace("content", Value("\n"), Value("")))),
        size=Sum("size"),
    )
    return start, before["lines"] or 0, before["size"] or 0
