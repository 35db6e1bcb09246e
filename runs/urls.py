"""URLs of the runs app: decisions on deployments (runs.deployment_views)."""

from django.urls import path

from runs import deployment_views

urlpatterns = [
    path(
        "deployments/<uuid:deployment_id>/approve/",
        deployment_views.deployment_approve,
        name="deployment_approve",
    ),
    path(
        "deployments/<uuid:deployment_id>/reject/",
        deployment_views.deployment_reject,
        name="deployment_reject",
    ),
    path(
        "deployments/<uuid:deployment_id>/override-freeze/",
        deployment_views.deployment_override_freeze,
        name="deployment_override_freeze",
    ),
    path(
        "deployments/<uuid:deployment_id>/redeploy/",
        deployment_views.deployment_redeploy,
        name="deployment_redeploy",
    ),
]
