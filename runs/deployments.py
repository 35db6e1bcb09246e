"""Deployments: environments, the deploy gate, approvals, deploy freezes, one deploy at a time
per environment, and redeploys (issue 7). Reads are in runs.deployment_selectors.

A *deploy job* is a job with `environment:` (action `start`, the default). Each attempt of
one that becomes ready gets a Deployment row in its repository's Environment (created on
first use), and only the deploy gate lets it run:

- **The gate in promotion.** Every path that queues a job ends in promotion
  (runs.services._promote_locked, under the run's row lock): the DAG making it ready, a
  person playing it, a retry or a requeued attempt. There `gate_promotion` asks of each
  deploy job about to be QUEUED whether it may start: approvals (protected environments),
  freezes, an outdated deploy, and the environment being free (under the environment's row
  lock, taken with SKIP LOCKED so promotion never waits on another run). If so its
  Deployment becomes RUNNING and the job is queued as planned (staging deploys just go).
  If not, the job is *held* instead: MANUAL and blocking (the run waits, BLOCKED), the
  Deployment WAITING with what it waits for. Deploy jobs finishing finish their Deployment
  in the same transaction.
- **The dispatcher.** `deployments_dispatch(environment_id=...)` looks at an environment's
  held deploys, newest run first, and starts (runs.services.job_play), skips as outdated
  (runs.services.job_dismiss) or keeps each. It runs after the commit of whatever may let
  a deploy go (a deploy finished or was held), inside approvals, and from the beat sweep
  (freezes end on their own; a lost after-commit hook is caught up).
- **Decisions.** `deployment_approve` / `deployment_reject` / `deployment_override_freeze`
  record an audited Approval row and, once enough allowed approvers approved, start the
  job. Without the right: PermissionDenied and nothing changes.

One deploy at a time: the newest ready deploy goes first, and a waiting deploy of an older
run than one that already started is outdated and skipped. Lock order, as everywhere: the
run row, then the environment row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit.models import AuditAction
from audit.services import audit_record
from cicd.db import prepared_cursor
from pipelines.config.spec import JobSpec, PipelineSpec
from pipelines.cron import CronError, CronExpression, parse_timezone
from pipelines.models import Pipeline, Trigger
from runs import dag, services
from runs.models import (
    Approval,
    ApprovalDecision,
    DeployFreeze,
    Deployment,
    DeploymentStatus,
    Environment,
    Job,
    JobStatus,
    PipelineRun,
    Step,
    StepKind,
    WaitingFor,
)
from runs.services import TransitionError

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

# Back-to-back freeze windows are followed this far to find where the freeze really ends.
_FREEZE_CHAIN_LIMIT = 500
_REASON_MAX = Deployment._meta.get_field("status_reason").max_length


def is_deploy_job(job: Job) -> bool:
    """A job that deploys: `environment:` with action start (prepare, verify, access and stop
    touch an environment without deploying to it)."""
    if not job.environment:
        return False
    return (((job.spec or {}).get("environment") or {}).get("action") or "start") == "start"


# --- What the gate decides.


@dataclass(frozen=True)
class _Verdict:
    start: bool = False
    skip: bool = False
    waiting_for: str = WaitingFor.NOTHING
    reason: str = ""


def _is_triggerer(user: AbstractBaseUser, run: PipelineRun) -> bool:
    if run.triggered_by_user_id is not None and run.triggered_by_user_id == user.pk:
        return True
    # A pusher or API caller known only by name: the same name counts as the same person.
    return bool(run.triggered_by) and run.triggered_by == user.get_username()


def _valid_approvals(deployment: Deployment, *, now: datetime):
    env, run = deployment.environment, deployment.run
    approvals = Approval.objects.filter(deployment=deployment, decision=ApprovalDecision.APPROVE)
    if env.approval_expiry_minutes:
        approvals = approvals.filter(created_at__gte=now - timedelta(minutes=env.approval_expiry_minutes))
    if not env.allow_self_approval:
        if run.triggered_by_user_id is not None:
            approvals = approvals.exclude(user_id=run.triggered_by_user_id)
        if run.triggered_by:
            approvals = approvals.exclude(username=run.triggered_by)
    return approvals


def approvals_count(deployment: Deployment, *, now: datetime | None = None) -> int:
    """Distinct people whose approval of the deployment still counts (not expired)."""
    return _valid_approvals(deployment, now=now or timezone.now()).values("username").distinct().count()


def _freeze_end(freeze: DeployFreeze, now: datetime) -> datetime | None:
    """When the freeze that is on at `now` ends (following back-to-back windows), or None."""
    try:
        expression, tz = CronExpression.parse(freeze.cron), parse_timezone(freeze.timezone)
    except CronError as exc:
        logger.warning("deploy freeze %s of %s is invalid, ignored: %s", freeze.pk, freeze.environment_id, exc)
        return None
    length = timedelta(minutes=freeze.duration_minutes)
    # The window that covers `now` opened in (now - length, now].
    start = expression.next_after(now - length, tz)
    if start is None or start > now:
        return None
    end = start + length
    for _ in range(_FREEZE_CHAIN_LIMIT):
        following = expression.next_after(start, tz)
        if following is None or following > end:
            break
        start, end = following, max(end, following + length)
    return end


def freeze_until(*, environment: Environment, now: datetime | None = None) -> datetime | None:
    """When the deploy freeze on the environment now ends, or None if there is none."""
    now = now or timezone.now()
    ends = [end for freeze in environment.freezes.all() if (end := _freeze_end(freeze, now)) is not None]
    return max(ends) if ends else None


def _evaluate(deployment: Deployment, *, now: datetime, wait_for_lock: bool) -> _Verdict:
    """May the waiting deployment start now? The caller holds its run's row lock. A START
    verdict holds the environment's row lock too (until the caller's transaction ends)."""
    env, run = deployment.environment, deployment.run
    newer = (
        Deployment.objects.filter(
            environment=env, status__in=DeploymentStatus.STARTED, run__created_at__gt=run.created_at
        )
        .select_related("run")
        .order_by("-run__created_at")
        .first()
    )
    if newer is not None:
        return _Verdict(
            skip=True,
            waiting_for=WaitingFor.OUTDATED,
            reason=f"outdated: run #{newer.run.number}, which is newer, already deployed to {env.name}",
        )
    if env.protected:
        count = approvals_count(deployment, now=now)
        if count < env.required_approvals:
            return _Verdict(
                waiting_for=WaitingFor.APPROVAL,
                reason=f"awaiting approval ({count} of {env.required_approvals}) to deploy to {env.name}",
            )
    until = freeze_until(environment=env, now=now)
    if until is not None:
        overridden = Approval.objects.filter(deployment=deployment, decision=ApprovalDecision.OVERRIDE_FREEZE)
        if not overridden.exists():
            return _Verdict(
                waiting_for=WaitingFor.FREEZE,
                reason=f"deploy freeze until {until.strftime('%Y-%m-%d %H:%M %Z')} on {env.name}",
            )
    locked = Environment.objects.select_for_update(skip_locked=not wait_for_lock).filter(pk=env.pk)
    if not locked.values_list("pk", flat=True):
        return _Verdict(waiting_for=WaitingFor.ENVIRONMENT, reason=f"waiting for another deploy to {env.name}")
    busy = (
        Deployment.objects.filter(environment=env, status=DeploymentStatus.RUNNING)
        .exclude(pk=deployment.pk)
        .select_related("run")
        .first()
    )
    if busy is not None:
        return _Verdict(
            waiting_for=WaitingFor.ENVIRONMENT,
            reason=f"waiting for the deploy of run #{busy.run.number} to {env.name} to finish",
        )
    return _Verdict(start=True)


# --- Deployment rows.


def _environment_for(run: PipelineRun, job: Job) -> Environment:
    repository_id = Pipeline.objects.values_list("repository_id", flat=True).get(pk=run.pipeline_id)
    url = str(((job.spec or {}).get("environment") or {}).get("url") or "")
    environment, created = Environment.objects.get_or_create(
        repository_id=repository_id, name=job.environment, defaults={"url": url[:1000]}
    )
    if not created and url and environment.url != url:
        Environment.objects.filter(pk=environment.pk).update(url=url[:1000])
        environment.url = url
    return environment


def _deploy_image(run: PipelineRun, job: Job) -> str:
    """The `deploy: image:` with the job's variables expanded, as the runner will see it."""
    from runners.deploy.job import expand
    from runners.models import Runner
    from runners.variables import JobFacts, job_variables

    image = ((job.spec or {}).get("deploy") or {}).get("image")
    if not image:
        return ""
    job.run = run
    variables = job_variables(job=JobFacts.of(job), runner=Runner(tags=[]), job_token="")
    return expand(str(image), variables)


def _deployment_create(run: PipelineRun, job: Job) -> Deployment:
    from runners.deploy.job import image_digest

    image = _deploy_image(run, job)[:1000]
    deployment = Deployment.objects.create(
        environment=_environment_for(run, job),
        run=run,
        job=job,
        image=image,
        image_digest=image_digest(image),
        strategy=str(((job.spec or {}).get("deploy") or {}).get("strategy") or ("rolling" if image else "")),
        status=DeploymentStatus.WAITING,
    )
    deployment.run = run
    return deployment


def _waiting_deployment(run: PipelineRun, job: Job, deployment: Deployment | None) -> Deployment:
    """The job's deployment, WAITING: created on its first time, or waiting again when a
    skipped deploy job is decided again (its upstream was retried)."""
    if deployment is None:
        return _deployment_create(run, job)
    if deployment.status != DeploymentStatus.WAITING:
        fields = {"status": DeploymentStatus.WAITING, "finished_at": None, "started_at": None, "status_reason": ""}
        Deployment.objects.filter(pk=deployment.pk, status=deployment.status).update(**fields)
        for name, value in fields.items():
            setattr(deployment, name, value)
    return deployment


def _set_waiting(deployment: Deployment, *, waiting_for: str, reason: str) -> None:
    reason = reason[:_REASON_MAX]
    if (deployment.waiting_for, deployment.status_reason) == (waiting_for, reason):
        return
    Deployment.objects.filter(pk=deployment.pk, status=DeploymentStatus.WAITING).update(
        waiting_for=waiting_for, status_reason=reason
    )
    deployment.waiting_for, deployment.status_reason = waiting_for, reason


def _deployment_start(deployment: Deployment, *, now: datetime, user: AbstractBaseUser | None) -> None:
    """WAITING -> RUNNING; the caller holds the environment's row lock (see _evaluate)."""
    run = deployment.run
    previous = (
        Deployment.objects.filter(environment_id=deployment.environment_id, status=DeploymentStatus.SUCCEEDED)
        .order_by("-finished_at")
        .first()
    )
    fields = {
        "status": DeploymentStatus.RUNNING,
        "waiting_for": WaitingFor.NOTHING,
        "status_reason": "",
        "started_at": now,
        "previous": previous,
        "deployed_by": user if user is not None else run.triggered_by_user,
        "deployed_by_name": user.get_username() if user is not None else run.triggered_by,
    }
    if Deployment.objects.filter(pk=deployment.pk, status=DeploymentStatus.WAITING).update(**fields) != 1:
        raise services.StaleState(f"deployment {deployment.pk} is no longer waiting")
    for name, value in fields.items():
        setattr(deployment, name, value)


def deployment_outcome(*, job_status: str, reason: str) -> str:
    """The status a deployment ends with when its job ended so."""
    from runners.deploy.job import ROLLED_BACK_REASON

    if job_status == JobStatus.SUCCESS:
        return DeploymentStatus.SUCCEEDED
    if job_status == JobStatus.FAILURE:
        return DeploymentStatus.ROLLED_BACK if reason.startswith(ROLLED_BACK_REASON) else DeploymentStatus.FAILED
    if job_status == JobStatus.CANCELLED:
        return DeploymentStatus.CANCELLED
    return DeploymentStatus.SKIPPED


def _deployment_finish(deployment: Deployment, *, job_status: str, reason: str, now: datetime) -> bool:
    """Finish an active deployment whose job ended. False if it was finished already."""
    status = deployment_outcome(job_status=job_status, reason=reason)
    fields = {"status": status, "finished_at": now, "waiting_for": WaitingFor.NOTHING, "status_reason": reason[:500]}
    if Deployment.objects.filter(pk=deployment.pk, status=deployment.status).update(**fields) != 1:
        return False
    for name, value in fields.items():
        setattr(deployment, name, value)
    return True


# --- The gate in promotion.


@dataclass
class _AfterCommit:
    """What the gate's changes call for once they are committed."""

    dispatch: set[Any] = field(default_factory=set)  # environments whose held deploys may go
    finished: list[Any] = field(default_factory=list)  # deployments to announce

    def register(self) -> None:
        if self.dispatch or self.finished:
            transaction.on_commit(
                partial(deployments_after_commit, environment_ids=sorted(self.dispatch), finished=self.finished)
            )


def gate_promotion(
    *,
    run: PipelineRun,
    jobs: dict[Any, Job],
    nodes: dict[Any, dag.Node],
    transitions: list[dag.Transition],
    now: datetime,
) -> list[dag.Transition]:
    """The deploy gate, called by promotion with the run's row lock held, between planning and
    applying: returns the transitions to apply (deploy jobs that may not start yet are held
    as blocking MANUAL jobs instead of QUEUED) and keeps the run's Deployments in step.

    Costs nothing for a run without deploy jobs; otherwise a few queries per deploy job that
    changes (not per job of the run)."""
    deploy_jobs = {pk: job for pk, job in jobs.items() if is_deploy_job(job)}
    if not deploy_jobs:
        return transitions
    planned = {t.job_id: t for t in transitions}
    deployments = {
        d.job_id: d
        for d in Deployment.objects.filter(
            Q(job_id__in=list(deploy_jobs)) | Q(run=run, status__in=DeploymentStatus.ACTIVE)
        ).select_related("environment", "job")
    }
    after = _AfterCommit()
    # Deployments whose job ended (in this transaction or, for a replaced attempt, before).
    for deployment in deployments.values():
        deployment.run = run
        if deployment.status not in DeploymentStatus.ACTIVE:
            continue
        node = nodes.get(deployment.job_id)
        status = node.status if node is not None else deployment.job.status
        if status not in JobStatus.TERMINAL:
            continue
        reason = planned[deployment.job_id].reason if deployment.job_id in planned else deployment.job.status_reason
        was_running = deployment.status == DeploymentStatus.RUNNING
        if _deployment_finish(deployment, job_status=status, reason=reason or "", now=now) and was_running:
            after.dispatch.add(deployment.environment_id)
            after.finished.append(deployment.pk)
    held: list[Any] = []
    result = list(transitions)
    for pk, job in sorted(deploy_jobs.items(), key=lambda item: (item[1].stage_index, item[1].name)):
        node, deployment = nodes[pk], deployments.get(pk)
        if node.status == JobStatus.MANUAL and pk in planned:
            # Became ready, and waits for a person (`when: manual`): approval is how one
            # starts it on a protected environment.
            deployment = _waiting_deployment(run, job, deployment)
            protected = deployment.environment.protected
            _set_waiting(
                deployment,
                waiting_for=WaitingFor.APPROVAL if protected else WaitingFor.MANUAL,
                reason=f"awaiting approval to deploy to {deployment.environment.name}"
                if protected
                else "waiting for a person to start it",
            )
            continue
        if node.status != JobStatus.QUEUED or (deployment and deployment.status == DeploymentStatus.RUNNING):
            continue
        deployment = _waiting_deployment(run, job, deployment)
        verdict = _evaluate(deployment, now=now, wait_for_lock=False)
        if verdict.start:
            _deployment_start(deployment, now=now, user=None)
            continue
        _set_waiting(deployment, waiting_for=verdict.waiting_for, reason=verdict.reason)
        after.dispatch.add(deployment.environment_id)
        held.append(pk)
        node.status, node.blocking = JobStatus.MANUAL, True
        if pk in planned:
            result[result.index(planned[pk])] = replace(planned[pk], new=JobStatus.MANUAL, reason=verdict.reason)
        else:
            result.append(dag.Transition(pk, JobStatus.QUEUED, JobStatus.MANUAL, verdict.reason))
    if held:
        # Held, it gates the run (BLOCKED) like a production deploy waiting for a person.
        Job.objects.filter(pk__in=held).update(blocking=True)
        for pk in held:
            jobs[pk].blocking = True
    after.register()
    return result


def deployments_after_commit(*, environment_ids: list[Any], finished: list[Any]) -> None:
    """After the gate's changes commit: let held deploys go, announce finished ones. Never
    raises (the caller's work is committed); the beat sweep catches up on anything missed."""
    from runs.notifications import deployment_notifications_enqueue

    for environment_id in environment_ids:
        try:
            deployments_dispatch(environment_id=environment_id)
        except Exception:
            logger.exception("dispatching the deploys of environment %s failed; the sweep retries", environment_id)
    for deployment_id in finished:
        try:
            deployment_notifications_enqueue(deployment_id=deployment_id)
        except Exception:
            logger.exception("queueing the notifications of deployment %s failed", deployment_id)


# Run after every change of every run (most have no deployment): a prepared statement
# (cicd.db), served by the deployment's run_id index.
_STALE_DEPLOYMENTS_SQL = (
    f"SELECT deployment.id FROM {Deployment._meta.db_table} AS deployment "  # noqa: S608 (our tables)
    f"JOIN {Job._meta.db_table} AS job ON job.id = deployment.job_id "
    "WHERE deployment.run_id = %s::uuid AND deployment.status = ANY(%s::varchar[]) AND job.status = ANY(%s::varchar[])"
)


def deployments_after_run_changed(*, run_id: Any) -> None:
    """The engine's after-commit hook: finish the deployments of a run whose jobs ended
    without promotion (a cancelled run). One indexed query for a run without deployments."""
    active = sorted(str(status) for status in DeploymentStatus.ACTIVE)
    ended = sorted(str(status) for status in JobStatus.TERMINAL)
    with prepared_cursor() as cursor:
        cursor.execute(_STALE_DEPLOYMENTS_SQL, [run_id, active, ended])
        stale = [deployment_id for (deployment_id,) in cursor.fetchall()]
    for deployment_id in stale:
        _finish_stale(deployment_id=deployment_id)


@transaction.atomic
def _finish_stale(*, deployment_id: Any) -> bool:
    deployment = Deployment.objects.select_related("job").filter(pk=deployment_id).first()
    if deployment is None:
        return False
    services._lock_run(deployment.run_id)
    deployment.refresh_from_db(fields=["status"])
    job = Job.objects.get(pk=deployment.job_id)
    if deployment.status not in DeploymentStatus.ACTIVE or job.status not in JobStatus.TERMINAL:
        return False
    was_running = deployment.status == DeploymentStatus.RUNNING
    if not _deployment_finish(deployment, job_status=job.status, reason=job.status_reason, now=timezone.now()):
        return False
    if was_running:
        _AfterCommit(dispatch={deployment.environment_id}, finished=[deployment.pk]).register()
    return True


# --- The dispatcher.


def deployments_dispatch(*, environment_id: Any) -> dict[str, int]:
    """Start, skip or keep each held deploy of the environment, newest run first, each in its
    own short transaction. Safe to run concurrently with itself and with promotion."""
    waiting = list(
        Deployment.objects.filter(environment_id=environment_id, status=DeploymentStatus.WAITING)
        .exclude(waiting_for=WaitingFor.MANUAL)
        .order_by("-run__created_at", "job__stage_index", "job__name")
        .values_list("pk", flat=True)
    )
    counts = {"started": 0, "skipped": 0, "waiting": 0, "gone": 0}
    for deployment_id in waiting:
        counts[_dispatch_one(deployment_id=deployment_id)] += 1
    return counts


@transaction.atomic
def _dispatch_one(*, deployment_id: Any) -> str:
    deployment = Deployment.objects.filter(pk=deployment_id).only("run_id").first()
    if deployment is None:
        return "gone"
    run = services._lock_run(deployment.run_id)
    if run is None:
        return "gone"
    return _dispatch_locked(_fresh(deployment_id, run), now=timezone.now(), user=None)


def _fresh(deployment_id: Any, run: PipelineRun) -> Deployment:
    deployment = Deployment.objects.select_related("environment", "job").get(pk=deployment_id)
    deployment.run = run
    return deployment


def _dispatch_locked(deployment: Deployment, *, now: datetime, user: AbstractBaseUser | None) -> str:
    """Start, skip or keep one waiting deployment; the caller holds its run's row lock."""
    job = deployment.job
    if deployment.status != DeploymentStatus.WAITING:
        return "gone"
    if job.status in JobStatus.TERMINAL:
        _deployment_finish(deployment, job_status=job.status, reason=job.status_reason, now=now)
        return "gone"
    if job.status != JobStatus.MANUAL:
        return "waiting"
    verdict = _evaluate(deployment, now=now, wait_for_lock=True)
    if verdict.start:
        _deployment_start(deployment, now=now, user=user)
        services.job_play(job=job, user=user)
        return "started"
    if verdict.skip:
        _deployment_finish(deployment, job_status=JobStatus.SKIPPED, reason=verdict.reason, now=now)
        services.job_dismiss(job=job, status=JobStatus.SKIPPED, reason=verdict.reason)
        return "skipped"
    if verdict.reason != deployment.status_reason:
        # The held job says why it waits too (what the run page shows).
        Job.objects.filter(pk=job.pk, status=JobStatus.MANUAL).update(status_reason=verdict.reason[:500])
    _set_waiting(deployment, waiting_for=verdict.waiting_for, reason=verdict.reason)
    return "waiting"


# --- Decisions of people.


def approval_refusal(*, user: AbstractBaseUser, deployment: Deployment, rejecting: bool = False) -> str | None:
    """Why `user` may not approve (or reject) the deployment, or None if they may."""
    env = deployment.environment
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return "log in to approve deployments"
    from pipelines.permissions import can_view

    if not can_view(user, env.repository):
        # An approver of one repository's environments decides nothing about another's.
        return f"{user.get_username()} may not approve or reject deployments to {env.name}"
    if env.approver_group_id is not None:
        allowed = user.is_superuser or user.groups.filter(pk=env.approver_group_id).exists()
    else:
        allowed = user.has_perm("runs.approve_deployment")
    if not allowed:
        return f"{user.get_username()} may not approve or reject deployments to {env.name}"
    if not rejecting and not env.allow_self_approval and _is_triggerer(user, deployment.run):
        return f"{user.get_username()} triggered this run and may not approve its deploy to {env.name}"
    return None


def _locked_waiting(deployment: Deployment) -> Deployment:
    run = services._lock_run(deployment.run_id)
    if run is None:
        raise TransitionError("the run no longer exists")
    fresh = _fresh(deployment.pk, run)
    if fresh.status != DeploymentStatus.WAITING:
        raise TransitionError(f"the deployment is {fresh.get_status_display().lower()}, not waiting")
    return fresh


_AUDIT_ACTIONS = {
    ApprovalDecision.APPROVE: AuditAction.DEPLOYMENT_APPROVE,
    ApprovalDecision.REJECT: AuditAction.DEPLOYMENT_REJECT,
    ApprovalDecision.OVERRIDE_FREEZE: AuditAction.DEPLOYMENT_OVERRIDE_FREEZE,
}


def _record(deployment: Deployment, *, user: AbstractBaseUser, decision: str, comment: str) -> Approval:
    approval = Approval.objects.create(
        deployment=deployment,
        job_id=deployment.job_id,
        user=user,
        username=user.get_username(),
        decision=decision,
        comment=comment,
    )
    audit_record(
        action=_AUDIT_ACTIONS[decision],
        user=user,
        repository_id=deployment.environment.repository_id,
        target=deployment,
        details={"environment": deployment.environment.name, "job": str(deployment.job_id), "comment": comment},
    )
    return approval


@transaction.atomic
def deployment_approve(*, deployment: Deployment, user: AbstractBaseUser, comment: str = "") -> Approval:
    """Approve a deploy waiting on a protected environment. Once enough allowed approvers
    approved, it starts at once (or waits for a freeze or another deploy). Raises
    PermissionDenied (nothing changes) or TransitionError (not waiting, already approved)."""
    deployment = _locked_waiting(deployment)
    if not deployment.environment.protected:
        raise TransitionError(f"{deployment.environment.name} is not protected: its deploys need no approval")
    refusal = approval_refusal(user=user, deployment=deployment)
    if refusal:
        raise PermissionDenied(refusal)
    now = timezone.now()
    if _valid_approvals(deployment, now=now).filter(user=user).exists():
        raise TransitionError(f"{user.get_username()} already approved this deploy")
    approval = _record(deployment, user=user, decision=ApprovalDecision.APPROVE, comment=comment)
    if deployment.job.status == JobStatus.MANUAL:
        _dispatch_locked(deployment, now=now, user=user)
    return approval


@transaction.atomic
def deployment_reject(*, deployment: Deployment, user: AbstractBaseUser, comment: str = "") -> Approval:
    """Reject a waiting deploy: it never runs. Its job ends CANCELLED with the reason (a retry
    of it is a new deploy that waits again). Raises PermissionDenied or TransitionError."""
    deployment = _locked_waiting(deployment)
    refusal = approval_refusal(user=user, deployment=deployment, rejecting=True)
    if refusal:
        raise PermissionDenied(refusal)
    approval = _record(deployment, user=user, decision=ApprovalDecision.REJECT, comment=comment)
    reason = f"rejected by {user.get_username()}" + (f": {comment}" if comment else "")
    now = timezone.now()
    fields = {"status": DeploymentStatus.REJECTED, "waiting_for": WaitingFor.NOTHING, "finished_at": now}
    Deployment.objects.filter(pk=deployment.pk, status=DeploymentStatus.WAITING).update(
        status_reason=reason[:_REASON_MAX], **fields
    )
    if deployment.job.status == JobStatus.MANUAL:
        services.job_dismiss(job=deployment.job, status=JobStatus.CANCELLED, reason=f"deploy {reason}")
    return approval


@transaction.atomic
def deployment_override_freeze(*, deployment: Deployment, user: AbstractBaseUser, comment: str) -> Approval:
    """Let a deploy start although a deploy freeze is on (runs.override_freeze permission, and
    a comment saying why: the decision is audited). Approvals are still needed."""
    if not getattr(user, "is_authenticated", False) or not user.has_perm("runs.override_freeze"):
        raise PermissionDenied(f"{user.get_username() or 'anonymous'} may not override deploy freezes")
    if not comment.strip():
        raise ValueError("say why the freeze is overridden: the comment is the audit record")
    deployment = _locked_waiting(deployment)
    approval = _record(deployment, user=user, decision=ApprovalDecision.OVERRIDE_FREEZE, comment=comment)
    if deployment.job.status == JobStatus.MANUAL and deployment.waiting_for != WaitingFor.MANUAL:
        _dispatch_locked(deployment, now=timezone.now(), user=user)
    return approval


# --- Redeploy: the manual rollback.


def _redeploy_job_spec(source: Deployment) -> JobSpec:
    job, spec = source.job, source.job.spec or {}
    commands: dict[str, list[str]] = {kind: [] for kind in StepKind.values}
    for kind, command in Step.objects.filter(job=job).order_by("index").values_list("kind", "command"):
        commands[kind].append(command)
    deploy = dict(spec["deploy"]) if spec.get("deploy") else None
    if deploy is not None and source.image:
        deploy["image"] = source.image  # what was deployed, exactly: nothing is built again
    return JobSpec(
        name=job.name,
        stage=job.stage,
        script=commands[StepKind.SCRIPT],
        before_script=commands[StepKind.BEFORE_SCRIPT],
        after_script=commands[StepKind.AFTER_SCRIPT],
        needs=[],
        dependencies=[],
        tags=list(job.tags),
        timeout_s=job.timeout_s,
        interruptible=job.interruptible,
        resource_group=job.resource_group or None,
        environment=spec.get("environment"),
        cache=spec.get("cache") or [],
        image=spec.get("image"),
        services=spec.get("services") or [],
        variables=dict(spec.get("variables") or {}),
        deploy=deploy,
    )


@transaction.atomic
def deployment_redeploy(*, deployment: Deployment, user: AbstractBaseUser) -> PipelineRun:
    """Deploy what an earlier successful deployment deployed, again: a new run (trigger MANUAL,
    the same commit) with only that deploy job, its image pinned to the recorded one. It goes
    through the gate like any deploy (a protected environment needs approvals again)."""
    if not getattr(user, "is_authenticated", False) or not user.has_perm("runs.redeploy_deployment"):
        raise PermissionDenied(f"{user.get_username() or 'anonymous'} may not redeploy")
    source = Deployment.objects.select_related("job", "run__pipeline", "environment").get(pk=deployment.pk)
    if source.status != DeploymentStatus.SUCCEEDED:
        raise TransitionError("only a deployment that succeeded can be deployed again")
    job_spec = _redeploy_job_spec(source)
    old = source.run
    run = services.run_create(
        pipeline=old.pipeline,
        spec=PipelineSpec(stages=[job_spec.stage], jobs=[job_spec]),
        commit_sha=old.commit_sha,
        branch=old.branch,
        is_tag=old.is_tag,
        trigger=Trigger.MANUAL,
        triggered_by=user.get_username(),
        triggered_by_user=user,
        variables=dict(old.variables or {}),
        commit_message=old.commit_message,
        config_source=old.config_source,
    )
    Deployment.objects.filter(run=run).update(redeploy_of=source)
    audit_record(
        action=AuditAction.DEPLOYMENT_REDEPLOY,
        user=user,
        repository_id=source.environment.repository_id,
        target=source,
        details={"environment": source.environment.name, "image": source.image, "run": str(run.pk)},
    )
    return run


# --- The backstop (Celery beat).


def deployments_sweep() -> dict[str, int]:
    """Finish deployments whose job ended unnoticed, and dispatch every environment with held
    deploys (freezes end and approvals expire on their own). Safe to run twice at once."""
    counts = {"finished": 0, "started": 0, "skipped": 0}
    # Served by the partial index deployment_active_idx.
    stale = (
        Deployment.objects.filter(status__in=DeploymentStatus.ACTIVE, job__status__in=JobStatus.TERMINAL)
        .order_by()
        .values_list("pk", flat=True)
    )
    for deployment_id in list(stale):
        counts["finished"] += _finish_stale(deployment_id=deployment_id)
    environments = (
        Deployment.objects.filter(status=DeploymentStatus.WAITING)
        .exclude(waiting_for=WaitingFor.MANUAL)
        .order_by()
        .values_list("environment_id", flat=True)
        .distinct()
    )
    for environment_id in list(environments):
        dispatched = deployments_dispatch(environment_id=environment_id)
        counts["started"] += dispatched["started"]
        counts["skipped"] += dispatched["skipped"]
    return counts
