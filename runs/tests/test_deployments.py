"""Deployments through the engine: the deploy gate, approvals, freezes, one deploy at a time per
environment, deployment records and redeploys (runs.deployments)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from pipelines.models import Repository, Trigger
from runs import deployments
from runs.deployments import (
    deployment_approve,
    deployment_override_freeze,
    deployment_redeploy,
    deployment_reject,
    deployments_sweep,
    freeze_until,
)
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
    RunStatus,
    Step,
    StepKind,
    WaitingFor,
)
from runs.services import TransitionError, job_finish, job_retry, job_start, run_cancel, run_create
from runs.tasks import sweep_deployments
from runs.tests.factories import PipelineFactory, current_job, execute, job, run_status, spec, statuses

pytestmark = pytest.mark.django_db

IMAGE = "registry.test/shop/web:$CI_COMMIT_SHORT_SHA"
SHA = "0123abcd" * 5


def deploy_job(name: str, environment: str, *, needs: list[str] | None = None, **fields) -> object:
    fields.setdefault("deploy", {"namespace": "shop", "deployment": "web", "image": IMAGE})
    return job(name, "deploy", needs=needs, environment={"name": environment, "action": "start"}, **fields)


def user_with(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username=username, password="x")
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="runs", codename__in=codenames))
    return User.objects.get(pk=user.pk)  # a fresh object: permissions are cached per instance


@pytest.fixture
def pipeline():
    # Public, so that every logged-in approver can see it; private repositories are below.
    return PipelineFactory(repository__is_private=False)


@pytest.fixture
def approver() -> User:
    return user_with("grace", "approve_deployment")


@pytest.fixture
def second_approver() -> User:
    return user_with("linus", "approve_deployment")


@pytest.fixture
def outsider() -> User:
    return user_with("mallory")


@pytest.fixture
def triggerer() -> User:
    """Allowed to approve, but triggers the runs below."""
    return user_with("alice", "approve_deployment")


@pytest.fixture
def production(pipeline) -> Environment:
    return Environment.objects.create(repository=pipeline.repository, name="production", protected=True)


def start_run(pipeline, *jobs, user: User | None = None, sha: str = SHA) -> PipelineRun:
    return run_create(
        pipeline=pipeline,
        spec=spec(*jobs, stages=["test", "deploy"]),
        commit_sha=sha,
        branch="main",
        trigger=Trigger.PUSH,
        triggered_by=user.username if user else "alice",
        triggered_by_user=user,
    )


def deploy_after_tests(pipeline, environment: str, *, user: User | None = None, sha: str = SHA) -> PipelineRun:
    """A run whose unit tests passed; its deploy job to `environment` was then ready."""
    run = start_run(pipeline, job("unit", "test"), deploy_job("deploy", environment), user=user, sha=sha)
    execute(run, "unit")
    return run


def deployment_of(run: PipelineRun, name: str = "deploy") -> Deployment:
    return Deployment.objects.select_related("environment").get(job=current_job(run, name))


def finish(run: PipelineRun, name: str = "deploy", status: str = JobStatus.SUCCESS, reason: str = "") -> None:
    target = current_job(run, name)
    assert job_start(job=target, runner=None, lease_seconds=60)
    assert job_finish(job_id=target.pk, status=status, exit_code=0 if status == JobStatus.SUCCESS else 1, reason=reason)


# --- automatic deploys ---------------------------------------------------------------------------


def test_staging_deploys_automatically_once_the_tests_pass(pipeline) -> None:
    run = start_run(pipeline, job("unit", "test"), deploy_job("deploy", "staging"))
    assert statuses(run) == {"unit": JobStatus.QUEUED, "deploy": JobStatus.PENDING}
    assert not Deployment.objects.exists()

    execute(run, "unit")

    assert statuses(run) == {"unit": JobStatus.SUCCESS, "deploy": JobStatus.QUEUED}
    deployment = deployment_of(run)
    assert (deployment.environment.name, deployment.status) == ("staging", DeploymentStatus.RUNNING)
    assert deployment.environment.repository == pipeline.repository
    assert not deployment.environment.protected
    assert deployment.deployed_by_name == "alice"
    assert deployment.image == f"registry.test/shop/web:{SHA[:8]}"
    assert deployment.started_at is not None

    finish(run)

    deployment.refresh_from_db()
    assert (deployment.status, run_status(run)) == (DeploymentStatus.SUCCEEDED, RunStatus.SUCCESS)
    assert deployment.finished_at >= deployment.started_at


def test_staging_does_not_deploy_when_the_tests_fail(pipeline) -> None:
    run = start_run(pipeline, job("unit", "test"), deploy_job("deploy", "staging"))

    execute(run, "unit", JobStatus.FAILURE)

    assert statuses(run)["deploy"] == JobStatus.SKIPPED
    assert not Deployment.objects.exists()


def test_a_deploy_job_gets_a_deploy_step_between_its_script_and_after_script(pipeline) -> None:
    run = start_run(pipeline, deploy_job("deploy", "staging", script=["./build-notes.sh"], after_script=["echo bye"]))

    steps = list(Step.objects.filter(job__run=run).order_by("index").values_list("kind", "command"))

    assert steps == [
        (StepKind.SCRIPT, "./build-notes.sh"),
        (StepKind.DEPLOY, f"conveyor-deploy rolling shop/web {IMAGE}"),
        (StepKind.AFTER_SCRIPT, "echo bye"),
    ]


def test_a_deployment_pins_the_digest_of_an_image_named_by_digest(pipeline) -> None:
    digest = "sha256:" + "ab" * 32
    run = start_run(pipeline, deploy_job("deploy", "staging", deploy={"image": f"registry.test/web@{digest}"}))

    deployment = deployment_of(run)

    assert (deployment.image, deployment.image_digest) == (f"registry.test/web@{digest}", digest)


def test_a_job_that_stops_an_environment_is_not_a_deployment(pipeline) -> None:
    stop = job("stop-review", "deploy", environment={"name": "review", "action": "stop"})

    run = start_run(pipeline, stop)

    assert statuses(run) == {"stop-review": JobStatus.QUEUED}
    assert not Deployment.objects.exists()


@pytest.mark.parametrize(
    ("status", "reason", "recorded"),
    [
        (JobStatus.FAILURE, "deploy rolled back: pod web-2 is in CrashLoopBackOff", DeploymentStatus.ROLLED_BACK),
        (JobStatus.FAILURE, "deploy failed: reading deployment shop/web: 404 Not Found", DeploymentStatus.FAILED),
        (JobStatus.FAILURE, "step './deploy.sh' exited with 2", DeploymentStatus.FAILED),
        (JobStatus.CANCELLED, "cancelled", DeploymentStatus.CANCELLED),
    ],
)
def test_the_deployment_records_how_its_job_ended(pipeline, status, reason, recorded) -> None:
    run = start_run(pipeline, deploy_job("deploy", "staging"))

    finish(run, status=status, reason=reason)

    deployment = deployment_of(run)
    assert (deployment.status, deployment.status_reason) == (recorded, reason)


def test_a_job_without_an_environment_makes_no_extra_queries_in_promotion(pipeline, django_assert_num_queries) -> None:
    run = start_run(pipeline, job("unit", "test"), job("package", "deploy"))
    unit = current_job(run, "unit")
    assert job_start(job=unit, runner=None, lease_seconds=60)
    # Savepoint, the run lock, the job's guarded update (a success reads no job); promotion:
    # jobs, edges, one guarded update, the queue keys, NOTIFY; release. Nothing for deployments.
    with django_assert_num_queries(9):
        job_finish(job_id=unit.pk, status=JobStatus.SUCCESS, exit_code=0)


# --- approvals -----------------------------------------------------------------------------------


def test_a_production_deploy_waits_for_approval_and_blocks_the_run(pipeline, production) -> None:
    run = deploy_after_tests(pipeline, "production")

    deploy = current_job(run, "deploy")
    assert (deploy.status, deploy.blocking) == (JobStatus.MANUAL, True)
    assert deploy.status_reason == "awaiting approval (0 of 1) to deploy to production"
    assert run_status(run) == RunStatus.BLOCKED
    deployment = deployment_of(run)
    assert (deployment.status, deployment.waiting_for) == (DeploymentStatus.WAITING, WaitingFor.APPROVAL)


def test_an_allowed_approver_approves_and_the_deploy_starts(pipeline, production, approver) -> None:
    run = deploy_after_tests(pipeline, "production")

    approval = deployment_approve(deployment=deployment_of(run), user=approver, comment="ship it")

    assert (approval.username, approval.decision, approval.comment) == ("grace", ApprovalDecision.APPROVE, "ship it")
    deploy = current_job(run, "deploy")
    assert (deploy.status, deploy.status_reason) == (JobStatus.QUEUED, "started by grace")
    deployment = deployment_of(run)
    assert (deployment.status, deployment.deployed_by, deployment.deployed_by_name) == (
        DeploymentStatus.RUNNING,
        approver,
        "grace",
    )
    assert run_status(run) == RunStatus.RUNNING


def test_someone_without_the_permission_is_refused_and_nothing_changes(pipeline, production, outsider) -> None:
    run = deploy_after_tests(pipeline, "production")

    with pytest.raises(PermissionDenied, match="mallory may not approve or reject deployments to production"):
        deployment_approve(deployment=deployment_of(run), user=outsider)
    with pytest.raises(PermissionDenied):
        deployment_reject(deployment=deployment_of(run), user=outsider)

    assert not Approval.objects.exists()
    assert current_job(run, "deploy").status == JobStatus.MANUAL
    assert deployment_of(run).status == DeploymentStatus.WAITING


def test_an_approver_who_cannot_see_a_private_repository_decides_nothing_there(pipeline, production, approver):
    Repository.objects.filter(pk=pipeline.repository_id).update(is_private=True)
    run = deploy_after_tests(pipeline, "production")

    with pytest.raises(PermissionDenied, match="grace may not approve or reject deployments to production"):
        deployment_approve(deployment=deployment_of(run), user=approver)

    assert not Approval.objects.exists()
    assert current_job(run, "deploy").status == JobStatus.MANUAL


def test_the_person_who_triggered_the_run_may_not_approve_its_deploy(pipeline, production, triggerer) -> None:
    run = deploy_after_tests(pipeline, "production", user=triggerer)

    with pytest.raises(PermissionDenied, match="alice triggered this run and may not approve its deploy"):
        deployment_approve(deployment=deployment_of(run), user=triggerer)

    assert not Approval.objects.exists()
    assert current_job(run, "deploy").status == JobStatus.MANUAL


def test_self_approval_is_allowed_where_the_environment_allows_it(pipeline, production, triggerer) -> None:
    Environment.objects.filter(pk=production.pk).update(allow_self_approval=True)
    run = deploy_after_tests(pipeline, "production", user=triggerer)

    deployment_approve(deployment=deployment_of(run), user=triggerer)

    assert current_job(run, "deploy").status == JobStatus.QUEUED


def test_a_deploy_needing_two_approvals_needs_two_different_people(
    pipeline, production, approver, second_approver
) -> None:
    Environment.objects.filter(pk=production.pk).update(required_approvals=2)
    run = deploy_after_tests(pipeline, "production")

    deployment_approve(deployment=deployment_of(run), user=approver)
    assert current_job(run, "deploy").status_reason == "awaiting approval (1 of 2) to deploy to production"
    with pytest.raises(TransitionError, match="grace already approved this deploy"):
        deployment_approve(deployment=deployment_of(run), user=approver)
    assert current_job(run, "deploy").status == JobStatus.MANUAL

    deployment_approve(deployment=deployment_of(run), user=second_approver)

    assert current_job(run, "deploy").status == JobStatus.QUEUED
    assert Approval.objects.filter(decision=ApprovalDecision.APPROVE).count() == 2


def test_an_expired_approval_no_longer_counts_and_may_be_given_again(
    pipeline, production, approver, second_approver
) -> None:
    Environment.objects.filter(pk=production.pk).update(required_approvals=2, approval_expiry_minutes=60)
    run = deploy_after_tests(pipeline, "production")
    deployment_approve(deployment=deployment_of(run), user=approver)
    Approval.objects.update(created_at=timezone.now() - timedelta(minutes=61))

    deployment_approve(deployment=deployment_of(run), user=second_approver)

    assert current_job(run, "deploy").status == JobStatus.MANUAL
    assert deployment_of(run).status_reason == "awaiting approval (1 of 2) to deploy to production"
    deployment_approve(deployment=deployment_of(run), user=approver)
    assert current_job(run, "deploy").status == JobStatus.QUEUED


def test_an_approver_group_decides_who_may_approve(pipeline, production, approver) -> None:
    releasers = Group.objects.create(name="releasers")
    Environment.objects.filter(pk=production.pk).update(approver_group=releasers)
    member = User.objects.create_user(username="rel")
    member.groups.add(releasers)
    run = deploy_after_tests(pipeline, "production")

    with pytest.raises(PermissionDenied):
        deployment_approve(deployment=deployment_of(run), user=approver)  # the permission alone is not enough
    deployment_approve(deployment=deployment_of(run), user=member)

    assert current_job(run, "deploy").status == JobStatus.QUEUED


def test_rejecting_a_deploy_cancels_its_job_with_the_reason(pipeline, production, approver) -> None:
    run = deploy_after_tests(pipeline, "production")

    deployment_reject(deployment=deployment_of(run), user=approver, comment="not during the sale")

    deploy = current_job(run, "deploy")
    assert (deploy.status, deploy.status_reason) == (
        JobStatus.CANCELLED,
        "deploy rejected by grace: not during the sale",
    )
    deployment = deployment_of(run)
    assert (deployment.status, deployment.status_reason) == (
        DeploymentStatus.REJECTED,
        "rejected by grace: not during the sale",
    )
    assert run_status(run) == RunStatus.CANCELLED
    (decision,) = Approval.objects.all()
    assert (decision.username, decision.decision, decision.comment) == (
        "grace",
        ApprovalDecision.REJECT,
        "not during the sale",
    )
    with pytest.raises(TransitionError, match="rejected, not waiting"):
        deployment_approve(deployment=deployment, user=approver)


def test_a_retried_production_deploy_needs_approval_again(pipeline, production, approver) -> None:
    run = deploy_after_tests(pipeline, "production")
    deployment_approve(deployment=deployment_of(run), user=approver)
    finish(run, status=JobStatus.FAILURE, reason="deploy failed: the API server is down")

    retried = job_retry(job=current_job(run, "deploy"), user=approver)

    retried.refresh_from_db()
    assert (retried.attempt, retried.status) == (2, JobStatus.MANUAL)
    assert retried.status_reason == "awaiting approval (0 of 1) to deploy to production"
    first, second = Deployment.objects.filter(run=run).order_by("created_at")
    assert (first.status, second.status) == (DeploymentStatus.FAILED, DeploymentStatus.WAITING)


def test_playing_a_held_production_deploy_directly_does_not_get_past_the_gate(pipeline, production, outsider) -> None:
    from runs.services import job_play

    run = start_run(pipeline, deploy_job("deploy", "production", when="manual", blocking=True))
    assert deployment_of(run).waiting_for == WaitingFor.APPROVAL

    job_play(job=current_job(run, "deploy"), user=outsider)

    assert current_job(run, "deploy").status == JobStatus.MANUAL
    assert deployment_of(run).status == DeploymentStatus.WAITING


# --- deploy freezes ------------------------------------------------------------------------------


def freeze_from_now(environment: Environment, minutes: int = 120) -> DeployFreeze:
    """A freeze window that opened at the current minute (a daily cron at this hour and minute)."""
    now = timezone.now()
    return DeployFreeze.objects.create(
        environment=environment, cron=f"{now.minute} {now.hour} * * *", duration_minutes=minutes, timezone="UTC"
    )


@pytest.fixture
def frozen_staging(pipeline) -> Environment:
    staging = Environment.objects.create(repository=pipeline.repository, name="staging")
    freeze_from_now(staging)
    return staging


def test_a_deploy_during_a_freeze_waits_with_the_reason(pipeline, frozen_staging) -> None:
    run = deploy_after_tests(pipeline, "staging")

    deploy = current_job(run, "deploy")
    assert deploy.status == JobStatus.MANUAL
    assert deploy.status_reason.startswith("deploy freeze until ")
    assert deployment_of(run).waiting_for == WaitingFor.FREEZE
    assert run_status(run) == RunStatus.BLOCKED


def test_a_deploy_held_by_a_freeze_starts_once_the_freeze_is_over(pipeline, frozen_staging) -> None:
    run = deploy_after_tests(pipeline, "staging")
    frozen_staging.freezes.all().delete()

    counts = sweep_deployments()  # the beat task

    assert counts["started"] == 1
    assert current_job(run, "deploy").status == JobStatus.QUEUED
    assert deployment_of(run).status == DeploymentStatus.RUNNING


def test_an_audited_override_starts_a_deploy_in_a_freeze(pipeline, frozen_staging, outsider) -> None:
    releaser = user_with("rel", "override_freeze")
    run = deploy_after_tests(pipeline, "staging")

    with pytest.raises(PermissionDenied):
        deployment_override_freeze(deployment=deployment_of(run), user=outsider, comment="hotfix")
    with pytest.raises(ValueError, match="say why"):
        deployment_override_freeze(deployment=deployment_of(run), user=releaser, comment=" ")
    assert current_job(run, "deploy").status == JobStatus.MANUAL

    deployment_override_freeze(deployment=deployment_of(run), user=releaser, comment="hotfix for the checkout bug")

    assert current_job(run, "deploy").status == JobStatus.QUEUED
    (override,) = Approval.objects.all()
    assert (override.username, override.decision, override.comment) == (
        "rel",
        ApprovalDecision.OVERRIDE_FREEZE,
        "hotfix for the checkout bug",
    )


def test_an_override_does_not_replace_approvals(pipeline, production, approver) -> None:
    freeze_from_now(production)
    releaser = user_with("rel", "override_freeze")
    run = deploy_after_tests(pipeline, "production")

    deployment_override_freeze(deployment=deployment_of(run), user=releaser, comment="incident 42")
    assert deployment_of(run).waiting_for == WaitingFor.APPROVAL
    deployment_approve(deployment=deployment_of(run), user=approver)

    assert current_job(run, "deploy").status == JobStatus.QUEUED


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "until"),
    [
        ("2026-11-27 16:59", None),  # Friday, a minute before
        ("2026-11-27 17:00", "2026-11-30 09:00"),  # Friday 17:00 to Monday 9:00
        ("2026-11-29 12:00", "2026-11-30 09:00"),  # Sunday
        ("2026-11-30 09:00", None),  # Monday: over
    ],
)
def test_a_weekend_freeze_window_covers_friday_evening_to_monday_morning(pipeline, now, until) -> None:
    staging = Environment.objects.create(repository=pipeline.repository, name="staging")
    DeployFreeze.objects.create(environment=staging, cron="0 17 * * FRI", duration_minutes=(2 * 24 + 16) * 60)

    assert freeze_until(environment=staging, now=at(now)) == (at(until) if until else None)


def test_back_to_back_freeze_windows_are_one_freeze(pipeline) -> None:
    staging = Environment.objects.create(repository=pipeline.repository, name="staging")
    DeployFreeze.objects.create(environment=staging, cron="0 * * * *", duration_minutes=60)  # every hour, an hour

    assert freeze_until(environment=staging, now=at("2026-11-27 10:30")) > at("2026-11-27 12:00")


def test_a_freeze_in_its_own_time_zone(pipeline) -> None:
    staging = Environment.objects.create(repository=pipeline.repository, name="staging")
    DeployFreeze.objects.create(environment=staging, cron="0 9 * * *", duration_minutes=60, timezone="Europe/Berlin")

    assert freeze_until(environment=staging, now=at("2026-11-27 08:30")) == at("2026-11-27 09:00")  # 9:30 in Berlin
    assert freeze_until(environment=staging, now=at("2026-11-27 09:30")) is None


# --- one deploy at a time ------------------------------------------------------------------------


def test_one_deploy_at_a_time_the_newest_goes_next_and_outdated_ones_are_skipped(
    pipeline, django_capture_on_commit_callbacks
) -> None:
    first = deploy_after_tests(pipeline, "staging", sha="1" * 40)
    second = deploy_after_tests(pipeline, "staging", sha="2" * 40)
    third = deploy_after_tests(pipeline, "staging", sha="3" * 40)
    assert deployment_of(first).status == DeploymentStatus.RUNNING
    for waiting in (second, third):
        deploy = current_job(waiting, "deploy")
        assert (deploy.status, deploy.status_reason) == (
            JobStatus.MANUAL,
            f"waiting for the deploy of run #{first.number} to staging to finish",
        )
        assert deployment_of(waiting).waiting_for == WaitingFor.ENVIRONMENT

    with django_capture_on_commit_callbacks(execute=True):
        finish(first)

    assert current_job(third, "deploy").status == JobStatus.QUEUED
    assert deployment_of(third).status == DeploymentStatus.RUNNING
    assert deployment_of(third).previous == deployment_of(first)
    skipped = current_job(second, "deploy")
    assert (skipped.status, skipped.status_reason) == (
        JobStatus.SKIPPED,
        f"outdated: run #{third.number}, which is newer, already deployed to staging",
    )
    assert deployment_of(second).status == DeploymentStatus.SKIPPED
    assert run_status(second) == RunStatus.SUCCESS


def test_never_two_running_deployments_in_one_environment(pipeline) -> None:
    from django.db import IntegrityError, transaction

    first = deploy_after_tests(pipeline, "staging", sha="1" * 40)
    second = deploy_after_tests(pipeline, "staging", sha="2" * 40)

    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.filter(pk=deployment_of(second).pk).update(status=DeploymentStatus.RUNNING)
    assert deployment_of(first).status == DeploymentStatus.RUNNING


def test_deploys_to_different_environments_run_side_by_side(pipeline) -> None:
    run = start_run(pipeline, deploy_job("eu", "staging-eu"), deploy_job("us", "staging-us"))

    assert statuses(run) == {"eu": JobStatus.QUEUED, "us": JobStatus.QUEUED}


def test_cancelling_a_run_cancels_its_running_deployment(pipeline, django_capture_on_commit_callbacks) -> None:
    run = deploy_after_tests(pipeline, "staging")

    with django_capture_on_commit_callbacks(execute=True):
        run_cancel(run=run, by="alice")

    deployment = deployment_of(run)
    assert (deployment.status, deployment.status_reason) == (DeploymentStatus.CANCELLED, "cancelled by alice")


def test_the_sweep_finishes_a_deployment_whose_job_ended_unnoticed(pipeline) -> None:
    run = deploy_after_tests(pipeline, "staging")
    run_cancel(run=run, by="alice")  # its after-commit hook never ran (this test's transaction never commits)
    assert deployment_of(run).status == DeploymentStatus.RUNNING

    assert deployments_sweep()["finished"] == 1

    assert deployment_of(run).status == DeploymentStatus.CANCELLED


# --- redeploy ------------------------------------------------------------------------------------


def test_redeploy_runs_only_the_deploy_job_with_the_recorded_image(pipeline) -> None:
    deployer = user_with("ops", "redeploy_deployment")
    old = deploy_after_tests(pipeline, "staging", sha="1" * 40)
    finish(old)
    source = deployment_of(old)

    run = deployment_redeploy(deployment=source, user=deployer)

    assert (run.trigger, run.triggered_by, run.commit_sha) == (Trigger.MANUAL, "ops", "1" * 40)
    (deploy,) = Job.objects.filter(run=run)
    assert deploy.name == "deploy"
    assert deploy.spec["deploy"]["image"] == "registry.test/shop/web:11111111"
    assert list(Step.objects.filter(job=deploy).values_list("kind", flat=True)) == [StepKind.SCRIPT, StepKind.DEPLOY]
    redeploy = deployment_of(run)
    assert (redeploy.status, redeploy.redeploy_of, redeploy.image) == (
        DeploymentStatus.RUNNING,
        source,
        "registry.test/shop/web:11111111",
    )
    assert redeploy.previous == source


def test_redeploy_needs_the_permission_and_a_deployment_that_succeeded(pipeline, outsider) -> None:
    deployer = user_with("ops", "redeploy_deployment")
    run = deploy_after_tests(pipeline, "staging")

    with pytest.raises(PermissionDenied):
        deployment_redeploy(deployment=deployment_of(run), user=outsider)
    with pytest.raises(TransitionError, match="only a deployment that succeeded"):
        deployment_redeploy(deployment=deployment_of(run), user=deployer)
    assert PipelineRun.objects.count() == 1


def test_a_redeploy_to_production_waits_for_approval_like_any_deploy(pipeline, production, approver) -> None:
    deployer = user_with("ops", "redeploy_deployment")
    old = deploy_after_tests(pipeline, "production")
    deployment_approve(deployment=deployment_of(old), user=approver)
    finish(old)

    run = deployment_redeploy(deployment=deployment_of(old), user=deployer)

    assert current_job(run, "deploy").status == JobStatus.MANUAL
    assert deployment_of(run).waiting_for == WaitingFor.APPROVAL


def test_the_gate_module_names_what_is_a_deploy_job() -> None:
    deploying = Job(environment="production", spec={"environment": {"name": "production"}})
    preparing = Job(environment="production", spec={"environment": {"name": "production", "action": "prepare"}})

    assert deployments.is_deploy_job(deploying)
    assert not deployments.is_deploy_job(preparing)
    assert not deployments.is_deploy_job(Job())
