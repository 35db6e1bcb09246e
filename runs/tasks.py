"""Celery tasks of the DAG engine: thin, idempotent, safe to run twice at once."""

from __future__ import annotations

import logging

from celery import shared_task

from runs.services import jobs_reap_expired_leases, run_promote, runs_sweep

logger = logging.getLogger(__name__)


@shared_task(name="runs.tasks.sweep_runs", ignore_result=True)
def sweep_runs() -> dict[str, int]:
    """The backstop (beat, every CONVEYOR_SWEEP_INTERVAL_S): reap jobs whose runner vanished,
    queue delayed jobs that are due, re-promote every active run."""
    counts = {f"reaped_{name}": n for name, n in jobs_reap_expired_leases().items()}
    counts.update(runs_sweep())
    if counts["runs_changed"] or counts["reaped_requeued"] or counts["reaped_failed"]:
        logger.info("sweep: %s", counts)
    return counts


@shared_task(name="runs.tasks.promote_run", ignore_result=True)
def promote_run(run_id: str) -> int:
    """Promote one run (e.g. after a change made outside the engine). Returns the jobs moved."""
    return len(run_promote(run_id=run_id))


# --- Deployments and notifications.


@shared_task(name="runs.tasks.sweep_deployments", ignore_result=True)
def sweep_deployments() -> dict[str, int]:
    """Beat, every CONVEYOR_DEPLOY_SWEEP_S: finish deployments whose job ended unnoticed, let
    held deploys go (freezes end, approvals expire), resend notifications whose task was lost."""
    from runs.deployments import deployments_sweep
    from runs.notifications import notifications_resend_stuck

    counts = deployments_sweep()
    counts["notifications_resent"] = notifications_resend_stuck()
    if any(counts.values()):
        logger.info("deployments sweep: %s", counts)
    return counts


@shared_task(bind=True, name="runs.tasks.send_notification", ignore_result=True)
def send_notification(self, notification_id: int) -> str:
    """Send one notification (Slack or e-mail). Network errors, 5xx and 429 are retried with
    exponential backoff up to CONVEYOR_NOTIFY_MAX_RETRIES times, then it is recorded as
    FAILED. Nothing here touches a run or a deployment."""
    from django.conf import settings

    from runs.notifications import NotificationUnavailable, notification_send

    retries = settings.CONVEYOR_NOTIFY_MAX_RETRIES
    try:
        return notification_send(notification_id=notification_id, final=self.request.retries >= retries)
    except NotificationUnavailable as exc:
        countdown = min(300, 5 * 2**self.request.retries)
        raise self.retry(exc=exc, countdown=countdown, max_retries=retries) from exc
