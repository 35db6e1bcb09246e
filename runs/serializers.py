"""API representations of runs, jobs, steps, runners, environments, deployments and approvals.
Read-only: runs change through the engine's services (runs.actions), never a serializer."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from runs.models import Approval, Deployment, Environment, Job, PipelineRun, Step
from runs.page_selectors import duration_s


class RunSerializer(serializers.ModelSerializer):
    repository = serializers.CharField(source="pipeline.repository.name", read_only=True)
    pipeline_name = serializers.CharField(source="pipeline.name", read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = PipelineRun
        fields = [
            "id",
            "number",
            "repository",
            "pipeline",
            "pipeline_name",
            "status",
            "branch",
            "is_tag",
            "commit_sha",
            "commit_message",
            "trigger",
            "triggered_by",
            "error_message",
            "created_at",
            "started_at",
            "finished_at",
            "duration_s",
            "url",
        ]

    def get_url(self, run: PipelineRun) -> str:
        from django.urls import reverse

        path = reverse("runs:run", args=[run.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path


class GraphJobSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    status = serializers.CharField()
    status_reason = serializers.CharField()
    when = serializers.CharField()
    allow_failure = serializers.BooleanField()
    blocking = serializers.BooleanField()
    attempt = serializers.IntegerField()
    uses_needs = serializers.BooleanField()
    needs = serializers.ListField(child=serializers.CharField())
    duration_s = serializers.FloatField(allow_null=True)


class GraphStageSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    name = serializers.CharField()
    jobs = GraphJobSerializer(many=True)


class GraphEdgeSerializer(serializers.Serializer):
    source = serializers.CharField(help_text="The needed job.")
    target = serializers.CharField(help_text="The job that needs it.")
    artifacts = serializers.BooleanField()

    def to_representation(self, edge: dict[str, Any]) -> dict[str, Any]:
        return {"source": edge["from"], "target": edge["to"], "artifacts": edge["artifacts"]}


class RunDetailSerializer(RunSerializer):
    variables = serializers.SerializerMethodField()
    stages = serializers.SerializerMethodField()
    edges = serializers.SerializerMethodField()

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "variables", "stages", "edges"]

    def _graph(self, run: PipelineRun) -> dict[str, Any]:
        from runs.page_selectors import run_graph_layout

        if getattr(run, "_graph", None) is None:
            run._graph = run_graph_layout(run=run)
        return run._graph

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_variables(self, run: PipelineRun) -> list[str]:
        # Names only: a variable given at trigger time may be a secret.
        return sorted(run.variables or {})

    @extend_schema_field(GraphStageSerializer(many=True))
    def get_stages(self, run: PipelineRun) -> list[dict[str, Any]]:
        return GraphStageSerializer(self._graph(run)["stages"], many=True).data

    @extend_schema_field(GraphEdgeSerializer(many=True))
    def get_edges(self, run: PipelineRun) -> list[dict[str, Any]]:
        return GraphEdgeSerializer(self._graph(run)["edges"], many=True).data


class StepSerializer(serializers.ModelSerializer):
    duration_s = serializers.SerializerMethodField()

    class Meta:
        model = Step
        fields = [
            "id",
            "job",
            "index",
            "kind",
            "name",
            "command",
            "status",
            "exit_code",
            "started_at",
            "finished_at",
            "duration_s",
        ]

    @extend_schema_field(serializers.FloatField(allow_null=True))  # null until it started
    def get_duration_s(self, step: Step) -> float | None:
        return duration_s(step.started_at, step.finished_at, now=timezone.now())


class JobSerializer(serializers.ModelSerializer):
    runner_name = serializers.CharField(source="runner.name", read_only=True, default=None, allow_null=True)
    duration_s = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id",
            "run",
            "name",
            "stage",
            "status",
            "status_reason",
            "when",
            "allow_failure",
            "blocking",
            "attempt",
            "retried",
            "environment",
            "runner",
            "runner_name",
            "exit_code",
            "created_at",
            "queued_at",
            "started_at",
            "finished_at",
            "duration_s",
        ]

    @extend_schema_field(serializers.FloatField(allow_null=True))  # null until it started
    def get_duration_s(self, job: Job) -> float | None:
        return duration_s(job.started_at, job.finished_at, now=timezone.now())


class JobDetailSerializer(JobSerializer):
    steps = StepSerializer(many=True, read_only=True)

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "steps"]


class CurrentJobSerializer(serializers.ModelSerializer):
    repository = serializers.CharField(source="run.pipeline.repository.name", read_only=True)
    run_number = serializers.IntegerField(source="run.number", read_only=True)

    class Meta:
        model = Job
        fields = ["id", "run", "run_number", "repository", "name", "started_at"]


class RunnerSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    executor = serializers.CharField()
    concurrency = serializers.IntegerField()
    version = serializers.CharField()
    is_paused = serializers.BooleanField()
    is_online = serializers.BooleanField()
    revoked = serializers.SerializerMethodField()
    last_seen_at = serializers.DateTimeField(allow_null=True)
    current_jobs = CurrentJobSerializer(many=True, help_text="Running jobs of repositories you can see.")

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_revoked(self, runner: Any) -> bool:
        return runner.revoked_at is not None


class EnvironmentSerializer(serializers.ModelSerializer):
    repository = serializers.CharField(source="repository.name", read_only=True)

    class Meta:
        model = Environment
        fields = ["id", "repository", "name", "url", "protected", "required_approvals", "created_at"]


class DeploymentSerializer(serializers.ModelSerializer):
    environment_name = serializers.CharField(source="environment.name", read_only=True)
    job_name = serializers.CharField(source="job.name", read_only=True)

    class Meta:
        model = Deployment
        fields = [
            "id",
            "environment",
            "environment_name",
            "run",
            "job",
            "job_name",
            "image",
            "image_digest",
            "strategy",
            "status",
            "waiting_for",
            "status_reason",
            "deployed_by_name",
            "previous",
            "redeploy_of",
            "created_at",
            "started_at",
            "finished_at",
        ]


class ApprovalSerializer(serializers.ModelSerializer):
    class Meta:
        model = Approval
        fields = ["id", "deployment", "job", "username", "decision", "comment", "created_at"]
