"""Repositories and the pipelines defined in them."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower

from cicd.crypto import EncryptedTextField


def _new_webhook_secret() -> str:
    return secrets.token_urlsafe(32)


class Forge(models.TextChoices):
    """Where a repository is hosted: decides the commit status API Conveyor reports to."""

    NONE = "", "None (no commit status)"
    GITHUB = "github", "GitHub"
    GITLAB = "gitlab", "GitLab"


class Repository(models.Model):
    name = models.SlugField(max_length=200, unique=True, help_text="Short name, e.g. 'acme-web'.")
    clone_url = models.CharField(
        max_length=1000, help_text="Where to fetch from: a local path, file://, https:// or ssh URL."
    )
    default_branch = models.CharField(max_length=255, default="main")
    protected_refs = models.TextField(
        blank=True,
        help_text="Protected branches and tags, one glob per line (e.g. 'main', 'release/*', 'v*'): only their "
        "runs get protected variables. Empty: the default branch only.",
    )
    # Encrypted at rest (cicd.crypto), like every secret below.
    webhook_secret = EncryptedTextField(max_length=200, default=_new_webhook_secret)
    is_private = models.BooleanField(default=True)
    forge = models.CharField(max_length=16, choices=Forge.choices, blank=True, default=Forge.NONE)
    forge_project = models.CharField(
        max_length=500,
        blank=True,
        help_text="'owner/name' on GitHub, 'group/project' on GitLab. Webhooks without ?repository= are "
        "matched on it (or on the clone URL); commit statuses are posted to it.",
    )
    forge_api_url = models.CharField(
        max_length=500,
        blank=True,
        help_text="API root; empty: https://api.github.com or https://gitlab.com/api/v4.",
    )
    # A token allowed to post commit statuses (GitHub: statuses write; GitLab: api scope).
    # Empty: no commit status is reported. Never shown in the admin.
    forge_token = EncryptedTextField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "repositories"
        ordering = ["name"]
        indexes = [
            # Webhook deliveries without ?repository= find their repository by the payload's
            # owner/name (case-insensitively, as GitHub and GitLab treat it).
            models.Index(Lower("forge_project"), name="repository_forge_project_idx"),
            # ... or by one of the payload's clone URLs.
            models.Index(fields=["clone_url"], name="repository_clone_url_idx"),
        ]

    def __str__(self) -> str:
        return self.name


class Trigger(models.TextChoices):
    PUSH = "PUSH", "Push"
    PR = "PR", "Pull request"
    SCHEDULE = "SCHEDULE", "Schedule"
    MANUAL = "MANUAL", "Manual"


# What `rules: if: $CI_PIPELINE_SOURCE == ...` sees for each trigger.
PIPELINE_SOURCE = {
    Trigger.PUSH: "push",
    Trigger.PR: "merge_request_event",
    Trigger.SCHEDULE: "schedule",
    Trigger.MANUAL: "web",
}


class AutoCancel(models.TextChoices):
    """What a new push does to the older, still active runs of the same branch (GitLab's
    `workflow:auto_cancel:on_new_commit`)."""

    # Cancel an older run unless one of its jobs that is not `interruptible` has started.
    CONSERVATIVE = "conservative", "Conservative: cancel older runs until a non-interruptible job starts"
    NONE = "none", "None: never cancel older runs"


class Pipeline(models.Model):
    """A pipeline: the config file at `config_path` in a repository.

    `trigger` is the design's ENUM: the event the pipeline is normally run for. A run
    records its own trigger too (runs.PipelineRun.trigger), since one pipeline is run
    by pushes, PRs, schedules and people alike. Webhooks run PUSH pipelines for pushes and
    pull/merge requests (their `rules` decide the jobs), PR pipelines for pull/merge requests
    only; SCHEDULE and MANUAL pipelines are run only by their schedules and by people.
    """

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="pipelines")
    name = models.CharField(max_length=200)
    config_path = models.CharField(max_length=500, default=".cicd.yml")
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.PUSH)
    is_active = models.BooleanField(default=True)
    auto_cancel = models.CharField(max_length=16, choices=AutoCancel.choices, default=AutoCancel.CONSERVATIVE)
    separate_pr_runs = models.BooleanField(
        "separate PR runs",
        default=False,
        help_text="Run a pull/merge request event even when its commit already ran for a push of the same "
        "branch (and the reverse). Off: one run per commit and branch, whichever event came first.",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["repository__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "name"], name="pipeline_unique_name_per_repository"),
        ]

    def __str__(self) -> str:
        return f"{self.repository.name}/{self.name}"


# --- Webhook deliveries.


class WebhookProvider(models.TextChoices):
    GITHUB = "github", "GitHub"
    GITLAB = "gitlab", "GitLab"
    GENERIC = "generic", "Generic"


class DeliveryStatus(models.TextChoices):
    # Stored; the worker has not taken it yet (pipelines.tasks.process_delivery).
    QUEUED = "QUEUED", "Queued"
    PROCESSING = "PROCESSING", "Processing"
    # Processed: runs were created, or the event's runs already existed.
    DONE = "DONE", "Done"
    # Processed, nothing to run: workflow rules filtered it out, or no pipeline takes the event.
    SKIPPED = "SKIPPED", "Skipped"
    # Authenticated but not acted on: a ping, a closed pull request, a branch deletion, ...
    IGNORED = "IGNORED", "Ignored"
    # Processing failed (unreachable repository, unknown commit): replay it from the admin.
    FAILED = "FAILED", "Failed"


DeliveryStatus.TERMINAL = frozenset(
    {DeliveryStatus.DONE, DeliveryStatus.SKIPPED, DeliveryStatus.IGNORED, DeliveryStatus.FAILED}
)
DeliveryStatus.PENDING = frozenset({DeliveryStatus.QUEUED, DeliveryStatus.PROCESSING})


class WebhookDelivery(models.Model):
    """One authenticated webhook request, stored before it is answered: processing happens
    after the response, and a redelivery (same provider and delivery id) is recognized."""

    provider = models.CharField(max_length=16, choices=WebhookProvider.choices)
    # X-GitHub-Delivery, Idempotency-Key / X-Gitlab-Event-UUID, Idempotency-Key; without one,
    # "sha256:" + a hash of the repository and the body, so a resent body is still a redelivery.
    delivery_id = models.CharField(max_length=255)
    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="webhook_deliveries")
    event = models.CharField(max_length=100, help_text="The provider's event name, e.g. 'push', 'Merge Request Hook'.")
    action = models.CharField(max_length=64, blank=True, help_text="Pull/merge request action, e.g. 'opened'.")
    ref = models.CharField(max_length=255, blank=True, help_text="Branch or tag name.")
    commit_sha = models.CharField(max_length=64, blank=True)
    body = models.TextField(help_text="The raw request body, as received.")
    content_type = models.CharField(max_length=200, blank=True)
    # Headers worth keeping to debug a delivery; never a signature or token.
    headers = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.QUEUED)
    result = models.CharField(max_length=1000, blank=True, help_text="What came of it, in a line.")
    error_message = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    runs = models.ManyToManyField("runs.PipelineRun", blank=True, related_name="webhook_deliveries")
    received_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        ordering = ["-received_at"]
        constraints = [
            # Idempotency: a redelivery finds the first delivery instead of creating a second run.
            models.UniqueConstraint(fields=["provider", "delivery_id"], name="delivery_unique_id_per_provider"),
        ]
        indexes = [
            # The backstop (deliveries_resend_stuck) looks for deliveries whose task was lost.
            # Partial: processed deliveries, nearly all rows, stay out of it.
            models.Index(
                fields=["received_at"], name="delivery_pending_idx", condition=Q(status__in=["QUEUED", "PROCESSING"])
            ),
            # A repository's recent deliveries (admin filter) and the retention cleanup by age.
            models.Index(fields=["repository", "-received_at"], name="delivery_repository_recent_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_provider_display()} {self.event} {self.delivery_id[:40]}"


# --- Schedules and trigger tokens.


class PipelineSchedule(models.Model):
    """A cron schedule that runs a pipeline on a branch (trigger SCHEDULE)."""

    pipeline = models.ForeignKey(Pipeline, on_delete=models.CASCADE, related_name="schedules")
    description = models.CharField(max_length=255)
    cron = models.CharField(
        max_length=100, help_text="Five fields (minute hour day-of-month month day-of-week), or @daily, @hourly, ..."
    )
    timezone = models.CharField(max_length=64, default="UTC", help_text="IANA time zone the cron is read in.")
    ref = models.CharField(max_length=255, help_text="Branch or tag to run.")
    variables = models.JSONField(default=dict, blank=True, help_text='Passed to the run, e.g. {"NIGHTLY": "1"}.')
    is_active = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_run = models.ForeignKey("runs.PipelineRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    last_error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pipeline__repository__name", "pipeline__name", "description"]
        constraints = [
            models.CheckConstraint(
                condition=Q(is_active=False) | Q(next_run_at__isnull=False), name="schedule_active_has_next_run"
            ),
        ]
        indexes = [
            # The beat task's query: active schedules whose next run is due.
            models.Index(fields=["next_run_at"], name="schedule_due_idx", condition=Q(is_active=True)),
        ]

    def __str__(self) -> str:
        return f"{self.pipeline}: {self.description}"


class TriggerToken(models.Model):
    """A token that lets a script start runs of one pipeline through the API. Only its hash is kept."""

    pipeline = models.ForeignKey(Pipeline, on_delete=models.CASCADE, related_name="trigger_tokens")
    description = models.CharField(max_length=255)
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.pipeline}: {self.description}"


# --- Commit statuses reported to the forge.


# Forge states that a later report will change (GitHub has no "running": it stays "pending").
UNSETTLED_STATES = frozenset({"pending", "running"})


class CommitStatusReport(models.Model):
    """What Conveyor last told the forge about a run: the commit status task posts only changes."""

    run = models.OneToOneField("runs.PipelineRun", on_delete=models.CASCADE, related_name="commit_status_report")
    # The forge's state (GitHub: pending/success/failure/error; GitLab: pending/running/success/failed/canceled).
    state = models.CharField(max_length=16, blank=True)
    description = models.CharField(max_length=140, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        indexes = [
            # The commit status sweep: runs whose last reported state is not final yet.
            models.Index(
                fields=["run"], name="commit_status_unsettled_idx", condition=Q(state__in=["pending", "running"])
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}: {self.state or '-'}"


# --- Who may do what: per-repository roles and personal API tokens (issue 8).
# Every check goes through pipelines.permissions; nothing else reads these rows.


class Role(models.TextChoices):
    """A person's role in a repository. Each role can do what the one before it can."""

    # Sees the repository's pipelines, runs, jobs, logs, artifacts and badge.
    VIEWER = "viewer", "Viewer"
    # ... and runs pipelines, retries, starts and cancels jobs and runs.
    DEVELOPER = "developer", "Developer"
    # ... and sees the repository's webhook deliveries and settings, and manages its CI/CD variables.
    MAINTAINER = "maintainer", "Maintainer"


Role.RANK = {Role.VIEWER: 1, Role.DEVELOPER: 2, Role.MAINTAINER: 3}
Role.CAN_RUN = frozenset({Role.DEVELOPER, Role.MAINTAINER})
Role.CAN_MAINTAIN = frozenset({Role.MAINTAINER})


class RepositoryMembership(models.Model):
    """A user's (or every member of a group's) role in one repository. A person in several
    groups, or with a role of their own too, has the highest of those roles."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="repository_memberships",
    )
    group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="repository_memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["repository__name", "role"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(group__isnull=True))
                | (Q(user__isnull=True) & Q(group__isnull=False)),
                name="membership_user_xor_group",
            ),
            # Also the index of "this user's role in this repository" (can_view and friends).
            models.UniqueConstraint(
                fields=["repository", "user"], condition=Q(user__isnull=False), name="membership_unique_user"
            ),
            models.UniqueConstraint(
                fields=["repository", "group"], condition=Q(group__isnull=False), name="membership_unique_group"
            ),
        ]
        indexes = [
            # visible_repositories(user): every repository a user (or one of their groups) is in.
            models.Index(fields=["user", "repository"], name="membership_user_idx", condition=Q(user__isnull=False)),
            models.Index(fields=["group", "repository"], name="membership_group_idx", condition=Q(group__isnull=False)),
        ]

    def __str__(self) -> str:
        who = f"user {self.user}" if self.user_id else f"group {self.group}"
        return f"{who}: {self.get_role_display()} of {self.repository}"


class ApiToken(models.Model):
    """A personal API token: a script acts as its owner, with the owner's roles. Only its
    sha256 is kept (cicd.tokens); it is shown once, when it is created."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    description = models.CharField(max_length=255)
    token_hash = models.CharField(max_length=64, unique=True)
    # The first characters, to tell tokens apart in lists ("cvp_AbC…"); never enough to use one.
    hint = models.CharField(max_length=16, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API token"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.user}: {self.description} ({self.hint}…)"


# --- CI/CD variables (pipelines.variables; README: Secrets and variables).

VARIABLE_KEY_VALIDATOR = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_]*\Z", "Letters, digits and underscores, not starting with a digit (like FOO_BAR)."
)


class Variable(models.Model):
    """A repository's CI/CD variable (GitLab's project variable): put in the environment of its
    jobs when a runner claims one. The value is encrypted at rest and write-only everywhere
    (admin, API); a masked one is replaced by [MASKED] in logs; a protected one reaches only
    runs of protected refs (Repository.protected_refs) and deploys to protected environments."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="variables")
    key = models.CharField(max_length=255, validators=[VARIABLE_KEY_VALIDATOR])
    value = EncryptedTextField(max_length=10_000, blank=True)
    masked = models.BooleanField(
        default=False, help_text="Hide the value in job logs. It must be at least 8 characters on a single line."
    )
    protected = models.BooleanField(
        default=False,
        help_text="Only runs of protected branches and tags, and deploys to protected environments, get it.",
    )
    environment_scope = models.CharField(
        max_length=255,
        default="*",
        help_text="The environments whose jobs get it: '*' for every job, else a name or a glob "
        "('review/*'), matched against the job's `environment:`.",
    )
    description = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["repository__name", "key", "environment_scope"]
        constraints = [
            # Also the index of the claim's lookup: every variable of one repository.
            models.UniqueConstraint(
                fields=["repository", "key", "environment_scope"], name="variable_unique_key_per_scope"
            ),
        ]

    def __str__(self) -> str:
        scope = "" if self.environment_scope == "*" else f" ({self.environment_scope})"
        return f"{self.repository.name}: {self.key}{scope}"

    def clean(self) -> None:
        from pipelines.variables import variable_errors

        errors = variable_errors(
            key=self.key,
            value=self.value,
            masked=self.masked,
            environment_scope=self.environment_scope,
            description=self.description,
        )
        if errors:
            from django.core.exceptions import ValidationError

            raise ValidationError(errors)
