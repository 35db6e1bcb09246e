"""The runner loop: claim jobs, run them concurrently, keep their leases alive, hand them
back on shutdown. It talks to the server through a Backend: the ORM on trusted nodes,
HTTP elsewhere; the loop itself is the same.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from runners.executors.base import JobResult, Reporter
from runners.http_client import RunnerTokenRefused
from runners.services import ClaimedJob, ClaimedStep

logger = logging.getLogger(__name__)


class Backend(Reporter, Protocol):
    # Called with a job's id when the server refuses a report on it because the job is no
    # longer this runner's (cancelled, or reaped and handed to another runner). The loop sets
    # it, and stops the job at once rather than at its next heartbeat.
    on_job_lost: Callable[[str], None] | None

    def claim(self) -> ClaimedJob | None: ...

    def wait_for_work(self, timeout: float) -> None:
        """Block until work may be available (a notification) or the timeout passes."""

    def heartbeat(self, job: ClaimedJob) -> bool:
        """Extend the lease. False: the server no longer wants this job run (cancelled, lost)."""

    def complete(self, job: ClaimedJob, result: JobResult) -> None: ...

    def release(self, job: ClaimedJob, reason: str) -> None:
        """Hand a job back to the queue (shutdown)."""

    def close_thread(self) -> None:
        """Release per-thread resources (database connections)."""


class Executor(Protocol):
    def run(self, job: ClaimedJob, stop: threading.Event) -> JobResult: ...

    # Optional: `cleanup(job)`, what is left to do once the job is reported (the shell
    # executor removes the workspace there), so that the report does not wait for it.


# Errors worth a retry with backoff: the database or the server is away for a moment.
def _transient_errors() -> tuple[type[BaseException], ...]:
    import django.db
    import requests

    return (django.db.OperationalError, django.db.InterfaceError, requests.ConnectionError, requests.Timeout)


class RetryingReporter:
    """What executors report steps through. A step start or finish that fails because the
    server or the database is away for a moment is retried with backoff, so that a short
    outage never fails a job. Log chunks pass straight through: LogStream keeps unsent
    output and retries it itself."""

    def __init__(self, backend: Reporter, *, patience: float = 600.0):
        self.backend = backend
        self.patience = patience

    def step_started(self, job: ClaimedJob, step: ClaimedStep) -> None:
        _retry_transient(lambda: self.backend.step_started(job, step), f"start of step {step.name!r}", self.patience)

    def step_log(self, job: ClaimedJob, step: ClaimedStep, offset: int, text: str) -> int | None:
        return self.backend.step_log(job, step, offset, text)

    def step_finished(self, job: ClaimedJob, step: ClaimedStep, *, status: str, exit_code: int | None) -> None:
        _retry_transient(
            lambda: self.backend.step_finished(job, step, status=status, exit_code=exit_code),
            f"end of step {step.name!r}",
            self.patience,
        )


def _retry_transient(call, what: str, patience: float):
    """call() until it does not fail with a transient error; past `patience` seconds the error goes up."""
    delay = 0.5
    deadline = time.monotonic() + patience
    while True:
        try:
            return call()
        except _transient_errors() as exc:
            if time.monotonic() > deadline:
                raise
            logger.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(10.0, delay * 2)


@dataclass
class _Running:
    job: ClaimedJob
    thread: threading.Thread
    stop: threading.Event = field(default_factory=threading.Event)
    # Set when the server took the job away: then nothing more is reported for it.
    lost: bool = False
    released: bool = False
    # Set once the final report is in: a heartbeat racing it would only hear "not held".
    finished: bool = False
    # Set as its thread ends (reported, cleaned up): the slot is free for the next job.
    done: bool = False


class RunnerLoop:
    def __init__(
        self,
        *,
        backend: Backend,
        executor: Executor,
        concurrency: int = 1,
        poll_interval: float = 5.0,
        heartbeat_interval: float = 2.0,
        grace_period: float = 30.0,
        max_jobs: int | None = None,
    ):
        self.backend = backend
        self.executor = executor
        self.concurrency = max(1, concurrency)
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.max_jobs = max_jobs
        self.stopping = threading.Event()
        self.claimed = 0
        self.token_refused = False  # the server refused our token: stop, and say so
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        # Set when a job's thread ends (or on a stop signal): wakes the loop waiting for a slot,
        # so that the next claim follows a job's end at once rather than at the next poll.
        self._slot_freed = threading.Event()
        backend.on_job_lost = self._job_lost

    def install_signal_handlers(self) -> None:
        def stop(signum, _frame):
            logger.info("received %s: no new claims; finishing running jobs", signal.Signals(signum).name)
            self.stopping.set()
            self._slot_freed.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def serve(self) -> None:
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        backoff = 0.0
        while not self.stopping.is_set():
            if self.max_jobs is not None and self.claimed >= self.max_jobs:
                break
            if self._free_slots() == 0:
                self._slot_freed.wait(0.5)
                self._slot_freed.clear()  # a slot freed meanwhile is counted by _free_slots anyway
                continue
            try:
                job = self.backend.claim()
                backoff = 0.0
            except RunnerTokenRefused as exc:
                logger.error("%s; stopping (register this runner again)", exc)
                self.token_refused = True
                break
            except Exception as exc:  # the server or database away, or a bug: back off, never crash
                backoff = min(30.0, max(0.5, backoff * 2))
                if isinstance(exc, _transient_errors()):
                    logger.warning("claim failed (%s); retrying in %.1fs", exc, backoff)
                else:
                    logger.exception("claim failed unexpectedly; retrying in %.1fs", backoff)
                self.stopping.wait(backoff + random.random() * backoff / 4)
                continue
            if job is not None:
                self._start(job)
                continue
            try:
                self.backend.wait_for_work(self.poll_interval)
            except Exception as exc:
                logger.warning("waiting for work failed (%s)", exc)
                self.stopping.wait(1.0)
        self._shutdown()

    def wait_idle(self) -> None:
        while self._active():
            time.sleep(0.05)

    def _free_slots(self) -> int:
        with self._lock:
            self._running = {k: r for k, r in self._running.items() if not r.done and r.thread.is_alive()}
            return self.concurrency - len(self._running)

    def _active(self) -> list[_Running]:
        with self._lock:
            return [r for r in self._running.values() if r.thread.is_alive()]

    def _start(self, job: ClaimedJob) -> None:
        self.claimed += 1
        running = _Running(job=job, thread=threading.Thread(name=f"job-{job.name}", daemon=True))
        running.thread = threading.Thread(target=self._execute, args=(running,), name=f"job-{job.name}", daemon=True)
        with self._lock:
            self._running[job.id] = running
        logger.info("claimed job %s (%s), attempt %s", job.name, job.id, job.attempt)
        running.thread.start()

    def _execute(self, running: _Running) -> None:
        job = running.job
        try:
            try:
                result = self.executor.run(job, running.stop)
            except Exception as exc:  # an executor bug must fail the job, never kill the runner
                logger.exception("executor crashed on job %s", job.id)
                result = JobResult(status="FAILURE", reason=f"runner error: {exc}")
            if running.lost or running.released:
                return
            self._report_with_retry(lambda: self.backend.complete(job, result), f"finish job {job.id}")
            running.finished = True
            logger.info("job %s finished: %s %s", job.name, result.status, result.reason)
        finally:
            # After the report: the next job of the run need not wait for it. The slot stays
            # taken until it is done, so workspaces never pile up beyond the concurrency.
            try:
                self._cleanup(job)
                self.backend.close_thread()
            finally:
                running.done = True
                self._slot_freed.set()

    def _cleanup(self, job: ClaimedJob) -> None:
        cleanup = getattr(self.executor, "cleanup", None)
        if cleanup is None:
            return
        try:
            cleanup(job)
        except Exception:  # never kill the runner; a workspace left behind goes at the next start
            logger.exception("cleanup after job %s failed", job.id)

    def _report_with_retry(self, call, what: str) -> None:
        try:
            _retry_transient(call, what, 600.0)
        except _transient_errors() as exc:
            logger.error("giving up on %s: %s", what, exc)
        except Exception as exc:
            # Refused (e.g. the job was reaped meanwhile): nothing to retry.
            logger.warning("%s refused: %s", what, exc)

    def _heartbeat_loop(self) -> None:
        try:
            while True:
                for running in self._active():
                    if running.lost or running.released or running.finished:
                        continue
                    try:
                        keep = self.backend.heartbeat(running.job)
                    except _transient_errors() as exc:
                        logger.warning("heartbeat for %s failed: %s", running.job.id, exc)
                        continue
                    except Exception as exc:
                        # Never let this thread die: without it every running job loses its lease.
                        logger.warning("heartbeat for %s refused: %s", running.job.id, exc)
                        continue
                    if not keep:
                        self._job_lost(running.job.id)
                if self.stopping.is_set() and not self._active():
                    return
                time.sleep(self.heartbeat_interval)
        finally:
            self.backend.close_thread()

    def _job_lost(self, job_id: str) -> None:
        """The server no longer wants the job run by us: stop it, and report nothing more on it."""
        with self._lock:
            running = self._running.get(job_id)
        if running is None or running.lost or running.finished:
            return
        logger.info("job %s was cancelled or taken away: stopping it", job_id)
        running.lost = True
        running.stop.set()

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self.grace_period
        while self._active() and time.monotonic() < deadline:
            time.sleep(0.1)
        for running in self._active():
            logger.info("grace period over: handing job %s back", running.job.id)
            running.released = True
            running.stop.set()
            self._report_with_retry(
                lambda job=running.job: self.backend.release(job, "runner shut down"), f"release job {running.job.id}"
            )
        for running in self._active():
            running.thread.join(timeout=10)
