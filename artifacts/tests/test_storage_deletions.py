"""Deleting a run or a repository never leaves storage objects behind: the database queues
the object of every Artifact and Cache row deleted (also by a cascade), in the deleting
transaction; the queue is drained after commit and retried while the storage refuses."""

from __future__ import annotations

import hashlib
import io

from botocore.config import Config
from django.conf import settings
from django.db import transaction

from artifacts.models import Artifact, StorageDeletion
from artifacts.services import artifacts_reuse, cache_store, storage_deletions_process
from artifacts.tasks import drain_storage_deletions
from artifacts.tests.conftest import _free_port, job_named, s3_storage_settings
from artifacts.tests.helpers import upload
from runs.models import PipelineRun

CONFIG = """
build:
  script: [make]
  artifacts:
    paths: [dist/]
"""


def test_deleting_a_run_in_the_admin_queues_its_files_and_the_drain_deletes_them(
    make_run, start, finish, admin_client, artifact_dir
):
    run = make_run(CONFIG)
    job, _token = start(job_named(run, "build"))
    artifact = upload(job, b"built files")
    finish(job)
    kept_run = make_run(CONFIG)
    other, _ = start(job_named(kept_run, "build"))
    kept = upload(other, b"other run")
    assert (artifact_dir / artifact.storage_path).exists()

    response = admin_client.post(f"/admin/runs/pipelinerun/{run.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302, response.content[:2000]
    assert not PipelineRun.objects.filter(pk=run.pk).exists()
    assert list(StorageDeletion.objects.values_list("storage_path", flat=True)) == [artifact.storage_path]
    assert drain_storage_deletions() == {"deleted": 1, "kept": 0, "failed": 0}
    assert not (artifact_dir / artifact.storage_path).exists()
    assert (artifact_dir / kept.storage_path).exists()
    assert not StorageDeletion.objects.exists()


def test_deleting_a_repository_queues_its_artifacts_and_its_caches(make_run, start, pipeline, artifact_dir):
    job, _ = start(job_named(make_run(CONFIG), "build"))
    artifact = upload(job, b"a")
    data = b"cache"
    cache = cache_store(job=job, key="deps", file=io.BytesIO(data), size=5, sha256=hashlib.sha256(data).hexdigest())

    pipeline.repository.delete()

    assert set(StorageDeletion.objects.values_list("storage_path", flat=True)) == {
        artifact.storage_path,
        cache.storage_path,
    }
    assert storage_deletions_process()["deleted"] == 2
    assert not (artifact_dir / artifact.storage_path).exists()
    assert not (artifact_dir / cache.storage_path).exists()


def test_a_rolled_back_deletion_queues_nothing(make_run, start):
    run = make_run(CONFIG)
    job, _ = start(job_named(run, "build"))
    upload(job, b"a")
    run_id = run.pk

    try:
        with transaction.atomic():
            run.delete()
            raise RuntimeError("changed my mind")
    except RuntimeError:
        pass

    assert Artifact.objects.filter(run_id=run_id).exists()
    assert not StorageDeletion.objects.exists()


def test_a_file_a_reused_copy_still_names_is_kept_when_the_original_run_is_deleted(
    make_run, start, finish, artifact_dir
):
    run = make_run(CONFIG)
    job, _ = start(job_named(run, "build"))
    original = upload(job, b"image", cache_key="reuse:k")
    finish(job)
    reuser, _ = start(job_named(make_run(CONFIG), "build"))
    _source, (copy,) = artifacts_reuse(job=reuser, cache_key="reuse:k")

    run.delete()

    assert storage_deletions_process() == {"deleted": 0, "kept": 1, "failed": 0}
    assert (artifact_dir / copy.storage_path).read_bytes() == b"image"
    copy.run.delete()
    assert storage_deletions_process() == {"deleted": 1, "kept": 0, "failed": 0}
    assert not (artifact_dir / original.storage_path).exists()


def test_a_storage_that_refuses_keeps_the_entry_with_its_error_until_a_later_drain_succeeds(
    s3, make_run, start, settings
):
    run = make_run(CONFIG)
    job, _ = start(job_named(run, "build"))
    artifact = upload(job, b"on s3")
    run.delete()
    working = settings.STORAGES["artifacts"]
    # The storage is down: nothing listens where it was.
    down = s3_storage_settings(
        f"http://127.0.0.1:{_free_port()}",
        s3.bucket,
        client_config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1),
    )
    settings.STORAGES = {**settings.STORAGES, "artifacts": down}

    assert storage_deletions_process() == {"deleted": 0, "kept": 0, "failed": 1}
    assert storage_deletions_process() == {"deleted": 0, "kept": 0, "failed": 1}
    (entry,) = StorageDeletion.objects.all()
    assert entry.attempts == 2 and "Could not connect" in entry.last_error
    assert s3.head_object(Bucket=s3.bucket, Key=artifact.storage_path)["ContentLength"] == 5

    settings.STORAGES = {**settings.STORAGES, "artifacts": working}
    assert storage_deletions_process() == {"deleted": 1, "kept": 0, "failed": 0}
    assert s3.list_objects_v2(Bucket=s3.bucket).get("KeyCount") == 0
    assert not StorageDeletion.objects.exists()


def test_the_drain_is_scheduled():
    entry = settings.CELERY_BEAT_SCHEDULE["artifacts-storage-deletions"]
    assert entry["task"] == drain_storage_deletions.name
    assert entry["schedule"] == settings.CONVEYOR_STORAGE_DELETION_SWEEP_S
