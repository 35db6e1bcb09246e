"""The runner registry and the job queue: registration, authentication, claims, leases.

A claim is one short transaction: pick the first QUEUED job whose tags the runner has,
with `FOR UPDATE SKIP LOCKED` so concurrent claimers never wait on each other, flip it to
RUNNING with a lease, commit. No transaction is held while the job runs; afterwards every
report from the runner is fenced: it must come from the runner holding the job, while
the job is still RUNNING.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.models import AuditAction
from audit.services import audit_record
from cicd.crypto import DecryptionError
from cicd.db import model_columns, models_from_rows, prepared_cursor
from cicd.tokens import token_generate, token_hash
from logs.services import step_status_publish
from runners.models import Executor, RegistrationToken, Runner
from runners.variables import JobFacts, job_variables
from runs.models import Job, JobStatus, Step, StepStatus

logger = logging.getLogger(__name__)

RUNNER_TOKEN_PREFIX = "cvr_"  # noqa: S105 (a prefix, not a secret)
REGISTRATION_TOKEN_PREFIX = "cvreg_"  # noqa: S105
JOB_TOKEN_PREFIX = "cvj_"  # noqa: S105


class RunnerAuthError(Exception):
    """Unknown, revoked or paused runner credentials."""


class JobNotHeld(Exception):
    """A report for a job the runner no longer holds (finished, cancelled, lease lost, another runner)."""


class StepNotFound(Exception):
    """A report names a step that is not one of the job's."""


def registration_token_create(
    *, description: str = "", tags: list[str] | None = None, user=None, expires_at=None, max_uses: int | None = None
) -> tuple[RegistrationToken, str]:
    """Returns the row and the token, which is shown once and never stored."""
    token = token_generate(REGISTRATION_TOKEN_PREFIX)
    row = RegistrationToken.objects.create(
        description=description,
        token_hash=token_hash(token),
        tags=sorted(set(tags or [])),
        created_by=user,
        expires_at=expires_at,
        max_uses=max_uses,
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
        raise RunnerAuthError("invalid, expired, used up or revoked registration token")
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
    audit_record(
        action=AuditAction.RUNNER_REGISTER,
        runner=runner,
        target=runner,
        details={
            "registration_token": str(reg),
            "registration_token_id": reg.pk,
            "tags": runner.tags,
            "executor": runner.executor,
        },
    )
    return runner, token


# Every runner call starts with this lookup.
_RUNNER_BY_TOKEN_SQL = (
    f"SELECT {model_columns(Runner, 'runner')} FROM {Runner._meta.db_table} AS runner "  # noqa: S608 (our table)
    "WHERE runner.token_hash = %s"
)


def runner_authenticate(*, token: str) -> Runner:
    """The runner whose token this is. Every runner call starts here, so the lookup is a
    prepared statement (cicd.db) rather than a query the ORM compiles on each request."""
    if not token:
        raise RunnerAuthError("invalid or revoked runner token")
    # Looking up by the sha256 of the token leaks nothing about the token through timing:
    # an attacker would need a preimage to steer the index lookup.
    with prepared_cursor() as cursor:
        cursor.execute(_RUNNER_BY_TOKEN_SQL, [token_hash(token)])
        rows = cursor.fetchall()
    runner = models_from_rows(Runner, rows)[0] if rows else None
    if runner is None or runner.revoked_at is not None:
        raise RunnerAuthError("invalid or revoked runner token")
    return runner


@transaction.atomic
def runner_revoke(*, runner: Runner, user=None) -> bool:
    """Revoke a runner: its token stops working at once (the hash is dropped). Audited; False,
    changing nothing, if it was already revoked."""
    revoked = Runner.objects.filter(pk=runner.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), token_hash=None
    )
    if revoked:
        audit_record(action=AuditAction.RUNNER_REVOKE, user=user, target=runner, details={"name": runner.name})
    return bool(revoked)


def runners_set_paused(*, runners, paused: bool) -> int:
    """Pause (or resume) runners: a paused runner finishes what it runs but claims nothing new."""
    return Runner.objects.filter(pk__in=[r.pk for r in runners]).exclude(is_paused=paused).update(is_paused=paused)


def runner_touch(*, runner: Runner, version: str | None = None, now: datetime | None = None) -> None:
    now = now or timezone.now()
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
    # Names of the variables whose values the runner masks in the job's log (the server masks
    # them again at ingest): the masked CI/CD variables, and CI_JOB_TOKEN.
    masked_variables: list[str] = field(default_factory=list)
    # The server takes the end of the job's last step with the job's finish (job_complete's
    # step_ends): one request less per job. False from a server that does not say so (an
    # older one): the runner then reports every step's end on its own.
    finish_takes_step_ends: bool = False


def _lease() -> timedelta:
    return timedelta(seconds=settings.CONVEYOR_JOB_LEASE_S)


# The claim, as ONE call (one round trip, no transaction held open by Python) of the
# PL/pgSQL function conveyor_claim_job (runners/migrations/0004_claim_function.py, then 0005
# and 0006): lock the first QUEUED job in queue_key order whose tags the runner has, skipping
# rows other claimers hold (what select_for_update(skip_locked=True) issues, served by the
# partial index job_queue_idx), mark it RUNNING with a lease and the hash of a fresh job token,
# and return what the runner needs with the job's steps. Hot path: the Django ORM costs 5
# round trips and ~1 ms of query compilation here; the function's statements are planned once
# per connection, in the one plan that keeps a claim's cost flat however long the queue or the
# tables (bench/), and the call itself is a prepared statement (cicd.db).
# Its row comes back as ONE json value: one json.loads instead of psycopg loading 19 columns
# one by one (a claimer alone went from 360-415 to 310-330 us of CPU per claim), and since 0006
# no set of columns for PostgreSQL to build the array from. The array starts with JobFacts'
# fields, in their order, then the job's timeout, its steps and whether it has variables.
_CLAIM_SQL = "SELECT conveyor_claim_job(%s::varchar[], %s::uuid, %s, %s, %s)"
_FACTS_IN_CLAIM_ROW = len(fields(JobFacts))


def job_claim(*, runner: Runner) -> ClaimedJob | None:
    """Claim the next job this runner can run, or None. Safe under any number of concurrent
    claimers; nothing is held while the job runs (see _CLAIM_SQL)."""
    if runner.is_paused or runner.revoked_at is not None:
        return None
    while True:
        claimed = _job_claim_one(runner=runner)
        if claimed is not _FAILED_AT_CLAIM:
            return claimed


# A job the claim took and failed at once: the runner goes on with the next. None would tell
# a long-poll that the queue holds nothing for its kind of runner (runners.wakeups).
_FAILED_AT_CLAIM: Any = object()


def _job_claim_one(*, runner: Runner) -> ClaimedJob | None:
    now = timezone.now()
    job_token = token_generate(JOB_TOKEN_PREFIX)
    lease_expires_at = now + _lease()
    with prepared_cursor() as cursor:
        cursor.execute(_CLAIM_SQL, [list(runner.tags), runner.pk, now, lease_expires_at, token_hash(job_token)])
        (row,) = cursor.fetchone()
    if row is None:
        return None
    facts = JobFacts(*row[:_FACTS_IN_CLAIM_ROW])
    timeout_s, steps, has_variables = row[_FACTS_IN_CLAIM_ROW:]
    runner_touch(runner=runner, now=now)
    try:
        return _claimed_job(
            job=facts,
            timeout_s=timeout_s,
            steps=steps,
            lease_expires_at=lease_expires_at,
            job_token=job_token,
            runner=runner,
            has_variables=has_variables,
        )
    except DecryptionError:
        # Not a job the runner can run, nor one to hand to the next runner (it would fail the
        # same way): it fails, saying why, and the runner goes on with the next job.
        from runs.services import job_finish

        logger.error("job %s: its repository's CI/CD variables cannot be decrypted", facts.job_id)
        job_finish(job_id=facts.job_id, status=JobStatus.FAILURE, reason=_UNDECRYPTABLE, runner=runner)
        return _FAILED_AT_CLAIM


def _project_variables(job: JobFacts):
    """The repository's CI/CD variables this job gets (pipelines.variables), decrypted. One
    query, made only when the claim says the repository has any."""
    from pipelines.variables import variables_for_job

    return variables_for_job(
        repository_name=job.repository_name,
        default_branch=job.default_branch,
        ref=job.branch,
        environment=job.environment_name,
    )


_UNDECRYPTABLE = (
    "the CI/CD variables of this repository cannot be decrypted: this process's CONVEYOR_ENCRYPTION_KEY "
    "(or SECRET_KEY, if no key is set) is not the one they were encrypted with"
)


# What of a job's config its runner reads (runners.executors); the rest stays on the server.
_RUNNER_SPEC_KEYS = frozenset({"image", "services", "artifacts", "cache", "deploy"})


def _claimed_job(
    *,
    job: JobFacts,
    timeout_s: int,
    steps: list,
    lease_expires_at,
    job_token: str,
    runner: Runner,
    has_variables: bool = True,
) -> ClaimedJob:
    project = _project_variables(job) if has_variables else None
    return ClaimedJob(
        id=job.job_id,
        run_id=job.run_id,
        name=job.job_name,
        stage=job.stage,
        attempt=job.attempt,
        timeout_s=timeout_s,
        lease_expires_at=lease_expires_at.isoformat(),
        clone_url=job.clone_url,
        commit_sha=job.commit_sha,
        ref=job.branch,
        job_token=job_token,
        steps=[ClaimedStep(str(step_id), index, kind, name, command) for step_id, index, kind, name, command in steps],
        variables=job_variables(
            job=job, runner=runner, job_token=job_token, project=project.values if project else None
        ),
        spec={key: value for key, value in job.spec.items() if key in _RUNNER_SPEC_KEYS},
        masked_variables=[*project.masked, "CI_JOB_TOKEN"] if project else ["CI_JOB_TOKEN"],
        finish_takes_step_ends=True,
    )


def _held(*, job_id, runner: Runner):
    return Job.objects.filter(pk=job_id, runner=runner, status=JobStatus.RUNNING)


def job_heartbeat(*, job_id, runner: Runner) -> None:
    """Extend the lease of a job the runner holds. Raises JobNotHeld if it no longer does
    (cancelled, reaped, finished): the runner must then stop the job."""
    if _held(job_id=job_id, runner=runner).update(lease_expires_at=timezone.now() + _lease()) != 1:
        raise JobNotHeld(f"job {job_id} is not running on this runner")
    runner_touch(runner=runner)


def _check_step_of_job(*, job_id, step_id) -> None:
    if not Step.objects.filter(pk=step_id, job_id=job_id).exists():
        raise StepNotFound(f"step {step_id} is not a step of job {job_id}")


# A step report (its start, its end) on the critical path of every job: one prepared
# statement (cicd.db) checks that the step is in one of the expected statuses and that its
# job runs on this runner, and applies the report (one query, and none for the ORM to
# compile). Parameters: the new status, exit code (kept when NULL is not meant: see below),
# the time, the step, the job, the runner, the statuses it may come from.
_STEP_REPORT_SQL = (
    f"UPDATE {Step._meta.db_table} SET status = %s, "  # noqa: S608 (our tables)
    "exit_code = CASE WHEN %s THEN %s ELSE exit_code END, "
    "started_at = CASE WHEN %s THEN %s ELSE started_at END, "
    "finished_at = CASE WHEN %s THEN %s ELSE finished_at END "
    "WHERE id = %s::uuid AND job_id = %s::uuid AND status = ANY(%s::varchar[]) AND EXISTS ("
    f"SELECT 1 FROM {Job._meta.db_table} AS job WHERE job.id = %s::uuid AND job.runner_id = %s::uuid "
    f"AND job.status = '{JobStatus.RUNNING.value}')"
)


def _report_step(
    *, job_id, step_id, runner: Runner, statuses: list[str], status: str, exit_code=None, ended: bool
) -> bool:
    """Apply a step's start (ended=False: started_at) or end (ended=True: exit_code and
    finished_at), if the step is in one of `statuses` and its job runs on `runner`."""
    now = timezone.now()
    with prepared_cursor() as cursor:
        cursor.execute(
            _STEP_REPORT_SQL,
            [str(status), ended, exit_code, not ended, now, ended, now, step_id, job_id, statuses, job_id, runner.pk],
        )
        return cursor.rowcount == 1


def _not_applied(*, job_id, step_id, runner: Runner) -> None:
    """Why a step report changed nothing: JobNotHeld, StepNotFound, or (returns) a resent
    report, already applied."""
    if not _held(job_id=job_id, runner=runner).exists():
        raise JobNotHeld(f"job {job_id} is not running on this runner")
    _check_step_of_job(job_id=job_id, step_id=step_id)


def step_start(*, job_id, step_id, runner: Runner) -> None:
    statuses = [StepStatus.PENDING.value]
    if not _report_step(
        job_id=job_id, step_id=step_id, runner=runner, statuses=statuses, status=StepStatus.RUNNING, ended=False
    ):
        _not_applied(job_id=job_id, step_id=step_id, runner=runner)
        return
    step_status_publish(step_id=step_id)


def step_finish(*, job_id, step_id, runner: Runner, status: str, exit_code: int | None) -> None:
    if status not in StepStatus.TERMINAL:
        raise ValueError(f"a step cannot finish as {status!r}")
    statuses = [StepStatus.PENDING.value, StepStatus.RUNNING.value]
    if not _report_step(
        job_id=job_id, step_id=step_id, runner=runner, statuses=statuses, status=status, exit_code=exit_code, ended=True
    ):
        _not_applied(job_id=job_id, step_id=step_id, runner=runner)
        return
    step_status_publish(step_id=step_id)


def step_log(*, job_id, step_id, offset: int, text: str, runner: Runner | None = None, job_token: str = "") -> int:
    """Store a chunk of a step's log. Returns the offset the next chunk starts at.

    Authenticated by the runner holding the job (as every job call is) or by the job's own
    token (CI_JOB_TOKEN): good for this job's steps only, and only while the job runs. Raises
    RunnerAuthError for an unknown job token, JobNotHeld once the job is no longer running,
    StepNotFound for a step of another job, and logs.services.LogGap for a gap or overlap.
    """
    from logs.services import log_chunk_append

    if "\x00" in text:
        # PostgreSQL text cannot hold NUL; executors replace it before shipping output.
        raise ValueError("a log chunk must not contain NUL characters")
    masked: list[str] = []
    if runner is None and not job_token:
        raise RunnerAuthError("invalid job token")
    # One prepared statement (cicd.db) answers who holds the job and whether the step is one
    # of its steps: every chunk of every job's log comes through here. A job token is looked
    # up by its sha256, like runner tokens: timing reveals nothing about the token.
    with prepared_cursor() as cursor:
        if runner is not None:
            cursor.execute(_STEP_LOG_BY_RUNNER_SQL, [JobStatus.RUNNING.value, runner.pk, step_id, job_id])
        else:
            cursor.execute(_STEP_LOG_BY_TOKEN_SQL, [JobStatus.RUNNING.value, step_id, job_id, token_hash(job_token)])
        row = cursor.fetchone()
    if runner is None:
        if row is None:
            raise RunnerAuthError("invalid job token")
        masked.append(job_token)  # a job printing its environment must not publish its token
    if row is None or not row[0]:
        raise JobNotHeld(f"job {job_id} is not running on this runner")
    _, job_pk, step_pk = row
    if step_pk is None:
        raise StepNotFound(f"step {step_id} is not a step of job {job_id}")
    step = Step.from_db("default", ["id", "job_id"], [step_pk, job_pk])
    return log_chunk_append(step=step, offset=offset, content=text, masked=masked)


# step_log's check: a row if the job exists (with this token), saying whether it runs (on this
# runner), its id, and the step's id if the step is one of the job's.
_STEP_LOG_BY_RUNNER_SQL = (
    "SELECT j.status = %s AND j.runner_id = %s::uuid, j.id, "  # noqa: S608 (our tables)
    f"(SELECT s.id FROM {Step._meta.db_table} s WHERE s.id = %s::uuid AND s.job_id = j.id) "
    f"FROM {Job._meta.db_table} j WHERE j.id = %s::uuid"
)
_STEP_LOG_BY_TOKEN_SQL = (
    "SELECT j.status = %s, j.id, "  # noqa: S608 (our tables)
    f"(SELECT s.id FROM {Step._meta.db_table} s WHERE s.id = %s::uuid AND s.job_id = j.id) "
    f"FROM {Job._meta.db_table} j WHERE j.id = %s::uuid AND j.token_hash = %s"
)


@dataclass(frozen=True)
class StepEnd:
    """How a step ended, as step_finish takes it."""

    step_id: str
    status: str
    exit_code: int | None = None


@transaction.atomic
def job_complete(
    *,
    job_id,
    runner: Runner,
    status: str,
    exit_code: int | None = None,
    reason: str = "",
    step_ends: Sequence[StepEnd] = (),
) -> None:
    """The runner's final report, with the ends of the steps it did not report on their own
    (its last one, usually: the job's finish then costs one request, not two). Fenced:
    refused unless this runner still holds the job, and then nothing of it is applied.

    The run row is locked first, then the steps and the job: the same order as every other
    writer of a run (job_finish, cancels), so concurrent reports cannot deadlock."""
    from runs.services import job_finish, lock_run_of_job

    if status not in {JobStatus.SUCCESS, JobStatus.FAILURE}:
        raise ValueError(f"a runner reports SUCCESS or FAILURE, not {status!r}")
    if step_ends:
        lock_run_of_job(job_id)
    for end in step_ends:
        step_finish(job_id=job_id, step_id=end.step_id, runner=runner, status=end.status, exit_code=end.exit_code)
    if not job_finish(job_id=job_id, status=status, exit_code=exit_code, reason=reason, runner=runner):
        raise JobNotHeld(f"job {job_id} is not running on this runner")


def job_release(*, job_id, runner: Runner, reason: str = "") -> None:
    """Hand a job back: the runner is shutting down before it could finish. The attempt ends
    as a runner system failure and a fresh attempt is queued for another runner."""
    from runs.services import job_requeue

    reason = reason or f"released by runner {runner.name} (shutting down)"
    if job_requeue(job_id=job_id, reason=reason, runner=runner) is None:
        raise JobNotHeld(f"job {job_id} is not running on this runner")
