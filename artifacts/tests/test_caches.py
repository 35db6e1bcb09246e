"""Caches (`cache:`) on the server: upload, atomic replacement, lookup with fallback keys,
scoping to the repository, the runner API, and retention. On the file system and on a real
S3-protocol server (moto in server mode)."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta

import pytest
import requests
from django.test import Client
from django.utils import timezone

from artifacts import storage
from artifacts.models import Cache, CacheStatus, StorageDeletion
from artifacts.services import (
    ArtifactRefused,
    cache_commit,
    cache_lookup,
    cache_receive,
    cache_store,
    cache_upload_begin,
    caches_cleanup,
    storage_deletions_process,
)
from artifacts.tests.conftest import job_named
from pipelines.models import Pipeline, Repository

CONFIG = """
build:
  script: [make]
  cache: {key: deps, paths: [vendor/]}
"""


def store(job, key: str, data: bytes) -> Cache:
    return cache_store(job=job, key=key, file=io.BytesIO(data), size=len(data), sha256=hashlib.sha256(data).hexdigest())


def content(cache: Cache) -> bytes:
    stream = storage.open_stream(cache.storage_path)
    try:
        return stream.read()
    finally:
        stream.close()


def later(**delta) -> timezone.datetime:
    return timezone.now() + timedelta(**delta)


@pytest.fixture
def job(make_run, start):
    """A running job of the test repository."""
    running, _token = start(job_named(make_run(CONFIG), "build"))
    return running


@pytest.fixture
def other_job(make_run, start, db):
    repository = Repository.objects.create(name="elsewhere", clone_url="/nonexistent", is_private=True)
    pipeline = Pipeline.objects.create(repository=repository, name="default")
    return start(job_named(make_run(CONFIG, on=pipeline), "build"))


def test_a_stored_cache_is_found_by_its_key_with_the_same_bytes(job):
    stored = store(job, "deps", b"node_modules archive")

    found = cache_lookup(job=job, keys=["deps"])

    assert (found.pk, found.status, found.size_bytes) == (stored.pk, CacheStatus.AVAILABLE, 20)
    assert content(found) == b"node_modules archive"


def test_a_missing_key_falls_back_to_the_first_fallback_key_the_repository_has(job):
    store(job, "deps-main", b"main")
    store(job, "deps", b"plain")

    assert cache_lookup(job=job, keys=["deps-feature", "deps-main", "deps"]).key == "deps-main"
    assert cache_lookup(job=job, keys=["deps-feature", "nothing"]) is None


def test_caches_belong_to_their_repository(job, other_job):
    store(job, "deps", b"mine")

    assert cache_lookup(job=other_job[0], keys=["deps"]) is None


def test_a_second_upload_replaces_the_first_only_when_it_is_committed(job, artifact_dir):
    first = store(job, "deps", b"first")
    second = cache_upload_begin(job=job, key="deps", size=6, sha256=hashlib.sha256(b"second").hexdigest())
    cache_receive(cache=second, stream=io.BytesIO(b"second"))

    # Uploaded, not committed: pulls still get the first, whole.
    assert content(cache_lookup(job=job, keys=["deps"])) == b"first"

    cache_commit(cache=second)

    assert content(cache_lookup(job=job, keys=["deps"])) == b"second"
    assert list(Cache.objects.values_list("pk", flat=True)) == [second.pk]
    # The first's object stays a while for a pull that was already handed it, then goes.
    assert storage_deletions_process()["deleted"] == 0
    assert (artifact_dir / first.storage_path).exists()
    assert storage_deletions_process(now=later(hours=2))["deleted"] == 1
    assert not (artifact_dir / first.storage_path).exists()
    assert (artifact_dir / second.storage_path).read_bytes() == b"second"


def test_of_two_racing_uploads_the_one_begun_last_wins_whatever_commits_last(job):
    older = cache_upload_begin(job=job, key="deps", size=5, sha256=hashlib.sha256(b"older").hexdigest())
    newer = cache_upload_begin(job=job, key="deps", size=5, sha256=hashlib.sha256(b"newer").hexdigest())
    Cache.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    older.refresh_from_db()
    for cache, data in ((older, b"older"), (newer, b"newer")):
        cache_receive(cache=cache, stream=io.BytesIO(data))

    cache_commit(cache=newer)
    kept = cache_commit(cache=older)

    assert kept.pk == newer.pk
    assert content(cache_lookup(job=job, keys=["deps"])) == b"newer"
    assert not Cache.objects.filter(pk=older.pk).exists()
    assert StorageDeletion.objects.filter(storage_path=older.storage_path).exists()


def test_committing_twice_changes_nothing(job):
    cache = store(job, "deps", b"x")
    assert cache_commit(cache=cache).pk == cache.pk
    assert Cache.objects.filter(status=CacheStatus.AVAILABLE).count() == 1


@pytest.mark.parametrize("key", ["a/b", "..", ".", "a%2Fb", "%2e", "", " ", "k" * 256])
def test_a_key_that_could_name_a_directory_or_nothing_is_refused(job, key):
    with pytest.raises(ArtifactRefused):
        cache_upload_begin(job=job, key=key, size=1, sha256="0" * 64)
    with pytest.raises(ArtifactRefused):
        cache_lookup(job=job, keys=[key])


def test_content_other_than_declared_is_refused_and_not_kept(job, artifact_dir):
    cache = cache_upload_begin(job=job, key="deps", size=5, sha256=hashlib.sha256(b"right").hexdigest())
    with pytest.raises(ArtifactRefused, match="not what was declared"):
        cache_receive(cache=cache, stream=io.BytesIO(b"wrong"))
    with pytest.raises(ArtifactRefused, match="bigger than the declared"):
        cache_receive(cache=cache, stream=io.BytesIO(b"far too long"))
    assert not (artifact_dir / cache.storage_path).exists()
    assert cache_lookup(job=job, keys=["deps"]) is None


def test_caches_unused_past_the_retention_go_with_their_objects_and_a_second_cleanup_finds_nothing(
    job, settings, artifact_dir
):
    settings.CONVEYOR_CACHE_RETENTION_DAYS = 14
    stale, fresh = store(job, "stale", b"old"), store(job, "fresh", b"new")
    Cache.objects.filter(pk=stale.pk).update(last_used_at=timezone.now() - timedelta(days=15))
    abandoned = cache_upload_begin(job=job, key="half", size=3, sha256=hashlib.sha256(b"hal").hexdigest())
    cache_receive(cache=abandoned, stream=io.BytesIO(b"hal"))
    Cache.objects.filter(pk=abandoned.pk).update(created_at=timezone.now() - timedelta(hours=25))

    assert caches_cleanup() == {"removed": 2}
    assert storage_deletions_process() == {"deleted": 2, "kept": 0, "failed": 0}

    assert list(Cache.objects.values_list("pk", flat=True)) == [fresh.pk]
    assert not (artifact_dir / stale.storage_path).exists()
    assert not (artifact_dir / abandoned.storage_path).exists()
    assert (artifact_dir / fresh.storage_path).exists()
    assert caches_cleanup() == {"removed": 0}
    assert storage_deletions_process() == {"deleted": 0, "kept": 0, "failed": 0}


def test_a_pull_counts_as_a_use_for_the_retention(job, settings):
    settings.CONVEYOR_CACHE_RETENTION_DAYS = 14
    cache = store(job, "deps", b"x")
    Cache.objects.filter(pk=cache.pk).update(last_used_at=timezone.now() - timedelta(days=13))

    cache_lookup(job=job, keys=["deps"], now=later(days=2))

    assert caches_cleanup(now=later(days=2)) == {"removed": 0}


# --- The runner API, authenticated by the job's token.


def _api(client: Client, method: str, path: str, token: str, **kwargs):
    return getattr(client, method)(f"/api/runner/{path}", HTTP_AUTHORIZATION=f"Bearer {token}", **kwargs)


def test_a_job_uploads_a_cache_through_the_api_and_a_job_of_the_next_run_downloads_it(make_run, start):
    client = Client()
    first, token = start(job_named(make_run(CONFIG), "build"))
    data = b"vendor archive" * 1000
    body = {"key": "deps", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    begun = _api(client, "post", f"jobs/{first.pk}/caches", token, data=body, content_type="application/json")
    assert begun.status_code == 201, begun.content
    target = begun.json()["upload"]
    put = _api(client, "put", target["path"], token, data=data, content_type="application/octet-stream")
    assert put.status_code == 200, put.content
    assert _api(client, "post", begun.json()["commit"], token).json()["status"] == CacheStatus.AVAILABLE

    second, token2 = start(job_named(make_run(CONFIG), "build"))
    found = _api(
        client,
        "post",
        f"jobs/{second.pk}/caches/lookup",
        token2,
        data={"keys": ["x", "deps"]},
        content_type="application/json",
    ).json()
    assert (found["found"], found["key"], found["sha256"]) == (True, "deps", body["sha256"])
    download = _api(client, "get", found["path"], token2)
    assert b"".join(download.streaming_content) == data


def test_the_api_refuses_bad_keys_unknown_tokens_and_the_caches_of_other_repositories(make_run, start, other_job):
    client = Client()
    mine, token = start(job_named(make_run(CONFIG), "build"))
    cache = store(mine, "deps", b"x")
    theirs, their_token = other_job

    bad = _api(
        client,
        "post",
        f"jobs/{mine.pk}/caches",
        token,
        data={"key": "../x", "size": 1, "sha256": "0" * 64},
        content_type="application/json",
    )
    assert bad.status_code == 400 and "'/'" in bad.json()["detail"]
    assert _api(client, "get", f"jobs/{mine.pk}/caches/{cache.pk}/content", "cvj_wrong").status_code == 401
    assert _api(client, "get", f"jobs/{theirs.pk}/caches/{cache.pk}/content", their_token).status_code == 404
    lookup = _api(
        client,
        "post",
        f"jobs/{theirs.pk}/caches/lookup",
        their_token,
        data={"keys": ["deps"]},
        content_type="application/json",
    )
    assert lookup.json() == {"found": False}
    assert _api(client, "post", f"jobs/{theirs.pk}/caches/{cache.pk}/commit", their_token).status_code == 404


# --- S3.


def test_a_cache_round_trips_through_s3_and_its_replaced_object_is_deleted_from_the_bucket(s3, job):
    first = store(job, "deps", b"first on s3")
    second = store(job, "deps", b"second on s3")

    found = cache_lookup(job=job, keys=["deps"])
    assert found.pk == second.pk
    url = storage.presigned_download(found.storage_path, file_name="cache.tar.gz")
    assert requests.get(url, timeout=30).content == b"second on s3"

    assert storage_deletions_process(now=later(hours=2))["deleted"] == 1
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3.bucket).get("Contents", [])]
    assert keys == [second.storage_path]
    assert first.storage_path not in keys


def test_the_admin_lists_caches_read_only(job, admin_client):
    cache = store(job, "deps-main", b"x")

    listing = admin_client.get("/admin/artifacts/cache/")

    assert listing.status_code == 200 and b"deps-main" in listing.content
    assert admin_client.get("/admin/artifacts/cache/add/").status_code == 403
    assert admin_client.post(f"/admin/artifacts/cache/{cache.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Cache.objects.filter(pk=cache.pk).exists()
    assert admin_client.get("/admin/artifacts/storagedeletion/").status_code == 200


def test_an_http_runner_uploads_a_cache_to_s3_through_a_presigned_put_and_pulls_it_through_a_presigned_get(
    s3, make_run, start
):
    client = Client()
    job, token = start(job_named(make_run(CONFIG), "build"))
    data = b"vendor on s3" * 100
    body = {"key": "deps", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def begin() -> dict:
        response = _api(client, "post", f"jobs/{job.pk}/caches", token, data=body, content_type="application/json")
        assert response.status_code == 201, response.content
        return response.json()

    begun = begin()
    target = begun["upload"]
    assert requests.put(target["url"], data=data, headers=target["headers"], timeout=30).status_code == 200
    assert _api(client, "post", begun["commit"], token).json()["status"] == CacheStatus.AVAILABLE
    found = _api(
        client, "post", f"jobs/{job.pk}/caches/lookup", token, data={"keys": ["deps"]}, content_type="application/json"
    ).json()
    assert requests.get(found["url"], timeout=30).content == data
