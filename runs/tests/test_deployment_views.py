"""The run page's POST endpoints for deploy decisions, and the deployment admin's actions."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from pipelines.models import Trigger
from runs.models import (
    Approval,
    ApprovalDecision,
    Deployment,
    DeploymentStatus,
    Environment,
    JobStatus,
    PipelineRun,
)
from runs.services import job_finish, job_start, run_create
from runs.tests.factories import PipelineFactory, current_job, job, spec

pytestmark = pytest.mark.django_db


def user_with(username: str, *codenames: str, staff: bool = False) -> User:
    user = User.objects.create_user(username=username, password="x", is_staff=staff)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="runs", codename__in=codenames))
    return user


@pytest.fixture
def owner() -> User:
    return User.objects.create_superuser(username="owner", password="x")


@pytest.fixture
def member() -> User:
    """May approve deploys and redeploy."""
    return user_with("member", "approve_deployment", "redeploy_deployment", "override_freeze")


@pytest.fixture
def outsider() -> User:
    return user_with("outsider")


def client_for(user: User | None, **kwargs) -> Client:
    client = Client(**kwargs)
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def waiting() -> Deployment:
    """A production deploy waiting for one approval, in a public repository (every approver can see it)."""
    pipeline = PipelineFactory(repository__is_private=False)
    Environment.objects.create(repository=pipeline.repository, name="production", protected=True)
    deploy = job("deploy", "deploy", environment={"name": "production"})
    run = run_create(
        pipeline=pipeline,
        spec=spec(deploy),
        commit_sha="a" * 40,
        branch="main",
        trigger=Trigger.PUSH,
        triggered_by="ci",
    )
    return Deployment.objects.get(run=run)


def url(name: str, deployment: Deployment) -> str:
    return reverse(name, args=[deployment.pk])


def job_status(deployment: Deployment) -> str:
    return current_job(deployment.run, "deploy").status


@pytest.mark.parametrize("who", ["owner", "member"])
def test_an_allowed_user_approves_from_the_run_page_and_the_deploy_starts(request, waiting, who) -> None:
    client = client_for(request.getfixturevalue(who))

    response = client.post(url("deployment_approve", waiting), {"comment": "green across the board"})

    assert response.status_code == 200
    assert response.json()["deployment"]["status"] == DeploymentStatus.RUNNING
    assert job_status(waiting) == JobStatus.QUEUED
    (approval,) = Approval.objects.all()
    assert (approval.username, approval.comment) == (who, "green across the board")


def test_an_outsider_gets_403_and_nothing_changes(waiting, outsider) -> None:
    client = client_for(outsider)

    for name in ["deployment_approve", "deployment_reject", "deployment_override_freeze"]:
        response = client.post(url(name, waiting), {"comment": "let me"})
        assert response.status_code == 403, name
        assert "may not" in response.json()["error"]

    assert not Approval.objects.exists()
    assert job_status(waiting) == JobStatus.MANUAL
    assert Deployment.objects.get(pk=waiting.pk).status == DeploymentStatus.WAITING


def test_nobody_logged_in_gets_401(waiting) -> None:
    response = client_for(None).post(url("deployment_approve", waiting))

    assert response.status_code == 401
    assert job_status(waiting) == JobStatus.MANUAL


def test_a_get_is_refused(waiting, member) -> None:
    assert client_for(member).get(url("deployment_approve", waiting)).status_code == 405


def test_the_endpoints_need_a_csrf_token(waiting, member) -> None:
    client = client_for(member, enforce_csrf_checks=True)

    assert client.post(url("deployment_approve", waiting)).status_code == 403
    assert job_status(waiting) == JobStatus.MANUAL

    client.get(reverse("admin:login"))  # any page with a form sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.post(url("deployment_approve", waiting), HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200
    assert job_status(waiting) == JobStatus.QUEUED


def test_rejecting_from_the_run_page_takes_a_json_comment(waiting, member) -> None:
    response = client_for(member).post(
        url("deployment_reject", waiting), data={"comment": "wrong build"}, content_type="application/json"
    )

    assert response.status_code == 200
    body = response.json()["deployment"]
    assert (body["status"], body["reason"]) == (DeploymentStatus.REJECTED, "rejected by member: wrong build")
    assert job_status(waiting) == JobStatus.CANCELLED


def test_a_decision_on_a_deploy_that_no_longer_waits_answers_409(waiting, member, owner) -> None:
    client_for(owner).post(url("deployment_reject", waiting))

    response = client_for(member).post(url("deployment_approve", waiting))

    assert response.status_code == 409
    assert "not waiting" in response.json()["error"]


def test_an_unknown_deployment_answers_404(member) -> None:
    from uuid import uuid4

    assert client_for(member).post(reverse("deployment_approve", args=[uuid4()])).status_code == 404


def test_overriding_a_freeze_without_saying_why_answers_400(waiting, member) -> None:
    response = client_for(member).post(url("deployment_override_freeze", waiting), {"comment": ""})

    assert response.status_code == 400
    assert not Approval.objects.exists()


def test_redeploy_from_the_run_page_answers_with_the_new_run(waiting, member, owner, outsider) -> None:
    client_for(owner).post(url("deployment_approve", waiting))
    deploy = current_job(waiting.run, "deploy")
    job_start(job=deploy, runner=None, lease_seconds=60)
    job_finish(job_id=deploy.pk, status=JobStatus.SUCCESS, exit_code=0)

    assert client_for(outsider).post(url("deployment_redeploy", waiting)).status_code == 403
    response = client_for(member).post(url("deployment_redeploy", waiting))

    assert response.status_code == 201
    run = PipelineRun.objects.get(pk=response.json()["run"]["id"])
    assert (run.trigger, run.triggered_by, run.number) == (Trigger.MANUAL, "member", 2)
    assert Deployment.objects.get(run=run).redeploy_of_id == waiting.pk


# --- the admin -----------------------------------------------------------------------------------


def changelist() -> str:
    return reverse("admin:runs_deployment_changelist")


def test_approving_in_the_admin_asks_for_a_comment_then_records_it(waiting, owner) -> None:
    client = client_for(owner)
    selected = {"action": "approve", "_selected_action": [str(waiting.pk)]}

    confirm = client.post(changelist(), selected)
    assert confirm.status_code == 200
    assert 'name="comment"' in confirm.content.decode()
    assert job_status(waiting) == JobStatus.MANUAL

    done = client.post(changelist(), {**selected, "apply": "1", "comment": "checked the canary"}, follow=True)

    assert done.status_code == 200
    assert "Approve 1 deployment(s): done." in done.content.decode()
    (approval,) = Approval.objects.all()
    assert (approval.decision, approval.comment) == (ApprovalDecision.APPROVE, "checked the canary")
    assert job_status(waiting) == JobStatus.QUEUED


def test_an_admin_action_by_staff_without_the_right_changes_nothing(waiting) -> None:
    staff = user_with("viewer", "view_deployment", staff=True)
    selected = {"action": "reject", "_selected_action": [str(waiting.pk)], "apply": "1", "comment": "no"}

    response = client_for(staff).post(changelist(), selected, follow=True)

    assert "viewer may not approve or reject deployments to production" in response.content.decode()
    assert not Approval.objects.exists()
    assert job_status(waiting) == JobStatus.MANUAL


def test_the_environment_page_shows_what_is_deployed_now_and_the_history(waiting, owner) -> None:
    client = client_for(owner)
    client.post(url("deployment_approve", waiting))
    deploy = current_job(waiting.run, "deploy")
    job_start(job=deploy, runner=None, lease_seconds=60)
    job_finish(job_id=deploy.pk, status=JobStatus.SUCCESS, exit_code=0)

    html = client.get(reverse("admin:runs_environment_change", args=[waiting.environment_id])).content.decode()

    assert "Deployed now" in html
    assert "from run #1 (aaaaaaaa), by owner" in html
    assert "History (newest first)" in html
    assert reverse("admin:runs_deployment_change", args=[waiting.pk]) in html


def test_a_slack_webhook_url_is_write_only_in_the_admin(owner) -> None:
    pipeline = PipelineFactory()
    secret = "https://hooks.slack.com/services/T000/B000/very-secret"
    environment = Environment.objects.create(repository=pipeline.repository, name="staging", slack_webhook_url=secret)
    client = client_for(owner)
    page = reverse("admin:runs_environment_change", args=[environment.pk])

    assert secret not in client.get(page).content.decode()
    form = {
        "repository": pipeline.repository.pk,
        "name": "staging",
        "required_approvals": 1,
        "approval_expiry_minutes": 60,
        "notify_on": "all",
        "slack_webhook_url": "",
        "freezes-TOTAL_FORMS": 0,
        "freezes-INITIAL_FORMS": 0,
    }
    assert client.post(page, form).status_code == 302
    environment.refresh_from_db()
    assert environment.slack_webhook_url == secret  # blank keeps it
    client.post(page, {**form, "clear_slack_webhook_url": "on"})
    environment.refresh_from_db()
    assert environment.slack_webhook_url == ""


def test_a_freeze_with_a_bad_cron_expression_is_refused_in_the_admin(owner) -> None:
    pipeline = PipelineFactory()
    response = client_for(owner).post(
        reverse("admin:runs_environment_add"),
        {
            "repository": pipeline.repository.pk,
            "name": "production",
            "required_approvals": 1,
            "notify_on": "all",
            "freezes-TOTAL_FORMS": 1,
            "freezes-INITIAL_FORMS": 0,
            "freezes-0-cron": "0 25 * * *",
            "freezes-0-duration_minutes": 60,
            "freezes-0-timezone": "UTC",
        },
    )

    assert response.status_code == 200
    assert "hour: 25 is out of range" in response.content.decode()
    assert not Environment.objects.exists()
