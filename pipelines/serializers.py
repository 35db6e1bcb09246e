"""API representations of repositories, pipelines and schedules, and the bodies the API takes
(a run to trigger, a config to lint). Read-only representations; writes go through services."""

from __future__ import annotations

import re
from typing import Any

from rest_framework import serializers

from pipelines.models import Pipeline, PipelineSchedule, Repository, RepositoryMembership, Role
from pipelines.permissions import repository_roles

MAX_VARIABLES = 100
_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


class RepositorySerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField(help_text="Your role: viewer, developer, maintainer, or null.")

    class Meta:
        model = Repository
        # Not the clone URL (it may carry credentials), the webhook secret or the forge token.
        fields = ["name", "default_branch", "is_private", "forge", "forge_project", "created_at", "role"]

    def get_role(self, repository: Repository) -> str | None:
        # The view puts every listed repository's role in the context: one query for the page.
        roles = self.context.get("roles")
        if roles is None:
            request = self.context.get("request")
            roles = repository_roles(request.user, [repository.pk]) if request else {}
        return roles.get(repository.pk)


class MemberSerializer(serializers.ModelSerializer):
    """A repository's member: a user or a group, with a role. Groups are given roles in the admin."""

    user = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    group = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)

    class Meta:
        model = RepositoryMembership
        fields = ["id", "user", "group", "role", "created_at"]


class MemberAddSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices)


class MemberRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class PipelineSerializer(serializers.ModelSerializer):
    repository = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Pipeline
        fields = ["id", "repository", "name", "config_path", "trigger", "is_active", "auto_cancel", "created_at"]


class ScheduleSerializer(serializers.ModelSerializer):
    pipeline = serializers.PrimaryKeyRelatedField(read_only=True)
    repository = serializers.CharField(source="pipeline.repository.name", read_only=True)

    class Meta:
        model = PipelineSchedule
        fields = [
            "id",
            "repository",
            "pipeline",
            "description",
            "cron",
            "timezone",
            "ref",
            "is_active",
            "next_run_at",
            "last_run_at",
            "last_run",
            "last_error",
        ]


class VariablesField(serializers.DictField):
    """{"NAME": "value"}: at most 100, names like shell variables, values up to 10000 characters."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=serializers.CharField(max_length=10_000, allow_blank=True), **kwargs)

    def to_internal_value(self, data: Any) -> dict[str, str]:
        if isinstance(data, dict):
            # Numbers and booleans are accepted as their text, as the trigger API does.
            data = {k: str(v).lower() if isinstance(v, bool) else v for k, v in data.items()}
            data = {k: str(v) if isinstance(v, int | float) else v for k, v in data.items()}
        variables = super().to_internal_value(data)
        if len(variables) > MAX_VARIABLES:
            raise serializers.ValidationError(f"at most {MAX_VARIABLES} variables")
        for name in variables:
            if not _VARIABLE_NAME.match(name):
                raise serializers.ValidationError(f"invalid variable name {name[:80]!r}")
        for name, value in variables.items():
            if "\x00" in value:
                raise serializers.ValidationError(f"variable {name}: no NUL characters")
        return variables


class TriggerSerializer(serializers.Serializer):
    """POST /api/v1/runs/: which pipeline, on which branch or tag, with which variables."""

    repository = serializers.SlugField(max_length=200)
    pipeline = serializers.CharField(
        max_length=200, required=False, allow_blank=True, help_text="The pipeline's name; optional if it has one."
    )
    ref = serializers.CharField(max_length=255, help_text="A branch or tag name.")
    variables = VariablesField(required=False, default=dict)

    def validate_ref(self, value: str) -> str:
        value = value.strip()
        if not value or any(ord(c) < 32 for c in value):
            raise serializers.ValidationError("a branch or tag name")
        return value


class LintSerializer(serializers.Serializer):
    """POST /api/v1/lint/ as JSON (or send the YAML itself as text/plain or application/yaml)."""

    config = serializers.CharField(trim_whitespace=False, allow_blank=True, help_text="The config file's text.")
    ref = serializers.CharField(max_length=255, required=False, default="main")
    event = serializers.ChoiceField(
        choices=["push", "merge_request_event", "schedule", "web", "api"], required=False, default="push"
    )
    tag = serializers.BooleanField(required=False, default=False)
    variables = VariablesField(required=False, default=dict)


class LintJobSerializer(serializers.Serializer):
    name = serializers.CharField()
    stage = serializers.CharField()
    needs = serializers.ListField(child=serializers.CharField(), help_text="The jobs it waits for.")
    when = serializers.CharField()
    allow_failure = serializers.BooleanField()


class LintResultSerializer(serializers.Serializer):
    stages = serializers.ListField(child=serializers.CharField())
    jobs = LintJobSerializer(many=True)
    errors = serializers.ListField(child=serializers.CharField())
    warnings = serializers.ListField(child=serializers.CharField())
