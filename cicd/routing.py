"""WebSocket routes (live logs and run status arrive with the logs issue)."""

websocket_urlpatterns: list = []
