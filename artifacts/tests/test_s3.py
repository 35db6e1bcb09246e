"""Artifacts on S3: a real S3-protocol server (moto in server mode on 127.0.0.1), reached by
boto3 and django-storages over HTTP, and by plain HTTP through presigned URLs."""

from __future__ import annotations

import hashlib
import io
import os
from datetime import timedelta

import requests
from botocore.config import Config
from django.test import Client
from django.utils import timezone

from artifacts import storage
from artifacts.models import Artifact, ArtifactStatus
from artifacts.services import artifact_commit, artifact_store, artifact_upload_begin, artifacts_cleanup
from artifacts.tests.conftest import _free_port, job_named, s3_storage_settings
from artifacts.tests.helpers import TWO_STAGES, upload
from tests.access import make_people

CONFIG = TWO_STAGES


def stored(s3, artifact: Artifact) -> bytes:
    return s3.get_object(Bucket=s3.bucket, Key=artifact.storage_path)["Body"].read()


def test_a_runner_uploads_through_a_presigned_put_and_a_dependent_job_downloads_through_a_presigned_get(
    s3, make_run, start, finish
):
    client = Client()
    run = make_run(CONFIG)
    build, token = start(job_named(run, "build"))
    data = os.urandom(300_000)
    body = {"name": "dist", "type": "BINARY", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}

    begun = client.post(
        f"/api/runner/jobs/{build.pk}/artifacts", body, content_type="application/json", **headers
    ).json()
    target = begun["upload"]
    put = requests.put(target["url"], data=data, headers=target["headers"], timeout=30)
    committed = client.post(f"/api/runner/{begun['commit']}", **headers)
    finish(build)
    test, test_token = start(job_named(run, "test"))
    (entry,) = client.get(
        f"/api/runner/jobs/{test.pk}/artifacts/dependencies", HTTP_AUTHORIZATION=f"Bearer {test_token}"
    ).json()["artifacts"]
    fetched = requests.get(entry["url"], timeout=30)

    assert target["method"] == "PUT" and target["url"].startswith(s3.meta.endpoint_url)
    assert "X-Amz-Signature" in target["url"] and target["headers"]["x-amz-checksum-sha256"]
    assert put.status_code == 200 and committed.json()["status"] == ArtifactStatus.AVAILABLE
    assert stored(s3, Artifact.objects.get(pk=begun["id"])) == data
    assert fetched.content == data
    assert fetched.headers["Content-Disposition"] == 'attachment; filename="dist.tar.gz"'


def test_a_commit_without_the_object_in_the_bucket_is_refused(s3, make_run, start):
    import pytest

    from artifacts.services import ArtifactRefused

    build, _ = start(job_named(make_run(CONFIG), "build"))
    artifact = artifact_upload_begin(job=build, name="dist", type="BINARY", size=3, sha256="0" * 64)

    with pytest.raises(ArtifactRefused, match="nothing was uploaded"):
        artifact_commit(artifact=artifact)


def test_a_trusted_runner_stores_a_multipart_upload_straight_into_the_bucket(s3, make_run, start):
    build, _ = start(job_named(make_run(CONFIG), "build"))
    data = os.urandom(20 * 1024 * 1024)  # past the 16 MiB multipart threshold of settings

    artifact = artifact_store(
        job=build,
        name="dist",
        type="BINARY",
        file=io.BytesIO(data),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )

    assert artifact.status == ArtifactStatus.AVAILABLE
    assert stored(s3, artifact) == data
    with storage.open_stream(artifact.storage_path) as stream:
        assert hashlib.sha256(stream.read()).hexdigest() == artifact.sha256


def test_people_download_through_a_redirect_to_a_presigned_url(s3, make_run, start, pipeline):
    people = make_people(pipeline.repository)
    build, _ = start(job_named(make_run(CONFIG), "build"))
    artifact = upload(build, b"payload")

    response = people.client("viewer").get(f"/artifacts/{artifact.pk}/download")

    assert response.status_code == 302
    assert requests.get(response["Location"], timeout=30).content == b"payload"
    assert people.client("outsider").get(f"/artifacts/{artifact.pk}/download").status_code == 404


def test_the_cleanup_deletes_objects_from_the_bucket_then_rows(s3, make_run, start):
    build, _ = start(job_named(make_run(CONFIG), "build"))
    artifact = upload(build, b"payload")
    Artifact.objects.filter(pk=artifact.pk).update(expires_at=timezone.now() - timedelta(minutes=1))

    artifacts_cleanup()

    assert s3.list_objects_v2(Bucket=s3.bucket).get("KeyCount") == 0
    assert not Artifact.objects.exists()


def test_an_unreachable_store_leaves_the_row_deleting_and_unserved_until_a_later_cleanup_succeeds(
    s3, settings, make_run, start, pipeline
):
    people = make_people(pipeline.repository)
    build, _ = start(job_named(make_run(CONFIG), "build"))
    artifact = upload(build, b"payload")
    Artifact.objects.filter(pk=artifact.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    working = settings.STORAGES["artifacts"]
    down = s3_storage_settings(
        f"http://127.0.0.1:{_free_port()}",
        s3.bucket,
        client_config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1),
    )
    settings.STORAGES = {**settings.STORAGES, "artifacts": down}

    first = artifacts_cleanup()

    assert first == {"claimed": 1, "deleted": 0, "failed": 1}
    assert Artifact.objects.get(pk=artifact.pk).status == ArtifactStatus.DELETING
    settings.STORAGES = {**settings.STORAGES, "artifacts": working}
    assert people.client("superuser").get(f"/artifacts/{artifact.pk}/download").status_code == 404
    assert stored(s3, artifact) == b"payload"  # nothing was lost: the next night retries

    second = artifacts_cleanup()

    assert second == {"claimed": 0, "deleted": 1, "failed": 0}
    assert not Artifact.objects.exists()
    assert s3.list_objects_v2(Bucket=s3.bucket).get("KeyCount") == 0
