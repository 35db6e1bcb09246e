"""The runner registry and the job queue: registration, authentication, claims, leases.

A claim is one short transaction: pick the first QUEUED job whose tags the runner has,
with `FOR UPDATE SKIP LOCKED` so concurrent claimers never wait on each other, flip it to
RUNNING with a lease, commit. No transaction is held while the job runs; afterwards every
report from the runner is fenced: it must come from the runner holding the job, while
the job is still RUNNING.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cicd.tokens import token_generate, token_hash
from runners.models import Executor, RegistrationToken, Runner
from runs.models import Job, JobStatus, Step, StepStatus

logger = logging.getLogger(__name__)

RUNNER_TOKEN_PREFIX = "cvr_"  # noqa: S105 (a prefix, not a secret)
REGISTRATION_TOKEN_PREFIX = "cvreg_"  # noqa: S105
JOB_TOKEN_PREFIX = "cvj_"  # noqa: S105


class RunnerAuthError(Exception):
    """Unknown, revoked or paused runner credentials."""


class JobNotHeld(Exception):
    """A report for a job the runner no longer holds (finished, cancelled, lease lost, another runner)."""


def registration_token_create(
    *, description: str = "", tags: list[str] | None = None, user=None, expires_at=None
) -> tuple[RegistrationToken, str]:
    """Returns the row and the token, which is shown once and never stored."""
    token = token_generate(REGISTRATION_TOKEN_PREFIX)
    row = RegistrationToken.objects.create(
        description=description,
        token_hash=token_hash(token),
        tags=sorted(set(tags or [])),
        created_by=user,
        expires_at=expires_at,
    )
    return row, token


@transaction.atomic
def runner_register(
    *,
    registration_token: str,
    name: str,
    tags: list[str] | None = None,
    concurrency: int = 1,
    executor: str = Executor.SHELL,
    version: str = "",
) -> tuple[Runner, str]:
    """Exchange a registration token for a runner and its runner token (shown once)."""
    reg = RegistrationToken.objects.select_for_update().filter(token_hash=token_hash(registration_token)).first()
    if reg is None or not reg.is_usable:
        raise RunnerAuthError("invalid, expired or revoked registration token")
    if executor not in Executor.values:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(Executor.values)}")
    token = token_generate(RUNNER_TOKEN_PREFIX)
    runner = Runner.objects.create(
        name=name[:200],
        token_hash=token_hash(token),
        tags=sorted(set(tags or []) | set(reg.tags)),
        concurrency=max(1, concurrency),
        executor=executor,
        version=version[:64],
        registration_token=reg,
        last_seen_at=timezone.now(),
    )
    RegistrationToken.objects.filter(pk=reg.pk).update(uses=reg.uses + 1)
    return runner, token


def runner_authenticate(*, token: str) -> Runner:
    # Looking up by the sha256 of the token leaks nothing about the token through timing:
    # an attacker would need a preimage to steer the index lookup.
    runner = Runner.objects.filter(token_hash=token_hash(token)).first() if token else None
    if runner is None or runner.revoked_at is not None:
        raise RunnerAuthError("invalid or revoked runner token")
    return runner


def runner_revoke(*, runner: Runner) -> None:
    Runner.objects.filter(pk=runner.pk).update(revoked_at=timezone.now(), token_hash=None)


def runner_touch(*, runner: Runner, version: str | None = None) -> None:
    now = timezone.now()
    # Writing last_seen on every claim would make the runner row a hot spot; once per 10 s is plenty.
    if runner.last_seen_at is None or now - runner.last_seen_at > timedelta(seconds=10):
        updates: dict[str, Any] = {"last_seen_at": now}
        if version:
            updates["version"] = version[:64]
        Runner.objects.filter(pk=runner.pk).update(**updates)
        runner.last_seen_at = now


@dataclass
class ClaimedStep:
    id: str
    index: int
    kind: str
    name: str
    command: str


@dataclass
class ClaimedJob:
    """Everything a runner needs to execute a job, and nothing else."""

    id: str
    run_id: str
    name: str
    stage: str
    attempt: int
    timeout_s: int
    lease_expires_at: str
    clone_url: str
    commit_sha: str
    ref: str
    job_token: str
    steps: list[ClaimedStep]
    variables: dict[str, str]
    spec: dict[str, Any] = field(default_factory=dict)


def _lease() -> timedelta:
    return timedelta(seconds=settings.CONVEYOR_JOB_LEASE_S)


def job_claim(*, runner: Runner) -> ClaimedJob | None:
    """Claim the next job this runner can run, or None. Safe under any number of concurrent claimers."""
    if runner.is_paused or runner.revoked_at is not None:
        return None
    now = timezone.now()
    job_token = token_generate(JOB_TOKEN_PREFIX)
    with transaction.atomic():
        job = (
            Job.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status=JobStatus.QUEUED, tags__contained_by=runner.tags)
            .order_by("queued_at")
            .only("id")
            .first()
        )
        if job is None:
            return None
        # The row is locked by us, so this guarded update cannot lose a race; the status
        # guard still documents (and enforces) the only legal transition.
        claimed = Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
            status=JobStatus.RUNNING,
            runner=runner,
            started_at=now,
            lease_expires_at=now + _lease(),
            token_hash=token_hash(job_token),
        )
        if claimed != 1:
            return None
    runner_touch(runner=runner)
    return _claimed_job(job_id=job.pk, job_token=job_token, runner=runner)


def _claimed_job(*, job_id, job_token: str, runner: Runner) -> ClaimedJob:
    from runners.variables import job_variables

    job = Job.objects.select_related("run__pipeline__repository").get(pk=job_id)
    steps = [
        ClaimedStep(id=str(s.id), index=s.index, kind=s.kind, name=s.name, command=s.command)
        for s in Step.objects.filter(job=job).order_by("index")
    ]
    run = job.run
    return ClaimedJob(
        id=str(job.id),
        run_id=str(run.id),
        name=job.name,
        stage=job.stage,
        attempt=job.attempt,
        timeout_s=job.timeout_s,
        lease_expires_at=job.lease_expires_at.isoformat(),
        clone_url=run.pipeline.repository.clone_url,
        commit_sha=run.commit_sha,
        ref=run.branch,
        job_token=job_token,
        steps=steps,
        variables=job_variables(job=job, runner=runner, job_token=job_token),
        spec={k: v for k, v in job.spec.items() if k in {"image", "services", "artifacts", "cache", "deploy"}},
    )


def _held(*, job_id, runner: Runner):
    return Job.objects.filter(pk=job_id, runner=runner, status=JobStatus.RUNNING)


def job_heartbeat(*, job_id, runner: Runner) -> None:
    """Extend the lease of a job the runner holds. Raises JobNotHeld if it no longer does
    (cancelled, reaped, finished): the runner must then stop the job."""
    if _held(job_id=job_id, runner=runner).update(lease_expires_at=timezone.now() + _lease()) != 1:
        raise JobNotHeld(f"job {job_id} is not running on this runner")
    runner_touch(runner=runner)


def step_start(*, job_id, step_id, runner: Runner) -> None:
    if not _held(job_id=job_id, runner=runner).exists():
        raise JobNotHeld(f"job {job_id} is not running on this runner")
    Step.objects.filter(pk=step_id, job_id=job_id, status=StepStatus.PENDING).update(
        status=StepStatus.RUNNING, started_at=timezone.now()
    )


def step_finish(*, job_id, step_id, runner: Runner, status: str, exit_code: int | None) -> None:
    if status not in StepStatus.TERMINAL:
        raise ValueError(f"a step cannot finish as {status!r}")
    if not _held(job_id=job_id, runner=runner).exists():
        raise JobNotHeld(f"job {job_id} is not running on this runner")
    Step.objects.filter(pk=step_id, job_id=job_id, status__in=[StepStatus.PENDING, StepStatus.RUNNING]).update(
        status=status, exit_code=exit_code, finished_at=timezone.now()
    )


def step_log(*, job_id, step_id, runner: Runner, offset: int, text: str) -> int:
    """Store a chunk of a step's log. Returns the offset the next chunk starts at."""
    from logs.services import log_chunk_append

    if not _held(job_id=job_id, runner=runner).exists():
        raise JobNotHeld(f"job {job_id} is not running on this runner")
    step = Step.objects.only("id", "job_id").get(pk=step_id, job_id=job_id)
    return log_chunk_append(step=step, offset=offset, content=text)


def job_complete(*, job_id, runner: Runner, status: str, exit_code: int | None = None, reason: str = "") -> None:
    """The runner's final report. Fenced: refused unless this runner still holds the job.

    The run row is locked first (inside job_finish), then the job: the same order as every
    other writer of a run, so concurrent finishes of sibling jobs cannot deadlock."""
    from runs.services import job_finish

    if status not in {JobStatus.SUCCESS, JobStatus.FAILURE}:
        raise ValueError(f"a runner reports SUCCESS or FAILURE, not {status!r}")
    if not job_finish(job_id=job_id, status=status, exit_code=exit_code, reason=reason, runner=runner):
        raise JobNotHeld(f"job {job_id} is not running on this runner")


def job_release(*, job_id, runner: Runner, reason: str = "") -> None:
    """Hand a job back: the runner is shutting down before it could finish. The attempt ends
    as a runner system failure and a fresh attempt is queued for another runner."""
    from runs.services import job_requeue

    reason = reason or f"released by runner {runner.name} (shutting down)"
    if job_requeue(job_id=job_id, reason=reason, runner=runner) is None:
        raise JobNotHeld(f"job {job_id} is not running on this runner")
