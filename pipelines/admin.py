from __future__ import annotations

from django.contrib import admin

from pipelines.models import Pipeline, Repository


class PipelineInline(admin.TabularInline):
    model = Pipeline
    fields = ("name", "config_path", "trigger", "is_active", "created_at")
    readonly_fields = ("created_at",)
    extra = 0
    show_change_link = True


@admin.register(Repository)
class RepositoryAdmin(admin.ModelAdmin):
    # The webhook secret is shown on the change page only (it is needed to set up the forge's
    # webhook), never in lists.
    list_display = ("name", "clone_url", "default_branch", "is_private", "created_at")
    list_filter = ("is_private",)
    search_fields = ("name", "clone_url")
    date_hierarchy = "created_at"
    inlines = [PipelineInline]

    def get_fields(self, request, obj=None):
        fields = ["name", "clone_url", "default_branch", "is_private"]
        # A new repository gets its secret from the model default, not from a form field.
        return [*fields, "webhook_secret", "created_at"] if obj else fields

    def get_readonly_fields(self, request, obj=None):
        return ("webhook_secret", "created_at") if obj else ()


@admin.register(Pipeline)
class PipelineAdmin(admin.ModelAdmin):
    list_display = ("name", "repository", "config_path", "trigger", "is_active", "created_by", "created_at")
    list_filter = ("trigger", "is_active", "repository")
    list_select_related = ("repository", "created_by")
    search_fields = ("name", "repository__name", "config_path")
    autocomplete_fields = ("repository",)
    raw_id_fields = ("created_by",)
    readonly_fields = ("created_at",)
