from django.urls import path

from pipelines import api, views

urlpatterns = [
    path("webhooks/github/", views.github_webhook, name="webhook-github"),
    path("webhooks/gitlab/", views.gitlab_webhook, name="webhook-gitlab"),
    path("webhooks/generic/", views.generic_webhook, name="webhook-generic"),
    path("api/pipelines/<int:pipeline_id>/trigger/", api.trigger_pipeline, name="pipeline-trigger"),
]
