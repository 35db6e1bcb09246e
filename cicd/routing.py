"""WebSocket routes."""

from django.urls import path

from logs.consumers import StepLogConsumer

websocket_urlpatterns: list = [
    # Live log of a step: history from ?offset=N, then live chunks and status changes.
    path("ws/steps/<uuid:step_id>/", StepLogConsumer.as_asgi()),
]
