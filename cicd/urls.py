import re

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path

from cicd.health import healthz
from cicd.static import serve_collected
from runs.views import home

urlpatterns = [
    path("", home, name="home"),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/runner/", include("runners.urls")),
]

# `make run` has no web server in front of uvicorn, so the collected static files (admin CSS,
# app.css) are served by Django itself. A proxy or CDN in front may serve STATIC_ROOT instead.
if not settings.STATIC_URL.startswith(("http://", "https://", "//")):
    urlpatterns.append(
        re_path(rf"^{re.escape(settings.STATIC_URL.lstrip('/'))}(?P<path>.*)$", serve_collected, name="static")
    )
