"""URLs of the dashboard's pages (runs.views, pipelines.views_pages), under the "runs" namespace.
The landing page `/` (runs.views.home, the runs list) is in cicd/urls.py."""

from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from pipelines import views_pages
from runs import views

app_name = "runs"

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Runs and jobs.
    path("runs/", views.runs_list, name="list"),
    path("runs/status.json", views.runs_status, name="list-status"),
    path("runs/<uuid:run_id>/", views.run_detail, name="run"),
    path("runs/<uuid:run_id>/status.json", views.run_status, name="run-status"),
    path("runs/<uuid:run_id>/cancel/", views.run_cancel, name="run-cancel"),
    path("runs/<uuid:run_id>/retry/", views.run_retry, name="run-retry"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job"),
    path("jobs/<uuid:job_id>/retry/", views.job_retry, name="job-retry"),
    path("jobs/<uuid:job_id>/play/", views.job_play, name="job-play"),
    path("runners/", views.runners_list, name="runners"),
    # Badges for READMEs: /badges/<repository>/<branch>.svg (branches may hold slashes).
    re_path(r"^badges/(?P<repository>[-a-zA-Z0-9_]+)/(?P<branch>.+)\.svg$", views.badge, name="badge"),
    # Repositories, pipelines and their triggers.
    path("repositories/", views_pages.repositories_list, name="repositories"),
    path("repositories/<slug:name>/", views_pages.repository_detail, name="repository"),
    path("repositories/<slug:name>/pipelines/<int:pipeline_id>/run/", views_pages.pipeline_run, name="pipeline-run"),
    # Members (POST forms on the repository page; maintainers).
    path("repositories/<slug:name>/members/", views_pages.member_add, name="member-add"),
    path("repositories/<slug:name>/members/<int:membership_id>/role/", views_pages.member_role, name="member-role"),
    path(
        "repositories/<slug:name>/members/<int:membership_id>/remove/", views_pages.member_remove, name="member-remove"
    ),
    path("schedules/", views_pages.schedules_list, name="schedules"),
    path("deliveries/", views_pages.deliveries_list, name="deliveries"),
    path("deliveries/<int:delivery_id>/", views_pages.delivery_detail, name="delivery"),
    path("deliveries/<int:delivery_id>/redeliver/", views_pages.delivery_redeliver, name="delivery-redeliver"),
    path("environments/", views_pages.environments_list, name="environments"),
    path("environments/<int:environment_id>/", views_pages.environment_detail, name="environment"),
    # Personal API tokens.
    path("tokens/", views_pages.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views_pages.token_revoke, name="token-revoke"),
]
