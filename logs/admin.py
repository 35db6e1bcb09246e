"""Admin for step logs: read-only (chunks are written by runners through the ingest service)."""

from __future__ import annotations

from django.contrib import admin

from logs.models import StepLog


@admin.register(StepLog)
class StepLogAdmin(admin.ModelAdmin):
    list_display = ("log_chunk_id", "step", "job", "offset", "size", "created_at")
    list_select_related = ("step__job",)
    show_full_result_count = False
    raw_id_fields = ("step",)
    readonly_fields = ("step", "offset", "content", "created_at")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Job")
    def job(self, chunk: StepLog) -> str:
        return str(chunk.step.job)

    @admin.display(description="Bytes")
    def size(self, chunk: StepLog) -> int:
        return len(chunk.content.encode())
