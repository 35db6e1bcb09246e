"""The audit log in the admin: read-only, filterable by action, repository and date."""

from __future__ import annotations

from django.contrib import admin

from audit.models import AuditEvent
from cicd.admin_base import ReadOnlyAdmin


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):  # written by services only: it is the record
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
