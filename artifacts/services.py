"""Writes of artifacts: uploads, Docker image records, reuse, retention and the cleanup.

An upload is three steps, so that a big file never passes through a transaction or the
memory of a process: `artifact_upload_begin` makes a PENDING row (its size and sha256 as the
runner declares them), the content goes to storage (`artifact_receive` streams a request
body; with S3 the runner PUTs to a presigned URL instead), and `artifact_commit` checks the
stored object against the declaration and makes the row AVAILABLE, with its expiry and, for
a test report, the parsed summary. Trusted runners do all three at once (`artifact_store`).

Deletion is storage first, rows second, and never serves a file being deleted: a row is
marked DELETING (committed), then its file is deleted, then the row. A storage failure
leaves the row DELETING for the next cleanup; a crash between the two steps too. Rows of a
reused build share one file, which goes with the last row that names it. Whoever else deletes
a row (a run or repository deleted in the admin: a cascade), the database queues its file
(StorageDeletion) in the same transaction, and `storage_deletions_process` deletes it.

Caches (`cache:`) are per repository and key: each upload goes to a new object, and its
commit swaps it in for the key's current cache in one transaction.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime, timedelta
from typing import IO, Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from artifacts import storage
from artifacts.junit import Summary, summarize_archive
from artifacts.models import Artifact, ArtifactStatus, ArtifactType, Cache, CacheStatus, StorageDeletion, TestReport
from artifacts.selectors import latest_default_branch_runs, reusable_source_job, run_is_on_default_branch
from runs.models import Job, PipelineRun

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,999}$")
_FILE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NAME_MAX = Artifact._meta.get_field("name").max_length
_CACHE_KEY_MAX = Artifact._meta.get_field("cache_key").max_length


class ArtifactRefused(ValueError):
    """The request cannot be honoured as sent: a bad name or checksum, too big, wrong state."""


# --- Retention.


def artifact_expires_at(*, run: PipelineRun, job_spec: dict[str, Any] | None, now: datetime) -> datetime | None:
    """`artifacts: expire_in` of the job (`never`: None), else CONVEYOR_ARTIFACTS_EXPIRE_DAYS_
    DEFAULT_BRANCH for runs of the repository's default branch and CONVEYOR_ARTIFACTS_EXPIRE_DAYS
    for every other branch, tag and merge request."""
    section = (job_spec or {}).get("artifacts") or {}
    if "expire_in" in section:
        seconds = section.get("expire_in_s")
        return None if seconds is None else now + timedelta(seconds=int(seconds))
    if run_is_on_default_branch(run):
        return now + timedelta(days=settings.CONVEYOR_ARTIFACTS_EXPIRE_DAYS_DEFAULT_BRANCH)
    return now + timedelta(days=settings.CONVEYOR_ARTIFACTS_EXPIRE_DAYS)


# --- Uploads.


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name or "\x00" in name or len(name) > _NAME_MAX:
        raise ArtifactRefused(f"an artifact name has 1 to {_NAME_MAX} characters and no NUL")
    return name


def _file_name(name: str) -> str:
    stem = _FILE_NAME_UNSAFE.sub("_", name).strip("._") or "artifacts"
    return f"{stem[:180]}.tar.gz"


def _check_cache_key(cache_key: str) -> str:
    if len(cache_key) > _CACHE_KEY_MAX or "\x00" in cache_key:
        raise ArtifactRefused(f"a cache key has at most {_CACHE_KEY_MAX} characters")
    return cache_key


@transaction.atomic
def artifact_upload_begin(*, job: Job, name: str, type: str, size: int, sha256: str, cache_key: str = "") -> Artifact:
    """A PENDING artifact of `job`, whose file is about to be uploaded: `size` bytes with this
    sha256 (what the runner computed while writing the archive)."""
    if type not in ArtifactType.FILES:
        raise ArtifactRefused(f"a file artifact is {' or '.join(sorted(ArtifactType.FILES))}, not {type!r}")
    if not isinstance(size, int) or not 0 <= size <= settings.CONVEYOR_ARTIFACTS_MAX_BYTES:
        raise ArtifactRefused(f"an artifact has 0 to {settings.CONVEYOR_ARTIFACTS_MAX_BYTES} bytes")
    if not _SHA256.match(sha256 or ""):
        raise ArtifactRefused("sha256 must be 64 lowercase hex digits")
    name = _clean_name(name)
    artifact_id = uuid.uuid4()
    file_name = _file_name(name)
    return Artifact.objects.create(
        id=artifact_id,
        run_id=job.run_id,
        job=job,
        name=name,
        type=type,
        status=ArtifactStatus.PENDING,
        storage_path=storage.storage_key(
            run_id=job.run_id, job_id=job.pk, artifact_id=artifact_id, file_name=file_name
        ),
        file_name=file_name,
        size_bytes=size,
        sha256=sha256,
        cache_key=_check_cache_key(cache_key),
    )


def _store_declared(*, path: str, stream: IO[bytes], size_bytes: int, sha256: str) -> str:
    """Stream content into storage at `path`, hashing it on the way, and return where it was
    stored; refuse (deleting what was stored) a body bigger than declared or whose size or
    sha256 differ from what was declared."""
    try:
        stored, size, digest = storage.save_stream(path, stream, limit=size_bytes)
    except storage.TooLarge:
        storage.delete(path)
        raise ArtifactRefused(f"the content is bigger than the declared {size_bytes} bytes") from None
    if (size, digest) != (size_bytes, sha256):
        storage.delete(stored)
        raise ArtifactRefused(
            f"the content ({size} bytes, sha256 {digest}) is not what was declared "
            f"({size_bytes} bytes, sha256 {sha256})"
        )
    return stored


def artifact_receive(*, artifact: Artifact, stream: IO[bytes]) -> Artifact:
    """Stream an upload's content into storage, hashing it on the way; refuse (and delete what
    was stored) a body that is bigger than declared or whose size or sha256 differ."""
    if artifact.status != ArtifactStatus.PENDING:
        raise ArtifactRefused(f"artifact {artifact.pk} is {artifact.status}, not waiting for its content")
    stored = _store_declared(
        path=artifact.storage_path, stream=stream, size_bytes=artifact.size_bytes, sha256=artifact.sha256
    )
    if stored != artifact.storage_path:
        Artifact.objects.filter(pk=artifact.pk).update(storage_path=stored)
        artifact.storage_path = stored
    return artifact


def _report_summary(artifact: Artifact) -> Summary:
    limit = settings.CONVEYOR_ARTIFACTS_MAX_REPORT_BYTES
    if artifact.size_bytes > limit:
        summary = Summary()
        summary.problem(f"the report archive has {artifact.size_bytes} bytes; reports over {limit} are not parsed")
        return summary
    stream = storage.open_stream(artifact.storage_path)
    try:
        return summarize_archive(stream, max_bytes=limit)
    finally:
        stream.close()


def _check_stored(*, path: str, size_bytes: int, sha256: str) -> None:
    """An object uploaded straight to storage (a presigned PUT) is the one declared: its size,
    and its sha256 where the storage knows it. Otherwise it is deleted and refused."""
    size = storage.stored_size(path)
    if size is None:
        raise ArtifactRefused("nothing was uploaded")
    verified = storage.stored_sha256(path)
    if size != size_bytes or (verified and verified != sha256):
        storage.delete(path)
        raise ArtifactRefused(f"the stored object ({size} bytes) is not what was declared ({size_bytes})")


def artifact_commit(*, artifact: Artifact, now: datetime | None = None) -> Artifact:
    """The upload is complete: check the stored object against the declaration and make the
    artifact AVAILABLE with its expiry (a test report also gets its parsed summary).
    Idempotent: committing an AVAILABLE artifact again changes nothing."""
    if artifact.status == ArtifactStatus.AVAILABLE:
        return artifact
    if artifact.status != ArtifactStatus.PENDING:
        raise ArtifactRefused(f"artifact {artifact.pk} is {artifact.status}")
    _check_stored(path=artifact.storage_path, size_bytes=artifact.size_bytes, sha256=artifact.sha256)
    summary = _report_summary(artifact) if artifact.type == ArtifactType.TEST_REPORT else None
    now = now or timezone.now()
    job = Job.objects.select_related("run__pipeline__repository").get(pk=artifact.job_id)
    expires_at = artifact_expires_at(run=job.run, job_spec=job.spec, now=now)
    with transaction.atomic():
        updated = Artifact.objects.filter(pk=artifact.pk, status=ArtifactStatus.PENDING).update(
            status=ArtifactStatus.AVAILABLE, expires_at=expires_at
        )
        if updated != 1:
            artifact.refresh_from_db()
            return artifact  # committed concurrently (a retried request)
        if summary is not None:
            _test_report_create(artifact=artifact, summary=summary)
    artifact.status, artifact.expires_at = ArtifactStatus.AVAILABLE, expires_at
    return artifact


def _test_report_create(*, artifact: Artifact, summary: Summary) -> TestReport:
    return TestReport.objects.create(
        artifact=artifact,
        run_id=artifact.run_id,
        job_id=artifact.job_id,
        suites=summary.suites,
        tests=summary.tests,
        failures=summary.failures,
        errors=summary.errors,
        skipped=summary.skipped,
        duration_s=round(summary.duration_s, 3),
        failed_cases=summary.failed_cases,
        failed_cases_truncated=summary.failed_cases_truncated,
        problems=summary.problems,
    )


def artifact_store(
    *, job: Job, name: str, type: str, file: IO[bytes], size: int, sha256: str, cache_key: str = ""
) -> Artifact:
    """Upload in one call, straight to storage: what trusted runners (the ORM backend) do."""
    artifact = artifact_upload_begin(job=job, name=name, type=type, size=size, sha256=sha256, cache_key=cache_key)
    artifact_receive(artifact=artifact, stream=file)
    return artifact_commit(artifact=artifact)


@transaction.atomic
def artifact_docker_record(
    *, job: Job, reference: str, digest: str, name: str = "", cache_key: str = "", now: datetime | None = None
) -> Artifact:
    """Record an image the job pushed to a registry: its reference and manifest digest."""
    if not _REFERENCE.match(reference or ""):
        raise ArtifactRefused("an image reference is registry/name:tag, without spaces, at most 1000 characters")
    if not _DIGEST.match(digest or ""):
        raise ArtifactRefused("a digest is sha256: and 64 lowercase hex digits")
    now = now or timezone.now()
    run = PipelineRun.objects.select_related("pipeline__repository").get(pk=job.run_id)
    return Artifact.objects.create(
        run=run,
        job=job,
        name=_clean_name(name or reference[-_NAME_MAX:]),
        type=ArtifactType.DOCKER,
        status=ArtifactStatus.AVAILABLE,
        storage_path=reference,
        digest=digest,
        cache_key=_check_cache_key(cache_key),
        expires_at=artifact_expires_at(run=run, job_spec=job.spec, now=now),
    )


# --- Reuse.


@transaction.atomic
def artifacts_reuse(*, job: Job, cache_key: str, now: datetime | None = None) -> tuple[Job | None, list[Artifact]]:
    """If a successful job of the same repository built artifacts with `cache_key` and they
    are all still servable, link copies of them to `job` (sharing their files) and return
    (that job, the copies); else (None, []). The copies' rows are locked first, so the
    cleanup (which claims rows with SKIP LOCKED) cannot delete a file being reused."""
    _check_cache_key(cache_key)
    now = now or timezone.now()
    source = reusable_source_job(job=job, cache_key=cache_key, now=now)
    if source is None:
        return None, []
    rows = list(
        Artifact.objects.select_for_update(of=("self",))
        .select_related("test_report")
        .filter(job=source, cache_key=cache_key)
        .order_by("created_at")
    )
    if not rows or any(
        row.status != ArtifactStatus.AVAILABLE or (row.expires_at and row.expires_at <= now) for row in rows
    ):
        return None, []  # the cleanup took them meanwhile: build
    run = PipelineRun.objects.select_related("pipeline__repository").get(pk=job.run_id)
    expires_at = artifact_expires_at(run=run, job_spec=job.spec, now=now)
    copies = []
    for row in rows:
        copy = Artifact.objects.create(
            run=run,
            job=job,
            name=row.name,
            type=row.type,
            status=ArtifactStatus.AVAILABLE,
            storage_path=row.storage_path,
            file_name=row.file_name,
            size_bytes=row.size_bytes,
            sha256=row.sha256,
            digest=row.digest,
            cache_key=row.cache_key,
            reused_from_id=row.reused_from_id or row.pk,
            expires_at=expires_at,
        )
        report = getattr(row, "test_report", None)
        if report is not None:
            TestReport.objects.create(
                artifact=copy,
                run=run,
                job=job,
                **{
                    name: getattr(report, name)
                    for name in (
                        "suites",
                        "tests",
                        "failures",
                        "errors",
                        "skipped",
                        "duration_s",
                        "failed_cases",
                        "failed_cases_truncated",
                        "problems",
                    )
                },
            )
        copies.append(copy)
    return source, copies


# --- Deletion and the nightly cleanup.


def _due_for_cleanup(now: datetime):
    """Expired available artifacts (but not those of each pipeline's latest successful
    default-branch run, with CONVEYOR_ARTIFACTS_KEEP_LATEST) and abandoned uploads."""
    abandoned = now - timedelta(hours=settings.CONVEYOR_ARTIFACTS_PENDING_HOURS)
    expired = Artifact.objects.filter(status=ArtifactStatus.AVAILABLE, expires_at__lte=now)
    if settings.CONVEYOR_ARTIFACTS_KEEP_LATEST:
        expired = expired.exclude(run_id__in=latest_default_branch_runs())
    stale = Artifact.objects.filter(status=ArtifactStatus.PENDING, created_at__lt=abandoned)
    return expired | stale


def _delete_claimed(artifact_id: Any) -> str:
    """Delete one DELETING artifact: its file (unless another row still names it), then its
    row. Returns "deleted", "gone" (another cleanup deleted it) or raises the storage's error,
    in which case the row stays DELETING for the next attempt.

    The row lock is waited for, not skipped: a concurrent cleanup's claim query may hold it
    for a moment without claiming it (PostgreSQL locks a row before re-checking it), and a
    skipped row would stay DELETING until the next night."""
    with transaction.atomic():
        row = Artifact.objects.select_for_update().filter(pk=artifact_id, status=ArtifactStatus.DELETING).first()
        if row is None:
            return "gone"
        if row.is_file and row.storage_path:
            shared = (
                Artifact.objects.filter(storage_path=row.storage_path)
                .exclude(pk=row.pk)
                .exclude(status=ArtifactStatus.DELETING)
                .exists()
            )
            if not shared:
                storage.delete(row.storage_path)
        row.delete()
        if row.is_file and row.storage_path:
            # The row's deletion queued its file (migration 0004); it is deleted already, or
            # another row still names it (and queues it again when it goes).
            StorageDeletion.objects.filter(storage_path=row.storage_path, attempts=0).delete()
    return "deleted"


def _delete_ids(ids: list[Any], counts: dict[str, int]) -> None:
    for artifact_id in ids:
        try:
            outcome = _delete_claimed(artifact_id)
        except Exception as exc:  # the storage is down, refuses, times out: retried next time
            counts["failed"] += 1
            logger.warning("artifact %s: deleting its file failed (%s); the next cleanup retries", artifact_id, exc)
            continue
        if outcome == "deleted":
            counts["deleted"] += 1


def artifacts_delete(*, artifact_ids: list[Any]) -> dict[str, int]:
    """Delete artifacts now (the admin): storage first, then rows, like the cleanup."""
    counts = {"deleted": 0, "failed": 0}
    with transaction.atomic():
        ids = list(
            Artifact.objects.select_for_update(skip_locked=True)
            .filter(pk__in=artifact_ids)
            .exclude(status=ArtifactStatus.DELETING)
            .values_list("pk", flat=True)
        )
        Artifact.objects.filter(pk__in=ids).update(status=ArtifactStatus.DELETING)
    _delete_ids(list(artifact_ids), counts)
    return counts


def artifacts_cleanup(
    *, now: datetime | None = None, batch_size: int | None = None, dry_run: bool = False
) -> dict[str, int]:
    """The nightly cleanup: first retry the deletions that failed before, then claim expired
    artifacts and abandoned uploads a batch at a time (FOR UPDATE SKIP LOCKED, marked
    DELETING in a short transaction) and delete each: file first, then row. Two cleanups at
    once share the work; a crash leaves DELETING rows that the next run finishes."""
    now = now or timezone.now()
    batch_size = batch_size or settings.CONVEYOR_ARTIFACTS_CLEANUP_BATCH
    if dry_run:
        return {
            "due": _due_for_cleanup(now).count(),
            "retry": Artifact.objects.filter(status=ArtifactStatus.DELETING).count(),
        }
    counts = {"claimed": 0, "deleted": 0, "failed": 0}
    # Deletions that failed before (served by the partial index artifact_unavailable_idx),
    # each looked at once per run: keyset pages by id.
    last = None
    while True:
        page = Artifact.objects.filter(status=ArtifactStatus.DELETING).order_by("pk")
        if last is not None:
            page = page.filter(pk__gt=last)
        ids = list(page.values_list("pk", flat=True)[:batch_size])
        if not ids:
            break
        last = ids[-1]
        _delete_ids(ids, counts)
    while True:
        with transaction.atomic():
            ids = list(
                _due_for_cleanup(now)
                .select_for_update(skip_locked=True, of=("self",))
                .order_by("expires_at", "created_at")
                .values_list("pk", flat=True)[:batch_size]
            )
            Artifact.objects.filter(pk__in=ids).update(status=ArtifactStatus.DELETING)
        if not ids:
            break
        counts["claimed"] += len(ids)
        _delete_ids(ids, counts)
    return counts


# --- Storage objects of deleted rows.


def _storage_path_in_use(path: str) -> bool:
    return (
        Artifact.objects.filter(storage_path=path).exclude(type=ArtifactType.DOCKER).exists()
        or Cache.objects.filter(storage_path=path).exists()
    )


def _storage_deletion_process_one(entry_id: int) -> str:
    """One queued object: "kept" (a row names it again, or still: a reused build's file),
    "deleted", "busy" (another drain has it) or "failed" (kept, with the error, for later)."""
    with transaction.atomic():
        entry = StorageDeletion.objects.select_for_update(skip_locked=True).filter(pk=entry_id).first()
        if entry is None:
            return "busy"
        if _storage_path_in_use(entry.storage_path):
            entry.delete()
            return "kept"
        try:
            storage.delete(entry.storage_path)
        except Exception as exc:  # the storage is down, refuses, times out: the next drain retries
            logger.warning("storage object %s: deleting it failed (%s); retried later", entry.storage_path, exc)
            StorageDeletion.objects.filter(pk=entry.pk).update(
                attempts=F("attempts") + 1, last_error=str(exc)[:2000] or type(exc).__name__
            )
            return "failed"
        entry.delete()
    return "deleted"


def storage_deletions_process(*, now: datetime | None = None, batch_size: int | None = None) -> dict[str, int]:
    """Drain the queue of storage objects whose rows were deleted (StorageDeletion): each
    entry due now is looked at once per drain. Safe to run twice at once (SKIP LOCKED)."""
    now = now or timezone.now()
    batch_size = batch_size or settings.CONVEYOR_ARTIFACTS_CLEANUP_BATCH
    counts = {"deleted": 0, "kept": 0, "failed": 0}
    last = 0
    while True:
        ids = list(
            StorageDeletion.objects.filter(not_before__lte=now, pk__gt=last)
            .order_by("pk")
            .values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            return counts
        last = ids[-1]
        for entry_id in ids:
            outcome = _storage_deletion_process_one(entry_id)
            if outcome in counts:
                counts[outcome] += 1


# --- Caches (`cache:`): one archive per repository and key, the newest upload wins.

_CACHE_NAME_MAX = Cache._meta.get_field("key").max_length


def cache_key_check(key: Any) -> str:
    """A cache key as GitLab takes it: 1 to 255 characters, no `/` (nor `%2F`), not `.` or
    `..` (nor `%2E`, `%2E%2E`), no NUL."""
    if not isinstance(key, str) or not key.strip() or len(key) > _CACHE_NAME_MAX or "\x00" in key:
        raise ArtifactRefused(f"a cache key has 1 to {_CACHE_NAME_MAX} characters and no NUL; got {key!r}")
    decoded = key.replace("%2F", "/").replace("%2f", "/").replace("%2E", ".").replace("%2e", ".")
    if "/" in decoded or decoded in {".", ".."}:
        raise ArtifactRefused(f"a cache key must not contain '/' nor be '.' or '..'; got {key!r}")
    return key


def _repository_id(job: Job) -> Any:
    return PipelineRun.objects.filter(pk=job.run_id).values_list("pipeline__repository_id", flat=True).get()


def cache_lookup(*, job: Job, keys: list[str], now: datetime | None = None) -> Cache | None:
    """The first of `keys` (the cache's key, then its fallback keys) that the job's repository
    has an available cache for, marked used now; None if it has none of them."""
    now = now or timezone.now()
    checked = [cache_key_check(key) for key in keys]
    if not checked:
        return None
    found = {
        cache.key: cache
        for cache in Cache.objects.filter(
            repository_id=_repository_id(job), key__in=checked, status=CacheStatus.AVAILABLE
        )
    }
    cache = next((found[key] for key in checked if key in found), None)
    # Served by the primary key; once an hour is enough for a retention counted in days.
    if cache is not None and cache.last_used_at < now - timedelta(hours=1):
        Cache.objects.filter(pk=cache.pk).update(last_used_at=now)
        cache.last_used_at = now
    return cache


@transaction.atomic
def cache_upload_begin(*, job: Job, key: str, size: int, sha256: str, now: datetime | None = None) -> Cache:
    """A PENDING cache of the job's repository, stored under a new object: the current cache
    of the key stays what pulls get until `cache_commit` swaps them."""
    key = cache_key_check(key)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= settings.CONVEYOR_ARTIFACTS_MAX_BYTES:
        raise ArtifactRefused(f"a cache has 0 to {settings.CONVEYOR_ARTIFACTS_MAX_BYTES} bytes")
    if not _SHA256.match(sha256 or ""):
        raise ArtifactRefused("sha256 must be 64 lowercase hex digits")
    repository_id = _repository_id(job)
    cache_id = uuid.uuid4()
    return Cache.objects.create(
        id=cache_id,
        repository_id=repository_id,
        key=key,
        status=CacheStatus.PENDING,
        storage_path=f"caches/{repository_id}/{cache_id}/cache.tar.gz",
        size_bytes=size,
        sha256=sha256,
        job_id=job.pk,
        last_used_at=now or timezone.now(),
    )


def cache_receive(*, cache: Cache, stream: IO[bytes]) -> Cache:
    """Stream a cache upload into its (new) object, refusing content other than declared."""
    if cache.status != CacheStatus.PENDING:
        raise ArtifactRefused(f"cache {cache.pk} is {cache.status}, not waiting for its content")
    stored = _store_declared(path=cache.storage_path, stream=stream, size_bytes=cache.size_bytes, sha256=cache.sha256)
    if stored != cache.storage_path:
        Cache.objects.filter(pk=cache.pk).update(storage_path=stored)
        cache.storage_path = stored
    return cache


def cache_commit(*, cache: Cache, now: datetime | None = None) -> Cache:
    """The upload is complete: check the object, then in one transaction make this cache the
    key's AVAILABLE one and delete the row it replaces (the database queues that row's object,
    due after CONVEYOR_ARTIFACTS_PRESIGN_S, so a pull already under way can finish). A pull
    sees the old cache or the new one, never a half-written one. When two uploads of a key
    race, the one begun last wins: an older upload that commits later is dropped. Returns the
    key's cache after the commit. Idempotent."""
    if cache.status == CacheStatus.AVAILABLE:
        return cache
    _check_stored(path=cache.storage_path, size_bytes=cache.size_bytes, sha256=cache.sha256)
    now = now or timezone.now()
    with transaction.atomic():
        # Commits of one key take turns (a transaction-scoped advisory lock): the partial
        # unique constraint alone would turn a race into an IntegrityError.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"cache:{cache.repository_id}"])
        mine = Cache.objects.select_for_update().filter(pk=cache.pk, status=CacheStatus.PENDING).first()
        current = Cache.objects.filter(
            repository_id=cache.repository_id, key=cache.key, status=CacheStatus.AVAILABLE
        ).first()
        if mine is None:
            cache.refresh_from_db()
            return cache  # committed by a retried request meanwhile
        if current is not None and current.created_at > mine.created_at:
            mine.delete()  # a newer upload of the key won; this one's object is queued
            return current
        if current is not None:
            current.delete()
            # A pull may have just been handed the old object: it stays a while.
            grace = now + timedelta(seconds=settings.CONVEYOR_ARTIFACTS_PRESIGN_S)
            StorageDeletion.objects.filter(storage_path=current.storage_path).update(not_before=grace)
        Cache.objects.filter(pk=mine.pk).update(status=CacheStatus.AVAILABLE, last_used_at=now)
    cache.status, cache.last_used_at = CacheStatus.AVAILABLE, now
    return cache


def cache_store(*, job: Job, key: str, file: IO[bytes], size: int, sha256: str) -> Cache:
    """Upload a cache in one call, straight to storage: what trusted runners do."""
    cache = cache_upload_begin(job=job, key=key, size=size, sha256=sha256)
    cache_receive(cache=cache, stream=file)
    return cache_commit(cache=cache)


def caches_cleanup(*, now: datetime | None = None, batch_size: int | None = None) -> dict[str, int]:
    """Delete caches unused for CONVEYOR_CACHE_RETENTION_DAYS and uploads abandoned for
    CONVEYOR_ARTIFACTS_PENDING_HOURS, a batch of rows per short transaction (SKIP LOCKED: two
    cleanups share the work). Each row's object is queued by the database in the same
    transaction and deleted by `storage_deletions_process`: never served again, never left."""
    now = now or timezone.now()
    batch_size = batch_size or settings.CONVEYOR_ARTIFACTS_CLEANUP_BATCH
    unused = now - timedelta(days=settings.CONVEYOR_CACHE_RETENTION_DAYS)
    abandoned = now - timedelta(hours=settings.CONVEYOR_ARTIFACTS_PENDING_HOURS)
    due = Cache.objects.filter(status=CacheStatus.AVAILABLE, last_used_at__lt=unused) | Cache.objects.filter(
        status=CacheStatus.PENDING, created_at__lt=abandoned
    )
    removed = 0
    while True:
        with transaction.atomic():
            ids = list(
                due.select_for_update(skip_locked=True)
                .order_by("last_used_at")
                .values_list("pk", flat=True)[:batch_size]
            )
            if ids:
                removed += Cache.objects.filter(pk__in=ids).delete()[0]
        if not ids:
            return {"removed": removed}
