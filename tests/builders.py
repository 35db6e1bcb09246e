"""Rows for UI tests (admin, dashboard), written straight through the ORM.

The engine's services are tested on their own; these pages only need realistic rows:
a run with a small DAG (build -> test -> deploy, plus a stage-ordered lint), steps, logs,
an artifact and a runner.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from artifacts.models import Artifact, ArtifactType
from logs.models import StepLog
from pipelines.models import Pipeline, Repository, Trigger
from runners.models import RegistrationToken, Runner
from runs.models import Job, JobDependency, JobStatus, PipelineRun, RunStatus, Step, StepStatus


@dataclass
class RunTree:
    run: PipelineRun
    jobs: dict[str, Job]
    step: Step
    log: StepLog
    artifact: Artifact
    runner: Runner
    registration_token: RegistrationToken


def make_pipeline(name: str = "acme") -> Pipeline:
    repository, _ = Repository.objects.get_or_create(name=name, defaults={"clone_url": f"/srv/git/{name}.git"})
    pipeline, _ = Pipeline.objects.get_or_create(repository=repository, name="default")
    return pipeline


def make_runs(pipeline: Pipeline, count: int) -> list[PipelineRun]:
    start = pipeline.runs.count()
    now = timezone.now()
    return [
        PipelineRun.objects.create(
            pipeline=pipeline,
            number=start + i + 1,
            commit_sha=f"{start + i + 1:040x}",
            branch="main",
            trigger=Trigger.PUSH,
            triggered_by="ada",
            status=RunStatus.SUCCESS,
            started_at=now,
            finished_at=now + timedelta(seconds=83),
            duration_s=83.0,
        )
        for i in range(count)
    ]


def make_run_tree(*, job_names: dict[str, str] | None = None) -> RunTree:
    """A run with jobs build, lint, test (needs build) and deploy (needs test, lint).

    `job_names` renames jobs (e.g. to put markup in one), keyed by the default name.
    """
    names = {"build": "build", "lint": "lint", "test": "test", "deploy": "deploy", **(job_names or {})}
    pipeline = make_pipeline()
    (run,) = make_runs(pipeline, 1)
    run.status = RunStatus.RUNNING
    run.finished_at = None
    run.duration_s = None
    run.save()
    registration_token = RegistrationToken.objects.create(
        description="ci nodes", token_hash=secrets.token_hex(32), tags=["linux"]
    )
    runner = Runner.objects.create(
        name=f"runner-{run.number}",
        token_hash=secrets.token_hex(32),
        tags=["linux", "docker"],
        registration_token=registration_token,
        last_seen_at=timezone.now(),
    )
    now = timezone.now()
    layout = [
        ("build", "build", 0, JobStatus.SUCCESS),
        ("lint", "test", 1, JobStatus.SUCCESS),
        ("test", "test", 1, JobStatus.RUNNING),
        ("deploy", "deploy", 2, JobStatus.PENDING),
    ]
    jobs = {}
    for key, stage, index, status in layout:
        jobs[key] = Job.objects.create(
            run=run,
            name=names[key],
            stage=stage,
            stage_index=index,
            status=status,
            uses_needs=key in {"test", "deploy"},
            runner=runner if status != JobStatus.PENDING else None,
            lease_expires_at=now + timedelta(minutes=5) if status == JobStatus.RUNNING else None,
            started_at=now if status != JobStatus.PENDING else None,
            finished_at=now if status == JobStatus.SUCCESS else None,
        )
    JobDependency.objects.create(job=jobs["test"], depends_on=jobs["build"])
    JobDependency.objects.create(job=jobs["deploy"], depends_on=jobs["test"])
    JobDependency.objects.create(job=jobs["deploy"], depends_on=jobs["lint"])
    step = None
    for key, job in jobs.items():
        for index, command in enumerate([f"echo {key}", "python3 -m unittest"]):
            created = Step.objects.create(
                job=job,
                index=index,
                name=command,
                command=command,
                status=StepStatus.SUCCESS if job.status == JobStatus.SUCCESS else StepStatus.PENDING,
            )
            step = step or created
    log = StepLog.objects.create(step=step, offset=0, content="$ echo build\nbuild\n")
    artifact = Artifact.objects.create(
        run=run,
        job=jobs["build"],
        name="dist",
        type=ArtifactType.BINARY,
        storage_path=f"runs/{run.pk}/dist.tar.gz",
        size_bytes=2048,
    )
    return RunTree(
        run=run,
        jobs=jobs,
        step=step,
        log=log,
        artifact=artifact,
        runner=runner,
        registration_token=registration_token,
    )
