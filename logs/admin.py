"""Admin for step logs: read-only (chunks are written by runners through the ingest service)."""

from __future__ import annotations

from django.contrib import admin

from logs.models import JobLog, StepLog


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(StepLog)
class StepLogAdmin(ReadOnlyAdmin):
    list_display = ("log_chunk_id", "step", "job", "offset", "size", "kind", "created_at")
    list_filter = ("kind",)
    list_select_related = ("step__job",)
    show_full_result_count = False
    raw_id_fields = ("step",)
    readonly_fields = ("step", "offset", "size", "kind", "content", "created_at")

    @admin.display(description="Job")
    def job(self, chunk: StepLog) -> str:
        return str(chunk.step.job)


@admin.register(JobLog)
class JobLogAdmin(ReadOnlyAdmin):
    """How much log each job stored, how much its size limit dropped, and when retention deleted it."""

    list_display = ("job", "stored_bytes", "omitted_bytes", "truncated", "expired_at")
    list_select_related = ("job",)
    show_full_result_count = False
    raw_id_fields = ("job", "tail_step")
    readonly_fields = ("job", "stored_bytes", "omitted_bytes", "head_bytes", "tail_step", "tail_offset", "expired_at")

    @admin.display(boolean=True, description="Truncated")
    def truncated(self, job_log: JobLog) -> bool:
        return job_log.truncated
