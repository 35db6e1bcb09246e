"""Reads of step logs."""

from __future__ import annotations

from logs.models import StepLog
from runs.models import Step


def log_end_offset(*, step: Step) -> int:
    """The byte offset just past the stored log: where the next chunk must start."""
    last = StepLog.objects.filter(step=step).order_by("-offset").values_list("offset", "content").first()
    return 0 if last is None else last[0] + len(last[1].encode())


def log_text(*, step: Step) -> str:
    return "".join(StepLog.objects.filter(step=step).order_by("offset").values_list("content", flat=True))
