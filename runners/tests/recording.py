"""A Reporter that records what an executor reports, for executor tests."""

from __future__ import annotations

import threading
from collections import defaultdict

from runners.services import ClaimedJob, ClaimedStep


class RecordingReporter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.logs: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self.started: list[str] = []
        self.finished: dict[str, tuple[str, int | None]] = {}
        self.ended_with_job: list[str] = []  # steps whose end came with the job's result
        self.calls: list[tuple[str, str]] = []  # (what, step name), in the order they came

    def step_started(self, job: ClaimedJob, step: ClaimedStep) -> None:
        with self.lock:
            self.started.append(step.name)
            self.calls.append(("started", step.name))

    def step_log(self, job: ClaimedJob, step: ClaimedStep, offset: int, text: str) -> None:
        with self.lock:
            self.logs[step.name].append((offset, text))
            self.calls.append(("log", step.name))

    def step_finished(self, job: ClaimedJob, step: ClaimedStep, *, status: str, exit_code: int | None) -> None:
        with self.lock:
            self.finished[step.name] = (status, exit_code)

    def complete(self, job: ClaimedJob, result) -> None:
        """What a backend does with the job's result: the step ends it carries (the last
        step's, when nothing followed it) are finished steps too."""
        names = {step.id: step.name for step in job.steps}
        with self.lock:
            self.ended_with_job = [names[end.step_id] for end in result.step_ends]
            for end in result.step_ends:
                self.finished[names[end.step_id]] = (end.status, end.exit_code)

    def log_of(self, name: str) -> str:
        chunks = self.logs[name]
        # Chunks must be contiguous: each starts where the previous ended.
        offset = 0
        for start, text in chunks:
            assert start == offset, f"gap or overlap in {name}'s log at {start} (expected {offset})"
            offset += len(text.encode())
        return "".join(text for _, text in chunks)


def claimed_job(*, clone_url: str, commit_sha: str, steps: list[tuple[str, str]], timeout_s: int = 60, **variables):
    """steps: (kind, command) pairs; step names are s0, s1, ..."""
    return ClaimedJob(
        id="00000000-0000-0000-0000-000000000001",
        run_id="00000000-0000-0000-0000-000000000002",
        name="job",
        stage="test",
        attempt=1,
        timeout_s=timeout_s,
        lease_expires_at="",
        clone_url=clone_url,
        commit_sha=commit_sha,
        ref="main",
        job_token="cvj_test",
        steps=[
            ClaimedStep(id=f"step-{i}", index=i, kind=kind, name=f"s{i}", command=command)
            for i, (kind, command) in enumerate(steps)
        ],
        variables={"CI_JOB_TOKEN": "cvj_test", **variables},
    )
