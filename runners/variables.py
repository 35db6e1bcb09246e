"""The environment a job sees: CI_* variables, the config's, the repository's CI/CD variables
and the run's own variables, in GitLab's precedence (pipelines.variables says which wins).

Built on the server at claim time, so a runner passes it through as is. It never contains
the server's or the runner's credentials: only the job's own, short-lived CI_JOB_TOKEN.
"""

from __future__ import annotations

from django.conf import settings

from pipelines.models import PIPELINE_SOURCE, Trigger
from runners.models import Runner
from runs.models import Job


def job_variables(*, job: Job, runner: Runner, job_token: str, project: dict[str, str] | None = None) -> dict[str, str]:
    """`project`: the repository's CI/CD variables this job gets (pipelines.variables)."""
    run = job.run
    repository = run.pipeline.repository
    values = {
        "CI": "true",
        "CONVEYOR": "true",
        "CI_SERVER_URL": settings.CONVEYOR_BASE_URL,
        "CI_PROJECT_NAME": repository.name,
        "CI_PROJECT_PATH": repository.name,
        "CI_DEFAULT_BRANCH": repository.default_branch,
        "CI_PIPELINE_ID": str(run.id),
        "CI_PIPELINE_IID": str(run.number),
        "CI_PIPELINE_SOURCE": PIPELINE_SOURCE.get(Trigger(run.trigger), "api"),
        "CI_PIPELINE_URL": f"{settings.CONVEYOR_BASE_URL}/runs/{run.id}/",
        "CI_COMMIT_SHA": run.commit_sha,
        "CI_COMMIT_SHORT_SHA": run.commit_sha[:8],
        "CI_COMMIT_REF_NAME": run.branch,
        "CI_COMMIT_MESSAGE": run.commit_message,
        "CI_JOB_ID": str(job.id),
        "CI_JOB_NAME": job.name,
        "CI_JOB_STAGE": job.stage,
        "CI_JOB_URL": f"{settings.CONVEYOR_BASE_URL}/jobs/{job.id}/",
        "CI_JOB_TOKEN": job_token,
        "CI_JOB_ATTEMPT": str(job.attempt),
        "CI_RUNNER_ID": str(runner.id),
        "CI_RUNNER_TAGS": ",".join(runner.tags),
        "GITLAB_CI": "false",
    }
    if run.is_tag:
        values["CI_COMMIT_TAG"] = run.branch
    else:
        values["CI_COMMIT_BRANCH"] = run.branch
    environment = (job.spec or {}).get("environment") or {}
    if environment.get("name"):
        values["CI_ENVIRONMENT_NAME"] = str(environment["name"])
        if environment.get("url"):
            values["CI_ENVIRONMENT_URL"] = str(environment["url"])
    # The job's config variables (already merged over the config's global ones), then the
    # repository's CI/CD variables, then those given when the run was triggered (as in GitLab).
    values.update({str(k): str(v) for k, v in ((job.spec or {}).get("variables") or {}).items()})
    values.update(project or {})
    values.update({str(k): str(v) for k, v in (run.variables or {}).items()})
    # The job's own credential is not the config's to override.
    values["CI_JOB_TOKEN"] = job_token
    return values
