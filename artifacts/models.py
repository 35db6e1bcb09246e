"""Artifacts: binaries, test reports and Docker images produced by jobs."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone


class ArtifactType(models.TextChoices):
    DOCKER = "DOCKER", "Docker image"
    BINARY = "BINARY", "Binary / files"
    TEST_REPORT = "TEST_REPORT", "Test report"


# Types whose content is a file (a tar.gz) in STORAGES["artifacts"]; a DOCKER artifact is only
# a reference to an image in a registry.
ArtifactType.FILES = frozenset({ArtifactType.BINARY, ArtifactType.TEST_REPORT})


class ArtifactStatus(models.TextChoices):
    # The row exists, its file is on its way (a runner streams it, or uploads it to S3).
    PENDING = "PENDING", "Uploading"
    AVAILABLE = "AVAILABLE", "Available"
    # Expired (or deleted in the admin): never served again; its file is deleted first, then
    # the row. A row stays here while the storage refuses to delete (retried every night).
    DELETING = "DELETING", "Being deleted"


class Artifact(models.Model):
    id = models.UUIDField("artifact_id", primary_key=True, default=uuid.uuid4, editable=False)
    run = models.ForeignKey("runs.PipelineRun", on_delete=models.CASCADE, related_name="artifacts")
    job = models.ForeignKey("runs.Job", null=True, blank=True, on_delete=models.CASCADE, related_name="artifacts")
    name = models.CharField(max_length=255)
    type = models.CharField(max_length=16, choices=ArtifactType.choices, default=ArtifactType.BINARY)
    status = models.CharField(max_length=16, choices=ArtifactStatus.choices, default=ArtifactStatus.AVAILABLE)
    # Key in STORAGES["artifacts"]; for DOCKER, the image reference (registry/name:tag).
    storage_path = models.CharField(max_length=1000)
    # What a download is called ("build.tar.gz").
    file_name = models.CharField(max_length=255, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    # For DOCKER: the manifest digest in the registry.
    digest = models.CharField(max_length=100, blank=True)
    # Content-addressable reuse: commit SHA + Dockerfile hash (or other inputs).
    cache_key = models.CharField(max_length=200, blank=True)
    # Set on the copy a reusing job got: the artifact built earlier. Both rows share the file,
    # which is deleted only with the last row that names it.
    reused_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reuses", editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(size_bytes__gte=0), name="artifact_size_non_negative"),
            models.CheckConstraint(
                condition=Q(sha256="") | Q(sha256__regex=r"^[0-9a-f]{64}$"), name="artifact_sha256_is_hex"
            ),
        ]
        indexes = [
            # The nightly cleanup: expired artifacts.
            models.Index(
                fields=["expires_at"], name="artifact_expiry_idx", condition=models.Q(expires_at__isnull=False)
            ),
            # Reuse lookups by cache key.
            models.Index(fields=["cache_key"], name="artifact_cache_key_idx", condition=~models.Q(cache_key="")),
            # The cleanup: "does another row still name this file?" before it deletes one.
            models.Index(fields=["storage_path"], name="artifact_storage_path_idx"),
            # The cleanup: uploads abandoned half-way, and deletions the storage refused last time.
            # Partial: available artifacts, nearly all rows, stay out.
            models.Index(
                fields=["created_at"],
                name="artifact_unavailable_idx",
                condition=Q(status__in=["PENDING", "DELETING"]),
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_file(self) -> bool:
        return self.type in ArtifactType.FILES


class TestReport(models.Model):
    """The summary of a TEST_REPORT artifact's JUnit XML files (artifacts.junit): totals and
    the failed cases with their messages, for the run and job pages."""

    __test__ = False  # not a pytest test class

    artifact = models.OneToOneField(Artifact, on_delete=models.CASCADE, related_name="test_report")
    run = models.ForeignKey("runs.PipelineRun", on_delete=models.CASCADE, related_name="test_reports")
    job = models.ForeignKey("runs.Job", null=True, blank=True, on_delete=models.CASCADE, related_name="test_reports")
    suites = models.PositiveIntegerField(default=0)
    tests = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    duration_s = models.FloatField(default=0.0)
    # [{"suite", "classname", "name", "kind": "failure"|"error", "message", "detail", "file"}], at
    # most artifacts.junit.MAX_FAILED_CASES of them; `failed_cases_truncated` says there were more.
    failed_cases = models.JSONField(default=list, blank=True)
    failed_cases_truncated = models.BooleanField(default=False)
    # Files of the archive that were not JUnit XML (or not well-formed), with the reason.
    problems = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(tests__gte=models.F("failures") + models.F("errors") + models.F("skipped")),
                name="testreport_outcomes_within_tests",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tests} tests, {self.failures + self.errors} failed"

    @property
    def failed(self) -> int:
        return self.failures + self.errors

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped


class CacheStatus(models.TextChoices):
    # Its archive is on its way to a new object; pulls never see it.
    PENDING = "PENDING", "Uploading"
    # The repository's current cache under its key: at most one per key.
    AVAILABLE = "AVAILABLE", "Available"


class Cache(models.Model):
    """A `cache:` archive of a repository under one key (README: Caches). Each upload goes to
    a new storage object; committing it makes its row the AVAILABLE one and deletes the row it
    replaces in the same transaction, so a pull sees the old cache or the new one, never half
    of one. The replaced object is queued in StorageDeletion by the database (see there)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    repository = models.ForeignKey("pipelines.Repository", on_delete=models.CASCADE, related_name="caches")
    key = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=CacheStatus.choices, default=CacheStatus.PENDING)
    storage_path = models.CharField(max_length=1000)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    # The job that uploaded it (kept as a plain id: the job's run may be deleted long before).
    job_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Pulled or pushed: the retention (CONVEYOR_CACHE_RETENTION_DAYS) counts from here.
    last_used_at = models.DateTimeField()

    class Meta:
        ordering = ["repository_id", "key"]
        constraints = [
            models.UniqueConstraint(
                fields=["repository", "key"],
                condition=Q(status="AVAILABLE"),
                name="cache_one_available_per_key",
            ),
            models.CheckConstraint(condition=Q(size_bytes__gte=0), name="cache_size_non_negative"),
            models.CheckConstraint(condition=Q(sha256__regex=r"^[0-9a-f]{64}$"), name="cache_sha256_is_hex"),
        ]
        indexes = [
            # The nightly cleanup: caches unused for CONVEYOR_CACHE_RETENTION_DAYS, and uploads
            # abandoned half-way (the pull lookup is served by cache_one_available_per_key).
            models.Index(fields=["last_used_at"], name="cache_last_used_idx"),
        ]

    def __str__(self) -> str:
        return self.key


class StorageDeletion(models.Model):
    """A storage object to delete: the queue that keeps deletions of rows from leaving files.

    Rows are added by the database itself (migration 0004's triggers): deleting an Artifact
    row that names a file or a Cache row, also by a cascade from a run or a repository deleted
    anywhere (the admin, a shell), queues its object in the same transaction. The queue is
    drained by `storage_deletions_process` (soon after commit, and by the nightly cleanup): an
    object still named by a row is kept, else deleted; a storage failure keeps the entry, with
    its error, for the next drain. An upload in progress also queues its object, due later
    (`not_before`): its commit takes the entry back, an abandoned upload's object is deleted."""

    id = models.BigAutoField(primary_key=True)
    storage_path = models.CharField(max_length=1000)
    not_before = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [
            # The drain: entries due now, oldest first.
            models.Index(fields=["not_before"], name="storage_deletion_due_idx"),
            # An upload's commit takes its entry back by path.
            models.Index(fields=["storage_path"], name="storage_deletion_path_idx"),
        ]

    def __str__(self) -> str:
        return self.storage_path
