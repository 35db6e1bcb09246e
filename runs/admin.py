"""Admin for runs, jobs and steps: an inspection tool.

Runs, jobs and steps change state only through the engine's guarded services, so their
pages are read-only here (delete stays possible for housekeeping).
"""

from __future__ import annotations

from itertools import groupby
from urllib.parse import urlencode

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from runs.models import Job, JobDependency, PipelineRun, Step


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
    inlines = [JobInline]
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
