"""Artifact URLs: the runner API's artifact and cache calls (under /api/runner/) and downloads."""

from django.urls import path

from artifacts import views

app_name = "artifacts"

_job = "api/runner/jobs/<uuid:job_id>/artifacts"
_cache = "api/runner/jobs/<uuid:job_id>/caches"

urlpatterns = [
    path(_job, views.upload_begin, name="runner-upload"),
    path(f"{_job}/dependencies", views.dependencies, name="runner-dependencies"),
    path(f"{_job}/docker", views.docker_record, name="runner-docker"),
    path(f"{_job}/reuse", views.reuse, name="runner-reuse"),
    path(f"{_job}/<uuid:artifact_id>/content", views.content, name="runner-content"),
    path(f"{_job}/<uuid:artifact_id>/commit", views.upload_commit, name="runner-commit"),
    path(f"{_job}/images", views.images, name="runner-images"),
    path(f"{_cache}/lookup", views.cache_lookup, name="runner-cache-lookup"),
    path(_cache, views.cache_upload_begin, name="runner-cache-upload"),
    path(f"{_cache}/<uuid:cache_id>/content", views.cache_content, name="runner-cache-content"),
    path(f"{_cache}/<uuid:cache_id>/commit", views.cache_commit, name="runner-cache-commit"),
    path("artifacts/<uuid:artifact_id>/download", views.download, name="download"),
]
