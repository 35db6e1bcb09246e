"""Writes for step logs: chunks appended at byte offsets, idempotently, within a per-job limit.

The rules of ingest (offsets are UTF-8 byte offsets, see logs.models):

- a chunk at the step's end offset is appended;
- a chunk resent at an offset where a chunk of the same size is stored is accepted and not
  stored twice (a retry after a lost response);
- anything else (a gap, or an overlap with different boundaries) raises LogGap with the
  offset the sender must resend from.

Before storing, the server masks the job's secrets again (defence in depth: the runner masks
first), also a secret split across the previous chunk and this one. Past the job's size
limit the log keeps its head and its rotating last CONVEYOR_LOG_TAIL_BYTES; the dropped middle
is replaced by a truncation notice. Stored chunks are published to viewers after commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Left, Length
from django.utils import timezone

from cicd.db import prepared_cursor
from cicd.follow_ups import follow_up_after_commit
from logs import events
from logs.masking import MASK, Masker, maskable
from logs.models import JobLog, LogChunkKind, StepLog
from logs.selectors import run_status_snapshot, step_status_snapshot
from runs.models import JobStatus, Step

logger = logging.getLogger(__name__)


class LogGap(Exception):
    """A chunk does not start where the stored log ends; the sender must resend from `expected`."""

    def __init__(self, expected: int):
        self.expected = expected
        super().__init__(f"log chunk out of order; expected offset {expected}")


def log_chunk_append(*, step: Step, offset: int, content: str, masked: Sequence[str] = ()) -> int:
    """Append a chunk to a step's log. Returns the offset the next chunk starts at.

    `masked`: values to mask besides the job's own (job_masked_values), e.g. its job token."""
    from logs.selectors import job_masked_values

    size = len(content.encode())
    values = maskable([*masked, *job_masked_values(job_id=step.job_id)])
    try:
        with transaction.atomic():
            return _append(step=step, offset=offset, content=content, size=size, masked=values)
    except IntegrityError:
        # A concurrent append at the same offset (a resend racing the original) won: the
        # second attempt sees its row and answers as for any resend.
        with transaction.atomic():
            return _append(step=step, offset=offset, content=content, size=size, masked=values)


# The statements every append runs, prepared (cicd.db): ingest runs for each chunk of each
# job, and the ORM's compilation of these few statements was most of its CPU (py-spy of the
# web workers). The rare paths (a resend, a gap, a log past its limit) stay on the ORM.
_STEPLOG, _JOBLOG = StepLog._meta.db_table, JobLog._meta.db_table
# The step's last chunk: where the next one must start (the unique (step, offset) index).
_LAST_CHUNK_SQL = f'SELECT "offset", size FROM {_STEPLOG} WHERE step_id = %s::uuid ORDER BY "offset" DESC LIMIT 1'  # noqa: S608 (our table)
_COUNT_SQL = (
    f"INSERT INTO {_JOBLOG} (job_id, stored_bytes, omitted_bytes) VALUES (%s::uuid, %s, 0) "  # noqa: S608 (our table)
    f"ON CONFLICT (job_id) DO UPDATE SET stored_bytes = {_JOBLOG}.stored_bytes + EXCLUDED.stored_bytes "
    "RETURNING stored_bytes, omitted_bytes, head_bytes, tail_step_id, tail_offset"
)
# Only the end of the previous chunk can hold the beginning of a secret: just that is read.
_PREVIOUS_TAIL_SQL = (
    f'SELECT log_chunk_id, kind, right(content, %s) FROM {_STEPLOG} WHERE step_id = %s::uuid AND "offset" = %s'  # noqa: S608
)
_INSERT_SQL = (
    f'INSERT INTO {_STEPLOG} (step_id, "offset", size, kind, content, created_at) '  # noqa: S608 (our table)
    "VALUES (%s::uuid, %s, %s, %s, %s, %s) RETURNING log_chunk_id"
)


def _append(*, step: Step, offset: int, content: str, size: int, masked: list[str]) -> int:
    with prepared_cursor() as cursor:
        cursor.execute(_LAST_CHUNK_SQL, [step.pk])
        last = cursor.fetchone()
    end = 0 if last is None else last[0] + last[1]
    if offset != end:
        if offset < end:
            stored = StepLog.objects.filter(step=step, offset=offset).values_list("size", "kind").first()
            if stored == (size, LogChunkKind.OUTPUT):
                return end  # a retry of a chunk we already have
        raise LogGap(end)
    if size == 0:
        return end
    # Counting locks the job's row until commit: appends to one job's log are serialized from
    # here on. A concurrent append at the same offset fails on the unique (step, offset).
    job_log = _count(job_id=step.job_id, size=size)
    if masked:
        content = _mask_across(step=step, previous_offset=last[0] if last else None, content=content, masked=masked)
    chunk = _insert(step=step, offset=offset, size=size, content=content)
    _limit(job_log=job_log, step=step, chunk=chunk)
    transaction.on_commit(partial(_publish_chunk, chunk))
    return offset + size


def _count(*, job_id: Any, size: int) -> JobLog:
    """Add `size` to the job's stored bytes (creating its row on its first chunk) and lock the row.
    One statement: ingest runs per chunk, and every round trip counts."""
    with prepared_cursor() as cursor:
        cursor.execute(_COUNT_SQL, [job_id, size])
        stored, omitted, head, tail_step_id, tail_offset = cursor.fetchone()
    return JobLog(
        job_id=job_id,
        stored_bytes=stored,
        omitted_bytes=omitted,
        head_bytes=head,
        tail_step_id=tail_step_id,
        tail_offset=tail_offset,
    )


def _insert(*, step: Step, offset: int, size: int, content: str) -> StepLog:
    """Store an output chunk (what StepLog.objects.create does, as a prepared statement)."""
    chunk = StepLog(
        step_id=step.pk, offset=offset, size=size, kind=LogChunkKind.OUTPUT, content=content, created_at=timezone.now()
    )
    with prepared_cursor() as cursor:
        cursor.execute(_INSERT_SQL, [step.pk, offset, size, chunk.kind.value, content, chunk.created_at])
        chunk.pk = cursor.fetchone()[0]
    chunk._state.adding, chunk._state.db = False, connection.alias
    return chunk


def _mask_across(*, step: Step, previous_offset: int | None, content: str, masked: list[str]) -> str:
    """Mask `content`, including a secret that began at the end of the previous chunk (the one
    at `previous_offset`). That chunk's stored text is cut before the secret (live viewers
    already saw its beginning, never the whole of it; the runner, which masks before sending,
    prevents even that)."""
    masker = Masker(masked)
    longest = max(len(v) for v in masked)
    carried, previous_pk = "", None
    if previous_offset is not None and longest > 1:
        with prepared_cursor() as cursor:
            cursor.execute(_PREVIOUS_TAIL_SQL, [longest - 1, step.pk, previous_offset])
            previous = cursor.fetchone()
        if previous is not None and previous[1] == LogChunkKind.OUTPUT:
            previous_pk, carried = previous[0], previous[2]
    masked_text = masker.feed(carried + content) + masker.finish()
    if not carried or masked_text.startswith(carried):
        # Nothing straddles the boundary: the previous chunk stays as it is.
        return masked_text[len(carried) :]
    # A secret began inside `carried`: keep the previous chunk up to where it starts and move
    # the mask into this chunk.
    kept = 0
    while kept < min(len(carried), len(masked_text)) and masked_text[kept] == carried[kept]:
        kept += 1
    while kept > 0 and not masked_text[kept:].startswith(MASK):
        kept -= 1  # the mask starts at or before the first difference
    # Cut where it is stored: only its last characters were read.
    StepLog.objects.filter(pk=previous_pk).update(content=Left("content", Length("content") - (len(carried) - kept)))
    logger.warning("a masked value straddled two log chunks of step %s; masked at ingest", step.pk)
    return masked_text[kept:]


def _limit(*, job_log: JobLog, step: Step, chunk: StepLog) -> None:
    """Past the job's limit, keep the head whole and rotate the tail (drop its oldest chunks).
    `job_log` already counts `chunk`."""
    limit, tail = settings.CONVEYOR_MAX_LOG_BYTES_PER_JOB, settings.CONVEYOR_LOG_TAIL_BYTES
    if job_log.head_bytes is None:
        if job_log.stored_bytes <= limit - tail:
            return  # the common case: below the limit, nothing more to do
        # The head is full: it is kept whole from now on, and this chunk starts the tail.
        job_log.head_bytes = job_log.stored_bytes - chunk.size
        job_log.tail_step_id, job_log.tail_offset = step.pk, chunk.offset
    _rotate_tail(job_log=job_log, newest=chunk, tail=tail)
    JobLog.objects.filter(pk=job_log.job_id).update(
        stored_bytes=job_log.stored_bytes,
        omitted_bytes=job_log.omitted_bytes,
        head_bytes=job_log.head_bytes,
        tail_step_id=job_log.tail_step_id,
        tail_offset=job_log.tail_offset,
    )


def _rotate_tail(*, job_log: JobLog, newest: StepLog, tail: int) -> None:
    """Drop the tail's oldest chunks while what is left of the tail stays at least `tail` bytes.
    The newest chunk is never dropped, so every step keeps a row that marks where it ends."""
    tail_bytes = job_log.stored_bytes - job_log.head_bytes
    steps = list(Step.objects.filter(job_id=job_log.job_id).order_by("index").values_list("pk", flat=True))
    first = steps.index(job_log.tail_step_id) if job_log.tail_step_id in steps else 0
    dropped: dict[Any, list[StepLog]] = {}
    position = (job_log.tail_step_id, job_log.tail_offset)
    for step_id in steps[first:]:
        start = job_log.tail_offset if step_id == job_log.tail_step_id else 0
        oldest_first = (
            StepLog.objects.filter(step_id=step_id, offset__gte=start, kind=LogChunkKind.OUTPUT)
            .order_by("offset")
            .only("pk", "step_id", "offset", "size")[:_ROTATE_BATCH]
        )
        candidates = list(oldest_first)
        kept = None
        for oldest in candidates:
            if oldest.pk == newest.pk or tail_bytes - oldest.size < tail:
                kept = oldest
                break
            dropped.setdefault(step_id, []).append(oldest)
            tail_bytes -= oldest.size
        if kept is not None:
            position = (step_id, kept.offset)
            break
        if len(candidates) == _ROTATE_BATCH:
            # More to drop than one batch: the next append goes on from here.
            position = (step_id, candidates[-1].end)
            break
    job_log.tail_step_id, job_log.tail_offset = position
    for step_id, chunks in dropped.items():
        omitted = sum(c.size for c in chunks)
        StepLog.objects.filter(pk__in=[c.pk for c in chunks]).delete()
        _note_truncation(step_id=step_id, first=chunks[0], omitted=omitted)
        job_log.omitted_bytes += omitted
        job_log.stored_bytes -= omitted


# At most this many chunks are dropped per append (normally one goes for each that comes).
_ROTATE_BATCH = 256


def _note_truncation(*, step_id: Any, first: StepLog, omitted: int) -> None:
    """Replace dropped chunks by a notice, or grow the notice that directly precedes them."""
    before = (
        StepLog.objects.filter(step_id=step_id, offset__lt=first.offset)
        .order_by("-offset")
        .only("pk", "offset", "size", "kind", "content")
        .first()
    )
    if before is not None and before.kind == LogChunkKind.TRUNCATION and before.end == first.offset:
        before.size += omitted
        lead = "\n" if before.content.startswith("\n") else ""
        StepLog.objects.filter(pk=before.pk).update(size=before.size, content=lead + truncation_notice(before.size))
        return
    # On a line of its own, whether or not the output before it ended its line.
    lead = "" if before is None or before.content.endswith("\n") else "\n"
    StepLog.objects.create(
        step_id=step_id,
        offset=first.offset,
        size=omitted,
        kind=LogChunkKind.TRUNCATION,
        content=lead + truncation_notice(omitted),
    )


def truncation_notice(omitted: int) -> str:
    limit, tail = settings.CONVEYOR_MAX_LOG_BYTES_PER_JOB, settings.CONVEYOR_LOG_TAIL_BYTES
    return (
        f"[conveyor] Log truncated: {_human(omitted)} ({omitted} bytes) of output omitted here. "
        f"A job's log keeps its first {_human(limit - tail)} and its last {_human(tail)} "
        f"(CONVEYOR_MAX_LOG_BYTES_PER_JOB={limit}); the job itself was not affected.\n"
    )


def _human(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}".replace(".0 ", " ")
        size /= 1024
    raise AssertionError("unreachable")


# --- Publishing (after commit only: a rolled-back chunk is never shown).


def _publish_chunk(chunk: StepLog) -> None:
    events.publish(
        events.step_group(chunk.step_id),
        {
            "type": events.LOG_CHUNK,
            "offset": chunk.offset,
            "end": chunk.end,
            "frame": events.log_frame(
                offset=chunk.offset,
                end=chunk.end,
                content=chunk.content,
                kind=chunk.kind,
                at=chunk.created_at.isoformat(),
            ),
        },
    )


def step_status_publish(*, step_id: Any) -> None:
    """Tell the viewers of a step's run that the step (or its job) changed status. Call it in the
    transaction that changes the status: the event goes out after commit, with the state then."""
    follow_up_after_commit(partial(_publish_step_status, step_id))


def run_status_publish(*, run_id: Any) -> None:
    """Tell the viewers of a run that its status or one of its jobs' changed (after commit)."""
    follow_up_after_commit(partial(_publish_run_status, run_id))


def _publish_step_status(step_id: Any) -> None:
    snapshot = step_status_snapshot(step_id=step_id)
    if snapshot is not None:
        events.publish(events.run_group(snapshot["run"]["id"]), {"type": events.STEP_STATUS, **snapshot})


def _publish_run_status(run_id: Any) -> None:
    snapshot = run_status_snapshot(run_id=run_id)
    if snapshot is not None:
        events.publish(events.run_group(run_id), {"type": events.RUN_STATUS, **snapshot})


def logs_expire(*, now: datetime | None = None) -> int:
    """Retention (nightly, logs.tasks.expire_logs): delete the chunks of the logs of jobs that
    finished more than CONVEYOR_LOG_RETENTION_DAYS ago. Each job's JobLog stays, marked
    `expired_at`, so that its pages say the log expired rather than that there was none.
    Returns how many jobs' logs expired. CONVEYOR_LOG_EXPIRE_BATCH jobs per transaction; two
    runs at once share the work (SKIP LOCKED)."""
    days = settings.CONVEYOR_LOG_RETENTION_DAYS
    if not days:
        return 0
    now = now or timezone.now()
    expiring = JobLog.objects.filter(
        expired_at__isnull=True, job__finished_at__lt=now - timedelta(days=days), job__status__in=JobStatus.TERMINAL
    )
    expired = 0
    while True:
        with transaction.atomic():
            job_ids = list(
                expiring.select_for_update(skip_locked=True, of=("self",)).values_list("job_id", flat=True)[
                    : settings.CONVEYOR_LOG_EXPIRE_BATCH
                ]
            )
            if not job_ids:
                return expired
            # Through the (step, offset) unique index; nothing refers to a chunk.
            StepLog.objects.filter(step__job_id__in=job_ids).delete()
            JobLog.objects.filter(job_id__in=job_ids).update(expired_at=now)
        expired += len(job_ids)
