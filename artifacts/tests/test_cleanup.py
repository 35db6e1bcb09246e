from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from artifacts.models import Artifact, ArtifactStatus
from artifacts.services import artifacts_cleanup, artifacts_reuse
from artifacts.tasks import cleanup_expired
from artifacts.tests.conftest import job_named
from artifacts.tests.helpers import upload
from runs.models import RunStatus

ONE_JOB = """
build:
  script: [make]
  artifacts:
    paths: [dist/]
"""


@pytest.fixture
def built(make_run, start, finish):
    """built(branch=...) -> an artifact of a finished (successful) run of that branch."""

    def build(*, branch: str = "feature", data: bytes = b"artifact", cache_key: str = "") -> Artifact:
        run = make_run(ONE_JOB, branch=branch)
        job, _ = start(job_named(run, "build"))
        artifact = upload(job, data, cache_key=cache_key)
        finish(job)
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCESS
        return artifact

    return build


def expire(*artifacts: Artifact) -> None:
    Artifact.objects.filter(pk__in=[a.pk for a in artifacts]).update(expires_at=timezone.now() - timedelta(minutes=1))


def test_the_cleanup_deletes_the_files_of_expired_artifacts_and_then_their_rows(built, artifact_dir):
    old, fresh = built(), built()
    expire(old)

    counts = artifacts_cleanup()

    assert counts == {"claimed": 1, "deleted": 1, "failed": 0}
    assert not (artifact_dir / old.storage_path).exists()
    assert list(Artifact.objects.values_list("pk", flat=True)) == [fresh.pk]
    assert (artifact_dir / fresh.storage_path).exists()


def test_the_latest_successful_run_of_the_default_branch_keeps_its_expired_artifacts(built, settings):
    older_main, latest_main, feature = built(branch="main"), built(branch="main"), built(branch="feature")
    expire(older_main, latest_main, feature)

    artifacts_cleanup()

    assert list(Artifact.objects.values_list("pk", flat=True)) == [latest_main.pk]
    settings.CONVEYOR_ARTIFACTS_KEEP_LATEST = False
    artifacts_cleanup()
    assert not Artifact.objects.exists()


def test_a_file_shared_with_a_reused_copy_stays_until_the_last_row_naming_it_goes(built, make_run, start, artifact_dir):
    original = built(cache_key="reuse:shared")
    job, _ = start(job_named(make_run(ONE_JOB), "build"))
    _, (copy,) = artifacts_reuse(job=job, cache_key="reuse:shared")
    expire(original)

    artifacts_cleanup()

    assert list(Artifact.objects.values_list("pk", flat=True)) == [copy.pk]
    assert (artifact_dir / copy.storage_path).read_bytes() == b"artifact"
    expire(copy)
    artifacts_cleanup()
    assert not Artifact.objects.exists()
    assert not (artifact_dir / copy.storage_path).exists()


def test_a_second_cleanup_finds_nothing_more_to_do(built):
    expire(built(), built())

    first, second = artifacts_cleanup(batch_size=1), artifacts_cleanup(batch_size=1)

    assert (first["deleted"], second) == (2, {"claimed": 0, "deleted": 0, "failed": 0})


def test_uploads_abandoned_for_a_day_are_deleted_with_what_was_stored(make_run, start, artifact_dir):
    from artifacts.services import artifact_upload_begin

    job, _ = start(job_named(make_run(ONE_JOB), "build"))
    pending = artifact_upload_begin(job=job, name="dist", type="BINARY", size=3, sha256="0" * 64)
    (artifact_dir / pending.storage_path).parent.mkdir(parents=True)
    (artifact_dir / pending.storage_path).write_bytes(b"hal")
    recent = artifact_upload_begin(job=job, name="dist", type="BINARY", size=3, sha256="0" * 64)
    Artifact.objects.filter(pk=pending.pk).update(created_at=timezone.now() - timedelta(hours=25))

    artifacts_cleanup()

    assert list(Artifact.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not (artifact_dir / pending.storage_path).exists()


def test_the_command_counts_in_a_dry_run_and_deletes_otherwise(built, capsys):
    expire(built(), built())

    call_command("cleanup_artifacts", "--dry-run")
    assert "dry run: 2 artifact(s) due for deletion, 0 earlier deletion(s) to retry; nothing deleted" in (
        capsys.readouterr().out
    )
    assert Artifact.objects.count() == 2
    call_command("cleanup_artifacts")
    assert "deleted 2 artifact(s), 0 unused cache(s) and 0 object(s) of deleted rows; 0 deletion(s) failed" in (
        capsys.readouterr().out
    )
    assert not Artifact.objects.exists()


def test_the_nightly_task_is_scheduled_and_runs_the_cleanup(built):
    expire(built())

    assert settings.CELERY_BEAT_SCHEDULE["artifacts-cleanup"]["task"] == cleanup_expired.name
    assert cleanup_expired() == {
        "artifacts": {"claimed": 1, "deleted": 1, "failed": 0},
        "caches": {"removed": 0},
        "storage": {"deleted": 0, "kept": 0, "failed": 0},
    }


@pytest.mark.django_db(transaction=True)
def test_two_cleanups_at_once_share_the_work_and_delete_each_artifact_once(built, artifact_dir):
    artifacts = [built() for _ in range(12)]
    expire(*artifacts)
    results: list[dict[str, int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def cleanup() -> None:
        try:
            barrier.wait()
            results.append(artifacts_cleanup(batch_size=2))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=cleanup) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sum(r["deleted"] for r in results) == 12 and sum(r["failed"] for r in results) == 0
    assert not Artifact.objects.exists()
    assert not any(path.is_file() for path in artifact_dir.rglob("*"))
    assert Artifact.objects.filter(status=ArtifactStatus.DELETING).count() == 0
