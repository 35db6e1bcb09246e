"""The audit log: approvals, cancels, secret changes, runner registrations and role changes are
recorded by the services in the action's own transaction, and the admin shows them read-only."""

from __future__ import annotations

import json
import textwrap

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.test import Client
from django.urls import reverse

from audit.models import AuditAction, AuditEvent
from pipelines.config.parser import parse_pipeline
from pipelines.config.spec import TriggerContext
from pipelines.models import Pipeline, Repository, RepositoryMembership, Role, Trigger
from pipelines.variables import variable_create
from runners.models import Runner
from runners.services import registration_token_create
from runs.deployments import deployment_approve, deployment_override_freeze, deployment_reject
from runs.models import Deployment, Environment, PipelineRun
from runs.services import run_cancel, run_create
from runs.tests.test_deployments import freeze_from_now
from tests.access import make_people

pytestmark = pytest.mark.django_db

DEPLOY = """
deploy:
  script: [deploy]
  environment: production
"""


@pytest.fixture
def repository() -> Repository:
    return Repository.objects.create(name="audited", clone_url="/nonexistent", is_private=False)


def make_run(repository: Repository, config: str = DEPLOY) -> PipelineRun:
    pipeline, _ = Pipeline.objects.get_or_create(repository=repository, name="default")
    number = PipelineRun.objects.count() + 1
    sha = f"{number:040x}"
    spec = parse_pipeline(textwrap.dedent(config), context=TriggerContext(ref="main", commit_sha=sha))
    return run_create(pipeline=pipeline, spec=spec, commit_sha=sha, branch="main", trigger=Trigger.PUSH)


def user_with(username: str, *codenames: str):
    user = get_user_model().objects.create_user(username)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="runs", codename__in=codenames))
    return get_user_model().objects.get(pk=user.pk)


def events(**filters) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(**filters).order_by("id"))


def test_approving_and_rejecting_deploys_are_audited_with_who_what_and_the_comment(repository) -> None:
    Environment.objects.create(repository=repository, name="production", protected=True)
    approver = user_with("grace", "approve_deployment")
    approved, rejected = make_run(repository), make_run(repository)

    deployment_approve(deployment=Deployment.objects.get(run=approved), user=approver, comment="looks good")
    deployment_reject(deployment=Deployment.objects.get(run=rejected), user=approver, comment="not today")

    approval, rejection = events()
    assert (approval.action, approval.actor, approval.actor_user, approval.repository) == (
        AuditAction.DEPLOYMENT_APPROVE,
        "grace",
        approver,
        repository,
    )
    assert (approval.target_type, approval.target_id) == ("deployment", str(Deployment.objects.get(run=approved).pk))
    assert approval.details["environment"] == "production" and approval.details["comment"] == "looks good"
    assert (rejection.action, rejection.details["comment"]) == (AuditAction.DEPLOYMENT_REJECT, "not today")


def test_a_refused_approval_leaves_no_audit_event(repository) -> None:
    Environment.objects.create(repository=repository, name="production", protected=True)
    deployment = Deployment.objects.get(run=make_run(repository))

    with pytest.raises(PermissionDenied):
        deployment_approve(deployment=deployment, user=user_with("mallory"))

    assert events() == []


def test_a_freeze_override_is_audited(repository) -> None:
    freeze_from_now(Environment.objects.create(repository=repository, name="production"))
    deployment = Deployment.objects.get(run=make_run(repository))

    deployment_override_freeze(deployment=deployment, user=user_with("rel", "override_freeze"), comment="hotfix")

    (event,) = events()
    assert (event.action, event.actor, event.details["comment"]) == (
        AuditAction.DEPLOYMENT_OVERRIDE_FREEZE,
        "rel",
        "hotfix",
    )


def test_a_run_cancelled_by_a_person_through_the_api_is_audited_as_theirs(repository) -> None:
    people = make_people(repository)
    run = make_run(repository, "build:\n  script: [make]\n")
    client = Client()
    client.force_login(people["developer"])

    response = client.post(f"/api/v1/runs/{run.pk}/cancel/")

    assert response.status_code == 200, response.content
    (event,) = events(action=AuditAction.RUN_CANCEL)
    assert (event.actor_user, event.actor, event.repository) == (
        people["developer"],
        people["developer"].username,
        repository,
    )
    assert (event.target_type, event.target_id, event.details["jobs_cancelled"]) == ("pipelinerun", str(run.pk), 1)


def test_a_system_cancel_is_audited_with_its_reason_and_no_user(repository) -> None:
    run = make_run(repository, "build:\n  script: [make]\n")

    run_cancel(run=run, by="auto-cancel: superseded by #2")
    run_cancel(run=run, by="again")  # already finished: nothing happens, nothing is recorded

    (event,) = events(action=AuditAction.RUN_CANCEL)
    assert (event.actor_user, event.actor) == (None, "auto-cancel: superseded by #2")


def test_an_action_rolled_back_takes_its_audit_event_with_it(repository) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        variable_create(repository=repository, key="ROLLED_BACK", value="never-stored")
        raise RuntimeError("the surrounding transaction fails")

    assert events() == []


def test_runner_registration_and_revocation_are_audited(admin_client, admin_user) -> None:
    _, registration = registration_token_create(description="fleet", tags=["linux"])

    response = Client().post(
        "/api/runner/register",
        data=json.dumps({"registration_token": registration, "name": "build-7", "tags": ["docker"]}),
        content_type="application/json",
    )
    runner = Runner.objects.get(name="build-7")
    admin_client.post(reverse("admin:runners_runner_changelist"), {"action": "revoke", "_selected_action": [runner.pk]})

    assert response.status_code == 201
    registered, revoked = events()
    assert (registered.action, registered.actor_runner, registered.actor) == (
        AuditAction.RUNNER_REGISTER,
        runner,
        "runner build-7",
    )
    assert registered.details["registration_token"] == "fleet"
    assert registered.details["tags"] == ["docker", "linux"]
    assert registration not in json.dumps(registered.details)
    assert (revoked.action, revoked.actor_user, revoked.target_id) == (
        AuditAction.RUNNER_REVOKE,
        admin_user,
        str(runner.pk),
    )


def test_role_changes_in_the_admin_are_audited(admin_client, repository) -> None:
    member = get_user_model().objects.create_user("newcomer")
    add = reverse("admin:pipelines_repositorymembership_add")

    response = admin_client.post(add, {"repository": repository.pk, "user": member.pk, "role": Role.DEVELOPER})
    membership = RepositoryMembership.objects.get(user=member)
    admin_client.post(
        reverse("admin:pipelines_repositorymembership_change", args=[membership.pk]),
        {"repository": repository.pk, "user": member.pk, "role": Role.MAINTAINER},
    )
    admin_client.post(reverse("admin:pipelines_repositorymembership_delete", args=[membership.pk]), {"post": "yes"})

    assert response.status_code == 302
    given, changed, removed = events(repository=repository)
    assert (given.action, given.details) == (AuditAction.MEMBERSHIP_SAVE, {"user": "newcomer", "role": "developer"})
    assert changed.details == {"user": "newcomer", "role": "maintainer", "previous_role": "developer"}
    assert (removed.action, removed.actor) == (AuditAction.MEMBERSHIP_DELETE, "admin")
    assert not RepositoryMembership.objects.filter(user=member).exists()


def test_the_audit_log_is_read_only_in_the_admin(admin_client, repository) -> None:
    variable_create(repository=repository, key="SEEN", value="in-the-audit-log")
    event = AuditEvent.objects.get()
    change = reverse("admin:audit_auditevent_change", args=[event.pk])

    listing = admin_client.get(reverse("admin:audit_auditevent_changelist"), {"action": AuditAction.VARIABLE_CREATE})
    assert listing.status_code == 200 and list(listing.context["cl"].result_list) == [event]
    assert admin_client.get(change).status_code == 200
    assert admin_client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    assert admin_client.post(change, {"action": AuditAction.RUN_CANCEL}).status_code == 403
    assert (
        admin_client.post(reverse("admin:audit_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    )
    assert AuditEvent.objects.get().action == AuditAction.VARIABLE_CREATE


def test_a_redeploy_is_audited(repository) -> None:
    from runs.deployments import deployment_redeploy
    from runs.models import Job
    from runs.services import job_finish, job_start

    run = make_run(repository)
    job = Job.objects.get(run=run)
    assert job_start(job=job, runner=None, lease_seconds=60)
    assert job_finish(job_id=job.pk, status="SUCCESS", exit_code=0)
    source = Deployment.objects.get(run=run)

    again = deployment_redeploy(deployment=source, user=user_with("ops", "redeploy_deployment"))

    (event,) = events(action=AuditAction.DEPLOYMENT_REDEPLOY)
    assert (event.actor, event.target_id, event.details["run"]) == ("ops", str(source.pk), str(again.pk))
