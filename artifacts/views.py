"""Artifact endpoints: the runner API's (under /api/runner/, authenticated by the job's own
token, CI_JOB_TOKEN, or by the runner holding the job) and the download page for people.

Thin: authenticate, parse, call a service or selector, answer. Bodies are streamed in both
directions: an upload is read from the request in pieces straight into storage, a download
is sent in pieces (under ASGI through an async iterator, which Django streams as it goes;
a sync iterator it would first read whole into memory).

The short JSON calls (look-ups and records, `pooled_job_call`) are served in the runner API's
pool of threads that keep their database connections, as its job calls are (cicd.pooled);
the calls that move a body, or check a stored one (commits), keep a thread of their own so
that a long transfer does not hold one of the pool's few threads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import wraps
from typing import IO, Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from artifacts import selectors, services, storage
from artifacts.models import Artifact, ArtifactStatus, Cache, CacheStatus
from cicd.pooled import pooled
from runners.api import BadRequest, _bearer, _error, _field, _json_body
from runners.services import JobNotHeld, RunnerAuthError
from runs.models import Job


def job_call(*methods: str) -> Callable:
    """A runner-API artifact call about a RUNNING job: authenticate the job's token, call the
    view, map domain errors to status codes. In a thread of its own (Django's for a sync
    view): for the calls that stream a body or check a stored object."""

    def decorate(view: Callable) -> Callable:
        @csrf_exempt
        @require_http_methods(list(methods))
        @wraps(view)
        def wrapper(request: HttpRequest, job_id, **kwargs) -> HttpResponse:
            try:
                job = selectors.job_for_artifact_call(job_id=job_id, token=_bearer(request))
                return view(request, job, **kwargs)
            except RunnerAuthError as exc:
                return _error(401, str(exc))
            except JobNotHeld as exc:
                return _error(409, str(exc), code="job_not_held")
            except (BadRequest, services.ArtifactRefused) as exc:
                return _error(400, str(exc))

        return wrapper

    return decorate


def pooled_job_call(*methods: str) -> Callable:
    """A short runner-API artifact call (a few queries, a small JSON body each way), answered
    as job_call answers it, in the runner API's pool of threads."""

    def decorate(view: Callable) -> Callable:
        return pooled("runner-api")(job_call(*methods)(view))

    return decorate


def _describe(artifact: Artifact) -> dict[str, Any]:
    return {
        "id": str(artifact.pk),
        "name": artifact.name,
        "type": artifact.type,
        "status": artifact.status,
        "job": artifact.job.name if artifact.job else "",
        "size": artifact.size_bytes,
        "sha256": artifact.sha256,
        "digest": artifact.digest,
        "reference": artifact.storage_path if not artifact.is_file else "",
        "expires_at": artifact.expires_at.isoformat() if artifact.expires_at else None,
    }


def _own_artifact(job: Job, artifact_id) -> Artifact:
    artifact = Artifact.objects.filter(pk=artifact_id, job=job).first()
    if artifact is None:
        raise Http404("no such artifact of this job")
    return artifact


@pooled_job_call("POST")
def upload_begin(request: HttpRequest, job: Job) -> JsonResponse:
    """{"name", "type": BINARY|TEST_REPORT, "size", "sha256", "cache_key"?} -> where to PUT it."""
    data = _json_body(request)
    artifact = services.artifact_upload_begin(
        job=job,
        name=_field(data, "name", str),
        type=_field(data, "type", str),
        size=_field(data, "size", int),
        sha256=_field(data, "sha256", str),
        cache_key=_field(data, "cache_key", str, ""),
    )
    target = storage.presigned_upload(artifact.storage_path, size=artifact.size_bytes, sha256=artifact.sha256)
    if target is None:
        # Through this server: the path is relative to the runner API's root.
        target = {"method": "PUT", "path": f"jobs/{job.pk}/artifacts/{artifact.pk}/content", "headers": {}}
    return JsonResponse(
        {"id": str(artifact.pk), "upload": target, "commit": f"jobs/{job.pk}/artifacts/{artifact.pk}/commit"},
        status=201,
    )


@job_call("PUT")
def upload_content(request: HttpRequest, job: Job, artifact_id) -> JsonResponse:
    artifact = _own_artifact(job, artifact_id)
    services.artifact_receive(artifact=artifact, stream=request)
    return JsonResponse({"size": artifact.size_bytes, "sha256": artifact.sha256})


@job_call("POST")
def upload_commit(request: HttpRequest, job: Job, artifact_id) -> JsonResponse:
    artifact = services.artifact_commit(artifact=_own_artifact(job, artifact_id))
    return JsonResponse(_describe(artifact))


@pooled_job_call("POST")
def docker_record(request: HttpRequest, job: Job) -> JsonResponse:
    """{"reference": "registry/name:tag", "digest": "sha256:...", "name"?, "cache_key"?}"""
    data = _json_body(request)
    artifact = services.artifact_docker_record(
        job=job,
        reference=_field(data, "reference", str),
        digest=_field(data, "digest", str),
        name=_field(data, "name", str, ""),
        cache_key=_field(data, "cache_key", str, ""),
    )
    return JsonResponse(_describe(artifact), status=201)


@pooled_job_call("POST")
def reuse(request: HttpRequest, job: Job) -> JsonResponse:
    """{"cache_key"} -> {"reused": true, "source": {...}, "artifacts": [...]} or {"reused": false}."""
    source, copies = services.artifacts_reuse(job=job, cache_key=_field(_json_body(request), "cache_key", str))
    if source is None:
        return JsonResponse({"reused": False})
    return JsonResponse(
        {
            "reused": True,
            "source": {"job": source.name, "job_id": str(source.pk), "run": source.run.number},
            "artifacts": [_describe(a) for a in copies],
        }
    )


@pooled_job_call("GET")
def dependencies(request: HttpRequest, job: Job) -> JsonResponse:
    return JsonResponse(dependencies_answer(job))


@pooled_job_call("GET")
def images(request: HttpRequest, job: Job) -> JsonResponse:
    return JsonResponse(images_answer(job))


def dependencies_answer(job: Job, *, jobs: list[Job] | None = None) -> dict[str, Any]:
    """The archives of the jobs this job depends on, in unpacking order, with where to get
    each (a presigned URL with S3, else a path of this API), and those that expired. Also
    part of the runner API's claim answer (runners.api.request_job). `jobs`: the jobs it
    depends on (selectors.job_dependency_jobs), if the caller has them already."""
    available, gone = selectors.job_dependency_artifacts(job=job, jobs=jobs)
    listed = []
    for artifact in available:
        entry = _describe(artifact)
        url = storage.presigned_download(artifact.storage_path, file_name=artifact.file_name)
        entry.update({"url": url} if url else {"path": f"jobs/{job.pk}/artifacts/{artifact.pk}/content"})
        listed.append(entry)
    return {"artifacts": listed, "missing": [_describe(a) for a in gone]}


def images_answer(job: Job, *, jobs: list[Job] | None = None) -> dict[str, Any]:
    """The images (DOCKER artifacts) the jobs this job depends on recorded: {"images": [{name,
    job, reference, digest}]}, which the runner hands to the job as CONVEYOR_IMAGE_* variables.
    Also part of the runner API's claim answer."""
    return {
        "images": [
            {"name": a.name, "job": a.job.name if a.job else "", "reference": a.storage_path, "digest": a.digest}
            for a in selectors.job_dependency_images(job=job, jobs=jobs)
        ]
    }


def claim_artifact_lists(*, job_id: Any, run_id: Any) -> dict[str, Any]:
    """What the runner would ask for next about a job it claims (dependencies_answer,
    images_answer), for the claim answer. Most claims cost one query here: a run none of
    whose other jobs recorded an artifact has nothing to hand over (the claim is on the
    critical path of every job, and the full lists take four)."""
    if not selectors.run_has_other_artifacts(run_id=run_id, job_id=job_id):
        return {"dependencies": {"artifacts": [], "missing": []}, "images": {"images": []}}
    job = Job.objects.get(pk=job_id)
    jobs = selectors.job_dependency_jobs(job=job)
    return {"dependencies": dependencies_answer(job, jobs=jobs), "images": images_answer(job, jobs=jobs)}


@job_call("GET")
def dependency_content(request: HttpRequest, job: Job, artifact_id) -> HttpResponse:
    available, _ = selectors.job_dependency_artifacts(job=job)
    artifact = next((a for a in available if str(a.pk) == str(artifact_id)), None)
    if artifact is None:
        raise Http404("not an artifact this job depends on")
    return _file_response(request, artifact)


@csrf_exempt
def content(request: HttpRequest, job_id, artifact_id) -> HttpResponse:
    """PUT: the job uploads one of its own artifacts. GET: it downloads one it depends on."""
    if request.method == "PUT":
        return upload_content(request, job_id, artifact_id=artifact_id)
    return dependency_content(request, job_id, artifact_id=artifact_id)


# --- Caches (`cache:`): the job's repository's only.


def _describe_cache(cache: Cache) -> dict[str, Any]:
    return {
        "id": str(cache.pk),
        "key": cache.key,
        "status": cache.status,
        "size": cache.size_bytes,
        "sha256": cache.sha256,
    }


def _repository_cache(job: Job, cache_id, **filters: Any) -> Cache:
    cache = Cache.objects.filter(pk=cache_id, repository_id=job.run.pipeline.repository_id, **filters).first()
    if cache is None:
        raise Http404("no such cache of this repository")
    return cache


@pooled_job_call("POST")
def cache_lookup(request: HttpRequest, job: Job) -> JsonResponse:
    """{"keys": [key, fallback keys...]} -> {"found": true, "id", "key", "size", "sha256", "url"
    or "path"} for the first key the repository has a cache for, else {"found": false}."""
    keys = _field(_json_body(request), "keys", list)
    if not keys or len(keys) > 10 or not all(isinstance(key, str) for key in keys):
        raise BadRequest("field 'keys' must be a list of 1 to 10 strings")
    cache = services.cache_lookup(job=job, keys=keys)
    if cache is None:
        return JsonResponse({"found": False})
    entry = {"found": True, **_describe_cache(cache)}
    url = storage.presigned_download(cache.storage_path, file_name="cache.tar.gz")
    entry.update({"url": url} if url else {"path": f"jobs/{job.pk}/caches/{cache.pk}/content"})
    return JsonResponse(entry)


@pooled_job_call("POST")
def cache_upload_begin(request: HttpRequest, job: Job) -> JsonResponse:
    """{"key", "size", "sha256"} -> where to PUT the archive and where to commit it."""
    data = _json_body(request)
    cache = services.cache_upload_begin(
        job=job, key=_field(data, "key", str), size=_field(data, "size", int), sha256=_field(data, "sha256", str)
    )
    target = storage.presigned_upload(cache.storage_path, size=cache.size_bytes, sha256=cache.sha256)
    if target is None:
        target = {"method": "PUT", "path": f"jobs/{job.pk}/caches/{cache.pk}/content", "headers": {}}
    return JsonResponse(
        {"id": str(cache.pk), "upload": target, "commit": f"jobs/{job.pk}/caches/{cache.pk}/commit"}, status=201
    )


@job_call("POST")
def cache_commit(request: HttpRequest, job: Job, cache_id) -> JsonResponse:
    cache = services.cache_commit(cache=_repository_cache(job, cache_id, job_id=job.pk))
    return JsonResponse(_describe_cache(cache))


@job_call("PUT")
def cache_upload_content(request: HttpRequest, job: Job, cache_id) -> JsonResponse:
    cache = services.cache_receive(cache=_repository_cache(job, cache_id, job_id=job.pk), stream=request)
    return JsonResponse({"size": cache.size_bytes, "sha256": cache.sha256})


@job_call("GET")
def cache_download(request: HttpRequest, job: Job, cache_id) -> HttpResponse:
    cache = _repository_cache(job, cache_id, status=CacheStatus.AVAILABLE)
    return _stream(request, cache.storage_path, file_name="cache.tar.gz", size=cache.size_bytes)


@csrf_exempt
def cache_content(request: HttpRequest, job_id, cache_id) -> HttpResponse:
    """PUT: the job uploads a cache of its repository. GET: it downloads one."""
    if request.method == "PUT":
        return cache_upload_content(request, job_id, cache_id=cache_id)
    return cache_download(request, job_id, cache_id=cache_id)


@login_required
@require_GET
def download(request: HttpRequest, artifact_id) -> HttpResponse:
    artifact = selectors.artifact_for_download(user=request.user, artifact_id=artifact_id)
    if artifact is None or not artifact.is_file:
        raise Http404("no such artifact")
    return _file_response(request, artifact)


def download_url(artifact: Artifact) -> str:
    return reverse("artifacts:download", args=[artifact.pk])


# --- Streaming a stored file out.


def _file_response(request: HttpRequest, artifact: Artifact) -> HttpResponse:
    url = storage.presigned_download(artifact.storage_path, file_name=artifact.file_name)
    if url:
        return HttpResponseRedirect(url)
    if artifact.status != ArtifactStatus.AVAILABLE:
        raise Http404("no such artifact")
    return _stream(request, artifact.storage_path, file_name=artifact.file_name, size=artifact.size_bytes)


def _stream(request: HttpRequest, storage_path: str, *, file_name: str, size: int) -> HttpResponse:
    stream = storage.open_stream(storage_path)
    headers = {"Content-Disposition": f'attachment; filename="{file_name}"'}
    if isinstance(request, ASGIRequest):
        response = StreamingHttpResponse(_aiter(stream), content_type="application/gzip", headers=headers)
        response["Content-Length"] = str(size)
        return response
    # WSGI streams a FileResponse itself (wsgi.file_wrapper).
    return FileResponse(stream, as_attachment=True, filename=file_name, content_type="application/gzip")


async def _aiter(stream: IO[bytes]) -> AsyncIterator[bytes]:
    read = sync_to_async(stream.read, thread_sensitive=False)
    try:
        while chunk := await read(storage.CHUNK_BYTES):
            yield chunk
    finally:
        await sync_to_async(stream.close, thread_sensitive=False)()
