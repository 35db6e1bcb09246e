"""The environment a job sees: CI_* variables, the config's, the repository's CI/CD variables
and the run's own variables, in GitLab's precedence (pipelines.variables says which wins).

Built on the server at claim time, so a runner passes it through as is. It never contains
the server's or the runner's credentials: only the job's own, short-lived CI_JOB_TOKEN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from pipelines.models import PIPELINE_SOURCE
from runners.models import Runner
from runs.models import Job


@dataclass(frozen=True, slots=True)
class JobFacts:
    """What a job's environment is made of: the job, its run and its repository. The claim
    (runners.services.job_claim, the hot path) fills it from its one row without building
    model instances; `of` reads it off a Job."""

    job_id: str
    job_name: str
    stage: str
    attempt: int
    spec: dict[str, Any]
    run_id: str
    run_number: int
    trigger: str
    commit_sha: str
    commit_message: str
    branch: str
    is_tag: bool
    run_variables: dict[str, Any]
    repository_name: str
    default_branch: str
    clone_url: str

    @classmethod
    def of(cls, job: Job) -> JobFacts:
        run = job.run
        repository = run.pipeline.repository
        return cls(
            job_id=str(job.id),
            job_name=job.name,
            stage=job.stage,
            attempt=job.attempt,
            spec=job.spec or {},
            run_id=str(run.id),
            run_number=run.number,
            trigger=run.trigger,
            commit_sha=run.commit_sha,
            commit_message=run.commit_message,
            branch=run.branch,
            is_tag=run.is_tag,
            run_variables=run.variables or {},
            repository_name=repository.name,
            default_branch=repository.default_branch,
            clone_url=repository.clone_url,
        )

    @property
    def environment_name(self) -> str:
        return str((self.spec.get("environment") or {}).get("name") or "")


# PIPELINE_SOURCE by the trigger's stored value (a claim reads it as a plain string).
_PIPELINE_SOURCE = {str(trigger.value): source for trigger, source in PIPELINE_SOURCE.items()}


def job_variables(
    *, job: JobFacts, runner: Runner, job_token: str, project: dict[str, str] | None = None
) -> dict[str, str]:
    """`project`: the repository's CI/CD variables this job gets (pipelines.variables)."""
    base_url = settings.CONVEYOR_BASE_URL
    values = {
        "CI": "true",
        "CONVEYOR": "true",
        "CI_SERVER_URL": base_url,
        "CI_PROJECT_NAME": job.repository_name,
        "CI_PROJECT_PATH": job.repository_name,
        "CI_DEFAULT_BRANCH": job.default_branch,
        "CI_PIPELINE_ID": job.run_id,
        "CI_PIPELINE_IID": str(job.run_number),
        "CI_PIPELINE_SOURCE": _PIPELINE_SOURCE.get(job.trigger, "api"),
        "CI_PIPELINE_URL": f"{base_url}/runs/{job.run_id}/",
        "CI_COMMIT_SHA": job.commit_sha,
        "CI_COMMIT_SHORT_SHA": job.commit_sha[:8],
        "CI_COMMIT_REF_NAME": job.branch,
        "CI_COMMIT_MESSAGE": job.commit_message,
        "CI_JOB_ID": job.job_id,
        "CI_JOB_NAME": job.job_name,
        "CI_JOB_STAGE": job.stage,
        "CI_JOB_URL": f"{base_url}/jobs/{job.job_id}/",
        "CI_JOB_TOKEN": job_token,
        "CI_JOB_ATTEMPT": str(job.attempt),
        "CI_RUNNER_ID": str(runner.id),
        "CI_RUNNER_TAGS": ",".join(runner.tags),
        "GITLAB_CI": "false",
    }
    if job.is_tag:
        values["CI_COMMIT_TAG"] = job.branch
    else:
        values["CI_COMMIT_BRANCH"] = job.branch
    environment = job.spec.get("environment") or {}
    if environment.get("name"):
        values["CI_ENVIRONMENT_NAME"] = str(environment["name"])
        if environment.get("url"):
            values["CI_ENVIRONMENT_URL"] = str(environment["url"])
    # The job's config variables (already merged over the config's global ones), then the
    # repository's CI/CD variables, then those given when the run was triggered (as in GitLab).
    values.update({str(k): str(v) for k, v in (job.spec.get("variables") or {}).items()})
    values.update(project or {})
    values.update({str(k): str(v) for k, v in job.run_variables.items()})
    # The job's own credential is not the config's to override.
    values["CI_JOB_TOKEN"] = job_token
    return values
