"""Celery tasks of artifacts: thin, idempotent, safe to run twice at once."""

from __future__ import annotations

import logging

from celery import shared_task

from artifacts.services import artifacts_cleanup

logger = logging.getLogger(__name__)


@shared_task(name="artifacts.tasks.cleanup_expired", ignore_result=True)
def cleanup_expired() -> dict[str, int]:
    """Nightly (beat, CONVEYOR_ARTIFACTS_CLEANUP_HOUR UTC): delete expired artifacts and
    abandoned uploads, storage first, then rows. Deletions the storage refused stay DELETING
    and are retried the next night; two runs at once share the work (SKIP LOCKED)."""
    counts = artifacts_cleanup()
    logger.info("artifact cleanup: %s", counts)
    return counts
