"""API endpoints of runs, jobs, steps (and their logs), runners, environments, deployments and
approvals. Every queryset starts from pipelines.permissions' visible_* helpers, so a private
object an outsider asks for is a 404; writes go through runs.actions (403 for a viewer,
409 when the state does not allow it)."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from logs.selectors import log_chunks_from, log_expired_at
from logs.views import expired_message
from pipelines import services as pipeline_services
from pipelines.models import Pipeline
from pipelines.permissions import (
    visible_approvals,
    visible_deployments,
    visible_environments,
    visible_jobs,
    visible_repositories,
    visible_steps,
)
from pipelines.serializers import TriggerSerializer
from runs import actions
from runs.models import JobStatus, RunStatus, Step, StepStatus
from runs.page_selectors import FilterError, RunFilters, runs_for_list, text_param
from runs.serializers import (
    ApprovalSerializer,
    DeploymentSerializer,
    EnvironmentSerializer,
    JobDetailSerializer,
    JobSerializer,
    RunDetailSerializer,
    RunnerSerializer,
    RunSerializer,
    StepSerializer,
)

UUID_RE = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
LOG_CHUNKS_PER_ANSWER = 256  # a step's log answer holds at most this many chunks (16 MB at most)

_TEXT = {(200, "text/plain"): OpenApiTypes.STR}


def _uuid_param(request: Request, name: str) -> str | None:
    import uuid

    value = request.query_params.get(name)
    if not value:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValidationError({name: "a UUID"}) from None


def _status_param(request: Request, choices: list[str]) -> str | None:
    value = request.query_params.get("status")
    if value and value not in choices:
        raise ValidationError({"status": f"one of {', '.join(choices)}"})
    return value or None


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("repository", str, description="Repository name"),
            OpenApiParameter("pipeline", int, description="Pipeline id"),
            OpenApiParameter("branch", str),
            OpenApiParameter("status", str, enum=RunStatus.values),
            OpenApiParameter("trigger", str, enum=["PUSH", "PR", "SCHEDULE", "MANUAL"]),
        ]
    ),
    create=extend_schema(request=TriggerSerializer, responses={201: RunDetailSerializer}),
    cancel=extend_schema(request=None, responses={200: RunDetailSerializer}),
    retry=extend_schema(request=None, responses={200: RunDetailSerializer}),
)
class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """Runs you can see, newest first. POST a pipeline, ref and variables to start one
    (developers); cancel a run, or retry its failed jobs."""

    lookup_value_regex = UUID_RE

    def get_queryset(self):
        try:
            filters = RunFilters.parse(self.request.query_params) if self.action == "list" else None
        except FilterError as exc:
            raise ValidationError(str(exc)) from None
        return runs_for_list(user=self.request.user, filters=filters)

    def get_serializer_class(self):
        if self.action == "list":
            return RunSerializer
        if self.action == "create":
            return TriggerSerializer
        return RunDetailSerializer

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = TriggerSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        repository = visible_repositories(request.user).filter(name=data["repository"]).first()
        if repository is None:
            raise NotFound("No such repository.")
        pipeline = _pipeline_of(repository, data.get("pipeline") or "")
        try:
            run = actions.pipeline_run_as(
                pipeline=pipeline, user=request.user, ref=data["ref"], variables=data["variables"], source="api"
            )
        except pipeline_services.RunNotCreated as exc:
            raise ValidationError({"ref": f"no run: the config's workflow rules filtered it out ({exc})"}) from None
        except pipeline_services.TriggerError as exc:
            raise ValidationError({"ref": str(exc)}) from None
        run = self.get_queryset().get(pk=run.pk)
        return Response(RunDetailSerializer(run, context=self.get_serializer_context()).data, status=201)

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: Any = None) -> Response:
        run = actions.run_cancel_as(run=self.get_object(), user=request.user)
        return Response(RunDetailSerializer(run, context=self.get_serializer_context()).data)

    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: Any = None) -> Response:
        """Retry every failed or cancelled job of the run."""
        run = self.get_object()
        actions.run_retry_failed_as(run=run, user=request.user)
        run.refresh_from_db()
        return Response(RunDetailSerializer(run, context=self.get_serializer_context()).data)


def _pipeline_of(repository: Any, name: str) -> Pipeline:
    pipelines = Pipeline.objects.filter(repository=repository).select_related("repository")
    if name:
        pipeline = pipelines.filter(name=name).first()
        if pipeline is None:
            raise NotFound(f"No pipeline {name!r} in {repository.name}.")
        return pipeline
    found = list(pipelines.filter(is_active=True)[:2])
    if len(found) != 1:
        raise ValidationError(
            {"pipeline": f"{repository.name} has {'several' if found else 'no'} active pipelines: name one"}
        )
    return found[0]


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("run", str, description="Run id"),
            OpenApiParameter("status", str, enum=JobStatus.values),
        ]
    ),
    retry=extend_schema(request=None, responses={201: JobSerializer}),
    play=extend_schema(request=None, responses={200: JobSerializer}),
    log=extend_schema(responses=_TEXT),
)
class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Jobs of runs you can see (every attempt; `retried` marks replaced ones). Retry a finished
    job, start a manual one, read its whole log as text."""

    lookup_value_regex = UUID_RE

    def get_queryset(self):
        jobs = (
            visible_jobs(self.request.user)
            .select_related("runner")
            .order_by("run_id", "stage_index", "name", "attempt")
        )
        if self.action == "list":
            run = _uuid_param(self.request, "run")
            if run:
                jobs = jobs.filter(run_id=run)
            job_status = _status_param(self.request, JobStatus.values)
            if job_status:
                jobs = jobs.filter(status=job_status)
        if self.action == "retrieve":
            jobs = jobs.prefetch_related(Prefetch("steps", queryset=Step.objects.order_by("index")))
        return jobs

    def get_serializer_class(self):
        return JobDetailSerializer if self.action == "retrieve" else JobSerializer

    def _job(self):
        return visible_jobs(self.request.user).select_related("run__pipeline__repository").get(pk=self.get_object().pk)

    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: Any = None) -> Response:
        new = actions.job_retry_as(job=self._job(), user=request.user)
        return Response(JobSerializer(new, context=self.get_serializer_context()).data, status=201)

    @action(detail=True, methods=["post"])
    def play(self, request: Request, pk: Any = None) -> Response:
        job = actions.job_play_as(job=self._job(), user=request.user)
        return Response(JobSerializer(job, context=self.get_serializer_context()).data)

    @action(detail=True, methods=["get"])
    def log(self, request: Request, pk: Any = None) -> HttpResponse:
        """The job's whole log as text: its steps' logs one after the other (streamed)."""
        from logs.views import _raw_response

        job = self.get_object()
        _refuse_expired_log(job.pk)
        step_ids = list(Step.objects.filter(job=job).order_by("index").values_list("pk", flat=True))
        return _raw_response(request._request, step_ids, filename=f"job-{job.pk}.log")


class LogExpired(APIException):
    status_code = 410
    default_code = "log_expired"


def _refuse_expired_log(job_id: Any) -> None:
    """410 Gone for a log that retention deleted (CONVEYOR_LOG_RETENTION_DAYS)."""
    expired_at = log_expired_at(job_id=job_id)
    if expired_at is not None:
        raise LogExpired(expired_message(expired_at))


@extend_schema_view(
    list=extend_schema(parameters=[OpenApiParameter("job", str, description="Job id")]),
    log=extend_schema(
        parameters=[OpenApiParameter("offset", int, description="Byte offset to read from (default 0)")],
        responses=_TEXT,
    ),
)
class StepViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Steps of jobs you can see, and their logs from a byte offset (for following a log)."""

    lookup_value_regex = UUID_RE
    serializer_class = StepSerializer

    def get_queryset(self):
        steps = visible_steps(self.request.user).order_by("job_id", "index")
        if self.action == "list":
            job = _uuid_param(self.request, "job")
            if job:
                steps = steps.filter(job_id=job)
        return steps

    @action(detail=True, methods=["get"])
    def log(self, request: Request, pk: Any = None) -> HttpResponse:
        """The step's log from `offset` on, as text. `X-Log-End` is the offset to ask for next;
        `X-Log-Complete: true` once the step is finished and everything was sent."""
        step = self.get_object()
        _refuse_expired_log(step.job_id)
        try:
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            raise ValidationError({"offset": "a byte offset (an integer >= 0)"}) from None
        if offset < 0 or offset > 2**62:
            raise ValidationError({"offset": "a byte offset (an integer >= 0)"})
        finished = step.status in StepStatus.TERMINAL  # read before the log: nothing comes after it
        chunks = log_chunks_from(step_id=step.pk, offset=offset, limit=LOG_CHUNKS_PER_ANSWER)
        end = chunks[-1]["end"] if chunks else offset
        response = HttpResponse("".join(c["content"] for c in chunks), content_type="text/plain; charset=utf-8")
        response["X-Log-Offset"] = str(offset)
        response["X-Log-End"] = str(end)
        response["X-Step-Status"] = step.status
        response["X-Log-Complete"] = "true" if finished and len(chunks) < LOG_CHUNKS_PER_ANSWER else "false"
        response["Cache-Control"] = "private, no-store"
        response["X-Content-Type-Options"] = "nosniff"
        return response


class RunnerViewSet(viewsets.ReadOnlyModelViewSet):
    """Registered runners, online or not, with the running jobs you can see. (Runners live in
    the runners app; their API view is here with the other dashboard reads.)"""

    serializer_class = RunnerSerializer
    lookup_value_regex = UUID_RE

    def get_queryset(self):
        from runners.models import Runner

        running = (
            visible_jobs(self.request.user)
            .filter(status=JobStatus.RUNNING)
            .select_related("run__pipeline__repository")
            .order_by("started_at")
        )
        return Runner.objects.order_by("name").prefetch_related(
            Prefetch("jobs", queryset=running, to_attr="current_jobs")
        )


@extend_schema_view(list=extend_schema(parameters=[OpenApiParameter("repository", str)]))
class EnvironmentViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = EnvironmentSerializer

    def get_queryset(self):
        environments = (
            visible_environments(self.request.user).select_related("repository").order_by("repository__name", "name")
        )
        try:
            repository = text_param(self.request.query_params, "repository")
        except FilterError as exc:
            raise ValidationError(str(exc)) from None
        return environments.filter(repository__name=repository) if repository else environments


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("environment", int),
            OpenApiParameter("run", str),
            OpenApiParameter("status", str),
        ]
    )
)
class DeploymentViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = DeploymentSerializer
    lookup_value_regex = UUID_RE

    def get_queryset(self):
        from runs.models import DeploymentStatus

        deployments = (
            visible_deployments(self.request.user).select_related("environment", "job").order_by("-created_at")
        )
        if self.action == "list":
            environment = self.request.query_params.get("environment")
            if environment:
                if not environment.isdigit():
                    raise ValidationError({"environment": "an environment id"})
                deployments = deployments.filter(environment_id=int(environment))
            run = _uuid_param(self.request, "run")
            if run:
                deployments = deployments.filter(run_id=run)
            deployment_status = _status_param(self.request, DeploymentStatus.values)
            if deployment_status:
                deployments = deployments.filter(status=deployment_status)
        return deployments


@extend_schema_view(list=extend_schema(parameters=[OpenApiParameter("deployment", str)]))
class ApprovalViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = ApprovalSerializer

    def get_queryset(self):
        approvals = visible_approvals(self.request.user).order_by("created_at")
        deployment = _uuid_param(self.request, "deployment") if self.action == "list" else None
        return approvals.filter(deployment_id=deployment) if deployment else approvals
