"""Notifications: Slack incoming webhooks and e-mail, for finished deploys and for failed runs
of a pipeline's default branch.

An event (a deploy finished, a run of the default branch failed) becomes one Notification row
per channel, unique per event, so announcing it twice sends it once; a Celery task
(runs.tasks.send_notification) sends each, retrying network errors, 5xx and 429 with backoff,
and records the outcome. Targets are read when a message is sent: an environment's own Slack
webhook and addresses, else its pipeline's (PipelineNotifications). Nothing here can change a
run or a deployment, and a Slack or SMTP failure never fails a deploy.
"""

from __future__ import annotations

import json
import logging
import re
import smtplib
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from pipelines.models import Forge, Repository
from runs.models import (
    Deployment,
    DeploymentStatus,
    Environment,
    Notification,
    NotificationChannel,
    NotificationKind,
    NotificationStatus,
    NotifyOn,
    PipelineNotifications,
    PipelineRun,
    RunStatus,
)

logger = logging.getLogger(__name__)

# A PENDING notification older than this has lost its task (broker down, worker killed): longer
# than all retries of a task take (runs.tasks.send_notification), so none is sent twice.
STUCK_AFTER = timedelta(minutes=30)

_ADDRESS_SPLIT = re.compile(r"[\s,;]+")
_EMOJI = {
    DeploymentStatus.SUCCEEDED: ":white_check_mark:",
    DeploymentStatus.ROLLED_BACK: ":rewind:",
    DeploymentStatus.FAILED: ":x:",
    DeploymentStatus.CANCELLED: ":heavy_multiplication_x:",
}
_VERB = {
    DeploymentStatus.SUCCEEDED: "succeeded",
    DeploymentStatus.ROLLED_BACK: "failed and was rolled back",
    DeploymentStatus.FAILED: "failed",
    DeploymentStatus.CANCELLED: "was cancelled",
}


class NotificationUnavailable(Exception):
    """Slack or the mail server could not be reached, or failed (5xx, 429): retry later."""


class NotificationRefused(Exception):
    """The target refused the message for good (a 4xx, no target any more): not retried."""


@dataclass(frozen=True)
class Targets:
    slack_webhook_url: str = ""
    emails: tuple[str, ...] = ()

    def channels(self) -> list[str]:
        found = []
        if self.slack_webhook_url:
            found.append(NotificationChannel.SLACK)
        if self.emails:
            found.append(NotificationChannel.EMAIL)
        return found


def _addresses(text: str) -> tuple[str, ...]:
    return tuple(address for address in _ADDRESS_SPLIT.split(text or "") if "@" in address)


def _pipeline_settings(pipeline_id: Any) -> PipelineNotifications | None:
    return PipelineNotifications.objects.filter(pipeline_id=pipeline_id).first()


def _deploy_targets(environment: Environment, pipeline_id: Any) -> Targets:
    if environment.slack_webhook_url or _addresses(environment.notify_emails):
        return Targets(environment.slack_webhook_url, _addresses(environment.notify_emails))
    pipeline_settings = _pipeline_settings(pipeline_id)
    if pipeline_settings is None:
        return Targets()
    return Targets(pipeline_settings.slack_webhook_url, _addresses(pipeline_settings.emails))


def _run_targets(run: PipelineRun) -> Targets:
    pipeline_settings = _pipeline_settings(run.pipeline_id)
    if pipeline_settings is None or not pipeline_settings.failed_default_branch:
        return Targets()
    return Targets(pipeline_settings.slack_webhook_url, _addresses(pipeline_settings.emails))


def _enqueue(*, kind: str, run: PipelineRun, deployment: Deployment | None, channels: list[str]) -> list[int]:
    from runs.tasks import send_notification

    queued = []
    for channel in channels:
        notification, created = Notification.objects.get_or_create(
            kind=kind, channel=channel, run=run, deployment=deployment
        )
        if created:
            transaction.on_commit(partial(send_notification.delay, notification.pk), robust=True)
            queued.append(notification.pk)
    return queued


def deployment_notifications_enqueue(*, deployment_id: Any) -> list[int]:
    """Announce a finished deploy (one that started) on the environment's channels, per its
    `notify_on`. Idempotent. Returns the ids of the notifications it queued."""
    deployment = Deployment.objects.select_related("environment", "run").filter(pk=deployment_id).first()
    if deployment is None or deployment.started_at is None or deployment.status not in DeploymentStatus.TERMINAL:
        return []
    environment = deployment.environment
    if environment.notify_on == NotifyOn.NEVER:
        return []
    if environment.notify_on == NotifyOn.FAILURES and deployment.status == DeploymentStatus.SUCCEEDED:
        return []
    channels = _deploy_targets(environment, deployment.run.pipeline_id).channels()
    return _enqueue(kind=NotificationKind.DEPLOYMENT, run=deployment.run, deployment=deployment, channels=channels)


def run_notifications_enqueue(*, run_id: Any) -> list[int]:
    """Announce a failed run of its repository's default branch (called after every run change:
    one query unless the run failed). Idempotent."""
    run = (
        PipelineRun.objects.filter(pk=run_id, status=RunStatus.FAILURE, is_tag=False)
        .select_related("pipeline__repository")
        .first()
    )
    if run is None or run.branch != run.pipeline.repository.default_branch:
        return []
    return _enqueue(kind=NotificationKind.RUN_FAILED, run=run, deployment=None, channels=_run_targets(run).channels())


# --- Messages.


def commit_url(repository: Repository, sha: str) -> str:
    """The commit's page on the forge, or "" if the repository names none."""
    if not (repository.forge and repository.forge_project and sha):
        return ""
    api = repository.forge_api_url.rstrip("/")
    if repository.forge == Forge.GITHUB:
        base = re.sub(r"/api/v3$", "", api) if api else "https://github.com"
        return f"{base}/{repository.forge_project}/commit/{sha}"
    base = re.sub(r"/api/v4$", "", api) if api else "https://gitlab.com"
    return f"{base}/{repository.forge_project}/-/commit/{sha}"


def run_url(run: PipelineRun) -> str:
    return settings.CONVEYOR_BASE_URL + reverse("admin:runs_pipelinerun_change", args=[run.pk])


@dataclass(frozen=True)
class Message:
    subject: str
    text: str  # plain text (e-mail)
    slack: dict[str, Any]  # the incoming webhook's JSON body


def _slack_link(url: str, label: str) -> str:
    # Slack's mrkdwn: <url|label>, with &, < and > escaped in the label.
    label = label.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"<{url}|{label}>" if url else label


def deployment_message(deployment: Deployment) -> Message:
    run, environment = deployment.run, deployment.environment
    repository = run.pipeline.repository
    commit, link = run.commit_sha[:8], commit_url(repository, run.commit_sha)
    verb = _VERB.get(deployment.status, deployment.get_status_display().lower())
    deployer = deployment.deployed_by_name or "someone"
    what = deployment.image or deployment.job.name
    subject = f"[Conveyor] {repository.name}: deploy to {environment.name} {verb}"
    lines = [
        f"Deploy of {repository.name} to {environment.name} {verb}.",
        "",
        f"Environment: {environment.name}",
        f"Result:      {deployment.get_status_display()}",
        f"Deployed:    {what}",
        f"Commit:      {run.commit_sha} on {run.branch}" + (f" ({link})" if link else ""),
        f"Deployer:    {deployer}",
        f"Run:         #{run.number} {run_url(run)}",
    ]
    if deployment.status_reason:
        lines.append(f"Reason:      {deployment.status_reason}")
    slack_text = (
        f"{_EMOJI.get(deployment.status, ':grey_question:')} Deploy of *{repository.name}* to *{environment.name}* "
        f"{verb}: `{what}` from commit {_slack_link(link, commit)} ({run.branch}) by {deployer}, "
        f"{_slack_link(run_url(run), f'run #{run.number}')}"
    )
    if deployment.status_reason:
        slack_text += f"\n> {deployment.status_reason}"
    return Message(subject=subject, text="\n".join(lines) + "\n", slack={"text": slack_text})


def run_failed_message(run: PipelineRun) -> Message:
    repository = run.pipeline.repository
    commit, link = run.commit_sha[:8], commit_url(repository, run.commit_sha)
    who = run.triggered_by or "someone"
    subject = f"[Conveyor] {run.pipeline} #{run.number} failed on {run.branch}"
    lines = [
        f"Run #{run.number} of {run.pipeline} failed on {run.branch}.",
        "",
        f"Commit:       {run.commit_sha}" + (f" ({link})" if link else ""),
        f"Triggered by: {who}",
        f"Run:          {run_url(run)}",
    ]
    if run.error_message:
        lines.append(f"Error:        {run.error_message}")
    slack_text = (
        f":x: {_slack_link(run_url(run), f'{run.pipeline} #{run.number}')} failed on *{run.branch}* "
        f"(commit {_slack_link(link, commit)}, triggered by {who})"
    )
    return Message(subject=subject, text="\n".join(lines) + "\n", slack={"text": slack_text})


# --- Sending.


def _post_slack(url: str, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(  # noqa: S310 (a URL an admin configured; http(s) checked below)
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    if not url.startswith(("https://", "http://")):
        raise NotificationRefused(f"not an http(s) URL: {url[:40]}...")
    try:
        with urllib.request.urlopen(request, timeout=settings.CONVEYOR_NOTIFY_TIMEOUT_S) as response:  # noqa: S310
            response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200].decode(errors="replace")
        if exc.code >= 500 or exc.code == 429:
            raise NotificationUnavailable(f"Slack answered {exc.code}: {detail}") from exc
        raise NotificationRefused(f"Slack answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise NotificationUnavailable(f"Slack could not be reached: {getattr(exc, 'reason', exc)}") from exc


def _send_email(recipients: tuple[str, ...], message: Message) -> None:
    email = EmailMessage(subject=message.subject, body=message.text, to=list(recipients))
    try:
        email.send(fail_silently=False)
    except smtplib.SMTPRecipientsRefused as exc:
        raise NotificationRefused(f"the mail server refused every recipient: {exc.recipients}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise NotificationUnavailable(f"sending e-mail failed: {exc}") from exc


def _load(notification_id: int) -> Notification | None:
    return (
        Notification.objects.select_related(
            "run__pipeline__repository", "deployment__environment", "deployment__job", "deployment__run"
        )
        .filter(pk=notification_id, status=NotificationStatus.PENDING)
        .first()
    )


def _finish(notification: Notification, *, status: str, error: str = "") -> str:
    Notification.objects.filter(pk=notification.pk, status=NotificationStatus.PENDING).update(
        status=status, last_error=error[:2000], sent_at=timezone.now() if status == NotificationStatus.SENT else None
    )
    return status


def notification_send(*, notification_id: int, final: bool = False) -> str:
    """Send one pending notification. Returns its status: SENT, FAILED (refused, or unavailable
    on the `final` attempt), or the status it already had. Raises NotificationUnavailable
    for the task to retry."""
    notification = _load(notification_id)
    if notification is None:
        return Notification.objects.filter(pk=notification_id).values_list("status", flat=True).first() or "gone"
    Notification.objects.filter(pk=notification.pk).update(attempts=F("attempts") + 1)
    if notification.kind == NotificationKind.DEPLOYMENT and notification.deployment is not None:
        deployment = notification.deployment
        deployment.run = notification.run  # with its pipeline and repository
        targets = _deploy_targets(deployment.environment, notification.run.pipeline_id)
        message = deployment_message(deployment)
    else:
        targets = _run_targets(notification.run)
        message = run_failed_message(notification.run)
    try:
        if notification.channel == NotificationChannel.SLACK:
            if not targets.slack_webhook_url:
                raise NotificationRefused("no Slack webhook URL is configured any more")
            _post_slack(targets.slack_webhook_url, message.slack)
        else:
            if not targets.emails:
                raise NotificationRefused("no e-mail address is configured any more")
            _send_email(targets.emails, message)
    except NotificationRefused as exc:
        logger.warning("notification %s refused: %s", notification.pk, exc)
        return _finish(notification, status=NotificationStatus.FAILED, error=str(exc))
    except NotificationUnavailable as exc:
        if final:
            logger.warning("notification %s failed for good: %s", notification.pk, exc)
            return _finish(notification, status=NotificationStatus.FAILED, error=str(exc))
        Notification.objects.filter(pk=notification.pk).update(last_error=str(exc)[:2000])
        raise
    return _finish(notification, status=NotificationStatus.SENT)


def notifications_resend_stuck(*, now: Any = None) -> int:
    """Backstop (beat): queue again the pending notifications whose task was lost."""
    from runs.tasks import send_notification

    now = now or timezone.now()
    # Served by the partial index notification_pending_idx.
    stuck = list(
        Notification.objects.filter(status=NotificationStatus.PENDING, created_at__lt=now - STUCK_AFTER)
        .order_by("created_at")
        .values_list("pk", flat=True)[:500]
    )
    for notification_id in stuck:
        send_notification.delay(notification_id)
    return len(stuck)
