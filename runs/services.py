"""Writes of the DAG engine: creating runs, promoting their jobs, the job lifecycle.

Concurrency model. Every write that changes which jobs of a run may run locks the run row
first (`SELECT ... FOR NO KEY UPDATE` on PipelineRun; NO KEY so inserts that reference the
run, like artifacts, are not blocked), then changes job rows with guarded updates. Holding
the run row serializes concurrent completions of jobs of the same run, the sweep, play,
retry and cancel, so promotion always sees a consistent set of job states. The one write
that does not take the run lock is a runner's claim/start (QUEUED -> RUNNING), which no
promotion decision depends on. Lock order is always run row, then job rows.

Promotion (`_promote_locked`) is event-driven: it runs in the same transaction as the
change that triggered it (job_finish, job_play, job_retry, run_create) and costs a constant
number of queries per run. The Celery beat sweep (`runs_sweep`) re-promotes active runs as
a backstop and queues delayed jobs whose time has come.

Retries keep history: a new attempt is a new Job row (attempt + 1), and the old row is
marked `retried` and leaves the DAG. Its steps, logs and artifacts stay as the record.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from audit.models import AuditAction
from audit.services import audit_record
from cicd.db import model_columns, models_from_rows, prepared_cursor
from cicd.follow_ups import follow_up_after_commit
from pipelines.config.spec import JobSpec, PipelineSpec
from pipelines.models import Pipeline
from runs import dag
from runs.models import (
    FailureReason,
    Job,
    JobDependency,
    JobStatus,
    PipelineRun,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
    When,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from runners.models import Runner

logger = logging.getLogger(__name__)

# Runners LISTEN on this channel; a NOTIFY (delivered by PostgreSQL at commit) wakes them.
JOBS_CHANNEL = "conveyor_jobs"
# A job whose runner vanished (lease expired) is requeued up to this many attempts in all
# (or retry_max + 1, if that is more), then fails.
LEASE_MAX_ATTEMPTS = 3
# How many expired leases one reaper pass handles; the next pass takes the rest.
REAP_BATCH = 200

FINISH_STATUSES = frozenset({JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED})
RETRYABLE_STATUSES = frozenset({JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED})
NON_TERMINAL_STATUSES = frozenset(JobStatus.values) - JobStatus.TERMINAL
RETRY_ALWAYS = "always"

# The columns a new attempt copies from the one it replaces.
_ATTEMPT_COPIED_FIELDS = (
    "run_id",
    "name",
    "stage",
    "stage_index",
    "when",
    "uses_needs",
    "allow_failure",
    "blocking",
    "start_in_s",
    "tags",
    "timeout_s",
    "retry_max",
    "retry_when",
    "interruptible",
    "resource_group",
    "environment",
    "spec",
)


class InvalidSpec(ValueError):
    """The PipelineSpec cannot become a run (the parser should have rejected it)."""


class TransitionError(Exception):
    """The job's or run's current state does not allow the requested change."""


class StaleState(RuntimeError):
    """A guarded update under the run lock matched fewer rows than planned: some writer changed
    the run's jobs without locking the run. The transaction is rolled back; the sweep retries."""


# --- Run creation.


def _step_name(command: str) -> str:
    lines = command.strip().splitlines()
    first = lines[0].strip() if lines else ""
    limit = Step._meta.get_field("name").max_length
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _job_spec_json(js: JobSpec) -> dict[str, Any]:
    """What the runner needs beyond the Job columns."""
    return {
        "image": js.image,
        "services": js.services,
        "variables": js.variables,
        "artifacts": js.artifacts,
        "cache": js.cache,
        "environment": js.environment,
        "parallel": js.parallel,
        "deploy": js.deploy,
        "dependencies": js.dependencies,
        "allow_failure_exit_codes": js.allow_failure_exit_codes,
        "retry_exit_codes": js.retry_exit_codes,
        "coverage": js.coverage,
    }


def _deploy_step_command(section: dict[str, Any]) -> str:
    from runners.deploy.job import deploy_step_command  # the kubernetes client only where deploys are

    return deploy_step_command(section)


def _validate_spec(spec: PipelineSpec) -> dict[str, int]:
    """Stage positions by name. Raises InvalidSpec for what would corrupt the DAG."""
    if spec.workflow_skipped:
        raise InvalidSpec(f"workflow rules skipped this pipeline: {spec.workflow_skipped}")
    stage_index = {name: i for i, name in enumerate(spec.stages)}
    if len(stage_index) != len(spec.stages):
        raise InvalidSpec("stages must be unique")
    by_name: dict[str, JobSpec] = {}
    for js in spec.jobs:
        if js.name in by_name:
            raise InvalidSpec(f"job {js.name!r} is defined twice")
        if js.stage not in stage_index:
            raise InvalidSpec(f"job {js.name!r}: stage {js.stage!r} is not in stages")
        if js.when not in When.values:
            raise InvalidSpec(f"job {js.name!r}: when {js.when!r} is not one of {', '.join(When.values)}")
        by_name[js.name] = js
    edges: dict[str, list[str]] = {}
    for js in spec.jobs:
        edges[js.name] = []
        for need in js.needs or []:
            needed = by_name.get(need.job)
            if needed is None:
                if need.optional:
                    continue
                raise InvalidSpec(f"job {js.name!r} needs {need.job!r}, which is not in the pipeline")
            if stage_index[needed.stage] > stage_index[js.stage]:
                raise InvalidSpec(f"job {js.name!r} needs {need.job!r}, which is in a later stage")
            edges[js.name].append(need.job)
    cycle = dag.find_cycle(edges)
    if cycle:
        raise InvalidSpec("needs form a cycle: " + " -> ".join(cycle))
    return stage_index


def _run_insert(*, pipeline: Pipeline, **fields: Any) -> PipelineRun:
    # The pipeline row lock serializes run numbering per pipeline (NO KEY: inserts of rows
    # that reference the pipeline are not blocked). It is held only until this commits.
    Pipeline.objects.select_for_update(no_key=True).filter(pk=pipeline.pk).values_list("pk", flat=True).get()
    last = PipelineRun.objects.filter(pipeline=pipeline).aggregate(n=Max("number"))["n"] or 0
    return PipelineRun.objects.create(pipeline=pipeline, number=last + 1, **fields)


@transaction.atomic
def run_create(
    *,
    pipeline: Pipeline,
    spec: PipelineSpec,
    commit_sha: str,
    branch: str,
    is_tag: bool = False,
    trigger: str,
    triggered_by: str = "",
    triggered_by_user: AbstractBaseUser | None = None,
    variables: dict[str, str] | None = None,
    commit_message: str = "",
    config_source: str = "",
) -> PipelineRun:
    """Create a run with its jobs, `needs` edges and steps, and promote it, in one transaction.

    Jobs with nothing to wait for are QUEUED at once (the run becomes RUNNING); a run in
    which nothing can run is finished at once. A spec with no jobs gives a SUCCESS run.
    """
    stage_index = _validate_spec(spec)
    run = _run_insert(
        pipeline=pipeline,
        commit_sha=commit_sha,
        branch=branch,
        is_tag=is_tag,
        trigger=trigger,
        triggered_by=triggered_by,
        triggered_by_user=triggered_by_user,
        variables=dict(variables or {}),
        commit_message=commit_message,
        config_source=config_source,
        status=RunStatus.PENDING,
    )
    default_timeout = Job._meta.get_field("timeout_s").default
    jobs: dict[str, Job] = {}
    for js in spec.jobs:
        optional_manual = js.when == When.MANUAL and not js.blocking
        jobs[js.name] = Job(
            run=run,
            name=js.name,
            stage=js.stage,
            stage_index=stage_index[js.stage],
            status=JobStatus.PENDING,
            when=js.when,
            uses_needs=js.needs is not None,
            # An optional manual job never holds the pipeline up (GitLab: allow_failure
            # defaults to true for `when: manual`; a manual job that may not fail is blocking).
            allow_failure=js.allow_failure or optional_manual,
            blocking=js.blocking,
            start_in_s=js.start_in_s,
            tags=list(js.tags),
            timeout_s=js.timeout_s or default_timeout,
            retry_max=js.retry_max,
            retry_when=list(js.retry_when),
            interruptible=js.interruptible,
            resource_group=js.resource_group or "",
            environment=str((js.environment or {}).get("name") or ""),
            spec=_job_spec_json(js),
        )
    Job.objects.bulk_create(jobs.values())
    JobDependency.objects.bulk_create(
        JobDependency(job=jobs[js.name], depends_on=jobs[need.job], artifacts=need.artifacts)
        for js in spec.jobs
        for need in js.needs or []
        if need.job in jobs
    )
    steps = []
    for js in spec.jobs:
        scripts = [
            (StepKind.BEFORE_SCRIPT, js.before_script),
            (StepKind.SCRIPT, js.script),
            # A `deploy:` section is one more step: the runner's Kubernetes rollout.
            (StepKind.DEPLOY, [_deploy_step_command(js.deploy)] if js.deploy else []),
            (StepKind.AFTER_SCRIPT, js.after_script),
        ]
        commands = [(kind, command) for kind, lines in scripts for command in lines]
        steps += [
            Step(job=jobs[js.name], index=i, kind=kind, name=_step_name(command), command=command)
            for i, (kind, command) in enumerate(commands)
        ]
    Step.objects.bulk_create(steps)
    _promote_locked(run, now=timezone.now(), changed=True, run_changed=True)
    return run


@transaction.atomic
def run_create_invalid(
    *,
    pipeline: Pipeline,
    error_message: str,
    commit_sha: str,
    branch: str,
    is_tag: bool = False,
    trigger: str,
    triggered_by: str = "",
    triggered_by_user: AbstractBaseUser | None = None,
    variables: dict[str, str] | None = None,
    commit_message: str = "",
    config_source: str = "",
) -> PipelineRun:
    """Record a run whose config is invalid: FAILURE with the reason, no jobs, finished at once."""
    run = _run_insert(
        pipeline=pipeline,
        commit_sha=commit_sha,
        branch=branch,
        is_tag=is_tag,
        trigger=trigger,
        triggered_by=triggered_by,
        triggered_by_user=triggered_by_user,
        variables=dict(variables or {}),
        commit_message=commit_message,
        config_source=config_source,
        status=RunStatus.FAILURE,
        error_message=error_message,
    )
    run.finished_at, run.duration_s = run.created_at, 0.0
    PipelineRun.objects.filter(pk=run.pk).update(finished_at=run.finished_at, duration_s=run.duration_s)
    _on_commit_run_changed(run.pk)
    return run


# --- Promotion.


@dataclass
class _Promotion:
    jobs: list[Job] = field(default_factory=list)
    transitions: list[dag.Transition] = field(default_factory=list)
    run_changed: bool = False


def _deployments():
    # Imported late: runs.deployments builds on this module.
    from runs import deployments

    return deployments


def _after_commit_run_changed(run_id: Any, *, jobs_only: bool = False) -> None:
    """Hook for everything that follows a run's change (channel-layer events, commit status,
    notifications): called after commit only, so a rolled-back change announces nothing.

    `jobs_only`: only the run's jobs changed, not the run's own row (a job finished and the
    run goes on). The commit status, the failure notification and the runs list's row are
    made of the run's row alone, so they are left out: three queries and an event less on
    every job's finish, which the next jobs' claims wait behind (bench/README.md, "e2e")."""
    from logs.services import run_status_publish
    from pipelines.commit_status import commit_status_enqueue
    from runs.live import runs_list_publish
    from runs.notifications import run_notifications_enqueue

    logger.debug("run %s changed", run_id)
    if not jobs_only:
        commit_status_enqueue(run_id=run_id)
    run_status_publish(run_id=run_id)  # to the run's live viewers (logs.events)
    # None may fail the change, which is committed: the deployments sweep catches up, and the
    # runs list's viewers hear the run's next change.
    follow_ups = [_deployments().deployments_after_run_changed]
    if not jobs_only:
        follow_ups += [run_notifications_enqueue, runs_list_publish]
    for follow_up in follow_ups:
        try:
            follow_up(run_id=run_id)
        except Exception:
            logger.exception("%s of run %s failed", follow_up.__name__, run_id)


def _on_commit_run_changed(run_id: Any, *, jobs_only: bool = False) -> None:
    follow_up_after_commit(partial(_after_commit_run_changed, run_id, jobs_only=jobs_only))


# A NOTIFY payload is at most 8000 bytes; past this, the notification says how many jobs only.
_QUEUED_PAYLOAD_MAX = 4000


def _notify_queue(jobs: Iterable[Job]) -> None:
    # Executed inside the transaction on purpose: PostgreSQL delivers NOTIFY at commit, and
    # drops it on rollback, which is exactly when runners should (not) wake up. The payload says
    # how many jobs were queued with which tags, `[[count, [tag, ...]], ...]`: the web processes
    # wake as many waiting long-polls of each kind of runner that can run them (runners.wakeups).
    # Identical notifications in one transaction are folded into one; the long-polls make up for it.
    by_tags = Counter(tuple(sorted(job.tags)) for job in jobs)
    payload = json.dumps([[count, list(tags)] for tags, count in by_tags.items()], separators=(",", ":"))
    if len(payload) > _QUEUED_PAYLOAD_MAX:
        payload = str(by_tags.total())
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [JOBS_CHANNEL, payload])


def _lock_run(run_id: Any, *, skip_locked: bool = False) -> PipelineRun | None:
    return PipelineRun.objects.select_for_update(no_key=True, skip_locked=skip_locked).filter(pk=run_id).first()


# --- The statements of a job's finish and of promotion, prepared (cicd.db): every job's
# finish runs them, and the ORM's compilation of them was most of the web's CPU for a finish
# (py-spy, bench e2e). The rarer paths (cancels, retries, plays) keep the ORM.

_RUN_OF_JOB_LOCKED_SQL = (
    f"SELECT {model_columns(PipelineRun, 'run')} FROM {PipelineRun._meta.db_table} AS run "  # noqa: S608 (our tables)
    f"JOIN {Job._meta.db_table} AS job ON job.run_id = run.id WHERE job.id = %s::uuid FOR NO KEY UPDATE OF run"
)
_CURRENT_JOBS_SQL = (
    f"SELECT {model_columns(Job, 'job')} FROM {Job._meta.db_table} AS job "  # noqa: S608 (our table)
    "WHERE job.run_id = %s::uuid AND NOT job.retried ORDER BY job.stage_index, job.name"
)
_EDGES_SQL = (
    f"SELECT edge.job_id, edge.depends_on_id FROM {JobDependency._meta.db_table} AS edge "  # noqa: S608 (our tables)
    f"JOIN {Job._meta.db_table} AS job ON job.id = edge.job_id WHERE job.run_id = %s::uuid AND NOT job.retried"
)


def lock_run_of_job(job_id: Any) -> PipelineRun | None:
    """The run of the job (None if there is no such job), its row locked (FOR NO KEY UPDATE)
    until the transaction ends: call it in one. Every writer of a run's jobs locks the run
    first, so that concurrent reports cannot deadlock."""
    with prepared_cursor() as cursor:
        cursor.execute(_RUN_OF_JOB_LOCKED_SQL, [job_id])
        rows = cursor.fetchall()
    return models_from_rows(PipelineRun, rows)[0] if rows else None


def _current_jobs(run_id: Any) -> dict[Any, Job]:
    with prepared_cursor() as cursor:
        cursor.execute(_CURRENT_JOBS_SQL, [run_id])
        rows = cursor.fetchall()
    return {job.pk: job for job in models_from_rows(Job, rows)}


def _nodes(jobs: Iterable[Job], run_id: Any) -> dict[Any, dag.Node]:
    needs: dict[Any, list[Any]] = defaultdict(list)
    with prepared_cursor() as cursor:
        cursor.execute(_EDGES_SQL, [run_id])
        edges = cursor.fetchall()
    for job_id, depends_on_id in edges:
        needs[job_id].append(depends_on_id)
    return {
        job.pk: dag.Node(
            id=job.pk,
            name=job.name,
            stage_index=job.stage_index,
            status=job.status,
            when=job.when,
            uses_needs=job.uses_needs,
            needs=tuple(needs.get(job.pk, ())),
            allow_failure=job.allow_failure,
            allow_failure_exit_codes=tuple((job.spec or {}).get("allow_failure_exit_codes") or ()),
            blocking=job.blocking,
            exit_code=job.exit_code,
            start_in_s=job.start_in_s,
            scheduled_at=job.scheduled_at,
        )
        for job in jobs
    }


# One row per job of the group (unnest of the parallel arrays): its new status and reason,
# and its new scheduled_at (NULL: unchanged); queued_at is `now` for a job that is queued.
_TRANSITIONS_SQL = (
    f"UPDATE {Job._meta.db_table} AS job SET status = planned.new, status_reason = planned.reason, "  # noqa: S608
    f"queued_at = CASE WHEN planned.new = '{JobStatus.QUEUED.value}' THEN %s ELSE job.queued_at END, "
    "scheduled_at = coalesce(planned.scheduled_at, job.scheduled_at) "
    "FROM unnest(%s::uuid[], %s::varchar[], %s::varchar[], %s::timestamptz[]) "
    "AS planned (id, new, reason, scheduled_at) WHERE job.id = planned.id AND job.status = %s"
)


def _apply_transitions(transitions: list[dag.Transition], *, now: datetime) -> None:
    """One guarded UPDATE per old status (at most two), whatever the number of jobs."""
    by_old: dict[str, list[dag.Transition]] = defaultdict(list)
    for transition in transitions:
        by_old[transition.old].append(transition)
    for old, group in by_old.items():
        params = [
            now,
            [t.job_id for t in group],
            [str(t.new) for t in group],
            [t.reason for t in group],
            [t.scheduled_at for t in group],
            str(old),
        ]
        with prepared_cursor() as cursor:
            cursor.execute(_TRANSITIONS_SQL, params)
            updated = cursor.rowcount
        if updated != len(group):
            raise StaleState(f"planned {len(group)} transitions from {old}, applied {updated}")


def _run_sync_status(run: PipelineRun, nodes: Iterable[dag.Node], *, now: datetime) -> bool:
    """Re-derive the run's status from its jobs and store it (guarded). True if it changed."""
    nodes = list(nodes)
    started_at = run.started_at
    if started_at is None and any(n.status in JobStatus.ACTIVE for n in nodes):
        started_at = now
    status = dag.derive_run_status(current=run.status, nodes=nodes, started=started_at is not None)
    finished_at = duration_s = None
    if status in RunStatus.TERMINAL:
        finished_at = run.finished_at if run.status == status and run.finished_at else now
        duration_s = max(0.0, (finished_at - (started_at or run.created_at)).total_seconds())
    new = {"status": status, "started_at": started_at, "finished_at": finished_at, "duration_s": duration_s}
    if all(getattr(run, name) == value for name, value in new.items()):
        return False
    if PipelineRun.objects.filter(pk=run.pk, status=run.status).update(**new) != 1:
        raise StaleState(f"run {run.pk} changed status under its lock")
    for name, value in new.items():
        setattr(run, name, value)
    return True


_QUEUE_KEYS_SQL = (
    f"UPDATE {Job._meta.db_table} AS job SET queue_key = keyed.key "  # noqa: S608 (our table)
    "FROM unnest(%s::uuid[], %s::timestamptz[]) AS keyed (id, key) "
    f"WHERE job.id = keyed.id AND job.status = '{JobStatus.QUEUED.value}' AND job.queue_key IS NULL"
)


def _assign_queue_keys(jobs: Iterable[Job], *, now: datetime) -> None:
    """Give the run's newly QUEUED jobs their place in the queue (every path that queues a
    job, from run creation to retries and manual plays, ends in _promote_locked, here).

    Fair share: the k-th job a run has queued or running at once is keyed
    now + k * CONVEYOR_FAIR_SHARE_STEP_S. A run that queues 500 jobs gets its first one
    next, but a job of another run queued a moment later overtakes most of the 500, so
    runs take turns instead of one huge run starving the rest; the offset is bounded, so
    nothing waits forever either. The caller holds the run lock.
    """
    jobs = list(jobs)
    waiting = sorted(
        (job for job in jobs if job.status == JobStatus.QUEUED and job.queue_key is None),
        key=lambda job: (job.stage_index, job.name),
    )
    if not waiting:
        return
    ahead = sum(1 for job in jobs if job.status in JobStatus.ACTIVE and job.queue_key is not None)
    step = timedelta(seconds=settings.CONVEYOR_FAIR_SHARE_STEP_S)
    keys = {job.pk: now + (ahead + rank) * step for rank, job in enumerate(waiting)}
    with prepared_cursor() as cursor:
        cursor.execute(_QUEUE_KEYS_SQL, [list(keys), list(keys.values())])
    for job in waiting:
        job.queue_key = keys[job.pk]


def _promote_locked(run: PipelineRun, *, now: datetime, changed: bool = False, run_changed: bool = False) -> _Promotion:
    """Promote the run's jobs and re-derive its status. The caller holds the run row lock;
    `changed` says it changed the run's jobs itself (the after-commit hook is due anyway),
    `run_changed` that it changed the run's own row too (created or reopened it).

    Queries: the jobs, the edges, up to two guarded job updates, a NOTIFY if anything was
    queued, and the run update if its status changed: constant in the number of jobs.
    """
    result = _Promotion()
    if run.status == RunStatus.CANCELLED:
        if changed:
            _on_commit_run_changed(run.pk)
        return result
    jobs = _current_jobs(run.pk)
    nodes = _nodes(jobs.values(), run.pk)
    result.transitions = dag.plan_promotion(nodes, now=now)
    # Deploy jobs start only when their environment lets them (approvals, freezes, one at a
    # time): the gate may hold some as blocking MANUAL jobs instead (runs.deployments).
    result.transitions = _deployments().gate_promotion(
        run=run, jobs=jobs, nodes=nodes, transitions=result.transitions, now=now
    )
    _apply_transitions(result.transitions, now=now)
    for transition in result.transitions:
        job = jobs[transition.job_id]
        job.status, job.status_reason = transition.new, transition.reason
        if transition.new == JobStatus.QUEUED:
            job.queued_at = now
        if transition.scheduled_at is not None:
            job.scheduled_at = transition.scheduled_at
        result.jobs.append(job)
    _assign_queue_keys(jobs.values(), now=now)
    queued = [jobs[t.job_id] for t in result.transitions if t.new == JobStatus.QUEUED]
    if queued:
        _notify_queue(queued)
    result.run_changed = _run_sync_status(run, nodes.values(), now=now)
    if run_changed or result.run_changed:
        _on_commit_run_changed(run.pk)
    elif changed or result.transitions:
        _on_commit_run_changed(run.pk, jobs_only=True)
    return result


@transaction.atomic
def run_promote(*, run_id: Any) -> list[Job]:
    """Move every job of the run whose wait is over (queue, skip, hold for a person, schedule)
    and re-derive the run's status. Returns the jobs that changed. Idempotent."""
    run = _lock_run(run_id)
    if run is None:
        return []
    return _promote_locked(run, now=timezone.now()).jobs


def _reset_skipped_descendants(run: PipelineRun, *, roots: list[Any]) -> int:
    """SKIPPED jobs that may have been skipped because of `roots` go back to PENDING, so the
    next promotion decides them again (GitLab does the same when a job is retried or played)."""
    nodes = _nodes(_current_jobs(run.pk).values(), run.pk)
    ids = dag.skipped_descendants(nodes, roots)
    if not ids:
        return 0
    return Job.objects.filter(pk__in=ids, status=JobStatus.SKIPPED).update(
        status=JobStatus.PENDING, status_reason="", finished_at=None
    )


def _run_reopen(run: PipelineRun, *, now: datetime) -> None:
    """A finished run gets work again (a retry or a late manual job): RUNNING, not finished."""
    if run.status not in RunStatus.TERMINAL:
        return
    new = {"status": RunStatus.RUNNING, "started_at": run.started_at or now, "finished_at": None, "duration_s": None}
    if PipelineRun.objects.filter(pk=run.pk, status=run.status).update(**new) != 1:
        raise StaleState(f"run {run.pk} changed status under its lock")
    for name, value in new.items():
        setattr(run, name, value)


# --- Job lifecycle.


# How the runner's executors word the failures that are not the script's own fault, read back
# as GitLab's failure kinds so that `retry: when` can name them.
_REASON_PREFIX_KINDS = (
    ("timed out after ", FailureReason.JOB_EXECUTION_TIMEOUT),
    ("runner error: ", FailureReason.RUNNER_SYSTEM_FAILURE),
    ("kubernetes API ", FailureReason.RUNNER_SYSTEM_FAILURE),
    ("the pod cannot start: ", FailureReason.RUNNER_SYSTEM_FAILURE),
)


def _failure_kind(*, reason: str, exit_code: int | None) -> str:
    if reason in FailureReason.values:
        return reason
    for prefix, kind in _REASON_PREFIX_KINDS:
        if reason.startswith(prefix):
            return kind
    return FailureReason.SCRIPT_FAILURE if exit_code is not None else FailureReason.UNKNOWN_FAILURE


def _should_retry(job: Job, *, kind: str, exit_code: int | None) -> bool:
    """`retry: max` attempts are left and `retry: when` / `retry: exit_codes` match (either
    one; neither given means any failure)."""
    if job.attempt > job.retry_max:
        return False
    exit_codes = (job.spec or {}).get("retry_exit_codes") or []
    if not job.retry_when and not exit_codes:
        return True
    if RETRY_ALWAYS in job.retry_when or kind in job.retry_when:
        return True
    return exit_code is not None and exit_code in exit_codes


def _job_new_attempt(old: Job, *, now: datetime) -> Job:
    """Replace a finished job by a QUEUED copy (attempt + 1) with fresh steps; the old row is
    marked `retried` (kept as history, out of the DAG) and `needs` edges move to the copy."""
    if Job.objects.filter(pk=old.pk, retried=False).update(retried=True) != 1:
        raise StaleState(f"job {old.pk} was already replaced by a new attempt")
    old.retried = True
    new = Job(
        **{name: getattr(old, name) for name in _ATTEMPT_COPIED_FIELDS},
        attempt=old.attempt + 1,
        status=JobStatus.QUEUED,
        queued_at=now,
    )
    new.save(force_insert=True)
    Step.objects.bulk_create(
        Step(job=new, index=s.index, kind=s.kind, name=s.name, command=s.command)
        for s in Step.objects.filter(job=old).order_by("index")
    )
    JobDependency.objects.bulk_create(
        JobDependency(job=new, depends_on_id=depends_on_id, artifacts=artifacts)
        for depends_on_id, artifacts in JobDependency.objects.filter(job=old).values_list("depends_on_id", "artifacts")
    )
    JobDependency.objects.filter(depends_on=old).update(depends_on=new)
    _notify_queue([new])
    return new


@transaction.atomic
def job_start(*, job: Job, runner: Runner | None, lease_seconds: int) -> bool:
    """QUEUED -> RUNNING on `runner` with a lease. False if the job is no longer QUEUED
    (another runner started it, or it was cancelled)."""
    now = timezone.now()
    fields = {
        "status": JobStatus.RUNNING,
        "runner": runner,
        "started_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
    }
    if Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(**fields) != 1:
        return False
    for name, value in fields.items():
        setattr(job, name, value)
    _on_commit_run_changed(job.run_id)
    return True


# The job's end, guarded: it runs (on `runner`, if one is given: NULL matches any).
_FINISH_SQL = (
    f"UPDATE {Job._meta.db_table} SET status = %s, exit_code = %s, finished_at = %s, status_reason = %s "  # noqa: S608
    f"WHERE id = %s::uuid AND status = '{JobStatus.RUNNING.value}' "
    "AND runner_id IS NOT DISTINCT FROM coalesce(%s::uuid, runner_id)"
)


@transaction.atomic
def job_finish(
    *,
    job_id: Any,
    status: str,
    exit_code: int | None = None,
    reason: str = "",
    runner: Runner | None = None,
) -> bool:
    """RUNNING -> SUCCESS | FAILURE | CANCELLED, and, in the same transaction, promote the
    run's other jobs and re-derive the run's status.

    Returns False, changing nothing, if the job is not RUNNING (finished twice, cancelled,
    reaped) or, with `runner`, not running on that runner. A FAILURE that `retry` covers
    (attempt <= retry_max, and `retry: when` matching the failure kind, which is `reason` if
    that is a FailureReason, else script_failure; or `retry: exit_codes` matching the exit
    code) stays FAILURE on this attempt and queues the next attempt.
    """
    if status not in FINISH_STATUSES:
        raise ValueError(f"a job finishes as SUCCESS, FAILURE or CANCELLED, not {status!r}")
    run = lock_run_of_job(job_id)
    if run is None:
        return False
    # The job itself is read only for what a failure may need (its retry settings, a copy
    # for the next attempt): a success is the guarded update alone.
    job = None
    if status == JobStatus.FAILURE:
        guard = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING)
        job = (guard if runner is None else guard.filter(runner=runner)).first()
        if job is None:
            return False
    now = timezone.now()
    finished = [str(status), exit_code, now, reason[:500], job_id, runner.pk if runner is not None else None]
    with prepared_cursor() as cursor:
        cursor.execute(_FINISH_SQL, finished)
        if cursor.rowcount != 1:
            return False
    if job is not None:
        job.status, job.exit_code, job.finished_at, job.status_reason = status, exit_code, now, reason[:500]
        kind = _failure_kind(reason=reason, exit_code=exit_code)
        if _should_retry(job, kind=kind, exit_code=exit_code):
            _job_new_attempt(job, now=now)
    _promote_locked(run, now=now, changed=True)
    return True


def _steps_interrupt(job_id: Any, *, now: datetime) -> None:
    """An attempt that ends without its runner's last reports (lease lost, handed back) keeps
    no step PENDING or RUNNING in its record: they end CANCELLED, as in run_cancel. The
    runner's late reports on them are refused anyway (the job is no longer RUNNING)."""
    Step.objects.filter(job_id=job_id, status__in=[StepStatus.PENDING, StepStatus.RUNNING]).update(
        status=StepStatus.CANCELLED, finished_at=now
    )


@transaction.atomic
def job_requeue(*, job_id: Any, reason: str, runner: Runner | None = None) -> Job | None:
    """Give a RUNNING job back to the queue as a new attempt (its runner is going away, or
    lost it). The current attempt ends FAILURE with `reason` (runner_system_failure if
    empty). None if the job is not RUNNING (or, with `runner`, not on that runner)."""
    run = lock_run_of_job(job_id)
    if run is None:
        return None
    guard = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING)
    if runner is not None:
        guard = guard.filter(runner=runner)
    job = guard.first()
    if job is None:
        return None
    now = timezone.now()
    reason = (reason or FailureReason.RUNNER_SYSTEM_FAILURE)[:500]
    if guard.update(status=JobStatus.FAILURE, finished_at=now, status_reason=reason) != 1:
        return None
    job.status, job.finished_at, job.status_reason = JobStatus.FAILURE, now, reason
    _steps_interrupt(job_id, now=now)
    new = _job_new_attempt(job, now=now)
    _promote_locked(run, now=now, changed=True)
    return new


def _who(user: AbstractBaseUser | None) -> str:
    return user.get_username() if user is not None else ""


@transaction.atomic
def job_play(*, job: Job, user: AbstractBaseUser | None = None) -> Job:
    """Start a manual job (MANUAL -> QUEUED). Jobs that were skipped because it had not run
    are decided again; a finished run is reopened (RUNNING) until the job is done. Jobs
    decided already (queued, scheduled, running or done: a later stage that went on without
    an optional manual job) stay as they are, as in GitLab: neither the job nor the jobs
    decided again hold them back or stop them."""
    run = _lock_run(job.run_id)
    now = timezone.now()
    who = _who(user)
    updated = run is not None and Job.objects.filter(pk=job.pk, status=JobStatus.MANUAL, retried=False).update(
        status=JobStatus.QUEUED, queued_at=now, status_reason=f"started by {who}" if who else ""
    )
    if updated != 1:
        raise TransitionError(f"job {job.name!r} is not waiting to be started by a person")
    # Reopened here, as job_retry does, rather than by the promotion's status sync: a run that
    # a cancelled job ended is not promoted at all, and the jobs reset below would be left
    # PENDING for good (test_engine_properties found it).
    reopened = run.status in RunStatus.TERMINAL
    _run_reopen(run, now=now)
    _notify_queue([job])
    _reset_skipped_descendants(run, roots=[job.pk])
    _promote_locked(run, now=now, changed=True, run_changed=reopened)
    job.refresh_from_db()
    return job


@transaction.atomic
def job_dismiss(*, job: Job, status: str, reason: str) -> bool:
    """End a job that waits for a person (MANUAL) without running it: SKIPPED (an outdated
    deploy) or CANCELLED (a rejected deploy), with the reason; the run moves on. False,
    changing nothing, if the job no longer waits."""
    if status not in {JobStatus.SKIPPED, JobStatus.CANCELLED}:
        raise ValueError(f"a waiting job is dismissed as SKIPPED or CANCELLED, not {status!r}")
    run = _lock_run(job.run_id)
    now = timezone.now()
    dismissed = run is not None and Job.objects.filter(pk=job.pk, status=JobStatus.MANUAL, retried=False).update(
        status=status, status_reason=reason[:500], finished_at=now
    )
    if dismissed != 1:
        return False
    _promote_locked(run, now=now, changed=True)
    return True


@transaction.atomic
def job_retry(*, job: Job, user: AbstractBaseUser | None = None) -> Job:
    """Run a finished job (SUCCESS, FAILURE, CANCELLED) again: a new attempt (a new Job row,
    attempt + 1) is QUEUED at once, whatever its upstream; the old row is kept as `retried`.
    Jobs downstream that were skipped (through skipped jobs only) are decided again, and a
    finished run, even a cancelled one, is reopened as RUNNING. Returns the new attempt."""
    run = _lock_run(job.run_id)
    current = Job.objects.filter(pk=job.pk, retried=False, status__in=RETRYABLE_STATUSES).first()
    if run is None or current is None:
        raise TransitionError(f"job {job.name!r} cannot be retried: only a finished job's latest attempt can")
    now = timezone.now()
    _run_reopen(run, now=now)
    new = _job_new_attempt(current, now=now)
    who = _who(user)
    if who:
        Job.objects.filter(pk=new.pk).update(status_reason=f"retried by {who}")
        new.status_reason = f"retried by {who}"
    _reset_skipped_descendants(run, roots=[new.pk])
    _promote_locked(run, now=now, changed=True, run_changed=True)
    return new


@transaction.atomic
def run_cancel(*, run: PipelineRun, by: str = "", user: AbstractBaseUser | None = None) -> None:
    """Cancel every unfinished job (running ones too: their runner finds out at its next
    heartbeat or report) and the run. A finished run is left as it is. Audited: `user` is who
    cancelled it (none for the system, e.g. an auto-cancel, which `by` describes)."""
    locked = _lock_run(run.pk)
    if locked is None or locked.status in RunStatus.TERMINAL:
        return
    now = timezone.now()
    reason = f"cancelled by {by}" if by else "run cancelled"
    ids = list(
        Job.objects.filter(run_id=run.pk, retried=False, status__in=NON_TERMINAL_STATUSES).values_list("pk", flat=True)
    )
    Job.objects.filter(pk__in=ids, status__in=NON_TERMINAL_STATUSES).update(
        status=JobStatus.CANCELLED, status_reason=reason[:500], finished_at=now
    )
    Step.objects.filter(job_id__in=ids, status__in=[StepStatus.PENDING, StepStatus.RUNNING]).update(
        status=StepStatus.CANCELLED, finished_at=now
    )
    new = {
        "status": RunStatus.CANCELLED,
        "finished_at": now,
        "duration_s": max(0.0, (now - (locked.started_at or locked.created_at)).total_seconds()),
    }
    if PipelineRun.objects.filter(pk=run.pk, status=locked.status).update(**new) != 1:
        raise StaleState(f"run {run.pk} changed status under its lock")
    for name, value in new.items():
        setattr(run, name, value)
    audit_record(
        action=AuditAction.RUN_CANCEL,
        user=user,
        actor="" if user is not None else by,
        repository_id=Pipeline.objects.values_list("repository_id", flat=True).get(pk=locked.pipeline_id),
        target=run,
        details={"run": f"#{locked.number}", "reason": reason[:500], "jobs_cancelled": len(ids)},
    )
    _on_commit_run_changed(run.pk)


# --- Backstops (Celery beat).


def runs_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Queue delayed jobs whose time has come and re-promote every active run.

    One short transaction per run, each taking the run lock with SKIP LOCKED: a run locked
    by a concurrent job_finish (or another sweep) is being promoted right now and is left
    to it. Safe to run concurrently with itself and with every service here.
    """
    now = now or timezone.now()
    # Served by the partial index job_scheduled_idx.
    due = (
        Job.objects.filter(status=JobStatus.SCHEDULED, scheduled_at__lte=now)
        .order_by()
        .values_list("run_id", flat=True)
        .distinct()
    )
    # Served by the partial index run_active_idx.
    active = (
        PipelineRun.objects.filter(status__in=sorted(RunStatus.ACTIVE))
        .order_by("created_at")
        .values_list("pk", flat=True)
    )
    counts = {"runs_checked": 0, "runs_locked_elsewhere": 0, "runs_changed": 0, "jobs_moved": 0, "delayed_queued": 0}
    for run_id in dict.fromkeys([*due, *active]):
        with transaction.atomic():
            run = _lock_run(run_id, skip_locked=True)
            if run is None:
                counts["runs_locked_elsewhere"] += 1
                continue
            counts["runs_checked"] += 1
            result = _promote_locked(run, now=now)
        counts["runs_changed"] += bool(result.transitions or result.run_changed)
        counts["jobs_moved"] += len(result.transitions)
        counts["delayed_queued"] += sum(1 for t in result.transitions if t.old == JobStatus.SCHEDULED)
    return counts


def jobs_reap_expired_leases(*, now: datetime | None = None) -> dict[str, int]:
    """RUNNING jobs whose lease expired (their runner stopped heartbeating): the attempt
    ends FAILURE "lease expired" and a new attempt is queued, up to LEASE_MAX_ATTEMPTS (or
    retry_max + 1) attempts in all; past that the job stays failed and the run moves on."""
    now = now or timezone.now()
    # Served by the partial index job_running_lease_idx.
    expired = list(
        Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now)
        .order_by("lease_expires_at")
        .values_list("pk", "run_id")[:REAP_BATCH]
    )
    counts = {"requeued": 0, "failed": 0, "locked_elsewhere": 0}
    for job_id, run_id in expired:
        with transaction.atomic():
            run = _lock_run(run_id, skip_locked=True)
            if run is None:
                counts["locked_elsewhere"] += 1
                continue
            # The lease guard lets a heartbeat that just arrived win.
            guard = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING, lease_expires_at__lt=now)
            job = guard.first()
            if job is None:
                continue
            reason = f"lease expired on attempt {job.attempt}: the runner stopped reporting"
            if guard.update(status=JobStatus.FAILURE, finished_at=now, status_reason=reason) != 1:
                continue
            job.status, job.finished_at, job.status_reason = JobStatus.FAILURE, now, reason
            _steps_interrupt(job_id, now=now)
            if job.attempt < max(LEASE_MAX_ATTEMPTS, job.retry_max + 1):
                _job_new_attempt(job, now=now)
                counts["requeued"] += 1
            else:
                counts["failed"] += 1
            _promote_locked(run, now=now, changed=True)
    return counts
