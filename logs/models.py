"""Step logs, stored as ordered chunks with byte offsets."""

from __future__ import annotations

from django.db import models


class StepLog(models.Model):
    log_chunk_id = models.BigAutoField(primary_key=True)
    step = models.ForeignKey("runs.Step", on_delete=models.CASCADE, related_name="log_chunks")
    # Byte offset of this chunk's first byte in the step's whole log.
    offset = models.BigIntegerField()
    content = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["step", "offset"]
        constraints = [
            # Ingest is idempotent on (step, offset): a resent chunk is not stored twice.
            # The unique index also serves "history of a step from offset N".
            models.UniqueConstraint(fields=["step", "offset"], name="steplog_unique_offset"),
            models.CheckConstraint(condition=models.Q(offset__gte=0), name="steplog_offset_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.step_id}@{self.offset}"
