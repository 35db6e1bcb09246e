"""Admin for runners and registration tokens. Token hashes are never shown anywhere."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count, Q

from runners import services
from runners.models import RegistrationToken, Runner
from runs.models import Job, JobStatus


class CurrentJobInline(admin.TabularInline):
    """The jobs the runner is running now (served by job_runner_running_idx)."""

    model = Job
    fk_name = "runner"
    verbose_name = "current job"
    verbose_name_plural = "current jobs"
    fields = ("name", "run", "attempt", "started_at", "lease_expires_at")
    readonly_fields = fields
    can_delete = False
    extra = 0
    show_change_link = True

    def get_queryset(self, request):
        return super().get_queryset(request).filter(status=JobStatus.RUNNING).select_related("run__pipeline")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Runner)
class RunnerAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "is_online",
        "running_jobs",
        "tag_list",
        "executor",
        "concurrency",
        "is_paused",
        "revoked_at",
        "version",
        "last_seen_at",
    )
    list_filter = ("executor", "is_paused", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "version")
    exclude = ("token_hash",)
    readonly_fields = ("is_online", "version", "last_seen_at", "revoked_at", "registration_token", "created_at")
    actions = ["pause", "resume", "revoke"]
    inlines = [CurrentJobInline]

    def get_queryset(self, request):
        # One aggregate in the list query, not one count per row.
        return (
            super()
            .get_queryset(request)
            .annotate(running_count=Count("jobs", filter=Q(jobs__status=JobStatus.RUNNING)))
        )

    def has_add_permission(self, request) -> bool:
        # Runners register themselves with a registration token (see "Registration tokens").
        return False

    @admin.display(description="Running jobs", ordering="running_count")
    def running_jobs(self, runner: Runner) -> int:
        return runner.running_count

    @admin.action(description="Pause selected runners (they finish their jobs but claim no new ones)")
    def pause(self, request, queryset) -> None:
        count = services.runners_set_paused(runners=queryset, paused=True)
        self.message_user(request, f"{count} runner(s) paused.", messages.SUCCESS)

    @admin.action(description="Resume selected runners")
    def resume(self, request, queryset) -> None:
        count = services.runners_set_paused(runners=queryset, paused=False)
        self.message_user(request, f"{count} runner(s) resumed.", messages.SUCCESS)

    @admin.display(boolean=True, description="Online")
    def is_online(self, runner: Runner) -> bool:
        return runner.is_online

    @admin.display(description="Tags")
    def tag_list(self, runner: Runner) -> str:
        return ", ".join(runner.tags)

    @admin.action(description="Revoke selected runners (their tokens stop working at once)")
    def revoke(self, request, queryset) -> None:
        count = 0
        for runner in queryset:
            count += services.runner_revoke(runner=runner, user=request.user)
        self.message_user(request, f"{count} runner(s) revoked.", messages.SUCCESS)


@admin.register(RegistrationToken)
class RegistrationTokenAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "tag_list",
        "uses",
        "max_uses",
        "is_usable",
        "created_by",
        "created_at",
        "expires_at",
        "revoked_at",
    )
    list_select_related = ("created_by",)
    search_fields = ("description",)
    exclude = ("token_hash",)
    readonly_fields = ("uses", "created_by", "created_at", "revoked_at")

    @admin.display(boolean=True, description="Usable")
    def is_usable(self, token: RegistrationToken) -> bool:
        return token.is_usable

    @admin.display(description="Tags")
    def tag_list(self, token: RegistrationToken) -> str:
        return ", ".join(token.tags)

    def save_model(self, request, obj: RegistrationToken, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # New tokens come from the service, which stores only the hash: the token is shown this once.
        row, token = services.registration_token_create(
            description=obj.description,
            tags=obj.tags,
            user=request.user,
            expires_at=obj.expires_at,
            max_uses=obj.max_uses,
        )
        obj.pk, obj.token_hash, obj.created_at, obj.created_by = row.pk, row.token_hash, row.created_at, row.created_by
        obj._state.adding, obj._state.db = False, row._state.db
        self.message_user(
            request,
            f"Registration token (copy it now, it is not shown again): {token}",
            messages.WARNING,
        )
