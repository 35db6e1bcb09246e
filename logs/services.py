"""Writes for step logs: chunks appended at byte offsets, idempotently."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from logs.models import StepLog
from logs.selectors import log_end_offset
from runs.models import Step


class LogGap(Exception):
    """A chunk does not start where the stored log ends; the sender must resend from `expected`."""

    def __init__(self, expected: int):
        self.expected = expected
        super().__init__(f"log chunk out of order; expected offset {expected}")


def log_chunk_append(*, step: Step, offset: int, content: str) -> int:
    """Append a chunk. A resent chunk (same offset, already stored) is accepted and not stored
    twice; a chunk past the end raises LogGap. Returns the end offset after the chunk."""
    end = log_end_offset(step=step)
    if offset < end:
        if StepLog.objects.filter(step=step, offset=offset).exists():
            return end  # a retry of a chunk we already have
        raise LogGap(end)
    if offset > end:
        raise LogGap(end)
    try:
        with transaction.atomic():
            StepLog.objects.create(step=step, offset=offset, content=content)
    except IntegrityError:
        # A concurrent resend of the same chunk won the race: same outcome as a resend.
        return log_end_offset(step=step)
    return offset + len(content.encode())
