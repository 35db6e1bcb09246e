"""Factories and spec builders for the engine's tests (PipelineSpec is built directly, not parsed)."""

from __future__ import annotations

from typing import Any

import factory

from pipelines.config.spec import JobSpec, Need, PipelineSpec
from pipelines.models import Pipeline, Repository, Trigger
from runs.models import Job, JobStatus, PipelineRun
from runs.services import job_finish, job_start, run_create

STAGES = ["build", "test", "deploy"]


class RepositoryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Repository

    name = factory.Sequence(lambda n: f"repo-{n}")
    clone_url = "/nonexistent"


class PipelineFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Pipeline

    repository = factory.SubFactory(RepositoryFactory)
    name = "default"


def job(name: str, stage: str = "test", *, needs: list[str] | None = None, **fields: Any) -> JobSpec:
    """A JobSpec; `needs` by name (None: no `needs` key, stage ordering)."""
    fields.setdefault("script", [f"echo {name}"])
    return JobSpec(
        name=name,
        stage=stage,
        needs=None if needs is None else [Need(job=n) for n in needs],
        **fields,
    )


def spec(*jobs: JobSpec, stages: list[str] | None = None) -> PipelineSpec:
    return PipelineSpec(stages=list(stages or STAGES), jobs=list(jobs))


def create_run(*jobs: JobSpec, pipeline: Pipeline | None = None, stages: list[str] | None = None) -> PipelineRun:
    return run_create(
        pipeline=pipeline or PipelineFactory(),
        spec=spec(*jobs, stages=stages),
        commit_sha="0123abcd" * 5,
        branch="main",
        trigger=Trigger.PUSH,
        triggered_by="alice",
    )


def current_job(run: PipelineRun, name: str) -> Job:
    return Job.objects.get(run=run, name=name, retried=False)


def statuses(run: PipelineRun) -> dict[str, str]:
    return dict(Job.objects.filter(run=run, retried=False).values_list("name", "status"))


def run_status(run: PipelineRun) -> str:
    run.refresh_from_db()
    return run.status


def execute(run: PipelineRun, name: str, outcome: str = JobStatus.SUCCESS, *, exit_code: int | None = None, **kw):
    """Start the named QUEUED job and finish it with `outcome` (what a runner would do)."""
    target = current_job(run, name)
    assert target.status == JobStatus.QUEUED, f"{name} is {target.status}, not QUEUED"
    assert job_start(job=target, runner=None, lease_seconds=60)
    if exit_code is None and outcome == JobStatus.FAILURE:
        exit_code = 1
    assert job_finish(job_id=target.pk, status=outcome, exit_code=exit_code, **kw)
    return target
