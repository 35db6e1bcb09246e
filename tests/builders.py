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

from artifacts.models import Artifact, ArtifactType, Cache, CacheStatus, StorageDeletion, TestReport
from logs.models import StepLog
from logs.services import log_chunk_append
from pipelines.models import (
    CommitStatusReport,
    DeliveryStatus,
    Pipeline,
    PipelineSchedule,
    Repository,
    Trigger,
    TriggerToken,
    WebhookDelivery,
    WebhookProvider,
)
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
    log_chunk_append(step=step, offset=0, content="$ echo build\nbuild\n")
    log = StepLog.objects.get(step=step, offset=0)
    artifact = Artifact.objects.create(
        run=run,
        job=jobs["build"],
        name="dist",
        type=ArtifactType.BINARY,
        storage_path=f"runs/{run.pk}/dist.tar.gz",
        size_bytes=2048,
    )
    make_test_report_rows(run, jobs["test"])
    make_cache_rows(pipeline, jobs["build"])
    make_trigger_rows(pipeline, run)
    make_access_rows(pipeline, run)
    make_deployment_rows(pipeline, run, jobs["deploy"])
    make_secret_rows(pipeline, run)
    return RunTree(
        run=run,
        jobs=jobs,
        step=step,
        log=log,
        artifact=artifact,
        runner=runner,
        registration_token=registration_token,
    )


def make_trigger_rows(pipeline: Pipeline, run: PipelineRun) -> None:
    """A webhook delivery that started `run`, a schedule, a trigger token and a commit status report."""
    delivery = WebhookDelivery.objects.create(
        provider=WebhookProvider.GITHUB,
        delivery_id=f"tree-{run.pk}",
        repository=pipeline.repository,
        event="push",
        ref=run.branch,
        commit_sha=run.commit_sha,
        body='{"ref": "refs/heads/main"}',
        status=DeliveryStatus.DONE,
    )
    delivery.runs.add(run)
    PipelineSchedule.objects.create(
        pipeline=pipeline, description=f"nightly {run.number}", cron="0 2 * * *", ref="main", next_run_at=timezone.now()
    )
    TriggerToken.objects.create(
        pipeline=pipeline, description=f"deploy bot {run.number}", token_hash=secrets.token_hex(32)
    )
    CommitStatusReport.objects.create(run=run, state="pending", description=f"Run #{run.number} is running")


def make_deployment_rows(pipeline: Pipeline, run: PipelineRun, job: Job) -> None:
    """A protected environment with a freeze, `job` waiting to deploy to it with one approval,
    a finished deployment before it, the pipeline's notification settings and a notification."""
    from runs.models import (
        Approval,
        ApprovalDecision,
        DeployFreeze,
        Deployment,
        DeploymentStatus,
        Environment,
        Notification,
        NotificationChannel,
        NotificationKind,
        NotificationStatus,
        PipelineNotifications,
        WaitingFor,
    )

    environment, _ = Environment.objects.get_or_create(
        repository=pipeline.repository, name="production", defaults={"protected": True, "required_approvals": 2}
    )
    DeployFreeze.objects.get_or_create(environment=environment, cron="0 17 * * FRI", duration_minutes=3840)
    now = timezone.now()
    (earlier_run,) = make_runs(pipeline, 1)
    earlier = Deployment.objects.create(
        environment=environment,
        run=earlier_run,
        job=Job.objects.create(run=earlier_run, name="deploy", stage="deploy", stage_index=2, status=JobStatus.SUCCESS),
        image=f"registry.test/acme/web:{run.commit_sha[:8]}",
        strategy="rolling",
        status=DeploymentStatus.SUCCEEDED,
        deployed_by_name="ada",
        started_at=now - timedelta(minutes=5),
        finished_at=now - timedelta(minutes=4),
    )
    waiting = Deployment.objects.create(
        environment=environment,
        run=run,
        job=job,
        image=f"registry.test/acme/web:{run.commit_sha[:8]}",
        strategy="rolling",
        status=DeploymentStatus.WAITING,
        waiting_for=WaitingFor.APPROVAL,
        status_reason="awaiting approval (1 of 2) to deploy to production",
        previous=earlier,
    )
    Approval.objects.create(
        deployment=waiting, job=job, username="grace", decision=ApprovalDecision.APPROVE, comment="main is green"
    )
    PipelineNotifications.objects.get_or_create(pipeline=pipeline, defaults={"emails": "team@example.test"})
    Notification.objects.create(
        kind=NotificationKind.DEPLOYMENT,
        channel=NotificationChannel.EMAIL,
        run=earlier_run,
        deployment=earlier,
        status=NotificationStatus.SENT,
        attempts=1,
        sent_at=now,
    )


def make_access_rows(pipeline: Pipeline, run: PipelineRun) -> None:
    """A developer of the repository (a user, with a personal API token) and a group of viewers."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from pipelines.api_tokens import api_token_create
    from pipelines.models import RepositoryMembership, Role

    user = get_user_model().objects.create_user(f"dev-{run.pk.hex[:12]}")
    group = Group.objects.create(name=f"viewers-{run.pk.hex[:12]}")
    RepositoryMembership.objects.create(repository=pipeline.repository, user=user, role=Role.DEVELOPER)
    RepositoryMembership.objects.create(repository=pipeline.repository, group=group, role=Role.VIEWER)
    api_token_create(user=user, description=f"laptop {run.number}")


def make_secret_rows(pipeline: Pipeline, run: PipelineRun) -> None:
    """A masked CI/CD variable of the repository, created through the service (which also
    writes its audit event)."""
    from pipelines.variables import variable_create

    variable_create(
        repository=pipeline.repository, key=f"DEPLOY_TOKEN_{run.pk.hex[:8]}", value=f"s3cr3t-{run.pk.hex}", masked=True
    )


def make_test_report_rows(run: PipelineRun, job: Job) -> TestReport:
    """A parsed JUnit report of `job` (a TEST_REPORT artifact and its summary)."""
    report = Artifact.objects.create(
        run=run, job=job, name="junit", type=ArtifactType.TEST_REPORT, storage_path=f"runs/{run.pk}/junit.tar.gz"
    )
    return TestReport.objects.create(
        artifact=report,
        run=run,
        job=job,
        suites=1,
        tests=3,
        failures=1,
        failed_cases=[
            {"suite": "shop", "classname": "Cart", "name": "totals", "kind": "failure", "message": "90 != 81"}
        ],
    )


def make_cache_rows(pipeline: Pipeline, job: Job) -> None:
    """A dependency cache of the repository and a storage object waiting to be deleted."""
    Cache.objects.create(
        repository=pipeline.repository,
        key=f"deps-{job.pk}",
        status=CacheStatus.AVAILABLE,
        storage_path=f"caches/{pipeline.repository_id}/deps-{job.pk}.tar.gz",
        size_bytes=4096,
        sha256="0" * 64,
        job_id=job.pk,
        last_used_at=timezone.now(),
    )
    StorageDeletion.objects.create(storage_path="caches/replaced.tar.gz", last_error="storage unreachable")
