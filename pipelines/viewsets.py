"""API endpoints of repositories, pipelines and schedules, and the config lint endpoint."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import parsers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ParseError, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from pipelines.config.lint import lint_error_report, lint_errors, lint_report
from pipelines.config.parser import parse_pipeline
from pipelines.config.spec import ConfigError, TriggerContext
from pipelines.memberships import (
    MembershipError,
    may_manage_memberships,
    membership_add,
    membership_remove,
    membership_set_role,
)
from pipelines.permissions import (
    repository_role,
    repository_roles,
    visible_pipelines,
    visible_repositories,
    visible_schedules,
)
from pipelines.serializers import (
    LintResultSerializer,
    LintSerializer,
    MemberAddSerializer,
    MemberRoleSerializer,
    MemberSerializer,
    PipelineSerializer,
    RepositorySerializer,
    ScheduleSerializer,
)
from runs.page_selectors import FilterError, text_param


class RepositoryViewSet(viewsets.ReadOnlyModelViewSet):
    """Repositories you can see, with your role in each."""

    serializer_class = RepositorySerializer
    lookup_field = "name"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"

    def get_queryset(self):
        return visible_repositories(self.request.user).order_by("name")

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        roles = repository_roles(request.user, [r.pk for r in page])
        data = RepositorySerializer(page, many=True, context={**self.get_serializer_context(), "roles": roles}).data
        return self.get_paginated_response(data)

    # --- Members: listed to the repository's own people (and staff), changed by its maintainers
    # (pipelines.memberships decides; its refusals are 403s, impossible changes 400s).

    @extend_schema(
        methods=["GET"], responses=MemberSerializer(many=True), summary="The repository's members and their roles"
    )
    @extend_schema(
        methods=["POST"], request=MemberAddSerializer, responses={201: MemberSerializer}, summary="Add a user"
    )
    @action(detail=True, methods=["get", "post"], url_path="members", pagination_class=None)
    def members(self, request: Request, name: str | None = None) -> Response:
        repository = self.get_object()
        if request.method == "POST":
            body = MemberAddSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            membership = _membership_call(
                membership_add,
                repository=repository,
                username=body.validated_data["username"],
                role=body.validated_data["role"],
                by=request.user,
            )
            return Response(MemberSerializer(membership).data, status=201)
        if repository_role(request.user, repository) is None and not (
            request.user.is_staff or may_manage_memberships(request.user, repository)
        ):
            raise PermissionDenied("Only the repository's members see its members.")
        members = repository.memberships.select_related("user", "group").order_by("group__name", "user__username")
        return Response(MemberSerializer(members, many=True).data)

    @extend_schema(methods=["PATCH"], request=MemberRoleSerializer, responses=MemberSerializer, summary="Change a role")
    @extend_schema(methods=["DELETE"], request=None, responses={204: None}, summary="Remove a member")
    @action(detail=True, methods=["patch", "delete"], url_path=r"members/(?P<membership_id>[0-9]+)")
    def member(self, request: Request, name: str | None = None, membership_id: str = "") -> Response:
        repository = self.get_object()
        membership = (
            repository.memberships.select_related("repository", "user", "group").filter(pk=int(membership_id)).first()
        )
        if membership is None:
            raise NotFound("No such member.")
        if request.method == "DELETE":
            _membership_call(membership_remove, membership=membership, by=request.user)
            return Response(status=204)
        body = MemberRoleSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        _membership_call(membership_set_role, membership=membership, role=body.validated_data["role"], by=request.user)
        return Response(MemberSerializer(membership).data)


def _membership_call(service: Any, **kwargs: Any) -> Any:
    try:
        return service(**kwargs)
    except DjangoPermissionDenied as exc:
        raise PermissionDenied(str(exc)) from None
    except MembershipError as exc:
        raise ValidationError({"detail": str(exc)}) from None


@extend_schema_view(list=extend_schema(parameters=[OpenApiParameter("repository", str)]))
class PipelineViewSet(viewsets.ReadOnlyModelViewSet):
    """Pipelines of repositories you can see. Start one with POST /api/v1/runs/."""

    serializer_class = PipelineSerializer

    def get_queryset(self):
        pipelines = (
            visible_pipelines(self.request.user).select_related("repository").order_by("repository__name", "name")
        )
        try:
            repository = text_param(self.request.query_params, "repository")
        except FilterError as exc:
            raise ValidationError(str(exc)) from None
        return pipelines.filter(repository__name=repository) if repository else pipelines


class ScheduleViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = ScheduleSerializer

    def get_queryset(self):
        return visible_schedules(self.request.user).select_related("pipeline__repository")


# --- Lint.


class YamlTextParser(parsers.BaseParser):
    """The config itself as the body: text/plain, application/yaml, ... (UTF-8)."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None) -> dict[str, str]:
        limit = settings.CONVEYOR_MAX_CONFIG_BYTES
        data = stream.read(limit + 1) if stream is not None else b""
        if len(data) > limit:
            raise ParseError(f"the config is larger than {limit} bytes")
        try:
            return {"config": data.decode("utf-8")}
        except UnicodeDecodeError as exc:
            raise ParseError(f"the config is not UTF-8 text (byte {exc.start})") from None


def _no_includes(path: str) -> str:
    raise ConfigError.single(
        f"include {path!r}: the lint API cannot read other files of a repository; "
        "use `manage.py lint_config` in a checkout",
        key="include",
    )


class LintView(APIView):
    """Check a pipeline config without running anything: its stages, jobs and what each one
    waits for, or every error (the same as `manage.py lint_config --json`). POST the YAML as
    the body (text/plain or application/yaml), or JSON {"config": "...", "ref": "main",
    "event": "push", "tag": false, "variables": {}}. Answers 200 either way: `errors` says."""

    parser_classes = [parsers.JSONParser, YamlTextParser]

    @extend_schema(request=LintSerializer, responses={200: LintResultSerializer})
    def post(self, request: Request) -> Response:
        body = LintSerializer(data=request.data if isinstance(request.data, dict) else {})
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if len(data["config"].encode()) > settings.CONVEYOR_MAX_CONFIG_BYTES:
            raise ValidationError({"config": f"larger than {settings.CONVEYOR_MAX_CONFIG_BYTES} bytes"})
        if "\x00" in data["config"]:
            return Response(lint_errors(["the config holds a NUL character: it is not a text file"]))
        context = TriggerContext(
            source=data["event"],
            ref=data["ref"],
            is_tag=data["tag"],
            default_branch="main",
            variables=data["variables"],
        )
        try:
            spec = parse_pipeline(data["config"], context=context, read_file=_no_includes)
        except ConfigError as exc:
            return Response(lint_error_report(exc))
        return Response(lint_report(spec))
