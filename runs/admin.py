"""Admin for runs, jobs and steps: an inspection tool.

Runs, jobs and steps change state only through the engine's guarded services, so their
pages are read-only here (delete stays possible for housekeeping).
"""

from __future__ import annotations

from itertools import groupby
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from runs import deployments
from runs.deployment_selectors import environment_current_deployment, environment_history
from runs.models import (
    Approval,
    DeployFreeze,
    Deployment,
    Environment,
    Job,
    JobDependency,
    Notification,
    PipelineNotifications,
    PipelineRun,
    Step,
)
from runs.services import TransitionError


class ReadOnlyAdminMixin:
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyInline(ReadOnlyAdminMixin, admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


def pipeline_graph_html(run: PipelineRun) -> SafeString:
    """The run's DAG: a column per stage, a box per job coloured by status, and what each job needs.

    Two queries whatever the size of the run. Every job name is user input and is escaped.
    """
    fields = ("id", "run", "name", "stage", "stage_index", "status", "uses_needs")
    jobs = list(run.jobs.order_by("stage_index", "name").only(*fields))
    if not jobs:
        return format_html('<p class="cv-graph-empty">{}</p>', "No jobs.")
    needs: dict[object, list[str]] = {}
    edges = (
        JobDependency.objects.filter(job__run=run)
        .order_by("depends_on__stage_index", "depends_on__name")
        .values_list("job_id", "depends_on__name")
    )
    for job_id, name in edges:
        needs.setdefault(job_id, []).append(name)

    def job_box(job: Job) -> SafeString:
        if job.uses_needs:
            needed = needs.get(job.pk, [])
            if needed:
                under = format_html("needs {}", format_html_join(", ", "<span>{}</span>", ((n,) for n in needed)))
            else:
                under = format_html("{}", "needs nothing (starts at once)")
        else:
            under = format_html("{}", "(stage order)")
        return format_html(
            '<div class="cv-job cv-status-{}"><a href="{}">{}</a> <span class="cv-job-status">{}</span>'
            '<div class="cv-needs">{}</div></div>',
            job.status.lower(),
            reverse("admin:runs_job_change", args=[job.pk]),
            job.name,
            job.get_status_display(),
            under,
        )

    columns = []
    for _, stage_jobs in groupby(jobs, key=lambda job: job.stage_index):
        stage_jobs = list(stage_jobs)
        boxes = format_html_join("", "{}", ((job_box(job),) for job in stage_jobs))
        columns.append(format_html('<div class="cv-stage"><h4>{}</h4>{}</div>', stage_jobs[0].stage, boxes))
    return format_html('<div class="cv-graph">{}</div>', format_html_join("", "{}", ((c,) for c in columns)))


class JobInline(ReadOnlyInline):
    model = Job
    fields = ("name", "stage", "status", "when", "allow_failure", "runner", "started_at", "finished_at")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("runner")


@admin.register(PipelineRun)
class PipelineRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "__str__",
        "branch",
        "short_sha",
        "status",
        "trigger",
        "triggered_by",
        "created_at",
        "duration",
    )
    # By repository, not pipeline: a pipeline's name includes its repository's (one query per choice).
    list_filter = ("status", "trigger", "pipeline__repository")
    list_select_related = ("pipeline__repository",)
    search_fields = ("=commit_sha", "branch", "triggered_by", "pipeline__name", "pipeline__repository__name")
    date_hierarchy = "created_at"
    show_full_result_count = False
    raw_id_fields = ("triggered_by_user",)
    inlines = [JobInline]  # and DeploymentInline, added below
    readonly_fields = ("pipeline_graph", "duration")
    fieldsets = (
        (None, {"fields": ("pipeline", "number", "status", "error_message", "pipeline_graph")}),
        ("Trigger", {"fields": ("trigger", "triggered_by", "triggered_by_user", "variables")}),
        ("Commit", {"fields": ("branch", "is_tag", "commit_sha", "commit_message")}),
        ("Timing", {"fields": ("created_at", "started_at", "finished_at", "duration")}),
        ("Config", {"fields": ("config_source",), "classes": ("collapse",)}),
    )

    class Media:
        css = {"all": ("css/admin-graph.css",)}

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("pipeline__repository", "triggered_by_user")

    @admin.display(description="Commit", ordering="commit_sha")
    def short_sha(self, run: PipelineRun) -> str:
        return run.commit_sha[:8]

    @admin.display(description="Duration", ordering="duration_s")
    def duration(self, run: PipelineRun) -> str:
        return "" if run.duration_s is None else f"{run.duration_s:.1f} s"

    @admin.display(description="Pipeline graph")
    def pipeline_graph(self, run: PipelineRun) -> SafeString:
        return pipeline_graph_html(run)


class StepInline(ReadOnlyInline):
    model = Step
    fields = ("index", "kind", "name", "command", "status", "exit_code", "started_at", "finished_at", "log")
    readonly_fields = fields

    @admin.display(description="Log")
    def log(self, step: Step) -> SafeString:
        url = reverse("admin:logs_steplog_changelist") + "?" + urlencode({"step__id__exact": step.pk})
        return format_html('<a href="{}">{}</a>', url, "chunks")


class JobDependencyInline(ReadOnlyInline):
    model = JobDependency
    fk_name = "job"
    fields = ("depends_on", "artifacts")
    readonly_fields = fields
    verbose_name = "need"
    verbose_name_plural = "needs (explicit `needs:` edges)"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("depends_on")


@admin.register(Job)
class JobAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "name",
        "run",
        "stage",
        "status",
        "when",
        "allow_failure",
        "blocking",
        "runner",
        "attempt",
        "queued_at",
        "started_at",
        "finished_at",
    )
    list_filter = ("status", "when", "allow_failure", "blocking")
    list_select_related = ("run__pipeline__repository", "runner")
    search_fields = ("name", "stage", "environment", "run__pipeline__name", "run__pipeline__repository__name")
    show_full_result_count = False
    raw_id_fields = ("run", "runner")
    inlines = [JobDependencyInline, StepInline]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("run__pipeline__repository", "runner")


@admin.register(Step)
class StepAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("name", "job", "index", "kind", "status", "exit_code", "started_at", "finished_at")
    list_filter = ("status", "kind")
    list_select_related = ("job",)
    search_fields = ("name", "command", "job__name")
    show_full_result_count = False
    raw_id_fields = ("job",)


@admin.register(JobDependency)
class JobDependencyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("job", "depends_on", "artifacts")
    list_select_related = ("job", "depends_on")
    search_fields = ("job__name", "depends_on__name")
    show_full_result_count = False
    raw_id_fields = ("job", "depends_on")


# --- Environments, deployments, approvals and notifications.


class SecretUrlForm(forms.ModelForm):
    """A Slack webhook URL is a credential: write-only, like a repository's forge token."""

    slack_webhook_url = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="A Slack incoming webhook URL (https://hooks.slack.com/services/...). Leave empty to keep the "
        "current one.",
    )
    clear_slack_webhook_url = forms.BooleanField(required=False, help_text="Remove the Slack webhook URL.")

    def clean_slack_webhook_url(self) -> str:
        url = (self.cleaned_data.get("slack_webhook_url") or "").strip()
        if url and not url.startswith(("https://", "http://")):
            raise forms.ValidationError("An incoming webhook URL starts with https://.")
        return url or (self.instance.slack_webhook_url if self.instance.pk else "")

    def save(self, commit: bool = True):
        if self.cleaned_data.get("clear_slack_webhook_url"):
            self.instance.slack_webhook_url = ""
        return super().save(commit=commit)


class EnvironmentForm(SecretUrlForm):
    class Meta:
        model = Environment
        fields = (
            "repository",
            "name",
            "url",
            "protected",
            "required_approvals",
            "approver_group",
            "allow_self_approval",
            "approval_expiry_minutes",
            "notify_on",
            "notify_emails",
        )


class DeployFreezeInline(admin.TabularInline):
    model = DeployFreeze
    extra = 0
    fields = ("cron", "duration_minutes", "timezone", "description")


def _deployment_rows(rows) -> SafeString:
    body = format_html_join(
        "",
        "<tr><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td><td><a href='{}'>#{}</a></td><td>{}</td>"
        "<td>{}</td></tr>",
        (
            (
                reverse("admin:runs_deployment_change", args=[d.pk]),
                d.get_status_display(),
                d.image or d.job.name,
                d.deployed_by_name or "-",
                d.finished_at or d.started_at or d.created_at,
                reverse("admin:runs_pipelinerun_change", args=[d.run_id]),
                d.run.number,
                d.run.commit_sha[:8],
                f"redeploy of {d.redeploy_of.image or d.redeploy_of_id}" if d.redeploy_of_id else d.status_reason,
            )
            for d in rows
        ),
    )
    head = "<tr><th>Status</th><th>Deployed</th><th>By</th><th>When</th><th>Run</th><th>Commit</th><th>Note</th></tr>"
    return format_html("<table>{}{}</table>", SafeString(head), body)


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    """Environments are created by the first deploy to them, or here beforehand (protect
    production before anything reaches it)."""

    form = EnvironmentForm
    list_display = ("name", "repository", "protected", "required_approvals", "approver_group", "notify_on")
    list_filter = ("protected", "repository")
    list_select_related = ("repository", "approver_group")
    search_fields = ("name", "repository__name")
    inlines = [DeployFreezeInline]
    readonly_fields = ("deployed_now", "history", "has_slack_webhook", "created_at")

    def get_fieldsets(self, request, obj=None):
        settings_fields = ("repository", "name", "url")
        approval = ("protected", "required_approvals", "approver_group", "allow_self_approval")
        notify = ("notify_on", "notify_emails", "slack_webhook_url", "clear_slack_webhook_url", "has_slack_webhook")
        fieldsets = [
            (None, {"fields": settings_fields}),
            ("Approvals", {"fields": (*approval, "approval_expiry_minutes")}),
            ("Notifications", {"fields": notify}),
        ]
        if obj is not None:
            fieldsets.insert(1, ("Deployed", {"fields": ("deployed_now", "history", "created_at")}))
        return fieldsets

    @admin.display(description="Has a Slack webhook", boolean=True)
    def has_slack_webhook(self, environment: Environment) -> bool:
        return bool(environment.slack_webhook_url)

    @admin.display(description="Deployed now")
    def deployed_now(self, environment: Environment) -> SafeString:
        current = environment_current_deployment(environment=environment)
        if current is None:
            return format_html("{}", "Nothing yet.")
        return format_html(
            '<a href="{}">{}</a> from run #{} ({}), by {}, finished {}',
            reverse("admin:runs_deployment_change", args=[current.pk]),
            current.image or current.job.name,
            current.run.number,
            current.run.commit_sha[:8],
            current.deployed_by_name or "-",
            current.finished_at,
        )

    @admin.display(description="History (newest first)")
    def history(self, environment: Environment) -> SafeString:
        rows = list(environment_history(environment=environment))
        return _deployment_rows(rows) if rows else format_html("{}", "No deployments.")


@admin.register(DeployFreeze)
class DeployFreezeAdmin(admin.ModelAdmin):
    list_display = ("environment", "cron", "duration_minutes", "timezone", "description")
    list_select_related = ("environment__repository",)
    search_fields = ("environment__name", "description")


class ApprovalInline(ReadOnlyInline):
    model = Approval
    fields = ("created_at", "username", "decision", "comment", "job")
    readonly_fields = fields
    show_change_link = False
    verbose_name_plural = "decisions (audited, never edited)"


_DECISIONS = {
    "approve": ("Approve", "deployment_approve"),
    "reject": ("Reject", "deployment_reject"),
    "override_freeze": ("Override the deploy freeze of", "deployment_override_freeze"),
    "redeploy": ("Redeploy", "deployment_redeploy"),
}


@admin.register(Deployment)
class DeploymentAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only, as runs are: deployments change through the gate and through decisions,
    which the actions here take (each asks for a comment, and each is an audited row)."""

    list_display = (
        "environment",
        "job_name",
        "run",
        "status",
        "waiting_for",
        "status_reason",
        "image",
        "deployed_by_name",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "waiting_for", "environment__repository")
    list_select_related = ("environment__repository", "job", "run__pipeline__repository")
    search_fields = ("environment__name", "image", "job__name", "deployed_by_name", "run__pipeline__repository__name")
    show_full_result_count = False
    raw_id_fields = ("environment", "run", "job", "deployed_by", "previous", "redeploy_of")
    inlines = [ApprovalInline]
    actions = ["approve", "reject", "override_freeze", "redeploy"]

    @admin.display(description="Job", ordering="job__name")
    def job_name(self, deployment: Deployment) -> str:
        return deployment.job.name

    def _decide(self, request, queryset, action: str):
        verb, service_name = _DECISIONS[action]
        service = getattr(deployments, service_name)
        if request.POST.get("apply"):
            comment = request.POST.get("comment", "").strip()
            done = 0
            for deployment in queryset.select_related("environment", "job", "run"):
                try:
                    if action == "redeploy":
                        run = service(deployment=deployment, user=request.user)
                        self.message_user(request, f"{deployment.environment.name}: redeploy started as {run}.")
                    else:
                        service(deployment=deployment, user=request.user, comment=comment)
                    done += 1
                except (PermissionDenied, TransitionError, ValueError) as exc:
                    self.message_user(request, f"{deployment}: {exc or 'permission denied'}", messages.ERROR)
            if done:
                self.message_user(request, f"{verb} {done} deployment(s): done.", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"{verb} deployments",
            "verb": verb,
            "action": action,
            "needs_comment": action != "redeploy",
            "deployments": list(queryset.select_related("environment", "job", "run")),
            "opts": self.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/runs/deployment/decide.html", context)

    @admin.action(description="Approve the selected waiting deployments")
    def approve(self, request, queryset):
        return self._decide(request, queryset, "approve")

    @admin.action(description="Reject the selected waiting deployments")
    def reject(self, request, queryset):
        return self._decide(request, queryset, "reject")

    @admin.action(description="Override the deploy freeze of the selected deployments")
    def override_freeze(self, request, queryset):
        return self._decide(request, queryset, "override_freeze")

    @admin.action(description="Redeploy the selected deployments (manual rollback)")
    def redeploy(self, request, queryset):
        return self._decide(request, queryset, "redeploy")


class DeploymentInline(ReadOnlyInline):
    model = Deployment
    fields = ("environment", "job", "status", "waiting_for", "status_reason", "image", "deployed_by_name")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("environment__repository", "job")


PipelineRunAdmin.inlines = [JobInline, DeploymentInline]


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The audit trail of decisions: nothing here can be added, edited or deleted."""

    list_display = ("created_at", "username", "decision", "deployment", "comment")
    list_filter = ("decision",)
    list_select_related = ("deployment__environment__repository", "deployment__job")
    search_fields = ("username", "comment", "deployment__environment__name")
    show_full_result_count = False
    raw_id_fields = ("deployment", "job", "user")

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class PipelineNotificationsForm(SecretUrlForm):
    class Meta:
        model = PipelineNotifications
        fields = ("pipeline", "failed_default_branch", "emails")


@admin.register(PipelineNotifications)
class PipelineNotificationsAdmin(admin.ModelAdmin):
    form = PipelineNotificationsForm
    list_display = ("pipeline", "failed_default_branch", "has_slack_webhook", "emails")
    list_select_related = ("pipeline__repository",)
    search_fields = ("pipeline__name", "pipeline__repository__name", "emails")
    fields = ("pipeline", "failed_default_branch", "emails", "slack_webhook_url", "clear_slack_webhook_url")

    @admin.display(description="Has a Slack webhook", boolean=True)
    def has_slack_webhook(self, settings_row: PipelineNotifications) -> bool:
        return bool(settings_row.slack_webhook_url)


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("created_at", "kind", "channel", "run", "deployment", "status", "attempts", "last_error", "sent_at")
    list_filter = ("status", "kind", "channel")
    list_select_related = ("run__pipeline__repository", "deployment__environment__repository", "deployment__job")
    search_fields = ("run__pipeline__name", "run__pipeline__repository__name", "last_error")
    show_full_result_count = False
    raw_id_fields = ("run", "deployment")
