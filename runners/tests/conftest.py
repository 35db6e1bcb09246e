from __future__ import annotations

import itertools

import pytest
from django.utils import timezone

from pipelines.models import Pipeline, Repository
from runners.models import Runner
from runs.models import Job, JobStatus, PipelineRun, Step

_numbers = itertools.count(1)


@pytest.fixture
def pipeline(db) -> Pipeline:
    repository = Repository.objects.create(name=f"repo-{next(_numbers)}", clone_url="/nonexistent")
    return Pipeline.objects.create(repository=repository, name="default")


@pytest.fixture
def make_queued_jobs(pipeline):
    """Queued jobs straight in the table (no engine): make_queued_jobs(n, tags=[...], run=None)."""

    def make(count: int, *, tags: list[str] | None = None, run: PipelineRun | None = None, steps: int = 0):
        if run is None:
            run = PipelineRun.objects.create(pipeline=pipeline, number=next(_numbers), status="RUNNING")
        now = timezone.now()
        jobs = Job.objects.bulk_create(
            Job(
                run=run,
                name=f"job-{next(_numbers)}",
                stage="test",
                stage_index=0,
                status=JobStatus.QUEUED,
                tags=tags or [],
                queued_at=now,
                queue_key=now,
            )
            for _ in range(count)
        )
        if steps:
            Step.objects.bulk_create(
                Step(job=job, index=i, name=f"step {i}", command=f"echo {i}") for job in jobs for i in range(steps)
            )
        return jobs

    return make


@pytest.fixture
def runner(db) -> Runner:
    return Runner.objects.create(name="r1", tags=["linux"])
