"""Pipeline runs, their jobs (a DAG), and the steps of each job."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from pipelines.models import Pipeline, Trigger


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
    # When it became claimable; the queue is ordered by it.
    queued_at = models.DateTimeField(null=True, blank=True)
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
            # The claim query: oldest QUEUED job first. Partial, so finished jobs (the vast
            # majority of rows) never enter the hot path.
            models.Index(fields=["queued_at"], name="job_queued_idx", condition=Q(status="QUEUED")),
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
