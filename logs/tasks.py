"""Celery tasks of logs: thin, idempotent, safe to run twice at once."""

from __future__ import annotations

import logging

from celery import shared_task

from logs.services import logs_expire

logger = logging.getLogger(__name__)


@shared_task(name="logs.tasks.expire_logs", ignore_result=True)
def expire_logs() -> int:
    """Nightly (beat, CONVEYOR_ARTIFACTS_CLEANUP_HOUR UTC): the logs of jobs finished more than
    CONVEYOR_LOG_RETENTION_DAYS ago go (logs.services.logs_expire)."""
    expired = logs_expire()
    logger.info("log retention: the logs of %d jobs expired", expired)
    return expired
