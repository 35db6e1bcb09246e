"""Fixtures of the log tests: a running job with steps, its job token, and the people who look.

Who may see what (logs.selectors.user_can_view_repository): staff see every repository; a
member (any logged-in user, until issue 8 brings roles) sees repositories that are not
private; an outsider is a logged-in user looking at a private repository; anonymous users
see nothing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from pipelines.models import Pipeline, Repository
from runners.models import Runner
from runners.services import ClaimedJob, job_claim
from runs.models import Job, JobStatus, PipelineRun, Step

_numbers = itertools.count(1)


@dataclass
class RunningJob:
    job: Job
    steps: list[Step]
    token: str  # the job token (CI_JOB_TOKEN)
    runner: Runner
    claimed: ClaimedJob  # what the runner got

    @property
    def step(self) -> Step:
        return self.steps[0]


def make_running_job(*, private: bool = True, steps: int = 2) -> RunningJob:
    """A job claimed by a runner (RUNNING, with a job token), straight through the claim service."""
    n = next(_numbers)
    repository = Repository.objects.create(name=f"logs-repo-{n}", clone_url="/nonexistent", is_private=private)
    pipeline = Pipeline.objects.create(repository=repository, name="default")
    run = PipelineRun.objects.create(pipeline=pipeline, number=1, status="RUNNING")
    tag = f"logs-{n}"  # only this test's runner can claim it, whatever else is queued
    job = Job.objects.create(
        run=run,
        name="build",
        stage="build",
        stage_index=0,
        status=JobStatus.QUEUED,
        tags=[tag],
        queued_at=timezone.now(),
    )
    for index in range(steps):
        Step.objects.create(job=job, index=index, name=f"step {index}", command=f"echo {index}")
    runner = Runner.objects.create(name=f"runner-{n}", tags=[tag])
    claimed = job_claim(runner=runner)
    assert claimed is not None and claimed.id == str(job.pk)
    job.refresh_from_db()
    return RunningJob(
        job=job,
        steps=list(Step.objects.filter(job=job).order_by("index")),
        token=claimed.job_token,
        runner=runner,
        claimed=claimed,
    )


@pytest.fixture
def running(db) -> RunningJob:
    return make_running_job()


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("ada", password="x", is_staff=True)


@pytest.fixture
def member(db):
    return get_user_model().objects.create_user("grace", password="x")


@pytest.fixture
def outsider(db):
    return get_user_model().objects.create_user("mallory", password="x")


def websocket_communicator():
    """channels.testing.WebsocketCommunicator, the real one.

    `channels.testing/__init__.py` also imports its live-server test case, which needs daphne
    (not a dependency: uvicorn serves Conveyor). The package is registered without running
    that __init__, and the communicator module is imported from it as usual."""
    import importlib
    import sys
    import types
    from pathlib import Path

    import channels

    if "channels.testing" not in sys.modules:
        package = types.ModuleType("channels.testing")
        package.__path__ = [str(Path(channels.__file__).parent / "testing")]
        sys.modules["channels.testing"] = package
    return importlib.import_module("channels.testing.websocket").WebsocketCommunicator
