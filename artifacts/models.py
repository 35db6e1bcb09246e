"""Artifacts: binaries, test reports and Docker images produced by jobs."""

from __future__ import annotations

import uuid

from django.db import models


class ArtifactType(models.TextChoices):
    DOCKER = "DOCKER", "Docker image"
    BINARY = "BINARY", "Binary / files"
    TEST_REPORT = "TEST_REPORT", "Test report"


class Artifact(models.Model):
    id = models.UUIDField("artifact_id", primary_key=True, default=uuid.uuid4, editable=False)
    run = models.ForeignKey("runs.PipelineRun", on_delete=models.CASCADE, related_name="artifacts")
    job = models.ForeignKey("runs.Job", null=True, blank=True, on_delete=models.CASCADE, related_name="artifacts")
    name = models.CharField(max_length=255)
    type = models.CharField(max_length=16, choices=ArtifactType.choices, default=ArtifactType.BINARY)
    # Key in STORAGES["artifacts"]; for DOCKER, the image reference (registry/name:tag).
    storage_path = models.CharField(max_length=1000)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    # For DOCKER: the manifest digest in the registry.
    digest = models.CharField(max_length=100, blank=True)
    # Content-addressable reuse: commit SHA + Dockerfile hash (or other inputs).
    cache_key = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(size_bytes__gte=0), name="artifact_size_non_negative"),
        ]
        indexes = [
            # The nightly cleanup: expired artifacts.
            models.Index(
                fields=["expires_at"], name="artifact_expiry_idx", condition=models.Q(expires_at__isnull=False)
            ),
            # Reuse lookups by cache key.
            models.Index(fields=["cache_key"], name="artifact_cache_key_idx", condition=~models.Q(cache_key="")),
        ]

    def __str__(self) -> str:
        return self.name
