"""Celery tasks of triggers: thin, idempotent, taking ids; the services do the work."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from pipelines import commit_status, deliveries, schedules

logger = logging.getLogger(__name__)


@shared_task(bind=True, name="pipelines.tasks.process_delivery", ignore_result=True)
def process_delivery(self, delivery_id: int) -> str | None:
    """Fetch, read the config and create the runs of a stored webhook delivery. A second
    delivery of this task (or one for a delivery already processed) does nothing, except
    when the broker redelivers it because the worker running it died (acks_late with
    reject_on_worker_lost): then it takes the dead worker's delivery over at once."""
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    delivery = deliveries.delivery_process(delivery_id=delivery_id, takeover=redelivered)
    if delivery is None:
        return None
    logger.info("webhook delivery %s: %s", delivery_id, delivery.status)
    return delivery.status


@shared_task(bind=True, name="pipelines.tasks.process_deliveries", ignore_result=True)
def process_deliveries(self, delivery_ids: list[int]) -> None:
    """process_delivery for each of several deliveries, in order: how the web process sends a
    burst's deliveries (pipelines.deliveries.TaskSender). One failing does not stop the others."""
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    for delivery_id in delivery_ids:
        try:
            delivery = deliveries.delivery_process(delivery_id=delivery_id, takeover=redelivered)
        except Exception:  # left PROCESSING: the stuck-delivery sweep sends it again
            logger.exception("webhook delivery %s: processing failed", delivery_id)
            continue
        if delivery is not None:
            logger.info("webhook delivery %s: %s", delivery_id, delivery.status)


@shared_task(name="pipelines.tasks.resend_stuck_deliveries", ignore_result=True)
def resend_stuck_deliveries() -> int:
    """Backstop (beat): deliveries whose task was lost or whose worker died are sent again."""
    count = deliveries.deliveries_resend_stuck()
    if count:
        logger.warning("resent %d stuck webhook deliveries", count)
    return count


@shared_task(name="pipelines.tasks.prune_deliveries", ignore_result=True)
def prune_deliveries() -> int:
    """Daily (beat): delete processed deliveries past CONVEYOR_WEBHOOK_RETENTION_DAYS."""
    return deliveries.deliveries_prune()


@shared_task(name="pipelines.tasks.run_due_schedules", ignore_result=True)
def run_due_schedules() -> dict[str, int]:
    """Beat, every CONVEYOR_SCHEDULE_INTERVAL_S: fire the cron schedules that are due."""
    counts = schedules.schedules_run_due()
    if counts["fired"]:
        logger.info("schedules: %s", counts)
    return counts


@shared_task(
    bind=True,
    name="pipelines.tasks.report_commit_status",
    ignore_result=True,
    autoretry_for=(commit_status.ForgeUnavailable,),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=settings.CONVEYOR_COMMIT_STATUS_MAX_RETRIES,
)
def report_commit_status(self, run_id: str) -> str:
    """Post the run's status to its forge if it changed. Transient failures are retried with
    backoff; a failure here never affects the run."""
    return commit_status.commit_status_report(run_id=run_id)


@shared_task(name="pipelines.tasks.sweep_commit_statuses", ignore_result=True)
def sweep_commit_statuses() -> int:
    """Beat: queue reports for runs whose forge status is out of date (changes the engine's
    after-commit hook did not announce)."""
    return commit_status.commit_statuses_sweep()
