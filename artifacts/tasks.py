"""Celery tasks of artifacts: thin, idempotent, safe to run twice at once."""

from __future__ import annotations

import logging

from celery import shared_task

from artifacts.services import artifacts_cleanup, caches_cleanup, storage_deletions_process

logger = logging.getLogger(__name__)


@shared_task(name="artifacts.tasks.cleanup_expired", ignore_result=True)
def cleanup_expired() -> dict[str, dict[str, int]]:
    """Nightly (beat, CONVEYOR_ARTIFACTS_CLEANUP_HOUR UTC): delete expired artifacts and
    abandoned uploads, storage first, then rows; caches unused for CONVEYOR_CACHE_RETENTION_DAYS;
    then the storage objects of every row deleted since (runs, repositories, replaced caches).
    Deletions the storage refused are retried the next time; two runs at once share the work."""
    counts = {
        "artifacts": artifacts_cleanup(),
        "caches": caches_cleanup(),
        "storage": storage_deletions_process(),
    }
    logger.info("artifact cleanup: %s", counts)
    return counts


@shared_task(name="artifacts.tasks.drain_storage_deletions", ignore_result=True)
def drain_storage_deletions() -> dict[str, int]:
    """Every CONVEYOR_STORAGE_DELETION_SWEEP_S (beat): delete the storage objects whose rows
    were deleted (a run or a repository deleted in the admin, a replaced cache)."""
    counts = storage_deletions_process()
    if any(counts.values()):
        logger.info("storage deletions: %s", counts)
    return counts
