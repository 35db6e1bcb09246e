"""The runner loop (runners.worker) with a backend and an executor that record what happens."""

from __future__ import annotations

import threading

from runners.executors.base import JobResult
from runners.tests.recording import claimed_job
from runners.worker import RunnerLoop


class RecordingBackend:
    """Hands out `jobs` once each, then nothing; records the reports."""

    def __init__(self, jobs, events: list[str]):
        self.jobs = list(jobs)
        self.events = events

    def claim(self):
        return self.jobs.pop(0) if self.jobs else None

    def wait_for_work(self, timeout: float) -> None:
        threading.Event().wait(0.01)

    def heartbeat(self, job) -> bool:
        return True

    def complete(self, job, result: JobResult) -> None:
        self.events.append(f"complete {result.status}")

    def release(self, job, reason: str) -> None:
        self.events.append("release")

    def close_thread(self) -> None:
        pass


class RecordingExecutor:
    def __init__(self, events: list[str], *, crash: bool = False):
        self.events = events
        self.crash = crash

    def run(self, job, stop: threading.Event) -> JobResult:
        self.events.append("run")
        if self.crash:
            raise RuntimeError("executor bug")
        return JobResult(status="SUCCESS", exit_code=0)

    def cleanup(self, job) -> None:
        self.events.append("cleanup")


class RefusedReportExecutor(RecordingExecutor):
    """Reports a step start that the server refuses (the job is no longer this runner's),
    then records whether the job was told to stop before its next step."""

    def __init__(self, events: list[str], backend: RecordingBackend):
        super().__init__(events)
        self.backend = backend

    def run(self, job, stop: threading.Event) -> JobResult:
        self.events.append("run")
        self.backend.on_job_lost(job.id)  # what a backend does on a 409 job_not_held
        self.events.append("stopped" if stop.is_set() else "not stopped")
        return JobResult(status="SUCCESS", exit_code=0)


def serve_one_job(executor, events, backend=None) -> None:
    job = claimed_job(clone_url="/nowhere", commit_sha="a" * 40, steps=[("script", "true")])
    backend = backend or RecordingBackend([job], events)
    backend.jobs = [job]
    # A heartbeat far off: what stops a job here is not the heartbeat.
    loop = RunnerLoop(backend=backend, executor=executor, max_jobs=1, heartbeat_interval=60)
    loop.serve()
    loop.wait_idle()


def test_a_job_is_reported_before_its_workspace_is_cleaned_up():
    events: list[str] = []
    serve_one_job(RecordingExecutor(events), events)
    assert events == ["run", "complete SUCCESS", "cleanup"]


def test_a_crashed_executor_still_fails_the_job_and_cleans_up():
    events: list[str] = []
    serve_one_job(RecordingExecutor(events, crash=True), events)
    assert events == ["run", "complete FAILURE", "cleanup"]


def test_a_refused_report_stops_the_job_at_once_and_nothing_more_is_reported():
    events: list[str] = []
    backend = RecordingBackend([], events)
    serve_one_job(RefusedReportExecutor(events, backend), events, backend)
    assert events == ["run", "stopped", "cleanup"]
