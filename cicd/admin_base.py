"""Shared admin pieces."""

from __future__ import annotations

from django.contrib import admin


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that only services write (records, queues): listed and opened, never added,
    changed or deleted by hand."""

    show_full_result_count = False  # a COUNT(*) per page view of a table that only grows

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
