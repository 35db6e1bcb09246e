"""Live log benchmarks: ingest throughput and chunk -> viewer latency, end to end.

A real uvicorn server (cicd.asgi, one process) on the benchmark database and the shared Redis.
The runner side is the real LogStream over the real HttpBackend, fed like the shell executor
feeds it (64 KB reads of a step's output); the viewers are real WebSocket clients (logged in
through a session cookie) on /ws/steps/<id>/. Measured:

- ingest: bytes/s and chunks/s from the first byte written to the final flush answered;
- latency: for every chunk at every viewer, its arrival minus the chunk's created_at (set by
  the server when it stored the chunk: so it covers commit, publish, Redis, the consumer and
  the socket), p50/p99;
- correctness: each viewer's pieces are contiguous, and what it assembled has exactly the
  produced bytes (length and sha256).

A second row measures the ingest service alone (log_chunk_append in-process, no HTTP, no
viewers), to show what HTTP and JSON cost on top of the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench.common import BENCH_DB, percentile

ROOT = Path(__file__).resolve().parent.parent
_numbers = itertools.count()


def produced_output(lines: int) -> bytes:
    """A step's output: `lines` lines of ~100 bytes, some with colours and non-ASCII text."""
    parts = []
    for n in range(lines):
        if n % 50 == 0:
            parts.append(f"\x1b[1;32m==> stage {n // 50}: compiling módulo ✓\x1b[0m {'.' * 52}\n")
        else:
            parts.append(f"[{n:07d}] test_case_{n % 997:03d} PASSED in 0.{n % 1000:03d}s {'-' * 47}\n")
    return "".join(parts).encode()


def _running_step(name: str):
    """A RUNNING job with a job token and one step, as the runner holds it after a claim.

    Made directly rather than claimed: the benchmark database may hold other queued jobs."""
    from datetime import timedelta

    from django.utils import timezone

    from cicd.tokens import token_generate, token_hash
    from pipelines.models import Pipeline, Repository
    from runners.models import Runner
    from runners.services import JOB_TOKEN_PREFIX, ClaimedJob, ClaimedStep
    from runs.models import Job, JobStatus, PipelineRun, Step

    repository, _ = Repository.objects.get_or_create(name="bench-logs", defaults={"clone_url": "/nonexistent"})
    pipeline, _ = Pipeline.objects.get_or_create(repository=repository, name="default")
    number = PipelineRun.objects.filter(pipeline=pipeline).count() + 1
    run = PipelineRun.objects.create(pipeline=pipeline, number=number, status="RUNNING")
    token = token_generate(JOB_TOKEN_PREFIX)
    now = timezone.now()
    job = Job.objects.create(
        run=run,
        name="log",
        stage="test",
        stage_index=0,
        status=JobStatus.RUNNING,
        runner=Runner.objects.create(name=name),
        started_at=now,
        lease_expires_at=now + timedelta(hours=1),
        token_hash=token_hash(token),
    )
    step = Step.objects.create(job=job, index=0, name="print", command="print lines")
    return ClaimedJob(
        id=str(job.pk),
        run_id=str(run.pk),
        name=job.name,
        stage=job.stage,
        attempt=1,
        timeout_s=3600,
        lease_expires_at=job.lease_expires_at.isoformat(),
        clone_url=repository.clone_url,
        commit_sha="",
        ref="main",
        job_token=token,
        steps=[ClaimedStep(id=str(step.pk), index=0, kind=step.kind, name=step.name, command=step.command)],
        variables={"CI_JOB_TOKEN": token},
    )


def _session_cookie() -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user, _ = get_user_model().objects.get_or_create(username="bench-viewer", defaults={"is_staff": True})
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(port: int, *, deflate: bool = True) -> subprocess.Popen:
    from django.conf import settings

    url = urlsplit(settings.DATABASE_URL)
    env = {**os.environ, "DATABASE_URL": urlunsplit(url._replace(path="/" + BENCH_DB)), "REDIS_URL": settings.REDIS_URL}
    command = [sys.executable, "-m", "uvicorn", "cicd.asgi:application", "--port", str(port), "--log-level", "warning"]
    if not deflate:
        command += ["--ws-per-message-deflate", "false"]
    server = subprocess.Popen(command, cwd=ROOT, env=env)  # noqa: S603 (our own interpreter)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the web server exited during start-up")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise RuntimeError("the web server did not become healthy")


def mismatched(got: bytes, expected: bytes) -> int:
    """Bytes of `got` that differ from `expected` at the same offset, plus those missing or extra."""
    if got == expected:
        return 0
    count = abs(len(got) - len(expected))
    for start in range(0, min(len(got), len(expected)), 65536):
        a, b = got[start : start + 65536], expected[start : start + 65536]
        if a != b:
            count += sum(1 for x, y in zip(a, b, strict=False) if x != y)
    return count


class _Viewer:
    def __init__(self) -> None:
        self.offset = 0
        self.size = 0
        self.digest = hashlib.sha256()
        self.contiguous = True
        self.latencies: list[float] = []
        self.mismatched = 0


async def _watch(url: str, headers: dict[str, str], viewer: _Viewer, expected: bytes, ready: asyncio.Event) -> None:
    total = len(expected)
    from websockets.asyncio.client import connect

    async with connect(url, additional_headers=headers, max_size=None) as socket_:
        async for raw in socket_:
            received = time.time()
            message = json.loads(raw)
            if message["type"] == "ready":
                ready.set()
            elif message["type"] == "log":
                viewer.contiguous &= message["offset"] == viewer.offset
                data = message["content"].encode()
                # Compared with what the step printed at that offset: a wrong byte counts, wherever it is.
                viewer.mismatched += mismatched(data, expected[message["offset"] : message["offset"] + len(data)])
                viewer.digest.update(data)
                viewer.size += len(data)
                viewer.offset = message["end"]
                viewer.latencies.append(received - datetime.fromisoformat(message["at"]).timestamp())
                if viewer.offset >= total:
                    return


def _viewers_process(url: str, headers: dict[str, str], count: int, lines: int, ready, results) -> None:
    """The viewers, in a process of their own: they must not take the runner's CPU (or GIL)."""
    expected = produced_output(lines)

    async def main():
        states = [_Viewer() for _ in range(count)]
        readies = [asyncio.Event() for _ in range(count)]
        tasks = [asyncio.ensure_future(_watch(url, headers, states[i], expected, readies[i])) for i in range(count)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
        ready.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 300)
        # A viewer that saw fewer bytes than were printed missed the rest.
        return [
            (v.contiguous, v.size, v.digest.hexdigest(), v.mismatched + max(0, len(expected) - v.size), v.latencies)
            for v in states
        ]

    results.put(asyncio.run(main()))


def ingest_with_viewers(*, lines: int, viewers: int, deflate: bool = True) -> dict[str, object]:
    """The runner streams `lines` lines through HTTP while `viewers` WebSocket clients watch."""
    import multiprocessing

    from runners.executors.base import LogStream
    from runners.http_client import HttpBackend

    data = produced_output(lines)
    claimed = _running_step(f"bench-logs-{os.getpid()}-{next(_numbers)}")
    step = claimed.steps[0]
    cookie = _session_cookie()
    port = _free_port()
    server = _start_server(port, deflate=deflate)
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    watcher = None
    try:
        if viewers:
            url = f"ws://127.0.0.1:{port}/ws/steps/{step.id}/"
            headers = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"}
            watcher = context.Process(target=_viewers_process, args=(url, headers, viewers, lines, ready, results))
            watcher.start()
            if not ready.wait(90):
                raise RuntimeError("the viewers did not connect")
        backend = HttpBackend(url=f"http://127.0.0.1:{port}", token="cvr_unused-for-logs")
        stream = LogStream(backend, claimed, step)
        chunks = 0
        original = backend.step_log

        def counting(*args):
            nonlocal chunks
            chunks += 1
            return original(*args)

        backend.step_log = counting
        started = time.perf_counter()
        for start in range(0, len(data), 65536):  # what os.read of a step's pipe hands the executor
            stream.write_bytes(data[start : start + 65536])
        stream.flush(final=True)
        elapsed = time.perf_counter() - started
        backend.close_thread()
        states = results.get(timeout=300) if viewers else []
    finally:
        if watcher is not None:
            watcher.join(timeout=30)
        server.terminate()
        server.wait(timeout=30)
    expected = hashlib.sha256(data).hexdigest()
    exact = sum(1 for ok, size, digest, *_ in states if ok and size == len(data) and digest == expected)
    latencies = [latency for *_, samples in states for latency in samples]
    stored = _stored_mismatch(step.id, data)
    wrong = stored + sum(count for *_, count, _ in states)
    return {
        "path": "runner -> HTTP -> ingest -> Redis -> WebSocket",
        "lines": lines,
        "mb": round(len(data) / 1e6, 1),
        "chunks": chunks,
        "viewers": viewers,
        "deflate": "on" if deflate else "off",
        "ingest_mb_s": round(len(data) / 1e6 / elapsed, 1),
        "chunks_s": round(chunks / elapsed),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2) if latencies else "",
        "p99_ms": round(percentile(latencies, 99) * 1000, 2) if latencies else "",
        "max_ms": round(max(latencies) * 1000, 2) if latencies else "",
        "exact_viewers": f"{exact}/{viewers}",
        "bytes_mismatched": wrong,
    }


def _stored_mismatch(step_id, data: bytes) -> int:
    """What the database holds for the step against what it printed."""
    from logs.selectors import log_text
    from runs.models import Step

    return mismatched(log_text(step=Step.objects.get(pk=step_id)).encode(), data)


def ingest_service_only(*, lines: int) -> dict[str, object]:
    """The ingest service alone, in-process: 64 KB chunks through log_chunk_append."""
    from logs.services import log_chunk_append
    from runs.models import Step

    data = produced_output(lines).decode()
    claimed = _running_step(f"bench-logs-{os.getpid()}-{next(_numbers)}")
    step = Step.objects.get(pk=claimed.steps[0].id)
    pieces = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    offset = 0
    started = time.perf_counter()
    for piece in pieces:
        offset = log_chunk_append(step=step, offset=offset, content=piece)
    elapsed = time.perf_counter() - started
    return {
        "path": "log_chunk_append (in-process, publishing, no viewers)",
        "lines": lines,
        "mb": round(offset / 1e6, 1),
        "chunks": len(pieces),
        "viewers": 0,
        "ingest_mb_s": round(offset / 1e6 / elapsed, 1),
        "chunks_s": round(len(pieces) / elapsed),
        "bytes_mismatched": _stored_mismatch(step.pk, data.encode()),
    }


COLUMNS = [
    "path",
    "mb",
    "chunks",
    "viewers",
    "deflate",
    "ingest_mb_s",
    "chunks_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "exact_viewers",
    "bytes_mismatched",
]
