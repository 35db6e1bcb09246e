"""Webhook endpoint latency: bursts of concurrent signed deliveries against a real uvicorn server.

The endpoint only verifies, stores and queues (the run is created by a Celery task later);
this measures what a forge waits for. The server runs as `make run` runs it (cicd.web: uvicorn in
CONVEYOR_WEB_WORKERS processes) on the benchmark database, and its tasks go to a Redis
database of their own, emptied afterwards (no worker consumes them). One burst before the
clock warms the server up (imports, database connections, the broker connection), as a
server that has been running for a while is.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.common import BENCH_DB, summary_ms

ROOT = Path(__file__).resolve().parent.parent
BROKER_DB = 15


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env() -> dict[str, str]:
    from django.conf import settings

    url = urlsplit(settings.DATABASE_URL)
    env = {**os.environ, "DATABASE_URL": urlunsplit(url._replace(path="/" + BENCH_DB))}
    env["CELERY_BROKER_URL"] = _broker_url()
    env["CONVEYOR_VAR_DIR"] = str(_var_dir())
    return env


def _var_dir() -> Path:
    from cicd import embedded

    return embedded.var_dir()


def _broker_url() -> str:
    from django.conf import settings

    base = settings.CELERY_BROKER_URL
    return f"{base}{'&' if '?' in base else '?'}virtual_host={BROKER_DB}" if "socket" in base else f"{base}/{BROKER_DB}"


def _wait_healthy(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the web server exited during start-up")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the web server did not become healthy")


def web_workers() -> int:
    from django.conf import settings

    return settings.CONVEYOR_WEB_WORKERS


def web_command(port: int) -> list[str]:
    """The web server as `manage.py up` starts it: cicd.web, uvicorn in CONVEYOR_WEB_WORKERS processes."""
    return [sys.executable, "-m", "cicd.web", "--port", str(port), "--workers", str(web_workers())]


def _signed(secret: str, repository: str) -> tuple[bytes, dict[str, str]]:
    sha = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    body = json.dumps({"ref": "refs/heads/main", "after": sha, "pusher": "bench", "repository": repository}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Conveyor-Signature-256": signature,
        "Idempotency-Key": sha,
    }
    return body, headers


def webhook_latency(*, concurrency: int, rounds: int) -> dict[str, object]:
    from pipelines.models import Pipeline, Repository, WebhookDelivery

    repository, _ = Repository.objects.get_or_create(name="bench-hooks", defaults={"clone_url": "/nonexistent"})
    Pipeline.objects.get_or_create(repository=repository, name="default")
    WebhookDelivery.objects.filter(repository=repository).delete()
    port = _free_port()
    command = [*web_command(port), "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=ROOT, env=_server_env())  # noqa: S603 (our own interpreter)
    try:
        _wait_healthy(port, server)
        path = f"/webhooks/generic/?repository={repository.name}"
        # Signed before the clock starts (a forge signs before it sends); burst 0 is the warm-up.
        bursts = [
            [_signed(repository.webhook_secret, repository.name) for _ in range(concurrency)] for _ in range(rounds + 1)
        ]
        outcomes, elapsed, since = asyncio.run(_deliver(port, path, bursts))
    finally:
        server.terminate()
        server.wait(timeout=30)
        _flush_broker()
    stored = WebhookDelivery.objects.filter(repository=repository, received_at__gte=since).count()
    latencies = [latency for latency, _ in outcomes]
    statuses = Counter(status for _, status in outcomes)
    return {
        "deliveries": len(latencies),
        "concurrency": concurrency,
        "statuses": ",".join(f"{code}x{n}" for code, n in sorted(statuses.items())),
        "stored": stored,
        "per_s": round(len(latencies) / elapsed),
        **summary_ms(latencies),
    }


async def _deliver(port: int, path: str, bursts: list) -> tuple[list[tuple[float, int]], float, Any]:
    """Send each burst's deliveries at once, each on its own keep-alive connection (as forges'
    deliveries arrive), and time each from its first byte sent to its response read: the
    (latency, status) of every delivery after the first burst, the seconds those bursts took,
    and when they started.

    One event loop drives every connection: client threads would queue for the GIL (a thread
    may hold it 5 ms before it must let go) and add that wait to the latencies measured."""
    from django.utils import timezone

    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in bursts[0]]

    async def burst_of(deliveries: list) -> list[tuple[float, int]]:
        pairs = zip(connections, deliveries, strict=True)
        return await asyncio.gather(*(_post(*connection, path, *delivery) for connection, delivery in pairs))

    warm_up, *measured_bursts = bursts
    await burst_of(warm_up)
    started, since = time.perf_counter(), timezone.now()
    outcomes: list[tuple[float, int]] = []
    for burst in measured_bursts:
        outcomes += await burst_of(burst)
    elapsed = time.perf_counter() - started
    for _, writer in connections:
        writer.close()
    return outcomes, elapsed, since


async def _post(reader, writer, path: str, body: bytes, headers: dict[str, str]) -> tuple[float, int]:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode()
    started = time.perf_counter()
    writer.write(request + body)
    status, _ = await read_response(reader)
    return time.perf_counter() - started, status


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """An HTTP/1.1 response's status and body (by its Content-Length) from a keep-alive connection."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def _flush_broker() -> None:
    import redis
    from django.conf import settings

    url = settings.REDIS_URL
    client = redis.Redis.from_url(url, db=BROKER_DB) if not url.startswith("unix://") else None
    if client is None:
        client = redis.Redis(unix_socket_path=urlsplit(url).path, db=BROKER_DB)
    client.flushdb()
