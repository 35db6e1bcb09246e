from django.urls import path

from runners import api

app_name = "runner-api"

urlpatterns = [
    path("register", api.register, name="register"),
    path("jobs/request", api.request_job, name="request-job"),
    path("jobs/<uuid:job_id>/heartbeat", api.heartbeat, name="heartbeat"),
    path("jobs/<uuid:job_id>/steps/<uuid:step_id>/start", api.step_start, name="step-start"),
    path("jobs/<uuid:job_id>/steps/<uuid:step_id>/finish", api.step_finish, name="step-finish"),
    path("jobs/<uuid:job_id>/steps/<uuid:step_id>/log", api.step_log, name="step-log"),
    path("jobs/<uuid:job_id>/finish", api.finish, name="finish"),
    path("jobs/<uuid:job_id>/release", api.release, name="release"),
]
