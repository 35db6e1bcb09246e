"""Pipeline runs, their jobs (a DAG), and the steps of each job."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from cicd.crypto import EncryptedTextField
from pipelines.models import Pipeline, Repository, Trigger


class RunStatus(models.TextChoices):
    PENDING = "PENDING", "Pending"
    RUNNING = "RUNNING", "Running"
    # Waiting for a person: a blocking manual job (e.g. a production deploy) gates the rest.
    BLOCKED = "BLOCKED", "Blocked (manual)"
    SUCCESS = "SUCCESS", "Success"
    FAILURE = "FAILURE", "Failure"
    CANCELLED = "CANCELLED", "Cancelled"


RunStatus.TERMINAL = frozenset({RunStatus.SUCCESS, RunStatus.FAILURE, RunStatus.CANCELLED})
RunStatus.ACTIVE = frozenset({RunStatus.PENDING, RunStatus.RUNNING, RunStatus.BLOCKED})


class PipelineRun(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    pipeline = models.ForeignKey(Pipeline, on_delete=models.CASCADE, related_name="runs")
    number = models.PositiveIntegerField(help_text="Sequential per pipeline: #1, #2, ...")
    commit_sha = models.CharField(max_length=64, blank=True)
    commit_message = models.TextField(blank=True)
    branch = models.CharField(max_length=255, blank=True, help_text="Branch or tag name (the ref).")
    is_tag = models.BooleanField(default=False)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.PUSH)
    triggered_by = models.CharField(max_length=255, blank=True, help_text="Who: a user, a pusher, 'schedule'.")
    triggered_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.PENDING)
    # Why a run failed without running anything (an invalid config), or other run-level notes.
    error_message = models.TextField(blank=True)
    # Variables given at trigger time (UI/API/webhook), merged over the config's variables.
    variables = models.JSONField(default=dict, blank=True)
    config_source = models.TextField(blank=True, help_text="The config text the run was created from.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_s = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["pipeline", "number"], name="run_unique_number_per_pipeline"),
            models.CheckConstraint(
                condition=Q(finished_at__isnull=True)
                | Q(started_at__isnull=True)
                | Q(finished_at__gte=models.F("started_at")),
                name="run_finishes_after_it_starts",
            ),
        ]
        indexes = [
            # Runs list of a pipeline, newest first; also "next run number" lookups.
            models.Index(fields=["pipeline", "-created_at"], name="run_pipeline_recent_idx"),
            # The backstop sweep and dashboards look only at active runs.
            models.Index(
                fields=["created_at"],
                name="run_active_idx",
                condition=Q(status__in=["PENDING", "RUNNING", "BLOCKED"]),
            ),
            # Latest run of a branch (status badges, auto-cancel of superseded runs).
            models.Index(fields=["pipeline", "branch", "-created_at"], name="run_branch_recent_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.pipeline} #{self.number}"


class JobStatus(models.TextChoices):
    # Waiting for its needs / earlier stages (the design's PENDING).
    PENDING = "PENDING", "Pending"
    # Ready: in the queue, claimable by a runner.
    QUEUED = "QUEUED", "Queued"
    RUNNING = "RUNNING", "Running"
    # Ready, but waits for a person to start it (when: manual).
    MANUAL = "MANUAL", "Manual"
    # Ready, but waits for its start_in delay (when: delayed).
    SCHEDULED = "SCHEDULED", "Scheduled"
    SUCCESS = "SUCCESS", "Success"
    FAILURE = "FAILURE", "Failure"
    CANCELLED = "CANCELLED", "Cancelled"
    # Never ran because its conditions said so (a `when` that did not match, an upstream failure).
    SKIPPED = "SKIPPED", "Skipped"


JobStatus.TERMINAL = frozenset({JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED, JobStatus.SKIPPED})
JobStatus.ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
JobStatus.WAITING = frozenset({JobStatus.PENDING, JobStatus.MANUAL, JobStatus.SCHEDULED})


class When(models.TextChoices):
    ON_SUCCESS = "on_success", "On success"
    ON_FAILURE = "on_failure", "On failure"
    ALWAYS = "always", "Always"
    MANUAL = "manual", "Manual"
    DELAYED = "delayed", "Delayed"


class FailureReason(models.TextChoices):
    """Why a job failed, in GitLab's vocabulary (what `retry: when:` lists). Not stored in a column:
    `job_finish(reason=...)` takes one of these, or free text, which counts as a script failure."""

    SCRIPT_FAILURE = "script_failure", "Script failure"
    UNKNOWN_FAILURE = "unknown_failure", "Unknown failure"
    API_FAILURE = "api_failure", "API failure"
    STUCK_OR_TIMEOUT_FAILURE = "stuck_or_timeout_failure", "Stuck or timed out"
    RUNNER_SYSTEM_FAILURE = "runner_system_failure", "Runner system failure"
    JOB_EXECUTION_TIMEOUT = "job_execution_timeout", "Job execution timeout"
    SCHEDULER_FAILURE = "scheduler_failure", "Scheduler failure"
    DATA_INTEGRITY_FAILURE = "data_integrity_failure", "Data integrity failure"


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    run = models.ForeignKey(PipelineRun, on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=255)
    stage = models.CharField(max_length=255)
    stage_index = models.PositiveIntegerField(help_text="Position of the stage in the run's `stages`.")
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.PENDING)
    status_reason = models.CharField(max_length=500, blank=True, help_text="Why it was skipped/cancelled/failed.")
    runner = models.ForeignKey("runners.Runner", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")

    # What the engine needs.
    when = models.CharField(max_length=16, choices=When.choices, default=When.ON_SUCCESS)
    # True when the job has `needs:` (it waits only for those); False = waits for all earlier stages.
    uses_needs = models.BooleanField(default=False)
    allow_failure = models.BooleanField(default=False)
    # A manual job that gates the run (from `rules`, or a protected deploy): the run is BLOCKED on it.
    blocking = models.BooleanField(default=False)
    start_in_s = models.PositiveIntegerField(null=True, blank=True, help_text="Delay for when: delayed.")
    tags = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    timeout_s = models.PositiveIntegerField(default=3600)
    retry_max = models.PositiveSmallIntegerField(default=0)
    retry_when = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1)
    # A later attempt replaced this one (retry, a lost runner): kept, with its steps and logs,
    # as the record of what happened, but no longer part of the run's DAG.
    retried = models.BooleanField(default=False)
    interruptible = models.BooleanField(default=False)
    resource_group = models.CharField(max_length=255, blank=True)
    environment = models.CharField(max_length=255, blank=True)
    # The rest of the job's config (image, services, variables, artifacts, cache, environment
    # url/action, parallel matrix values, ...) as parsed, for the runner.
    spec = models.JSONField(default=dict, blank=True)

    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # sha256 of the job token (CI_JOB_TOKEN) issued at claim: it authenticates the job's own
    # calls (logs, artifacts) and dies with the job.
    token_hash = models.CharField(max_length=64, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # When it became claimable (dispatch latency is measured from it).
    queued_at = models.DateTimeField(null=True, blank=True)
    # The claim order: queued_at pushed back by a fair-share offset per job its run already
    # has queued or running (runs.services._assign_queue_keys), so one huge run cannot
    # starve the others.
    queue_key = models.DateTimeField(null=True, blank=True)
    # For SCHEDULED (delayed) jobs: when they become QUEUED.
    scheduled_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["stage_index", "name"]
        constraints = [
            # One current attempt per job name; retried attempts stay beside it.
            models.UniqueConstraint(
                fields=["run", "name"], condition=Q(retried=False), name="job_unique_current_name_per_run"
            ),
            models.CheckConstraint(
                condition=~Q(status="RUNNING") | Q(lease_expires_at__isnull=False),
                name="job_running_has_lease",
            ),
        ]
        indexes = [
            # The claim query: lowest queue_key among QUEUED jobs first. Partial, so finished
            # jobs (the vast majority of rows) never enter the hot path.
            models.Index(fields=["queue_key"], name="job_queue_idx", condition=Q(status="QUEUED")),
            # The lease reaper: RUNNING jobs whose lease expired.
            models.Index(fields=["lease_expires_at"], name="job_running_lease_idx", condition=Q(status="RUNNING")),
            # The sweep promotes delayed jobs whose time has come.
            models.Index(fields=["scheduled_at"], name="job_scheduled_idx", condition=Q(status="SCHEDULED")),
            # A runner's current jobs.
            models.Index(fields=["runner"], name="job_runner_running_idx", condition=Q(status="RUNNING")),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class JobDependency(models.Model):
    """An explicit `needs:` edge. Implicit stage ordering is derived from stage_index, not stored:
    it would be quadratic in the number of jobs, and its semantics differ (skipped counts as success)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="dependencies")
    depends_on = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="dependents")
    # `needs: [{job: x, artifacts: false}]`: download nothing from it.
    artifacts = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "depends_on"], name="jobdep_unique_edge"),
            models.CheckConstraint(condition=~Q(job=models.F("depends_on")), name="jobdep_no_self_edge"),
        ]
        indexes = [
            # "Which jobs wait for this one?" when a job finishes.
            models.Index(fields=["depends_on"], name="jobdep_depends_on_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} needs {self.depends_on_id}"


class StepStatus(models.TextChoices):
    PENDING = "PENDING", "Pending"
    RUNNING = "RUNNING", "Running"
    SUCCESS = "SUCCESS", "Success"
    FAILURE = "FAILURE", "Failure"
    CANCELLED = "CANCELLED", "Cancelled"
    SKIPPED = "SKIPPED", "Skipped"


StepStatus.TERMINAL = frozenset({StepStatus.SUCCESS, StepStatus.FAILURE, StepStatus.CANCELLED, StepStatus.SKIPPED})


class StepKind(models.TextChoices):
    BEFORE_SCRIPT = "before_script", "before_script"
    SCRIPT = "script", "script"
    AFTER_SCRIPT = "after_script", "after_script"
    # The Kubernetes rollout of a job's `deploy:` section: run by the runner itself after the
    # script (runners/deploy/job.py), never as a shell command.
    DEPLOY = "deploy", "deploy"


class Step(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=StepKind.choices, default=StepKind.SCRIPT)
    name = models.CharField(max_length=255)
    command = models.TextField()
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.PENDING)
    exit_code = models.IntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="step_unique_index_per_job"),
        ]

    def __str__(self) -> str:
        return self.name


# --- Environments, deployments, approvals and notifications (issue 7).
# Services: runs/deployments.py and runs/notifications.py; reads: runs/deployment_selectors.py.


class NotifyOn(models.TextChoices):
    ALL = "all", "Every finished deploy"
    FAILURES = "failures", "Failed and rolled back deploys only"
    NEVER = "never", "Never"


class Environment(models.Model):
    """Where a repository's jobs deploy to: `environment: production` names one. Created on
    the first deploy to it, or beforehand in the admin (to protect production before anything
    reaches it). Its settings gate every deploy job (runs.deployments)."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="environments")
    name = models.CharField(max_length=255)
    url = models.CharField(max_length=1000, blank=True, help_text="From `environment: url:` of the last deploy.")
    protected = models.BooleanField(
        default=False, help_text="Deploys wait until enough allowed approvers approved them (see below)."
    )
    required_approvals = models.PositiveSmallIntegerField(
        default=1, help_text="How many different allowed approvers must approve a deploy (protected only)."
    )
    approver_group = models.ForeignKey(
        "auth.Group",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Only members of this group (and superusers) may approve or reject. Empty: every user with "
        "the 'Can approve or reject deployments' permission.",
    )
    allow_self_approval = models.BooleanField(
        default=False, help_text="The person who triggered the run may approve its deploy too."
    )
    approval_expiry_minutes = models.PositiveIntegerField(
        null=True,
        blank=True,
        default=24 * 60,
        help_text="Approvals older than this no longer count. Empty: approvals never expire.",
    )
    # Where deploy notifications go (runs.notifications); empty: the pipeline's settings.
    # Encrypted at rest (cicd.crypto): the URL is the credential.
    slack_webhook_url = EncryptedTextField(max_length=1000, blank=True, help_text="A Slack incoming webhook URL.")
    notify_emails = models.TextField(blank=True, help_text="E-mail addresses, separated by commas or new lines.")
    notify_on = models.CharField(max_length=16, choices=NotifyOn.choices, default=NotifyOn.ALL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["repository__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "name"], name="environment_unique_name_per_repository"),
            models.CheckConstraint(condition=Q(required_approvals__gte=1), name="environment_needs_an_approval"),
        ]

    def __str__(self) -> str:
        return f"{self.repository.name}/{self.name}"


class DeployFreeze(models.Model):
    """A recurring window in which deploys to the environment wait: it opens at every time the
    cron expression matches (pipelines.cron, in `timezone`) and lasts `duration_minutes`. A
    deploy in a freeze stays waiting until it ends, unless someone with the
    runs.override_freeze permission overrides it (an audited decision)."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="freezes")
    cron = models.CharField(max_length=200, help_text="When each freeze starts, e.g. '0 17 * * FRI'.")
    duration_minutes = models.PositiveIntegerField(
        help_text="How long each freeze lasts, e.g. 3840 (Friday 17:00 to Monday 9:00)."
    )
    timezone = models.CharField(max_length=64, default="UTC", help_text="Time zone of the cron expression.")
    description = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["environment", "cron"]
        constraints = [
            models.CheckConstraint(condition=Q(duration_minutes__gte=1), name="deployfreeze_lasts_a_while"),
        ]

    def __str__(self) -> str:
        return f"{self.cron} ({self.timezone}) for {self.duration_minutes} min"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from pipelines.cron import CronError, CronExpression, parse_timezone

        errors = {}
        try:
            CronExpression.parse(self.cron)
        except CronError as exc:
            errors["cron"] = str(exc)
        try:
            parse_timezone(self.timezone)
        except CronError as exc:
            errors["timezone"] = str(exc)
        if errors:
            raise ValidationError(errors)


class DeploymentStatus(models.TextChoices):
    # The job is ready but held: by a person, approvals, a freeze or another deploy (waiting_for).
    WAITING = "WAITING", "Waiting"
    # Let through: its job is queued or running. At most one per environment.
    RUNNING = "RUNNING", "Running"
    SUCCEEDED = "SUCCEEDED", "Succeeded"
    FAILED = "FAILED", "Failed"
    # The new version failed and the previous one runs again (undone, or never switched to).
    ROLLED_BACK = "ROLLED_BACK", "Rolled back"
    CANCELLED = "CANCELLED", "Cancelled"
    # Never started: outdated (a newer deploy went first) or its job was skipped.
    SKIPPED = "SKIPPED", "Skipped"
    REJECTED = "REJECTED", "Rejected"


DeploymentStatus.ACTIVE = frozenset({DeploymentStatus.WAITING, DeploymentStatus.RUNNING})
DeploymentStatus.TERMINAL = frozenset(DeploymentStatus.values) - DeploymentStatus.ACTIVE
# Finished after it started: what the environment ran at some point.
DeploymentStatus.STARTED = frozenset(
    {DeploymentStatus.RUNNING, DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED, DeploymentStatus.ROLLED_BACK}
)


class WaitingFor(models.TextChoices):
    NOTHING = "", "Nothing"
    MANUAL = "manual", "A person to start it"
    APPROVAL = "approval", "Approval"
    FREEZE = "freeze", "The end of a deploy freeze"
    ENVIRONMENT = "environment", "Another deploy to finish"
    OUTDATED = "outdated", "Nothing: outdated, about to be skipped"


class Deployment(models.Model):
    """One job attempt deploying to an environment: created when the job is ready to run, let
    through by the deploy gate (runs.deployments), finished with its job."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="deployments")
    run = models.ForeignKey(PipelineRun, on_delete=models.CASCADE, related_name="deployments")
    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="deployment")
    # The `deploy: image:` reference with the job's variables expanded (empty for a deploy job
    # without a `deploy:` section), and its sha256 digest when the reference pins one.
    image = models.CharField(max_length=1000, blank=True)
    image_digest = models.CharField(max_length=100, blank=True)
    strategy = models.CharField(max_length=32, blank=True, help_text="rolling or blue-green (deploy: jobs only).")
    status = models.CharField(max_length=16, choices=DeploymentStatus.choices, default=DeploymentStatus.WAITING)
    waiting_for = models.CharField(max_length=16, choices=WaitingFor.choices, blank=True, default=WaitingFor.NOTHING)
    status_reason = models.CharField(max_length=500, blank=True)
    deployed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Who, as a name: also a pusher or a schedule without an account here.
    deployed_by_name = models.CharField(max_length=255, blank=True)
    # What the environment ran before this one started (its last successful deployment).
    previous = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    redeploy_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="redeploys")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("approve_deployment", "Can approve or reject deployments"),
            ("override_freeze", "Can start deployments during a deploy freeze"),
            ("redeploy_deployment", "Can redeploy an earlier deployment"),
        ]
        constraints = [
            # One deploy at a time per environment: the gate checks under the environment's
            # row lock; this is the guarantee if anything ever gets past it.
            models.UniqueConstraint(
                fields=["environment"], condition=Q(status="RUNNING"), name="deployment_one_running_per_environment"
            ),
            models.CheckConstraint(
                condition=Q(finished_at__isnull=True)
                | Q(started_at__isnull=True)
                | Q(finished_at__gte=models.F("started_at")),
                name="deployment_finishes_after_it_starts",
            ),
        ]
        indexes = [
            # An environment's history, newest first (its page; "newer deploy already started").
            models.Index(fields=["environment", "-created_at"], name="deployment_env_recent_idx"),
            # What runs now: the environment's latest successful deployment.
            models.Index(
                fields=["environment", "-finished_at"],
                name="deployment_env_succeeded_idx",
                condition=Q(status="SUCCEEDED"),
            ),
            # The dispatcher and the sweep: held deploys, and finished jobs whose deployment
            # is not finished yet. Partial: finished deployments stay out.
            models.Index(
                fields=["environment", "created_at"],
                name="deployment_active_idx",
                condition=Q(status__in=["WAITING", "RUNNING"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.environment.name} ← {self.image or self.job.name} ({self.status})"


class ApprovalDecision(models.TextChoices):
    APPROVE = "approve", "Approve"
    REJECT = "reject", "Reject"
    # Start it although a deploy freeze is on (runs.override_freeze permission).
    OVERRIDE_FREEZE = "override_freeze", "Override the deploy freeze"


class Approval(models.Model):
    """A person's decision on a waiting deployment: an audit row, written once and never edited
    (the admin shows it read-only; no service updates one)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="approvals")
    # The job attempt decided on (a retried deploy is a new attempt and needs new approvals).
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="approvals")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    # Kept when the account is deleted: the audit must still say who it was.
    username = models.CharField(max_length=150)
    decision = models.CharField(max_length=16, choices=ApprovalDecision.choices)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        # No uniqueness per person: an approval that expired may be given again. Counting
        # takes distinct people, and deployment_approve refuses a second valid approval.
        indexes = [
            # A deployment's decisions in order (counting approvals, its page).
            models.Index(fields=["deployment", "created_at"], name="approval_deployment_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_decision_display()} by {self.username}"


class PipelineNotifications(models.Model):
    """Where a pipeline's notifications go: failed runs of its default branch, and deploys to
    environments that name no targets of their own."""

    pipeline = models.OneToOneField(Pipeline, on_delete=models.CASCADE, related_name="notification_settings")
    # Encrypted at rest (cicd.crypto): the URL is the credential.
    slack_webhook_url = EncryptedTextField(max_length=1000, blank=True, help_text="A Slack incoming webhook URL.")
    emails = models.TextField(blank=True, help_text="E-mail addresses, separated by commas or new lines.")
    failed_default_branch = models.BooleanField(
        "failed runs of the default branch", default=True, help_text="Notify when a run of the default branch fails."
    )

    class Meta:
        verbose_name = "pipeline notification settings"
        verbose_name_plural = "pipeline notification settings"

    def __str__(self) -> str:
        return f"notifications of {self.pipeline}"


class NotificationKind(models.TextChoices):
    DEPLOYMENT = "deployment", "Deployment finished"
    RUN_FAILED = "run_failed", "Run failed on the default branch"


class NotificationChannel(models.TextChoices):
    SLACK = "slack", "Slack"
    EMAIL = "email", "E-mail"


class NotificationStatus(models.TextChoices):
    PENDING = "PENDING", "Pending"
    SENT = "SENT", "Sent"
    FAILED = "FAILED", "Failed"


NotificationStatus.TERMINAL = frozenset({NotificationStatus.SENT, NotificationStatus.FAILED})


class Notification(models.Model):
    """One message to one channel, the outbox row its Celery task works from: unique per event,
    so an event announced twice is sent once. Targets are read when it is sent."""

    kind = models.CharField(max_length=16, choices=NotificationKind.choices)
    channel = models.CharField(max_length=16, choices=NotificationChannel.choices)
    run = models.ForeignKey(PipelineRun, on_delete=models.CASCADE, related_name="notifications")
    deployment = models.ForeignKey(
        Deployment, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    status = models.CharField(max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "channel", "run", "deployment"],
                name="notification_once_per_event",
                nulls_distinct=False,
            ),
        ]
        indexes = [
            # The sweep re-sends notifications whose task was lost.
            models.Index(fields=["created_at"], name="notification_pending_idx", condition=Q(status="PENDING")),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} via {self.get_channel_display()} ({self.status})"
