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
