"""The REST API of a repository's CI/CD variables: /api/v1/repositories/<name>/variables/.

Maintainers only (pipelines.permissions.can_maintain): others who can see the repository get
403, outsiders 404, as everywhere. A value is write-only: it is taken on create and update and
never returned. Writes go through pipelines.variables, which validates and audits them.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers, status, viewsets
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from pipelines.models import Repository, Variable
from pipelines.permissions import can_maintain, visible_repositories
from pipelines.variables import variable_create, variable_delete, variable_update


class VariableSerializer(serializers.ModelSerializer):
    value = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        max_length=Variable._meta.get_field("value").max_length,
        help_text="Write-only: never returned. Required on create; omit it on update to keep the value.",
    )

    class Meta:
        model = Variable
        fields = ["id", "key", "value", "masked", "protected", "environment_scope", "description", "updated_at"]
        read_only_fields = ["id", "updated_at"]
        # Uniqueness per scope is checked by the service, with a message naming the scope.
        validators: list = []


def _as_drf(exc: DjangoValidationError) -> ValidationError:
    return ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)


@extend_schema_view(
    list=extend_schema(summary="The repository's CI/CD variables (without values)"),
    create=extend_schema(summary="Add a CI/CD variable"),
    retrieve=extend_schema(summary="A CI/CD variable (without its value)"),
    update=extend_schema(summary="Change a CI/CD variable"),
    partial_update=extend_schema(summary="Change some fields of a CI/CD variable"),
    destroy=extend_schema(summary="Delete a CI/CD variable"),
)
class VariableViewSet(viewsets.ModelViewSet):
    serializer_class = VariableSerializer
    pagination_class = None

    def repository(self) -> Repository:
        if not hasattr(self, "_repository"):
            repository = get_object_or_404(visible_repositories(self.request.user), name=self.kwargs["repository_name"])
            if not can_maintain(self.request.user, repository):
                raise PermissionDenied(f"only maintainers of {repository.name} manage its variables")
            self._repository = repository
        return self._repository

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the OpenAPI schema's generator: no request user
            return Variable.objects.none()
        return Variable.objects.filter(repository=self.repository()).order_by("key", "environment_scope")

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "value" not in data:
            raise ValidationError({"value": ["This field is required."]})
        try:
            variable = variable_create(repository=self.repository(), user=request.user, **data)
        except DjangoValidationError as exc:
            raise _as_drf(exc) from None
        return Response(self.get_serializer(variable).data, status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        variable = self.get_object()
        serializer = self.get_serializer(variable, data=request.data, partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        try:
            variable = variable_update(variable=variable, user=request.user, **serializer.validated_data)
        except DjangoValidationError as exc:
            raise _as_drf(exc) from None
        return Response(self.get_serializer(variable).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        variable_delete(variable=self.get_object(), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
