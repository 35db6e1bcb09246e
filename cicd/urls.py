import re

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path

from cicd.health import healthz
from cicd.static import serve_collected
from runs.views import home

urlpatterns = [
    # The machine-to-machine calls come first: Django tries the patterns in order, and each
    # include it tries in vain costs a resolution (4% of a webhook request's CPU behind six).
    # Webhooks (/webhooks/github|gitlab|generic/) and pipeline triggers (/api/pipelines/<id>/trigger/).
    path("", include("pipelines.urls")),
    path("api/runner/", include("runners.urls")),
    path("", home, name="home"),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    # Artifact uploads/downloads of the runner API (/api/runner/jobs/<id>/artifacts...) and
    # downloads for people (/artifacts/<id>/download).
    path("", include("artifacts.urls")),
    path("logs/", include("logs.urls")),
    # Decisions on deployments (/deployments/<id>/approve|reject|override-freeze|redeploy/).
    path("", include("runs.urls")),
    # The dashboard's pages (/runs/, /jobs/, /repositories/, /badges/, /login/, ...) and the REST API.
    path("", include("runs.page_urls")),
    path("api/v1/", include("cicd.api")),
]

# `make run` has no web server in front of uvicorn, so the collected static files (admin CSS,
# app.css) are served by Django itself. A proxy or CDN in front may serve STATIC_ROOT instead.
if not settings.STATIC_URL.startswith(("http://", "https://", "//")):
    urlpatterns.append(
        re_path(rf"^{re.escape(settings.STATIC_URL.lstrip('/'))}(?P<path>.*)$", serve_collected, name="static")
    )
