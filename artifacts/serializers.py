"""API representation of artifacts: metadata, and where to download a file artifact (the
download itself is artifacts.views.download, which checks who may)."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from artifacts.models import Artifact


class ArtifactSerializer(serializers.ModelSerializer):
    job_name = serializers.CharField(source="job.name", read_only=True, default=None)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Artifact
        fields = [
            "id",
            "run",
            "job",
            "job_name",
            "name",
            "type",
            "status",
            "file_name",
            "size_bytes",
            "sha256",
            "digest",
            "created_at",
            "expires_at",
            "download_url",
        ]

    @extend_schema_field(OpenApiTypes.URI)
    def get_download_url(self, artifact: Artifact) -> str | None:
        if not artifact.is_file:
            return None
        path = reverse("artifacts:download", args=[artifact.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path
