"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cicd.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from cicd.pooled import PooledViews  # noqa: E402
from cicd.routing import websocket_urlpatterns  # noqa: E402
from pipelines.asgi import WebhookBodyLimit  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Webhook bodies over CONVEYOR_WEBHOOK_MAX_BYTES get 413 before Django buffers them;
        # webhooks and the runner API's short calls are then served by Django in pools of
        # threads that keep their database connections (cicd.pooled), everything else by
        # Django's ASGI handler.
        "http": WebhookBodyLimit(
            PooledViews(
                django_asgi_app,
                pools={
                    "webhooks": settings.CONVEYOR_WEBHOOK_THREADS,
                    "runner-api": settings.CONVEYOR_RUNNER_API_THREADS,
                },
            )
        ),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
