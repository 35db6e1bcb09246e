"""The audit log: who did what to which secret, deploy, run or runner, and when.

Rows are written by the services that perform the action, in the same transaction (a rolled
back action leaves no audit row; a committed one always has its row), and never changed: the
admin shows them read-only. A secret's value is never part of an event.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditAction(models.TextChoices):
    DEPLOYMENT_APPROVE = "deployment.approve", "Deployment approved"
    DEPLOYMENT_REJECT = "deployment.reject", "Deployment rejected"
    DEPLOYMENT_OVERRIDE_FREEZE = "deployment.override_freeze", "Deploy freeze overridden"
    DEPLOYMENT_REDEPLOY = "deployment.redeploy", "Deployment redeployed"
    RUN_CANCEL = "run.cancel", "Run cancelled"
    VARIABLE_CREATE = "variable.create", "Variable created"
    VARIABLE_UPDATE = "variable.update", "Variable changed"
    VARIABLE_DELETE = "variable.delete", "Variable deleted"
    RUNNER_REGISTER = "runner.register", "Runner registered"
    RUNNER_REVOKE = "runner.revoke", "Runner revoked"
    MEMBERSHIP_SAVE = "membership.save", "Repository role given or changed"
    MEMBERSHIP_DELETE = "membership.delete", "Repository role removed"


class AuditEvent(models.Model):
    at = models.DateTimeField(default=timezone.now)
    action = models.CharField(max_length=32, choices=AuditAction.choices)
    # Who: a person, a runner (registering itself), or neither (the system, e.g. auto-cancel).
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_runner = models.ForeignKey(
        "runners.Runner", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The actor as text, kept when the account or runner is deleted: "alice", "runner build-1", "auto-cancel".
    actor = models.CharField(max_length=255, blank=True)
    repository = models.ForeignKey(
        "pipelines.Repository", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # What was acted on, e.g. ("variable", "42"), ("deployment", "<uuid>"), ("runner", "<uuid>").
    target_type = models.CharField(max_length=32, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    # The rest, e.g. a variable's key and flags (never its value), an approval's comment.
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            # The admin's list: newest first.
            models.Index(fields=["-at"], name="audit_recent_idx"),
            # One repository's history (the admin's repository filter).
            models.Index(fields=["repository", "-at"], name="audit_repository_recent_idx"),
            # One kind of event (the admin's action filter), e.g. every approval.
            models.Index(fields=["action", "-at"], name="audit_action_recent_idx"),
        ]

    def __str__(self) -> str:
        who = self.actor or "system"
        return f"{self.at:%Y-%m-%d %H:%M:%S} {who}: {self.get_action_display()}"
