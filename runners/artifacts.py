"""A job's artifacts on the runner: what it receives before its steps, what it keeps after.

Before the steps (`JobArtifacts.before_steps`): with `artifacts: reuse:`, compute the job's
reuse key and ask the server for an earlier successful build with that key; if there is one
its artifacts are linked to this job and the steps are skipped. Otherwise the archives of
the jobs it depends on are downloaded (streamed to a file, sha256 checked) and unpacked into
the project directory, safely (runners.archives).

After the steps (`JobArtifacts.after_steps`), as `artifacts: when:` says: `paths` (minus
`exclude`) become a BINARY archive named `name`, `reports: junit` a TEST_REPORT archive, and
the images the job recorded with `conveyor-artifact docker` DOCKER artifacts; each archive
is written to disk while hashed, then uploaded streaming.

Caches (`cache:`, README: Caches) ride along: before the steps each cache whose policy pulls
is restored (its key, else a fallback key; none is no error), after them each whose policy
pushes is saved. A cache never fails a job: its problems are warnings in the log. The images
its dependencies recorded reach the steps as CONVEYOR_IMAGE_* variables (`image_variables`).

The transfers go through an ArtifactTransport: the server's services straight away on
trusted runners (`OrmArtifacts`), the runner API with the job's own token over HTTP
(`HttpArtifacts`; with S3 storage, presigned URLs straight to the bucket).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from runners import archives
from runners.executors.base import JobResult, LogStream, Reporter
from runners.services import ClaimedJob, ClaimedStep, JobNotHeld
from runs.models import StepStatus

logger = logging.getLogger(__name__)

CLI_NAME = "conveyor-artifact"
REUSE_KEY_VERSION = "conveyor-reuse-1"
# A transfer that fails because the server or the storage is away for a moment is retried
# with backoff for this long: as patient as the job's other reports (runners.worker), so a
# web server restart (a deploy) does not fail the job that was uploading through it.
_TRANSFER_PATIENCE_S = 600.0
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class ArtifactTransferError(Exception):
    """The server or the storage refused a transfer (not a passing network failure)."""


def _transient(exc: BaseException) -> bool:
    import django.db
    import requests

    return isinstance(
        exc, (requests.ConnectionError, requests.Timeout, django.db.OperationalError, django.db.InterfaceError)
    )


def _retry(call, what: str):
    deadline = time.monotonic() + _TRANSFER_PATIENCE_S
    delay = 1.0
    while True:
        try:
            return call()
        except Exception as exc:
            if not _transient(exc) or time.monotonic() + delay > deadline:
                raise
            logger.warning("%s failed (%s); retrying in %.0fs", what, exc, delay)
            _drop_broken_connection(exc)
            time.sleep(delay)
            delay = min(10.0, delay * 2)


def _drop_broken_connection(exc: BaseException) -> None:
    """After a database error (trusted runners: the ORM transport), close this thread's
    connection, so that the retry connects afresh: Django would keep failing on a connection
    the database dropped (restarted), as runners.backends.OrmBackend does for reports."""
    import django.db

    if isinstance(exc, (django.db.OperationalError, django.db.InterfaceError)):
        with contextlib.suppress(Exception):
            django.db.connection.close()


# --- Transports.


class ArtifactTransport(Protocol):
    def upload(
        self, job: ClaimedJob, *, name: str, type: str, path: Path, size: int, sha256: str, cache_key: str
    ) -> dict[str, Any]: ...

    def dependencies(self, job: ClaimedJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]: ...

    def download(self, job: ClaimedJob, entry: dict[str, Any], destination: IO[bytes]) -> None: ...

    def record_docker(
        self, job: ClaimedJob, *, reference: str, digest: str, name: str, cache_key: str
    ) -> dict[str, Any]: ...

    def reuse(self, job: ClaimedJob, *, cache_key: str) -> dict[str, Any] | None: ...

    def images(self, job: ClaimedJob) -> list[dict[str, Any]]: ...

    def cache_lookup(self, job: ClaimedJob, *, keys: list[str]) -> dict[str, Any] | None: ...

    def cache_download(self, job: ClaimedJob, entry: dict[str, Any], destination: IO[bytes]) -> None: ...

    def cache_upload(self, job: ClaimedJob, *, key: str, path: Path, size: int, sha256: str) -> dict[str, Any]: ...


def artifact_transport(reporter: Any) -> ArtifactTransport | None:
    """The transport of the backend behind an executor's reporter (a RetryingReporter wraps
    the backend); None for reporters without one (executor tests), where artifacts are off."""
    for candidate in (reporter, getattr(reporter, "backend", None)):
        transport = getattr(candidate, "artifacts", None)
        if transport is not None:
            return transport
    return None


def _image(artifact: Any) -> dict[str, Any]:
    return {
        "name": artifact.name,
        "job": artifact.job.name if artifact.job else "",
        "reference": artifact.storage_path,
        "digest": artifact.digest,
    }


def _entry(artifact: Any) -> dict[str, Any]:
    return {
        "id": str(artifact.pk),
        "name": artifact.name,
        "type": artifact.type,
        "job": artifact.job.name if artifact.job else "",
        "size": artifact.size_bytes,
        "sha256": artifact.sha256,
        "digest": artifact.digest,
        "storage_path": artifact.storage_path,
    }


class OrmArtifacts:
    """Trusted runners: the artifact services, straight to STORAGES["artifacts"]."""

    def __init__(self, runner: Any):
        self.runner = runner

    def _job(self, job: ClaimedJob):
        from runs.models import Job, JobStatus

        row = (
            Job.objects.select_related("run__pipeline__repository")
            .filter(pk=job.id, runner=self.runner, status=JobStatus.RUNNING)
            .first()
        )
        if row is None:
            raise JobNotHeld(f"job {job.id} is not running on this runner")
        return row

    def upload(self, job, *, name, type, path, size, sha256, cache_key):
        from artifacts.services import ArtifactRefused, artifact_store

        with path.open("rb") as handle:
            try:
                artifact = artifact_store(
                    job=self._job(job), name=name, type=type, file=handle, size=size, sha256=sha256, cache_key=cache_key
                )
            except ArtifactRefused as exc:
                raise ArtifactTransferError(str(exc)) from exc
        return _entry(artifact)

    def dependencies(self, job):
        from artifacts.selectors import job_dependency_artifacts

        available, gone = job_dependency_artifacts(job=self._job(job))
        return [_entry(a) for a in available], [_entry(a) for a in gone]

    def download(self, job, entry, destination):
        from artifacts.storage import open_stream

        source = open_stream(entry["storage_path"])
        try:
            shutil.copyfileobj(source, destination, archives.CHUNK_BYTES)
        finally:
            source.close()

    def record_docker(self, job, *, reference, digest, name, cache_key):
        from artifacts.services import ArtifactRefused, artifact_docker_record

        try:
            artifact = artifact_docker_record(
                job=self._job(job), reference=reference, digest=digest, name=name, cache_key=cache_key
            )
        except ArtifactRefused as exc:
            raise ArtifactTransferError(str(exc)) from exc
        return _entry(artifact)

    def reuse(self, job, *, cache_key):
        from artifacts.services import artifacts_reuse

        source, copies = artifacts_reuse(job=self._job(job), cache_key=cache_key)
        if source is None:
            return None
        return {"source": {"job": source.name, "run": source.run.number}, "artifacts": [_entry(a) for a in copies]}

    def images(self, job):
        from artifacts.selectors import job_dependency_images

        return [_image(a) for a in job_dependency_images(job=self._job(job))]

    def cache_lookup(self, job, *, keys):
        from artifacts.services import ArtifactRefused, cache_lookup

        try:
            cache = cache_lookup(job=self._job(job), keys=keys)
        except ArtifactRefused as exc:
            raise ArtifactTransferError(str(exc)) from exc
        if cache is None:
            return None
        return {
            "id": str(cache.pk),
            "key": cache.key,
            "size": cache.size_bytes,
            "sha256": cache.sha256,
            "storage_path": cache.storage_path,
        }

    def cache_download(self, job, entry, destination):
        self.download(job, entry, destination)

    def cache_upload(self, job, *, key, path, size, sha256):
        from artifacts.services import ArtifactRefused, cache_store

        with path.open("rb") as handle:
            try:
                cache = cache_store(job=self._job(job), key=key, file=handle, size=size, sha256=sha256)
            except ArtifactRefused as exc:
                raise ArtifactTransferError(str(exc)) from exc
        return {"id": str(cache.pk), "key": cache.key, "size": cache.size_bytes, "sha256": cache.sha256}


class HttpArtifacts:
    """HTTP runners: the runner API, authenticated by the job's own token. Presigned URLs
    (S3) are fetched with a session of their own that carries no token at all."""

    def __init__(self, client: Any):
        self.client = client
        self._plain = None

    @property
    def plain(self):
        import requests

        if self._plain is None:
            self._plain = requests.Session()
        return self._plain

    def _check(self, response, what: str) -> None:
        if response.status_code == 409:
            raise JobNotHeld(f"{what}: the job is no longer running here")
        if response.status_code >= 400:
            raise ArtifactTransferError(f"{what} refused ({response.status_code}): {_detail(response)}")

    def _call(self, method: str, path: str, job: ClaimedJob, what: str, **kwargs) -> dict[str, Any]:
        response = self.client.request(method, path, token=job.job_token or None, **kwargs)
        self._check(response, what)
        return response.json() if response.content else {}

    def upload(self, job, *, name, type, path, size, sha256, cache_key):
        body = {"name": name, "type": type, "size": size, "sha256": sha256, "cache_key": cache_key}
        begun = self._call("POST", f"jobs/{job.id}/artifacts", job, "artifact upload", json=body)
        return self._put_and_commit(job, begun, path, size, "artifact")

    def _put_and_commit(self, job, begun: dict[str, Any], path: Path, size: int, what: str) -> dict[str, Any]:
        target = begun["upload"]
        headers = {**(target.get("headers") or {}), "Content-Length": str(size)}
        with path.open("rb") as handle:  # streamed from the file by requests, never read whole
            if target.get("url"):
                response = self.plain.request(
                    target["method"], target["url"], data=handle, headers=headers, timeout=(10, 600)
                )
            else:
                response = self.client.request(
                    target["method"],
                    target["path"],
                    token=job.job_token,
                    data=handle,
                    headers=headers,
                    timeout=(10, 600),
                )
        self._check(response, f"{what} content")
        return self._call("POST", begun["commit"], job, f"{what} commit")

    def dependencies(self, job):
        return self.dependencies_of(self._call("GET", f"jobs/{job.id}/artifacts/dependencies", job, "artifact list"))

    @staticmethod
    def dependencies_of(answer: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(archives to unpack, archives that expired) from the server's answer."""
        return answer.get("artifacts", []), answer.get("missing", [])

    @staticmethod
    def images_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
        return answer.get("images", [])

    def download(self, job, entry, destination):
        self._get(job, entry, destination, f"download of {entry.get('name') or entry.get('key')}")

    def _get(self, job, entry, destination, what: str) -> None:
        if entry.get("url"):
            response = self.plain.get(entry["url"], stream=True, timeout=(10, 600))
        else:
            response = self.client.request("GET", entry["path"], token=job.job_token, stream=True, timeout=(10, 600))
        with response:
            self._check(response, what)
            for chunk in response.iter_content(archives.CHUNK_BYTES):
                destination.write(chunk)

    def record_docker(self, job, *, reference, digest, name, cache_key):
        body = {"reference": reference, "digest": digest, "name": name, "cache_key": cache_key}
        return self._call("POST", f"jobs/{job.id}/artifacts/docker", job, "image record", json=body)

    def reuse(self, job, *, cache_key):
        data = self._call("POST", f"jobs/{job.id}/artifacts/reuse", job, "reuse lookup", json={"cache_key": cache_key})
        return data if data.get("reused") else None

    def images(self, job):
        return self.images_of(self._call("GET", f"jobs/{job.id}/artifacts/images", job, "image list"))

    def cache_lookup(self, job, *, keys):
        data = self._call("POST", f"jobs/{job.id}/caches/lookup", job, "cache lookup", json={"keys": keys})
        return data if data.get("found") else None

    def cache_download(self, job, entry, destination):
        self._get(job, entry, destination, f"download of cache {entry['key']}")

    def cache_upload(self, job, *, key, path, size, sha256):
        body = {"key": key, "size": size, "sha256": sha256}
        begun = self._call("POST", f"jobs/{job.id}/caches", job, "cache upload", json=body)
        return self._put_and_commit(job, begun, path, size, "cache")


def _detail(response) -> str:
    try:
        return str(response.json().get("detail", response.text[:200]))
    except ValueError:
        return response.text[:200]


# --- A job's artifacts.


def expand(text: str, variables: dict[str, str]) -> str:
    """$NAME and ${NAME} replaced by the job's variables (unknown ones by nothing)."""
    return _VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), ""), text)


CACHE_POLICIES = ("pull", "push", "pull-push")
_IMAGE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9]+")


def cache_key_problem(key: str) -> str:
    """Why a cache key cannot be used ("" if it can), by the server's rules
    (artifacts.services.cache_key_check): as GitLab, no `/` and not `.` or `..`."""
    if not key.strip() or len(key) > 255 or "\x00" in key:
        return "1 to 255 characters"
    decoded = key.replace("%2F", "/").replace("%2f", "/").replace("%2E", ".").replace("%2e", ".")
    if "/" in decoded or decoded in {".", ".."}:
        return "no '/', not '.' or '..'"
    return ""


def image_variables(images: list[dict[str, Any]]) -> dict[str, str]:
    """The variables a job gets for the images its dependencies recorded (README: Images of
    dependencies): per image CONVEYOR_IMAGE_<NAME> = reference@digest (pinned to the digest
    built upstream), with _REFERENCE and _DIGEST alone; CONVEYOR_IMAGES lists every pinned
    reference, and CONVEYOR_IMAGE is the pinned reference when there is exactly one image.
    <NAME> is the artifact's name in upper snake case (`--name app` -> CONVEYOR_IMAGE_APP)."""
    values: dict[str, str] = {}
    pinned_all: list[str] = []
    for image in images:
        reference, digest = str(image["reference"]), str(image["digest"])
        pinned = reference if "@" in reference else f"{reference}@{digest}"
        name = _IMAGE_NAME_UNSAFE.sub("_", str(image.get("name") or reference)).strip("_").upper() or "IMAGE"
        values[f"CONVEYOR_IMAGE_{name}"] = pinned
        values[f"CONVEYOR_IMAGE_{name}_REFERENCE"] = reference
        values[f"CONVEYOR_IMAGE_{name}_DIGEST"] = digest
        if pinned not in pinned_all:
            pinned_all.append(pinned)
    if pinned_all:
        values["CONVEYOR_IMAGES"] = " ".join(pinned_all)
    if len(pinned_all) == 1:
        values["CONVEYOR_IMAGE"] = pinned_all[0]
    return values


def _wanted(when: str, status: str) -> bool:
    if when == "always":
        return status in {StepStatus.SUCCESS, StepStatus.FAILURE}
    if when == "on_failure":
        return status == StepStatus.FAILURE
    return status == StepStatus.SUCCESS


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


@dataclass
class _Log:
    """Lines for the job's log (a step's) and the runner's own log."""

    stream: LogStream | None

    def __call__(self, line: str) -> None:
        logger.info("%s", line)
        if self.stream is not None:
            self.stream.write(line + "\n")

    def close(self) -> int | None:
        if self.stream is None:
            return None
        self.stream.flush(final=True)
        return self.stream.offset


class JobArtifacts:
    def __init__(self, reporter: Reporter, job: ClaimedJob, *, workspace: Path, project: Path):
        self.reporter, self.job, self.project = reporter, job, project
        self.transport = artifact_transport(reporter)
        self.section: dict[str, Any] = (job.spec or {}).get("artifacts") or {}
        self.directory = workspace / "artifacts"
        self.directory.mkdir(exist_ok=True)
        self.records = self.directory / "records.jsonl"
        self.cache_key = ""
        self.caches: list[dict[str, Any]] = list((job.spec or {}).get("cache") or [])
        self.env: dict[str, str] | None = None

    # The environment of the steps.

    def environment(self, env: dict[str, str]) -> None:
        """Give the steps `conveyor-artifact` (on PATH) and where it records."""
        if self.transport is None:
            return
        self.env = env
        bin_dir = self.directory / "bin"
        bin_dir.mkdir(exist_ok=True)
        cli = bin_dir / CLI_NAME
        shutil.copyfile(Path(__file__).with_name("artifact_cli.py"), cli)
        cli.chmod(0o755)
        env["CI_ARTIFACTS_RECORD"] = str(self.records)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    def _log(self, step: ClaimedStep) -> _Log:
        """Lines at the end of a finished step's log."""
        # Where the step's log ends on the server: a zero-length chunk at 0 is answered with
        # the offset it expects.
        try:
            offset = self.reporter.step_log(self.job, step, 0, "") or 0
        except Exception as exc:
            logger.warning("the log of step %s is unreachable (%s): artifact lines go to the runner log", step, exc)
            return _Log(None)
        stream = LogStream(self.reporter, self.job, step)
        stream.offset = offset
        return _Log(stream)

    # Before the steps.

    def reuse_key(self) -> str:
        """sha256 over the job's name, `reuse: key` (default $CI_COMMIT_SHA) with variables
        expanded, and the contents of `reuse: files` (default: Dockerfile or Containerfile,
        if the project has one)."""
        reuse = self.section.get("reuse")
        if reuse is None:
            return ""
        variables = self.job.variables
        text = expand(reuse.get("key") or "$CI_COMMIT_SHA", variables)
        files = reuse.get("files")
        if files is None:
            files = [name for name in ("Dockerfile", "Containerfile") if (self.project / name).is_file()]
        digest = hashlib.sha256(f"{REUSE_KEY_VERSION}\0{self.job.name}\0{text}\0".encode())
        digest.update(archives.hash_paths(self.project, files).encode())
        return f"reuse:{digest.hexdigest()}"

    def before_steps(self, log: LogStream) -> JobResult | None:
        """Reuse or fetch dependencies, writing to `log` (the first step's, which the step goes
        on with). Returns a result that ends the job without running its steps, or None."""
        if self.transport is None:
            if self.section or self.caches:
                logger.warning("job %s: this runner's backend transfers no artifacts or caches", self.job.id)
            return None
        lines = _Log(log)
        try:
            return self._before_steps(lines)
        except JobNotHeld:
            raise
        except Exception as exc:
            lines(f"ERROR: {exc}")
            return JobResult(status=StepStatus.FAILURE, reason=f"artifacts: {exc}")

    def _before_steps(self, log: _Log) -> JobResult | None:
        self.cache_key = self.reuse_key()
        if self.cache_key:
            found = _retry(lambda: self.transport.reuse(self.job, cache_key=self.cache_key), "reuse lookup")
            if found is not None:
                source = found["source"]
                names = ", ".join(a["name"] for a in found["artifacts"])
                log(
                    f"Reusing the artifacts of job {source['job']} (run #{source['run']}) built with the same "
                    f"inputs ({self.cache_key[:18]}…): {names}. The steps are skipped."
                )
                return JobResult(
                    status=StepStatus.SUCCESS,
                    exit_code=0,
                    reason=f"reused the artifacts of job {source['job']} (run #{source['run']})",
                )
            log(f"No earlier build with reuse key {self.cache_key[:18]}…: building.")
        available, missing = _retry(lambda: self.transport.dependencies(self.job), "artifact list")
        if missing:
            names = ", ".join(sorted({f"{m['name']} of job {m['job']}" for m in missing}))
            raise ArtifactTransferError(f"the artifacts this job depends on have expired or were deleted: {names}")
        for entry in available:
            self._fetch(entry, log)
        images = _retry(lambda: self.transport.images(self.job), "image list")
        if images and self.env is not None:
            variables = image_variables(images)
            self.env.update(variables)
            for name, value in variables.items():
                if name.endswith(("_REFERENCE", "_DIGEST")) or name == "CONVEYOR_IMAGES":
                    continue
                log(f"Image of the jobs this job depends on: {name}={value}")
        self._pull_caches(log)
        return None

    # Caches (`cache:`).

    def _cache_keys(self, entry: dict[str, Any], log: _Log) -> list[str]:
        """The cache's key with variables expanded (`key: {files, prefix}`: a hash of the
        files' contents), then its fallback keys; keys that are not usable are left out."""
        variables = self.job.variables
        raw = entry.get("key", "default")
        if isinstance(raw, dict):
            digest = archives.hash_paths(self.project, raw.get("files") or [])[:40]
            prefix = expand(str(raw.get("prefix") or ""), variables)
            key = f"{prefix}-{digest}" if prefix else digest
        else:
            key = expand(str(raw), variables) or "default"
        keys = []
        for candidate in [key, *(expand(str(k), variables) for k in entry.get("fallback_keys") or [])]:
            problem = cache_key_problem(candidate)
            if problem:
                log(f"WARNING: cache: key {candidate!r} is not usable ({problem}): skipped")
            elif candidate not in keys:
                keys.append(candidate)
        return keys

    def _cache_policy(self, entry: dict[str, Any], log: _Log) -> str:
        policy = expand(str(entry.get("policy") or "pull-push"), self.job.variables)
        if policy not in CACHE_POLICIES:
            log(f"WARNING: cache: policy {policy!r} is not pull, push or pull-push: this cache is skipped")
            return ""
        return policy

    def _pull_caches(self, log: _Log) -> None:
        """Restore each cache whose policy pulls: its key, else the first fallback key found.
        A missing cache, or one that cannot be fetched, is never an error."""

        for entry in self.caches:
            if self._cache_policy(entry, log) not in {"pull", "pull-push"}:
                continue
            keys = self._cache_keys(entry, log)
            if not keys:
                continue
            try:
                found = _retry(lambda k=keys: self.transport.cache_lookup(self.job, keys=k), "cache lookup")
                if found is None:
                    log(f"cache: no cache for key {', '.join(keys)}: the job starts without it")
                    continue
                if found["key"] != keys[0]:
                    log(f"cache: no cache for key {keys[0]}; using the one of fallback key {found['key']}")
                path = self.directory / f"cache-{found['id']}.tar.gz"
                try:
                    _retry(lambda f=found, p=path: self._download_cache(f, p), f"download of cache {found['key']}")
                    unpacked = self._unpack_checked(path, found["sha256"], f"cache {found['key']}", log)
                finally:
                    path.unlink(missing_ok=True)
                log(f"cache: restored {found['key']}: {unpacked.files} files ({_size(unpacked.bytes)})")
            except JobNotHeld:
                raise
            except Exception as exc:
                log(f"WARNING: cache: {', '.join(keys)} could not be restored ({exc}): the job starts without it")

    def _unpack_checked(self, path: Path, sha256: str, what: str, log: _Log):
        """Unpack a downloaded archive into the project, bounded, once its sha256 is the one
        the server recorded (an empty `sha256`: none was recorded)."""
        from django.conf import settings

        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(archives.CHUNK_BYTES):
                digest.update(chunk)
        if sha256 and digest.hexdigest() != sha256:
            raise ArtifactTransferError(f"{what}: sha256 mismatch")
        limit = getattr(settings, "CONVEYOR_ARTIFACTS_MAX_UNPACKED_BYTES", 20 * 1024**3)
        with path.open("rb") as handle:
            return archives.unpack(handle, self.project, max_bytes=limit, log=log)

    def _download_cache(self, entry: dict[str, Any], path: Path) -> None:
        with path.open("wb") as handle:
            self.transport.cache_download(self.job, entry, handle)

    def _push_caches(self, result: JobResult, step: ClaimedStep) -> None:
        """Save each cache whose policy pushes, if its `when:` says so. A failed save is a
        warning: the job's outcome stays what its steps made it."""
        wanted = [entry for entry in self.caches if _wanted(str(entry.get("when") or "on_success"), result.status)]
        if not wanted:
            return
        log = self._log(step)
        try:
            for entry in wanted:
                if self._cache_policy(entry, log) not in {"push", "pull-push"}:
                    continue
                keys = self._cache_keys(entry, log)
                if keys:
                    self._push_cache(keys[0], entry, log)
        finally:
            log.close()

    def _push_cache(self, key: str, entry: dict[str, Any], log: _Log) -> None:
        if entry.get("untracked"):
            log("WARNING: cache: untracked is not supported; list the paths to cache under paths:")
        paths = entry.get("paths") or []
        members = archives.collect(self.project, paths, log=log) if paths else []
        if not members:
            log(f"cache: no files to cache for key {key}: not saved")
            return
        path = self.directory / "upload-cache.tar.gz"
        try:
            written = archives.write_archive(self.project, members, path, level=3, log=log)
            _retry(
                lambda: self.transport.cache_upload(
                    self.job, key=key, path=path, size=written.size, sha256=written.sha256
                ),
                f"upload of cache {key}",
            )
        except JobNotHeld:
            raise
        except Exception as exc:
            log(f"WARNING: cache: saving {key} failed ({exc})")
            return
        finally:
            path.unlink(missing_ok=True)
        log(f"cache: saved {key}: {written.files} files ({_size(written.bytes_in)}), archive {_size(written.size)}")

    def _fetch(self, entry: dict[str, Any], log: _Log) -> None:

        log(f"Downloading artifacts {entry['name']} of job {entry['job']} ({_size(entry['size'])})")
        path = self.directory / f"download-{entry['id']}.tar.gz"

        def download() -> None:
            with path.open("wb") as handle:
                self.transport.download(self.job, entry, handle)

        try:
            _retry(download, f"download of {entry['name']}")
            what = f"artifacts {entry['name']} of job {entry['job']}"
            unpacked = self._unpack_checked(path, entry.get("sha256") or "", what, log)
        finally:
            path.unlink(missing_ok=True)
        skipped = f", {len(unpacked.skipped)} unsafe entries skipped" if unpacked.skipped else ""
        log(f"Unpacked {unpacked.files} files ({_size(unpacked.bytes)}){skipped}")

    # After the steps.

    def work_after_steps(self, result: JobResult) -> bool:
        """Whether after_steps has anything to do once the steps ended with `result`: caches
        to save, artifacts or test reports to upload, images to record."""
        if self.transport is None or result.status not in {StepStatus.SUCCESS, StepStatus.FAILURE}:
            return False
        return bool(self.caches) or any(self._uploads_wanted(result))

    def _junit_reports(self) -> list[str]:
        return (self.section.get("reports") or {}).get("junit") or []

    def _uploads_wanted(self, result: JobResult) -> tuple[bool, bool, bool]:
        """(archive the paths, upload the test reports, record the images) for `result`."""
        when = str(self.section.get("when") or "on_success")
        records = self.records.exists() and self.records.stat().st_size > 0
        wants_paths = bool(self.section.get("paths")) and _wanted(when, result.status)
        # Test reports matter most when tests fail: uploaded whatever the job's outcome.
        wants_reports = bool(self._junit_reports())
        wants_images = records and _wanted(when, result.status)
        return wants_paths, wants_reports, wants_images

    def after_steps(self, result: JobResult, step: ClaimedStep | None) -> JobResult:
        """Upload what `artifacts:` and `conveyor-artifact` ask for, if `when:` says so. An
        upload that fails fails a job that had succeeded (as in GitLab)."""
        if step is None or not self.work_after_steps(result):
            return result
        if self.caches:
            self._push_caches(result, step)
        wants_paths, wants_reports, wants_images = self._uploads_wanted(result)
        if not (wants_paths or wants_reports or wants_images):
            return result
        log = self._log(step)
        try:
            if wants_paths:
                name = expand(str(self.section.get("name") or "artifacts"), self.job.variables) or "artifacts"
                self._upload(name, "BINARY", self.section.get("paths") or [], self.section.get("exclude") or [], log)
            if wants_reports:
                self._upload("junit", "TEST_REPORT", self._junit_reports(), [], log)
            if wants_images:
                self._record_images(log)
        except JobNotHeld:
            raise
        except Exception as exc:
            log(f"ERROR: uploading artifacts failed: {exc}")
            if result.status == StepStatus.SUCCESS:
                return JobResult(status=StepStatus.FAILURE, reason=f"artifact upload failed: {exc}")
        finally:
            log.close()
        return result

    def _upload(self, name: str, type: str, paths: list[str], exclude: list[str], log: _Log) -> None:
        what = "test reports" if type == "TEST_REPORT" else f"artifacts {name}"
        log(f"Uploading {what}: {', '.join(paths)}")
        members = archives.collect(self.project, paths, exclude, log=log)
        if not members:
            log(f"WARNING: {what}: no files to upload")
            return
        level = archives.COMPRESSION_LEVELS.get(self.job.variables.get("ARTIFACT_COMPRESSION_LEVEL", ""), 3)
        path = self.directory / f"upload-{type.lower()}.tar.gz"
        try:
            written = archives.write_archive(self.project, members, path, level=level, log=log)
            _retry(
                lambda: self.transport.upload(
                    self.job,
                    name=name,
                    type=type,
                    path=path,
                    size=written.size,
                    sha256=written.sha256,
                    cache_key=self.cache_key,
                ),
                f"upload of {what}",
            )
        finally:
            path.unlink(missing_ok=True)
        log(
            f"Uploaded {what}: {written.files} files ({_size(written.bytes_in)}), archive {_size(written.size)}, "
            f"sha256 {written.sha256}"
        )

    def _record_images(self, log: _Log) -> None:
        for number, line in enumerate(self.records.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                reference, digest = str(record["reference"]), str(record["digest"])
            except (ValueError, KeyError, TypeError):
                log(f"WARNING: {self.records.name} line {number} is not a conveyor-artifact record: skipped")
                continue
            name = str(record.get("name") or "")
            _retry(
                lambda r=reference, d=digest, n=name: self.transport.record_docker(
                    self.job, reference=r, digest=d, name=n, cache_key=self.cache_key
                ),
                f"record of image {reference}",
            )
            log(f"Recorded image {reference}@{digest}")
