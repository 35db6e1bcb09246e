"""Admin for artifacts: read-only metadata (files are written by runners; delete for housekeeping)."""

from __future__ import annotations

from django.contrib import admin
from django.template.defaultfilters import filesizeformat

from artifacts.models import Artifact


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    list_display = ("name", "type", "run", "job", "size", "created_at", "expires_at")
    list_filter = ("type", ("expires_at", admin.EmptyFieldListFilter))
    list_select_related = ("run__pipeline__repository", "job")
    search_fields = ("name", "=sha256", "=digest", "=cache_key", "storage_path")
    date_hierarchy = "created_at"
    show_full_result_count = False
    raw_id_fields = ("run", "job")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Size", ordering="size_bytes")
    def size(self, artifact: Artifact) -> str:
        return filesizeformat(artifact.size_bytes)
