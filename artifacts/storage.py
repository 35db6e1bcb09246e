"""STORAGES["artifacts"]: streaming in and out of it, and presigned URLs when it is S3.

Nothing here holds a whole artifact in memory: content goes through in CHUNK_BYTES pieces,
hashed on the way. With S3 (django-storages' S3Storage), runners and browsers get presigned
URLs, so big transfers go straight to the bucket instead of through the web process.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from typing import IO, Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages

CHUNK_BYTES = 1024 * 1024


class TooLarge(Exception):
    pass


def artifact_storage() -> Storage:
    return storages["artifacts"]


def is_s3(storage: Storage | None = None) -> bool:
    storage = storage or artifact_storage()
    return hasattr(storage, "bucket_name") and hasattr(storage, "connection")


def storage_key(*, run_id: Any, job_id: Any, artifact_id: Any, file_name: str) -> str:
    return f"runs/{run_id}/{job_id}/{artifact_id}/{file_name}"


class DigestingReader:
    """Reads `stream` in pieces, counting and hashing what passes; refuses more than `limit` bytes."""

    def __init__(self, stream: IO[bytes], *, limit: int):
        self.stream, self.limit = stream, limit
        self.size = 0
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK_BYTES), b""))
        data = self.stream.read(size)
        self.size += len(data)
        if self.size > self.limit:
            raise TooLarge(f"over {self.limit} bytes")
        self.hash.update(data)
        return data

    closed = False

    def close(self) -> None:
        self.closed = True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return True

    @property
    def sha256(self) -> str:
        return self.hash.hexdigest()


def save_stream(name: str, stream: IO[bytes], *, limit: int) -> tuple[str, int, str]:
    """Store `stream` under `name` (replacing what is there). Returns (name as stored, size, sha256)."""
    storage = artifact_storage()
    if storage.exists(name):
        storage.delete(name)  # a retried upload: the earlier attempt's file goes
    reader = DigestingReader(stream, limit=limit)
    stored = storage.save(name, File(reader, name=name.rsplit("/", 1)[-1]))
    return stored, reader.size, reader.sha256


def open_stream(name: str) -> IO[bytes]:
    """The stored file as a stream read piece by piece (S3: the GET's body, not a local copy)."""
    storage = artifact_storage()
    if is_s3(storage):
        return storage.bucket.Object(storage._normalize_name(name)).get()["Body"]
    return storage.open(name, "rb")


def stored_size(name: str) -> int | None:
    """The stored object's size, or None if there is none."""
    storage = artifact_storage()
    try:
        return storage.size(name)
    except (FileNotFoundError, OSError):
        return None
    except Exception as exc:  # botocore's ClientError for a missing key
        if _is_missing(exc):
            return None
        raise


def stored_sha256(name: str) -> str | None:
    """The sha256 the store itself verified at upload (S3 with a checksum), if it kept one."""
    storage = artifact_storage()
    if not is_s3(storage):
        return None
    head = storage.connection.meta.client.head_object(
        Bucket=storage.bucket_name, Key=storage._normalize_name(name), ChecksumMode="ENABLED"
    )
    value = head.get("ChecksumSHA256")
    return base64.b64decode(value).hex() if value else None


def delete(name: str) -> None:
    """Delete the stored file; a file that is already gone is no error (deletion is retried)."""
    storage = artifact_storage()
    with contextlib.suppress(FileNotFoundError):
        storage.delete(name)


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code")) in {"404", "NoSuchKey", "NotFound"}


def presigned_upload(name: str, *, size: int, sha256: str) -> dict[str, Any] | None:
    """A presigned PUT for S3 (None for other storages: the upload goes through the server).
    The checksum is part of the signature: S3 refuses a body whose sha256 differs."""
    storage = artifact_storage()
    if not is_s3(storage):
        return None
    checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
    url = storage.connection.meta.client.generate_presigned_url(
        "put_object",
        Params={
            "Bucket": storage.bucket_name,
            "Key": storage._normalize_name(name),
            "ContentLength": size,
            "ChecksumSHA256": checksum,
        },
        ExpiresIn=settings.CONVEYOR_ARTIFACTS_PRESIGN_S,
    )
    return {"method": "PUT", "url": url, "headers": {"x-amz-checksum-sha256": checksum}}


def presigned_download(name: str, *, file_name: str) -> str | None:
    """A presigned GET for S3 that names the download; None for other storages."""
    storage = artifact_storage()
    if not is_s3(storage):
        return None
    return storage.connection.meta.client.generate_presigned_url(
        "get_object",
        Params={
            "Bucket": storage.bucket_name,
            "Key": storage._normalize_name(name),
            "ResponseContentDisposition": f'attachment; filename="{file_name}"',
        },
        ExpiresIn=settings.CONVEYOR_ARTIFACTS_PRESIGN_S,
    )
