"""The audit log in the admin: read-only, filterable by action, repository and date."""

from __future__ import annotations

from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("at", "action", "actor", "repository", "target_type", "target_id")
    list_filter = ("action", "repository", "target_type")
    list_select_related = ("repository",)
    search_fields = ("actor", "target_id")
    date_hierarchy = "at"
    fields = (
        "at",
        "action",
        "actor",
        "actor_user",
        "actor_runner",
        "repository",
        "target_type",
        "target_id",
        "details",
    )
    readonly_fields = fields

    # Written by services only, never edited or deleted by hand: it is the record.
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
