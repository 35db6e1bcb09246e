"""The REST API under /api/v1/: the router, the OpenAPI schema
(/api/v1/schema/) and its Swagger UI (/api/v1/docs/, assets served locally).

Authentication: a personal API token (`Authorization: Bearer cvp_...`,
pipelines.api_tokens) or the browser session. Every list is filtered by what the caller
may see (pipelines.permissions); bad input is a 4xx with a message, never a 500
(cicd.api_base: pagination and error answers, named in settings.REST_FRAMEWORK).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.shortcuts import redirect
from django.urls import path
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework import routers

from artifacts.viewsets import ArtifactViewSet
from pipelines.variables_api import VariableViewSet
from pipelines.viewsets import LintView, PipelineViewSet, RepositoryViewSet, ScheduleViewSet
from runs.viewsets import (
    ApprovalViewSet,
    DeploymentViewSet,
    EnvironmentViewSet,
    JobViewSet,
    RunnerViewSet,
    RunViewSet,
    StepViewSet,
)


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "pipelines.api_tokens.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A personal API token (cvp_...): create one on the Tokens page.",
        }


class Router(routers.DefaultRouter):
    include_format_suffixes = False


router = Router()
router.register("repositories", RepositoryViewSet, basename="api-repository")
router.register("pipelines", PipelineViewSet, basename="api-pipeline")
router.register("schedules", ScheduleViewSet, basename="api-schedule")
router.register("runs", RunViewSet, basename="api-run")
router.register("jobs", JobViewSet, basename="api-job")
router.register("steps", StepViewSet, basename="api-step")
router.register("artifacts", ArtifactViewSet, basename="api-artifact")
router.register("runners", RunnerViewSet, basename="api-runner")
router.register("environments", EnvironmentViewSet, basename="api-environment")
router.register("deployments", DeploymentViewSet, basename="api-deployment")
router.register("approvals", ApprovalViewSet, basename="api-approval")
router.register(r"repositories/(?P<repository_name>[-a-zA-Z0-9_]+)/variables", VariableViewSet, basename="api-variable")


def _docs_view():
    if settings.CONVEYOR_API_DOCS_ASSETS:
        # The split view serves its start-up script as a file of its own (?script): the page has
        # no inline script, as the Content-Security-Policy (script-src 'self') requires.
        return SpectacularSwaggerSplitView.as_view(url_name="api-schema")

    def browsable_api(request):  # no local Swagger UI assets: DRF's browsable API instead
        return redirect("api-root")

    return browsable_api


urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", _docs_view(), name="api-docs"),
    path("lint/", LintView.as_view(), name="api-lint"),
    *router.urls,
]
