"""Step logs, stored as ordered chunks with byte offsets, and each job's log accounting.

Offsets are byte offsets in the UTF-8 encoding of the text the runner sends (after the
runner masked secrets). A chunk at `offset` covering `size` bytes ends at `offset + size`,
where the step's next chunk must start. `size` equals the UTF-8 length of `content` except
where the server changed the text: a secret masked at ingest, or a truncation notice that
stands for the bytes it replaced. Readers resume from a chunk's end, never from a count of
the characters they received.
"""

from __future__ import annotations

from django.db import models


class LogChunkKind(models.TextChoices):
    OUTPUT = "OUTPUT", "Output"
    # Stands for output dropped by the per-job size limit (CONVEYOR_MAX_LOG_BYTES_PER_JOB).
    TRUNCATION = "TRUNCATION", "Truncation notice"


class StepLog(models.Model):
    log_chunk_id = models.BigAutoField(primary_key=True)
    step = models.ForeignKey("runs.Step", on_delete=models.CASCADE, related_name="log_chunks")
    # Byte offset of this chunk's first byte in the step's whole log.
    offset = models.BigIntegerField()
    # Bytes of the runner's stream this chunk stands for (see the module docstring).
    size = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=LogChunkKind.choices, default=LogChunkKind.OUTPUT)
    content = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["step", "offset"]
        constraints = [
            # Ingest is idempotent on (step, offset): a resent chunk is not stored twice.
            # The unique index also serves "history of a step from offset N" and "the step's
            # last chunk" (where the next one must start).
            models.UniqueConstraint(fields=["step", "offset"], name="steplog_unique_offset"),
            models.CheckConstraint(condition=models.Q(offset__gte=0), name="steplog_offset_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.step_id}@{self.offset}"

    @property
    def end(self) -> int:
        return self.offset + self.size


class JobLog(models.Model):
    """How much log a job has stored, for its size limit. One row per job that logged anything;
    ingest locks it, which also serializes the appends of one job's steps."""

    job = models.OneToOneField("runs.Job", primary_key=True, on_delete=models.CASCADE, related_name="log")
    # Bytes of output kept (the sizes of its OUTPUT chunks).
    stored_bytes = models.BigIntegerField(default=0)
    # Bytes dropped from the middle of the log by the size limit.
    omitted_bytes = models.BigIntegerField(default=0)
    # Set once the log reached its limit: the size of the head, which is kept whole from then on.
    head_bytes = models.BigIntegerField(null=True, blank=True)
    # The oldest chunk of the rotating tail (the last CONVEYOR_LOG_TAIL_BYTES): dropped first.
    tail_step = models.ForeignKey("runs.Step", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    tail_offset = models.BigIntegerField(null=True, blank=True)
    # When the log's chunks were deleted by retention (CONVEYOR_LOG_RETENTION_DAYS,
    # logs.services.logs_expire); its sizes stay, and pages say the log expired.
    expired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The nightly expiry walks the logs not expired yet (the last CONVEYOR_LOG_RETENTION_DAYS
            # of jobs), never the ever-growing rest.
            models.Index(fields=["job"], name="joblog_unexpired_idx", condition=models.Q(expired_at__isnull=True)),
        ]

    def __str__(self) -> str:
        return f"log of {self.job_id}: {self.stored_bytes} bytes"

    @property
    def truncated(self) -> bool:
        return self.omitted_bytes > 0
