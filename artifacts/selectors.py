"""Reads of artifacts: who may download one, what a job receives, what the pages show."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import F, Q, QuerySet, Sum
from django.utils import timezone

from artifacts.models import Artifact, ArtifactStatus, ArtifactType, TestReport
from cicd.db import prepared_cursor
from cicd.tokens import token_hash
from pipelines.permissions import can_maintain, can_run, can_view
from runs.models import Job, JobDependency, JobStatus, PipelineRun, RunStatus

# --- Who may call and download.


def job_for_artifact_call(*, job_id: Any, token: str) -> Job:
    """The RUNNING job a runner-API artifact call is about, authenticated by the job's own
    token (CI_JOB_TOKEN) or by the token of the runner holding it. Raises RunnerAuthError for
    a token that is neither, JobNotHeld once the job no longer runs."""
    from runners.services import JOB_TOKEN_PREFIX, JobNotHeld, RunnerAuthError, runner_authenticate

    jobs = Job.objects.select_related("run__pipeline__repository")
    if token.startswith(JOB_TOKEN_PREFIX):
        # Looked up by its sha256, like runner tokens: timing reveals nothing about the token.
        job = jobs.filter(pk=job_id, token_hash=token_hash(token)).first()
        if job is None:
            raise RunnerAuthError("invalid job token")
    else:
        runner = runner_authenticate(token=token)
        job = jobs.filter(pk=job_id, runner=runner).first()
        if job is None:
            raise JobNotHeld(f"job {job_id} is not running on this runner")
    if job.status != JobStatus.RUNNING:
        raise JobNotHeld(f"job {job_id} is not running")
    return job


def _access(artifact: Artifact) -> str:
    """`artifacts: access:` of the job that made it (`public: false` means developer)."""
    section = ((artifact.job.spec if artifact.job else None) or {}).get("artifacts") or {}
    if "access" in section:
        return str(section["access"])
    return "developer" if section.get("public") is False else "all"


def user_can_download_artifact(*, user: Any, artifact: Artifact) -> bool:
    """The one place that decides who may download an artifact: whoever may see its repository
    (pipelines.permissions.can_view), narrowed by the job's `artifacts: access:` (developer:
    who may run pipelines; maintainer; none: superusers only)."""
    repository = artifact.run.pipeline.repository
    if not can_view(user, repository):
        return False
    access = _access(artifact)
    if access == "none":
        return bool(user.is_superuser)
    if access == "developer":
        return can_run(user, repository)
    if access == "maintainer":
        return can_maintain(user, repository)
    return True


def artifact_for_download(*, user: Any, artifact_id: Any) -> Artifact | None:
    """The artifact if it exists, can be downloaded now and the user may: else None (the
    caller answers 404 either way, so ids cannot be probed)."""
    artifact = (
        Artifact.objects.select_related("run__pipeline__repository", "job")
        .filter(pk=artifact_id, status=ArtifactStatus.AVAILABLE)
        .first()
    )
    if artifact is None or not user_can_download_artifact(user=user, artifact=artifact):
        return None
    return artifact


# --- What a job receives.


# Asked on every claim (artifacts.views.claim_artifact_lists): a prepared statement
# (cicd.db), served by the job's run_id index and the artifact's job_id index.
_RUN_HAS_OTHER_ARTIFACTS = (
    f"SELECT EXISTS (SELECT 1 FROM {Artifact._meta.db_table} AS artifact "  # noqa: S608 (our table names)
    f"JOIN {Job._meta.db_table} AS job ON job.id = artifact.job_id WHERE job.run_id = %s AND job.id <> %s)"
)


def run_has_other_artifacts(*, run_id: Any, job_id: Any) -> bool:
    """Whether a job of the run other than `job_id` recorded an artifact, in whatever state.
    If none did, that job has no archives or images to receive from its dependencies."""
    with prepared_cursor() as cursor:
        cursor.execute(_RUN_HAS_OTHER_ARTIFACTS, [run_id, job_id])
        return cursor.fetchone()[0]


def job_dependency_jobs(*, job: Job) -> list[Job]:
    """The jobs whose artifacts `job` gets, with GitLab's rules: `dependencies: [a, b]` names
    them (`[]`: none); otherwise with `needs:` the needed jobs, except those with
    `artifacts: false`; otherwise every job of the earlier stages. Current attempts only."""
    spec = job.spec or {}
    others = Job.objects.filter(run_id=job.run_id, retried=False).exclude(pk=job.pk).order_by("stage_index", "name")
    names = spec.get("dependencies")
    if names is not None:
        return list(others.filter(name__in=list(names))) if names else []
    if job.uses_needs:
        needed = JobDependency.objects.filter(job=job, artifacts=True).values("depends_on_id")
        return list(others.filter(pk__in=needed))
    return list(others.filter(stage_index__lt=job.stage_index))


def _servable(now: datetime) -> Q:
    return Q(status=ArtifactStatus.AVAILABLE) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now))


def job_dependency_artifacts(
    *, job: Job, now: datetime | None = None, jobs: list[Job] | None = None
) -> tuple[list[Artifact], list[Artifact]]:
    """(archives to unpack into the job's workspace, archives of its dependencies that expired
    or were deleted). Only BINARY archives travel; test reports and images do not. `jobs`:
    job_dependency_jobs(job), if the caller has it already."""
    now = now or timezone.now()
    jobs = job_dependency_jobs(job=job) if jobs is None else jobs
    if not jobs:
        return [], []
    order = {dependency.pk: i for i, dependency in enumerate(jobs)}
    rows = list(
        Artifact.objects.select_related("job")
        .filter(job_id__in=list(order), type=ArtifactType.BINARY)
        .exclude(status=ArtifactStatus.PENDING)
    )
    rows.sort(key=lambda a: (order[a.job_id], a.created_at))
    servable = _servable(now)
    ok = {a.pk for a in Artifact.objects.filter(servable, pk__in=[a.pk for a in rows])}
    return [a for a in rows if a.pk in ok], [a for a in rows if a.pk not in ok]


def job_dependency_images(*, job: Job, now: datetime | None = None, jobs: list[Job] | None = None) -> list[Artifact]:
    """The images (DOCKER artifacts) the jobs `job` depends on recorded and that are still
    servable, in the order of job_dependency_jobs, each job's in the order it recorded them."""
    jobs = job_dependency_jobs(job=job) if jobs is None else jobs
    if not jobs:
        return []
    order = {dependency.pk: i for i, dependency in enumerate(jobs)}
    rows = list(
        Artifact.objects.select_related("job").filter(
            _servable(now or timezone.now()), job_id__in=list(order), type=ArtifactType.DOCKER
        )
    )
    rows.sort(key=lambda a: (order[a.job_id], a.created_at))
    return rows


def reusable_source_job(*, job: Job, cache_key: str, now: datetime | None = None) -> Job | None:
    """The latest successful job of the same repository whose artifacts carry `cache_key` and
    are all still servable: what a job with that key may reuse instead of building."""
    now = now or timezone.now()
    repository_id = job.run.pipeline.repository_id
    candidates = (
        Job.objects.filter(
            status=JobStatus.SUCCESS,
            run__pipeline__repository_id=repository_id,
            artifacts__cache_key=cache_key,
        )
        .exclude(pk=job.pk)
        .order_by("-finished_at")
        .distinct()[:5]
    )
    for candidate in candidates:
        rows = Artifact.objects.filter(job=candidate, cache_key=cache_key)
        if rows.exists() and not rows.exclude(_servable(now)).exists():
            return candidate
    return None


# --- Pages.


def run_artifacts(*, run: PipelineRun) -> list[Artifact]:
    """A run's downloadable artifacts, oldest first, with their job and test report."""
    return list(
        Artifact.objects.filter(run=run, status=ArtifactStatus.AVAILABLE)
        .select_related("job", "test_report", "reused_from__job__run")
        .order_by("created_at")
    )


def job_artifacts(*, job: Job) -> list[Artifact]:
    return list(
        Artifact.objects.filter(job=job, status=ArtifactStatus.AVAILABLE)
        .select_related("test_report", "reused_from__job__run")
        .order_by("created_at")
    )


def job_test_report(*, job: Job) -> TestReport | None:
    """The job's test report (the latest, should a job have several report artifacts)."""
    return TestReport.objects.filter(job=job, artifact__status=ArtifactStatus.AVAILABLE).order_by("-created_at").first()


def run_test_summary(*, run: PipelineRun) -> dict[str, Any] | None:
    """Totals over the test reports of the run's current jobs, and their failed cases (each
    with its job's name), or None if no job reported tests. Two queries."""
    reports = TestReport.objects.filter(
        run=run, artifact__status=ArtifactStatus.AVAILABLE, job__retried=False
    ).select_related("job")
    totals = reports.aggregate(
        tests=Sum("tests"),
        failures=Sum("failures"),
        errors=Sum("errors"),
        skipped=Sum("skipped"),
        time=Sum("duration_s"),
    )
    if totals["tests"] is None:
        return None
    failed = [
        {**case, "job": report.job.name if report.job else ""}
        for report in reports.order_by("job__stage_index", "job__name")
        for case in report.failed_cases
    ]
    tests, failures, errors, skipped = (totals[k] or 0 for k in ("tests", "failures", "errors", "skipped"))
    return {
        "tests": tests,
        "failures": failures,
        "errors": errors,
        "skipped": skipped,
        "passed": tests - failures - errors - skipped,
        "duration_s": totals["time"] or 0.0,
        "failed_cases": failed,
    }


# --- Retention.


def run_is_on_default_branch(run: PipelineRun) -> bool:
    return not run.is_tag and run.branch == run.pipeline.repository.default_branch


def latest_default_branch_runs() -> QuerySet:
    """Per pipeline, its latest successful run of the repository's default branch: the runs
    whose artifacts CONVEYOR_ARTIFACTS_KEEP_LATEST keeps."""
    return (
        PipelineRun.objects.filter(
            status=RunStatus.SUCCESS, is_tag=False, branch=F("pipeline__repository__default_branch")
        )
        .order_by("pipeline_id", "-created_at")
        .distinct("pipeline_id")
        .values("pk")
    )
