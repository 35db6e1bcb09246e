"""Admin for artifacts: read-only metadata (files are written by runners). Deleting goes
through the service, which deletes the stored file first and then the row."""

from __future__ import annotations

from django.contrib import admin, messages
from django.template.defaultfilters import filesizeformat
from django.utils.html import format_html

from artifacts.models import Artifact, ArtifactStatus, Cache, StorageDeletion, TestReport
from artifacts.services import artifacts_delete
from cicd.admin_base import ReadOnlyAdmin


class TestReportInline(admin.StackedInline):
    model = TestReport
    fields = ("tests", "failures", "errors", "skipped", "duration_s", "failed_cases", "problems")
    readonly_fields = fields
    can_delete = False
    extra = 0

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    list_display = ("name", "type", "status", "run", "job", "size", "created_at", "expires_at", "download")
    list_filter = ("type", "status", ("expires_at", admin.EmptyFieldListFilter))
    list_select_related = ("run__pipeline__repository", "job")
    search_fields = ("name", "=sha256", "=digest", "=cache_key", "storage_path")
    date_hierarchy = "created_at"
    show_full_result_count = False
    raw_id_fields = ("run", "job")
    readonly_fields = ("reused_from",)
    inlines = [TestReportInline]
    actions = ["delete_now"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # it would delete rows and leave their files
        return actions

    def delete_model(self, request, obj: Artifact) -> None:
        artifacts_delete(artifact_ids=[obj.pk])

    @admin.action(description="Delete the selected artifacts and their files", permissions=["delete"])
    def delete_now(self, request, queryset) -> None:
        counts = artifacts_delete(artifact_ids=list(queryset.values_list("pk", flat=True)))
        level = messages.WARNING if counts["failed"] else messages.SUCCESS
        self.message_user(
            request, f"Deleted {counts['deleted']}; {counts['failed']} failed (the nightly cleanup retries).", level
        )

    @admin.display(description="Size", ordering="size_bytes")
    def size(self, artifact: Artifact) -> str:
        return filesizeformat(artifact.size_bytes)

    @admin.display(description="Download")
    def download(self, artifact: Artifact) -> str:
        if artifact.status != ArtifactStatus.AVAILABLE or not artifact.is_file:
            return "-"
        from artifacts.views import download_url

        return format_html('<a href="{}">download</a>', download_url(artifact))


@admin.register(TestReport)
class TestReportAdmin(admin.ModelAdmin):
    list_display = ("artifact", "run", "job", "tests", "failures", "errors", "skipped", "duration_s", "created_at")
    list_select_related = ("artifact", "run__pipeline__repository", "job")
    search_fields = ("job__name",)
    raw_id_fields = ("artifact", "run", "job")
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Cache)
class CacheAdmin(ReadOnlyAdmin):
    """`cache:` archives, per repository and key. The nightly cleanup removes those unused for
    CONVEYOR_CACHE_RETENTION_DAYS; deleting a repository removes its caches and their objects."""

    list_display = ("key", "repository", "status", "size", "created_at", "last_used_at")
    list_filter = ("status",)
    list_select_related = ("repository",)
    search_fields = ("=key", "repository__name")
    date_hierarchy = "last_used_at"

    @admin.display(description="Size", ordering="size_bytes")
    def size(self, cache: Cache) -> str:
        return filesizeformat(cache.size_bytes)


@admin.register(StorageDeletion)
class StorageDeletionAdmin(ReadOnlyAdmin):
    """Storage objects of deleted rows waiting to be deleted; `attempts` and `last_error` show
    a storage that refuses (the queue is drained every CONVEYOR_STORAGE_DELETION_SWEEP_S)."""

    list_display = ("storage_path", "not_before", "attempts", "last_error", "created_at")
    search_fields = ("storage_path",)
