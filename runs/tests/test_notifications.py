"""Slack and e-mail notifications of deploys and of failed default-branch runs, sent by Celery tasks
(eager here) to a local HTTP server standing in for Slack and a local SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import socket
import threading
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from pipelines.models import Forge, Trigger
from runs.models import (
    Deployment,
    DeploymentStatus,
    Environment,
    JobStatus,
    Notification,
    NotificationChannel,
    NotificationKind,
    NotificationStatus,
    NotifyOn,
    PipelineNotifications,
    PipelineRun,
)
from runs.notifications import deployment_notifications_enqueue, run_notifications_enqueue
from runs.services import job_finish, job_start, run_create
from runs.tests.factories import PipelineFactory, current_job, execute, job, spec

pytestmark = pytest.mark.django_db

SHA = "c0ffee00" * 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeSlack:
    """An incoming webhook: records each JSON body; answers the queued statuses, then 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        slack = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = slack.statuses.pop(0) if slack.statuses else 200
                if status == 200:
                    slack.bodies.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/x"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def texts(self) -> list[str]:
        return [body["text"] for body in self.bodies]


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def slack():
    fake = FakeSlack()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def smtp(settings):
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    yield mailbox
    controller.stop()


@pytest.fixture(autouse=True)
def eager(settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.CONVEYOR_BASE_URL = "https://ci.example.test"
    settings.CONVEYOR_NOTIFY_TIMEOUT_S = 5


@pytest.fixture
def pipeline():
    pipeline = PipelineFactory(repository__forge=Forge.GITHUB, repository__forge_project="acme/web")
    return pipeline


def deploy_run(pipeline, environment: str = "staging") -> PipelineRun:
    deploy = job(
        "deploy",
        "deploy",
        environment={"name": environment, "action": "start"},
        deploy={"namespace": "shop", "deployment": "web", "image": "registry.test/web:$CI_COMMIT_SHORT_SHA"},
    )
    return run_create(
        pipeline=pipeline,
        spec=spec(deploy),
        commit_sha=SHA,
        branch="main",
        trigger=Trigger.PUSH,
        triggered_by="alice",
    )


def finish_deploy(run: PipelineRun, status: str = JobStatus.SUCCESS, reason: str = "") -> None:
    deploy = current_job(run, "deploy")
    job_start(job=deploy, runner=None, lease_seconds=60)
    job_finish(job_id=deploy.pk, status=status, exit_code=0 if status == JobStatus.SUCCESS else 1, reason=reason)


def environment(pipeline, name: str = "staging", **fields) -> Environment:
    return Environment.objects.create(repository=pipeline.repository, name=name, **fields)


def test_a_finished_deploy_is_announced_on_slack_with_commit_deployer_environment_result_and_run(
    pipeline, slack, django_capture_on_commit_callbacks
) -> None:
    environment(pipeline, slack_webhook_url=slack.url)
    run = deploy_run(pipeline)

    with django_capture_on_commit_callbacks(execute=True):
        finish_deploy(run)

    (text,) = slack.texts
    assert "Deploy of *" + pipeline.repository.name + "* to *staging* succeeded" in text
    assert "`registry.test/web:c0ffee00`" in text
    assert f"<https://github.com/acme/web/commit/{SHA}|c0ffee00>" in text
    assert "by alice" in text
    assert f"<https://ci.example.test/admin/runs/pipelinerun/{run.pk}/change/|run #1>" in text
    (notification,) = Notification.objects.all()
    assert (notification.kind, notification.channel, notification.status, notification.attempts) == (
        NotificationKind.DEPLOYMENT,
        NotificationChannel.SLACK,
        NotificationStatus.SENT,
        1,
    )


def test_a_rolled_back_deploy_is_mailed_with_the_reason(pipeline, smtp, django_capture_on_commit_callbacks) -> None:
    environment(pipeline, "production", notify_emails="ops@example.test, lead@example.test")
    run = deploy_run(pipeline, "production")

    with django_capture_on_commit_callbacks(execute=True):
        finish_deploy(run, JobStatus.FAILURE, reason="deploy rolled back: pod web-7 is in CrashLoopBackOff")

    assert Deployment.objects.get().status == DeploymentStatus.ROLLED_BACK
    (mail,) = smtp.messages
    name = pipeline.repository.name
    assert mail["Subject"] == f"[Conveyor] {name}: deploy to production failed and was rolled back"
    assert mail["To"] == "ops@example.test, lead@example.test"
    body = mail.get_payload()
    assert "Result:      Rolled back" in body
    assert "Reason:      deploy rolled back: pod web-7 is in CrashLoopBackOff" in body
    assert f"https://github.com/acme/web/commit/{SHA}" in body
    assert "Deployer:    alice" in body


def test_a_failed_run_of_the_default_branch_notifies_the_pipelines_channels_once(
    pipeline, slack, smtp, django_capture_on_commit_callbacks
) -> None:
    PipelineNotifications.objects.create(pipeline=pipeline, slack_webhook_url=slack.url, emails="team@example.test")
    run = run_create(
        pipeline=pipeline,
        spec=spec(job("unit")),
        commit_sha=SHA,
        branch="main",
        trigger=Trigger.PUSH,
        triggered_by="bo",
    )

    with django_capture_on_commit_callbacks(execute=True):
        execute(run, "unit", JobStatus.FAILURE)
    run_notifications_enqueue(run_id=run.pk)  # announced again: still sent once

    (text,) = slack.texts
    assert f"{pipeline} #1" in text and "failed on *main*" in text and "triggered by bo" in text
    (mail,) = smtp.messages
    assert mail["Subject"] == f"[Conveyor] {pipeline} #1 failed on main"
    assert Notification.objects.filter(status=NotificationStatus.SENT).count() == 2


def test_a_failed_run_of_another_branch_notifies_nobody(pipeline, slack, django_capture_on_commit_callbacks) -> None:
    PipelineNotifications.objects.create(pipeline=pipeline, slack_webhook_url=slack.url)
    run = run_create(pipeline=pipeline, spec=spec(job("unit")), commit_sha=SHA, branch="feature", trigger=Trigger.PUSH)

    with django_capture_on_commit_callbacks(execute=True):
        execute(run, "unit", JobStatus.FAILURE)

    assert slack.texts == []
    assert not Notification.objects.exists()


def test_slack_errors_are_retried_until_the_message_gets_through(
    pipeline, slack, settings, django_capture_on_commit_callbacks
) -> None:
    settings.CONVEYOR_NOTIFY_MAX_RETRIES = 5
    slack.statuses = [500, 503, 429]
    environment(pipeline, slack_webhook_url=slack.url)
    run = deploy_run(pipeline)

    with django_capture_on_commit_callbacks(execute=True):
        finish_deploy(run)

    assert len(slack.texts) == 1
    notification = Notification.objects.get()
    assert (notification.status, notification.attempts) == (NotificationStatus.SENT, 4)


def test_a_slack_that_keeps_failing_never_fails_the_deploy(
    pipeline, slack, settings, django_capture_on_commit_callbacks
) -> None:
    settings.CONVEYOR_NOTIFY_MAX_RETRIES = 2
    slack.statuses = [500] * 10
    environment(pipeline, slack_webhook_url=slack.url)
    run = deploy_run(pipeline)

    with django_capture_on_commit_callbacks(execute=True):
        finish_deploy(run)

    notification = Notification.objects.get()
    assert (notification.status, notification.attempts) == (NotificationStatus.FAILED, 3)
    assert "Slack answered 500" in notification.last_error
    assert current_job(run, "deploy").status == JobStatus.SUCCESS
    assert Deployment.objects.get().status == DeploymentStatus.SUCCEEDED


def test_a_slack_4xx_is_recorded_and_not_retried(pipeline, slack, django_capture_on_commit_callbacks) -> None:
    slack.statuses = [404]
    environment(pipeline, slack_webhook_url=slack.url)
    run = deploy_run(pipeline)

    with django_capture_on_commit_callbacks(execute=True):
        finish_deploy(run)

    notification = Notification.objects.get()
    assert (notification.status, notification.attempts) == (NotificationStatus.FAILED, 1)
    assert "Slack answered 404" in notification.last_error


def test_an_unreachable_mail_server_never_fails_the_deploy(
    pipeline, settings, django_capture_on_commit_callbacks
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 5
    settings.CONVEYOR_NOTIFY_MAX_RETRIES = 1
    environment(pipeline, notify_emails="ops@example.test")
    run = deploy_run(pipeline)

    with django_capture_on_commit_callbacks(execute=True):
        finish_deploy(run)

    notification = Notification.objects.get()
    assert (notification.status, notification.attempts) == (NotificationStatus.FAILED, 2)
    assert "sending e-mail failed" in notification.last_error
    assert Deployment.objects.get().status == DeploymentStatus.SUCCEEDED


def test_an_environment_notifying_on_failures_only_keeps_quiet_about_a_success(
    pipeline, slack, django_capture_on_commit_callbacks
) -> None:
    environment(pipeline, slack_webhook_url=slack.url, notify_on=NotifyOn.FAILURES)
    run = deploy_run(pipeline)

    with django_capture_on_commit_callbacks(execute=True):
        finish_deploy(run)

    assert slack.texts == []


def test_an_environment_without_targets_uses_its_pipelines(pipeline, slack, django_capture_on_commit_callbacks) -> None:
    PipelineNotifications.objects.create(pipeline=pipeline, slack_webhook_url=slack.url)
    run = deploy_run(pipeline)

    with django_capture_on_commit_callbacks(execute=True):
        finish_deploy(run)
    deployment_notifications_enqueue(deployment_id=Deployment.objects.get().pk)  # twice: sent once

    assert len(slack.texts) == 1


def test_a_deploy_that_never_started_is_not_announced(pipeline, slack) -> None:
    environment(pipeline, slack_webhook_url=slack.url, protected=True)
    run = deploy_run(pipeline)

    assert deployment_notifications_enqueue(deployment_id=Deployment.objects.get(run=run).pk) == []
    assert slack.texts == []


def test_a_notification_whose_task_was_lost_is_sent_by_the_sweep(pipeline, slack) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from runs.notifications import STUCK_AFTER, notifications_resend_stuck

    environment(pipeline, slack_webhook_url=slack.url)
    run = deploy_run(pipeline)
    finish_deploy(run)  # its after-commit hook never runs here: the task is never sent
    deployment = Deployment.objects.get()
    lost = Notification.objects.create(
        kind=NotificationKind.DEPLOYMENT, channel=NotificationChannel.SLACK, run=run, deployment=deployment
    )
    assert notifications_resend_stuck() == 0  # a fresh one is probably still on its way

    Notification.objects.filter(pk=lost.pk).update(created_at=timezone.now() - STUCK_AFTER - timedelta(seconds=1))

    assert notifications_resend_stuck() == 1
    lost.refresh_from_db()
    assert lost.status == NotificationStatus.SENT
    assert len(slack.texts) == 1
