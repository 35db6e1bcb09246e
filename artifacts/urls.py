"""Artifact URLs: the runner API's artifact calls (under /api/runner/) and downloads."""

from django.urls import path

from artifacts import views

app_name = "artifacts"

_job = "api/runner/jobs/<uuid:job_id>/artifacts"

urlpatterns = [
    path(_job, views.upload_begin, name="runner-upload"),
    path(f"{_job}/dependencies", views.dependencies, name="runner-dependencies"),
    path(f"{_job}/docker", views.docker_record, name="runner-docker"),
    path(f"{_job}/reuse", views.reuse, name="runner-reuse"),
    path(f"{_job}/<uuid:artifact_id>/content", views.content, name="runner-content"),
    path(f"{_job}/<uuid:artifact_id>/commit", views.upload_commit, name="runner-commit"),
    path("artifacts/<uuid:artifact_id>/download", views.download, name="download"),
]
