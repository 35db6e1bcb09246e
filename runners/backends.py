"""Backends of the runner loop. `OrmBackend`: trusted nodes, straight to the services."""

from __future__ import annotations

import contextlib
import logging
import time

import psycopg
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from logs.services import LogGap
from runners import services, wakeups
from runners.executors.base import JobResult
from runners.models import Runner
from runners.services import ClaimedJob, ClaimedStep, JobNotHeld

logger = logging.getLogger(__name__)

# runs.services sends this NOTIFY (at commit) whenever jobs become QUEUED.
QUEUE_CHANNEL = "conveyor_jobs"


def listen_params() -> dict:
    """Connection parameters for a dedicated LISTEN connection (outside Django's pool)."""
    db = settings.DATABASES["default"]
    params = {
        "dbname": db["NAME"],
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
        **db.get("OPTIONS", {}),
    }
    return {k: v for k, v in params.items() if v is not None}


def listen_connection() -> psycopg.Connection:
    conn = psycopg.connect(autocommit=True, **listen_params())
    conn.execute(f"LISTEN {QUEUE_CHANNEL}")
    return conn


class OrmBackend:
    def __init__(self, *, runner: Runner):
        self.runner = runner
        self._listener: psycopg.Connection | None = None
        self.on_job_lost = None  # set by the runner loop (runners.worker.Backend)

    @property
    def artifacts(self):
        """Artifact transfers of this runner's jobs, straight to storage (runners.artifacts)."""
        from runners.artifacts import OrmArtifacts

        return OrmArtifacts(self.runner)

    def _db(self, call, *args, **kwargs):
        """Run a service call. A broken connection (the database restarted, a proxy or an admin
        dropped it) is closed so that this thread's next call connects afresh: Django would
        otherwise keep failing on it. The error still goes up, for the caller to retry."""
        try:
            return call(*args, **kwargs)
        except (OperationalError, InterfaceError):
            with contextlib.suppress(Exception):
                connection.close()
            raise

    def claim(self) -> ClaimedJob | None:
        close_old_connections()
        self._db(self.runner.refresh_from_db, fields=["is_paused", "revoked_at", "tags"])
        return self._db(services.job_claim, runner=self.runner)

    def wait_for_work(self, timeout: float) -> None:
        """Until a notification of jobs this runner can run (their tags among its own: a job
        queued for others does not wake it), or the timeout."""
        deadline = time.monotonic() + timeout
        try:
            if self._listener is None or self._listener.closed:
                self._listener = listen_connection()
            while (remaining := deadline - time.monotonic()) > 0:
                notification = next(self._listener.notifies(timeout=remaining, stop_after=1), None)
                if notification is None or wakeups.can_run_some(self.runner.tags, notification.payload):
                    return
        except psycopg.Error as exc:
            # The database went away: drop the listener; the loop's claim retries with backoff.
            logger.warning("LISTEN connection lost: %s", exc)
            if self._listener is not None:
                self._listener.close()
            self._listener = None
            raise _as_django_error(exc) from exc

    def heartbeat(self, job: ClaimedJob) -> bool:
        try:
            self._db(services.job_heartbeat, job_id=job.id, runner=self.runner)
        except JobNotHeld:
            return False
        return True

    def _report(self, call, *args, **kwargs) -> None:
        # A refused report means the job was cancelled or taken away: the loop stops it.
        try:
            self._db(call, *args, runner=self.runner, **kwargs)
        except JobNotHeld as exc:
            logger.info("report ignored: %s", exc)
            self._lost(kwargs["job_id"])

    def _lost(self, job_id) -> None:
        if self.on_job_lost is not None:
            self.on_job_lost(str(job_id))

    def step_started(self, job: ClaimedJob, step: ClaimedStep) -> None:
        self._report(services.step_start, job_id=job.id, step_id=step.id)

    def step_log(self, job: ClaimedJob, step: ClaimedStep, offset: int, text: str) -> int | None:
        """Returns the offset the server expects next (LogStream resends from there on a gap)."""
        try:
            return self._db(
                services.step_log, job_id=job.id, step_id=step.id, runner=self.runner, offset=offset, text=text
            )
        except JobNotHeld as exc:
            logger.info("log chunk ignored: %s", exc)
            self._lost(job.id)
            return None
        except LogGap as exc:
            if text:  # an empty chunk is a probe for where the log ends, not a fault
                logger.info("log chunk at %s out of order; the server expects %s", offset, exc.expected)
            return exc.expected

    def step_finished(self, job: ClaimedJob, step: ClaimedStep, *, status: str, exit_code: int | None) -> None:
        self._report(services.step_finish, job_id=job.id, step_id=step.id, status=status, exit_code=exit_code)

    def complete(self, job: ClaimedJob, result: JobResult) -> None:
        self._report(
            services.job_complete,
            job_id=job.id,
            status=result.status,
            exit_code=result.exit_code,
            reason=result.reason,
            step_ends=result.step_ends,
        )

    def release(self, job: ClaimedJob, reason: str) -> None:
        self._report(services.job_release, job_id=job.id, reason=reason)

    def close_thread(self) -> None:
        connection.close()


def _as_django_error(exc: psycopg.Error) -> Exception:
    from django.db import OperationalError

    return OperationalError(str(exc))
