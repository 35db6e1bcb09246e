"""`/healthz`: can this process reach PostgreSQL and Redis? For load balancers and probes.

Each check opens its own short-lived connection with a short timeout, so a hung server makes
the probe fail in seconds instead of hanging it. The response names what is down but never
why (hostnames and error texts stay in the server log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg
import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)

TIMEOUT_S = 2


def check_database() -> None:
    params = connection.get_connection_params()
    params["connect_timeout"] = TIMEOUT_S
    with psycopg.connect(**params) as conn, conn.cursor() as cursor:
        cursor.execute(f"SET statement_timeout = {TIMEOUT_S * 1000}")
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_redis() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
    try:
        client.ping()
    finally:
        client.close()


CHECKS: dict[str, Callable[[], None]] = {"database": check_database, "redis": check_redis}


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    results = {}
    for name, check in CHECKS.items():
        try:
            check()
        except Exception:  # any failure means "down"; the reason goes to the log, not the response
            logger.warning("health check %s failed", name, exc_info=True)
            results[name] = "down"
        else:
            results[name] = "ok"
    healthy = all(value == "ok" for value in results.values())
    return JsonResponse(results, status=200 if healthy else 503)
