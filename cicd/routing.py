"""WebSocket routes."""

from django.urls import path

from logs.consumers import StepLogConsumer
from runs.consumers import RunsListConsumer, RunStatusConsumer

websocket_urlpatterns: list = [
    # Live log of a step: history from ?offset=N, then live chunks and status changes.
    path("ws/steps/<uuid:step_id>/", StepLogConsumer.as_asgi()),
    # Live statuses: a run's (the run page's graph and jobs), and every visible run's (the runs list).
    path("ws/runs/<uuid:run_id>/", RunStatusConsumer.as_asgi()),
    path("ws/runs/", RunsListConsumer.as_asgi()),
]
