from __future__ import annotations

import contextlib
import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from pipelines import cron, schedules, services
from pipelines.deliveries import delivery_replay
from pipelines.models import (
    ApiToken,
    CommitStatusReport,
    DeliveryStatus,
    Pipeline,
    PipelineSchedule,
    Repository,
    RepositoryMembership,
    TriggerToken,
    Variable,
    WebhookDelivery,
)


class PipelineInline(admin.TabularInline):
    model = Pipeline
    fields = ("name", "config_path", "trigger", "is_active", "created_at")
    readonly_fields = ("created_at",)
    extra = 0
    show_change_link = True


class RepositoryForm(forms.ModelForm):
    # Write-only: the token is never sent back to the browser.
    forge_token = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="A token that may post commit statuses (GitHub: 'Commit statuses: write'; GitLab: 'api'). "
        "Leave empty to keep the current one.",
    )
    clear_forge_token = forms.BooleanField(required=False, help_text="Remove the token: stop reporting statuses.")

    class Meta:
        model = Repository
        fields = (
            "name",
            "clone_url",
            "default_branch",
            "protected_refs",
            "is_private",
            "forge",
            "forge_project",
            "forge_api_url",
        )

    def clean_forge_token(self) -> str:
        # The admin builds the form with forge_token as a model field: blank must keep the stored one.
        token = (self.cleaned_data.get("forge_token") or "").strip()
        return token or (self.instance.forge_token if self.instance.pk else "")

    def save(self, commit: bool = True) -> Repository:
        if self.cleaned_data.get("clear_forge_token"):
            self.instance.forge_token = ""
        return super().save(commit=commit)


@admin.register(Repository)
class RepositoryAdmin(admin.ModelAdmin):
    # The webhook secret is shown on the change page only (it is needed to set up the forge's
    # webhook), never in lists. The forge token is never shown at all.
    form = RepositoryForm
    list_display = ("name", "clone_url", "default_branch", "forge", "forge_project", "is_private", "created_at")
    list_filter = ("is_private", "forge")
    search_fields = ("name", "clone_url", "forge_project")
    date_hierarchy = "created_at"
    inlines = [PipelineInline]

    def get_fields(self, request, obj=None):
        fields = ["name", "clone_url", "default_branch", "protected_refs", "is_private"]
        forge = ["forge", "forge_project", "forge_api_url", "forge_token", "clear_forge_token"]
        # A new repository gets its secret from the model default, not from a form field.
        if obj:
            return [*fields, *forge, "has_forge_token", "webhook_secret", "webhook_urls", "variables", "created_at"]
        return [*fields, *forge]

    def get_readonly_fields(self, request, obj=None):
        return ("webhook_secret", "webhook_urls", "has_forge_token", "variables", "created_at") if obj else ()

    @admin.display(boolean=True, description="Forge token set")
    def has_forge_token(self, repository: Repository) -> bool:
        return bool(repository.forge_token)

    @admin.display(description="CI/CD variables")
    def variables(self, repository: Repository):
        # Keys and flags only, each linking to its page: values are write-only.
        rows = [
            (
                reverse("admin:pipelines_variable_change", args=[variable.pk]),
                variable.key,
                "" if variable.environment_scope == "*" else f" ({variable.environment_scope})",
                ", ".join(flag for flag, on in (("masked", variable.masked), ("protected", variable.protected)) if on),
            )
            for variable in repository.variables.order_by("key", "environment_scope")
        ]
        add = reverse("admin:pipelines_variable_add") + f"?repository={repository.pk}"
        return format_html(
            "{}<div><a href='{}'>Add a variable</a></div>",
            format_html_join("", "<div><a href='{}'><code>{}</code></a>{} {}</div>", rows),
            add,
        )

    @admin.display(description="Webhook URLs")
    def webhook_urls(self, repository: Repository):
        base = self._base_url()
        rows = [
            (provider, f"{base}{reverse(f'webhook-{provider.lower()}')}?repository={repository.name}")
            for provider in ("GitHub", "GitLab", "Generic")
        ]
        return format_html_join("", "<div>{}: <code>{}</code></div>", rows)

    @staticmethod
    def _base_url() -> str:
        from django.conf import settings

        return settings.CONVEYOR_BASE_URL


class PipelineScheduleInline(admin.TabularInline):
    model = PipelineSchedule
    fields = ("description", "cron", "timezone", "ref", "is_active", "next_run_at", "last_run_at")
    readonly_fields = fields
    extra = 0
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class RunPipelineForm(forms.Form):
    ref = forms.CharField(max_length=255, help_text="Branch or tag.")
    variables = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text="One NAME=value per line.",
    )

    def clean_variables(self) -> dict[str, str]:
        variables = {}
        for number, line in enumerate(self.cleaned_data.get("variables", "").splitlines(), start=1):
            if not line.strip():
                continue
            name, sep, value = line.partition("=")
            name = name.strip()
            if not sep or not name.isidentifier():
                raise ValidationError(f"line {number}: write NAME=value")
            variables[name] = value
        return variables


@admin.register(Pipeline)
class PipelineAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "repository",
        "config_path",
        "trigger",
        "is_active",
        "auto_cancel",
        "created_by",
        "created_at",
    )
    list_filter = ("trigger", "is_active", "repository")
    list_select_related = ("repository", "created_by")
    search_fields = ("name", "repository__name", "config_path")
    autocomplete_fields = ("repository",)
    raw_id_fields = ("created_by",)
    readonly_fields = ("created_at", "run_link")
    inlines = [PipelineScheduleInline]

    def get_urls(self):
        run = path("<int:pipeline_id>/run/", self.admin_site.admin_view(self.run_view), name="pipelines_pipeline_run")
        return [run, *super().get_urls()]

    @admin.display(description="Run")
    def run_link(self, pipeline: Pipeline):
        if not pipeline.pk:
            return "-"
        url = reverse("admin:pipelines_pipeline_run", args=[pipeline.pk])
        return format_html('<a class="button" href="{}">Run pipeline…</a>', url)

    def run_view(self, request, pipeline_id: int):
        pipeline = get_object_or_404(Pipeline.objects.select_related("repository"), pk=pipeline_id)
        if not self.has_change_permission(request, pipeline):
            raise PermissionDenied
        form = RunPipelineForm(request.POST or None, initial={"ref": pipeline.repository.default_branch})
        if request.method == "POST" and form.is_valid():
            try:
                run = services.run_manual(
                    pipeline=pipeline,
                    ref=form.cleaned_data["ref"].strip(),
                    user=request.user,
                    variables=form.cleaned_data["variables"],
                )
            except services.RunNotCreated as exc:
                form.add_error(None, f"No run: the config's workflow rules filtered it out ({exc}).")
            except services.TriggerError as exc:
                form.add_error("ref", str(exc))
            else:
                self.message_user(request, f"Started {run} on {run.branch}.", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:runs_pipelinerun_change", args=[run.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Run {pipeline}",
            "pipeline": pipeline,
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/pipelines/pipeline/run_pipeline.html", context)


# --- Webhook deliveries: read-only, with a replay action.


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("received_at", "provider", "event", "action", "repository", "ref", "short_sha", "status", "result")
    list_filter = ("status", "provider", "repository")
    list_select_related = ("repository",)
    search_fields = ("delivery_id", "ref", "commit_sha", "repository__name", "event")
    date_hierarchy = "received_at"
    actions = ["replay"]
    fields = (
        "provider",
        "delivery_id",
        "repository",
        "event",
        "action",
        "ref",
        "commit_sha",
        "status",
        "result",
        "error_message",
        "attempts",
        "run_links",
        "received_at",
        "started_at",
        "processed_at",
        "content_type",
        "headers_pretty",
        "body_pretty",
    )
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Commit")
    def short_sha(self, delivery: WebhookDelivery) -> str:
        return delivery.commit_sha[:12]

    @admin.display(description="Runs")
    def run_links(self, delivery: WebhookDelivery):
        runs = delivery.runs.select_related("pipeline__repository").order_by("created_at")
        rows = [(reverse("admin:runs_pipelinerun_change", args=[run.pk]), str(run), run.status) for run in runs]
        return format_html_join(", ", '<a href="{}">{}</a> ({})', rows) if rows else "-"

    @admin.display(description="Headers")
    def headers_pretty(self, delivery: WebhookDelivery):
        return format_html("<pre>{}</pre>", json.dumps(delivery.headers, indent=2, sort_keys=True))

    @admin.display(description="Body")
    def body_pretty(self, delivery: WebhookDelivery):
        text = delivery.body
        with contextlib.suppress(ValueError):
            text = json.dumps(json.loads(text), indent=2)
        return format_html('<pre style="max-height: 40em; overflow: auto">{}</pre>', text)

    @admin.action(description="Replay selected deliveries (runs that already exist are not created again)")
    def replay(self, request, queryset) -> None:
        replayed = sum(1 for delivery in queryset if delivery_replay(delivery=delivery))
        busy = queryset.filter(status__in=sorted(DeliveryStatus.PENDING)).count()
        self.message_user(request, f"{replayed} delivery(ies) queued again.", messages.SUCCESS)
        if busy:
            self.message_user(request, f"{busy} still queued or processing: left alone.", messages.WARNING)


# --- Schedules.


class PipelineScheduleForm(forms.ModelForm):
    class Meta:
        model = PipelineSchedule
        fields = ("pipeline", "description", "cron", "timezone", "ref", "variables", "is_active")

    def clean(self):
        data = super().clean()
        try:
            cron.next_run(data.get("cron") or "", data.get("timezone") or "UTC", after=_now())
        except cron.CronError as exc:
            raise ValidationError({"cron": str(exc)}) from None
        variables = data.get("variables")
        if variables is not None and not isinstance(variables, dict):
            raise ValidationError({"variables": 'Write an object of names to values, e.g. {"NIGHTLY": "1"}.'})
        return data


def _now():
    from django.utils import timezone

    return timezone.now()


@admin.register(PipelineSchedule)
class PipelineScheduleAdmin(admin.ModelAdmin):
    form = PipelineScheduleForm
    list_display = ("description", "pipeline", "cron", "timezone", "ref", "is_active", "next_run_at", "last_run_at")
    list_filter = ("is_active",)
    list_select_related = ("pipeline__repository",)
    search_fields = ("description", "ref", "pipeline__name", "pipeline__repository__name")
    autocomplete_fields = ("pipeline",)
    readonly_fields = ("next_run_at", "last_run_at", "last_run", "last_error", "created_by", "created_at")
    actions = ["run_now"]

    def save_model(self, request, obj: PipelineSchedule, form, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        schedules.schedule_refresh(schedule=obj)
        super().save_model(request, obj, form, change)

    @admin.action(description="Run selected schedules now (their next run stays as planned)")
    def run_now(self, request, queryset) -> None:
        started = 0
        for schedule in queryset.select_related("pipeline__repository", "created_by"):
            if schedules.schedule_fire(schedule=schedule) is not None:
                started += 1
        self.message_user(request, f"{started} run(s) started.", messages.SUCCESS)


# --- Trigger tokens: shown once, stored as a hash.


@admin.register(TriggerToken)
class TriggerTokenAdmin(admin.ModelAdmin):
    list_display = ("__str__", "pipeline", "created_by", "created_at", "last_used_at", "revoked_at")
    list_select_related = ("pipeline__repository", "created_by")
    search_fields = ("description", "pipeline__name", "pipeline__repository__name")
    autocomplete_fields = ("pipeline",)
    exclude = ("token_hash",)
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        fields = ("created_by", "created_at", "last_used_at", "revoked_at", "trigger_url")
        # A token belongs to its pipeline for good: moving it would hand a script another pipeline.
        return ("pipeline", *fields) if obj else fields

    @admin.display(description="Trigger URL")
    def trigger_url(self, token: TriggerToken):
        if not token.pipeline_id:
            return "-"
        from django.conf import settings

        return format_html(
            "<code>POST {}{}</code>",
            settings.CONVEYOR_BASE_URL,
            reverse("pipeline-trigger", args=[token.pipeline_id]),
        )

    def save_model(self, request, obj: TriggerToken, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # New tokens come from the service, which stores only the hash: the token is shown this once.
        row, token = services.trigger_token_create(
            pipeline=obj.pipeline, description=obj.description, user=request.user
        )
        obj.pk, obj.token_hash, obj.created_at, obj.created_by = row.pk, row.token_hash, row.created_at, row.created_by
        obj._state.adding, obj._state.db = False, row._state.db
        self.message_user(request, f"Trigger token (copy it now, it is not shown again): {token}", messages.WARNING)

    @admin.action(description="Revoke selected trigger tokens")
    def revoke(self, request, queryset) -> None:
        for token in queryset:
            services.trigger_token_revoke(token=token)
        self.message_user(request, f"{queryset.count()} token(s) revoked.", messages.SUCCESS)


@admin.register(CommitStatusReport)
class CommitStatusReportAdmin(admin.ModelAdmin):
    list_display = ("run", "state", "description", "reported_at", "attempts", "last_error")
    list_select_related = ("run__pipeline__repository",)
    list_filter = ("state",)
    search_fields = ("run__pipeline__repository__name", "run__commit_sha", "run__branch")
    readonly_fields = ("run", "state", "description", "reported_at", "attempts", "last_error")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


# --- Roles and personal API tokens (pipelines.permissions decides with them).


@admin.register(RepositoryMembership)
class RepositoryMembershipAdmin(admin.ModelAdmin):
    list_display = ("__str__", "repository", "user", "group", "role", "created_at")
    list_select_related = ("repository", "user", "group")
    list_filter = ("role", "repository")
    search_fields = ("repository__name", "user__username", "group__name")
    autocomplete_fields = ("repository",)
    raw_id_fields = ("user",)
    readonly_fields = ("created_at",)

    # Through the services, which audit every change of a role.
    def save_model(self, request, obj: RepositoryMembership, form, change: bool) -> None:
        from pipelines.memberships import membership_save

        membership_save(membership=obj, user=request.user)

    def delete_model(self, request, obj: RepositoryMembership) -> None:
        from pipelines.memberships import membership_delete

        membership_delete(membership=obj, user=request.user)

    def delete_queryset(self, request, queryset) -> None:
        from pipelines.memberships import membership_delete

        for membership in queryset.select_related("user", "group"):
            membership_delete(membership=membership, user=request.user)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("__str__", "user", "hint", "created_at", "last_used_at", "expires_at", "revoked_at")
    list_select_related = ("user",)
    search_fields = ("description", "user__username", "hint")
    raw_id_fields = ("user",)
    exclude = ("token_hash",)
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        fields = ("hint", "created_at", "last_used_at", "revoked_at")
        # A token belongs to its user for good: moving it would hand a script someone else's roles.
        return ("user", *fields) if obj else fields

    def save_model(self, request, obj: ApiToken, form, change: bool) -> None:
        from pipelines.api_tokens import api_token_create

        if change:
            super().save_model(request, obj, form, change)
            return
        row, token = api_token_create(user=obj.user, description=obj.description, expires_at=obj.expires_at)
        obj.pk, obj.token_hash, obj.hint, obj.created_at = row.pk, row.token_hash, row.hint, row.created_at
        obj._state.adding, obj._state.db = False, row._state.db
        self.message_user(request, f"API token (copy it now, it is not shown again): {token}", messages.WARNING)

    @admin.action(description="Revoke selected API tokens")
    def revoke(self, request, queryset) -> None:
        from pipelines.api_tokens import api_token_revoke

        revoked = sum(api_token_revoke(token=token) for token in queryset)
        self.message_user(request, f"{revoked} token(s) revoked.", messages.SUCCESS)


# --- CI/CD variables (pipelines.variables). Values are write-only: never in a list, never sent
# back to the browser, never in the audit log.


class VariableForm(forms.ModelForm):
    value = forms.CharField(
        required=False,
        strip=False,
        max_length=Variable._meta.get_field("value").max_length,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: it is never shown again. When changing a variable, leave empty to keep its value.",
    )

    class Meta:
        model = Variable
        fields = ("repository", "key", "masked", "protected", "environment_scope", "description")

    def clean_value(self) -> str:
        # Blank keeps the stored value; either is validated with the rest by Variable.clean
        # (a masked value must be maskable).
        value = self.cleaned_data.get("value") or ""
        return value if value or not self.instance.pk else self.instance.value


@admin.register(Variable)
class VariableAdmin(admin.ModelAdmin):
    form = VariableForm
    list_display = ("key", "repository", "environment_scope", "masked", "protected", "updated_at")
    list_filter = ("masked", "protected", "repository")
    list_select_related = ("repository",)
    search_fields = ("key", "repository__name", "description")
    autocomplete_fields = ("repository",)

    def get_fields(self, request, obj=None):
        return ("repository", "key", "value", "masked", "protected", "environment_scope", "description")

    def get_readonly_fields(self, request, obj=None):
        # A variable stays with its repository: moving it would hand its value to another one.
        return ("repository",) if obj else ()

    def save_model(self, request, obj: Variable, form, change: bool) -> None:
        from pipelines.variables import variable_create, variable_update

        data = form.cleaned_data
        fields = {
            "key": obj.key,
            "masked": obj.masked,
            "protected": obj.protected,
            "environment_scope": obj.environment_scope,
            "description": obj.description,
        }
        if change:
            saved = variable_update(variable=obj, user=request.user, value=data["value"], **fields)
        else:
            saved = variable_create(
                repository=obj.repository, value=data.get("value") or "", user=request.user, **fields
            )
        obj.pk, obj.created_at, obj.updated_at = saved.pk, saved.created_at, saved.updated_at
        obj._state.adding, obj._state.db = False, saved._state.db

    def delete_model(self, request, obj: Variable) -> None:
        from pipelines.variables import variable_delete

        variable_delete(variable=obj, user=request.user)

    def delete_queryset(self, request, queryset) -> None:
        from pipelines.variables import variable_delete

        for variable in queryset.select_related("repository"):
            variable_delete(variable=variable, user=request.user)
