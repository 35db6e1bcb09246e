"""API endpoint of artifacts: metadata of runs you can see (downloads are a later issue)."""

from __future__ import annotations

import uuid

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.exceptions import ValidationError

from artifacts.serializers import ArtifactSerializer
from pipelines.permissions import visible_artifacts


@extend_schema_view(list=extend_schema(parameters=[OpenApiParameter("run", str), OpenApiParameter("job", str)]))
class ArtifactViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = ArtifactSerializer
    lookup_value_regex = r"[0-9a-fA-F-]{32,36}"

    def get_queryset(self):
        artifacts = visible_artifacts(self.request.user).select_related("job").order_by("-created_at")
        for name in ("run", "job"):
            value = self.request.query_params.get(name)
            if value:
                try:
                    artifacts = artifacts.filter(**{f"{name}_id": uuid.UUID(value)})
                except ValueError:
                    raise ValidationError({name: "a UUID"}) from None
        return artifacts
