from django.urls import path

from logs import views

app_name = "logs"

urlpatterns = [
    path("jobs/<uuid:job_id>/", views.job_log, name="job"),
    path("jobs/<uuid:job_id>/raw", views.job_log_raw, name="job-raw"),
    path("steps/<uuid:step_id>/raw", views.step_log_raw, name="step-raw"),
]
