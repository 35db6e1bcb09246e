"""Artifact transfers: upload and download MB/s and memory growth for a big artifact, through
a real uvicorn to the file system and to a real S3-protocol server (moto in server mode,
reached through presigned URLs), as an HTTP runner does them (runners.artifacts.HttpArtifacts).

The transfers run in a client subprocess, so that its peak RSS is the runner side's alone;
the server's is sampled too. `python -m bench.artifacts --size-mb 1024` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import ensure_database, print_table, setup_django
from bench.webhooks import ROOT, _free_port, _server_env, _wait_healthy

COLUMNS = [
    "store",
    "size_mb",
    "upload_mb_s",
    "download_mb_s",
    "client_rss_growth_mb",
    "server_rss_growth_mb",
    "client_peak_rss_mb",
    "server_peak_rss_mb",
]

_CLIENT = r"""
import json, os, sys, time
from pathlib import Path
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cicd.settings")
django.setup()
from runners.artifacts import HttpArtifacts
from runners.http_client import RunnerApiClient
from runners.services import ClaimedJob

url, action, job_id, token, path, size, sha256 = sys.argv[1:8]
job = ClaimedJob(id=job_id, run_id="", name="bench", stage="", attempt=1, timeout_s=0, lease_expires_at="",
                 clone_url="", commit_sha="", ref="", job_token=token, steps=[], variables={})
transport = HttpArtifacts(RunnerApiClient(url))
transport.dependencies(job) if action == "download" else None  # warm up: imports, connections
sys.stdout.write("ready\n"); sys.stdout.flush(); sys.stdin.readline()
started = time.perf_counter()
if action == "upload":
    transport.upload(job, name="bench", type="BINARY", path=Path(path), size=int(size), sha256=sha256, cache_key="")
else:
    (entry,), _ = transport.dependencies(job)
    with open(path, "wb") as out:
        transport.download(job, entry, out)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


class _Peak:
    def __init__(self, pid: int):
        import psutil

        self.process = psutil.Process(pid)
        self.baseline = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def growth_mb(self) -> float:
        self._stop.set()
        self._thread.join()
        return round((self.peak - self.baseline) / 2**20, 1)

    def peak_mb(self) -> float:
        """The highest RSS seen (call after growth_mb)."""
        return round(self.peak / 2**20, 1)


def _random_file(path: Path, size: int) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * 2**20))
            out.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _jobs():
    """A run whose `build` job runs (its token to upload with) and a `test` job after it."""
    from datetime import timedelta

    from django.utils import timezone

    from cicd.tokens import token_generate, token_hash
    from pipelines.models import Pipeline, Repository
    from runners.models import Runner
    from runners.services import JOB_TOKEN_PREFIX
    from runs.models import Job, JobStatus, PipelineRun

    repository, _ = Repository.objects.get_or_create(name="bench-artifacts", defaults={"clone_url": "/nonexistent"})
    pipeline, _ = Pipeline.objects.get_or_create(repository=repository, name="default")
    number = (PipelineRun.objects.filter(pipeline=pipeline).count() or 0) + 1
    run = PipelineRun.objects.create(pipeline=pipeline, number=number, status="RUNNING", branch="main")
    runner, _ = Runner.objects.get_or_create(name="bench-artifacts")
    tokens, jobs = {}, {}
    for index, name in enumerate(["build", "test"]):
        tokens[name] = token_generate(JOB_TOKEN_PREFIX)
        jobs[name] = Job.objects.create(
            run=run,
            name=name,
            stage=name,
            stage_index=index,
            status=JobStatus.RUNNING if name == "build" else JobStatus.PENDING,
            runner=runner,
            token_hash=token_hash(tokens[name]),
            lease_expires_at=timezone.now() + timedelta(hours=1) if name == "build" else None,
        )
    return jobs, tokens


def _client(url: str, action: str, job, token: str, path: Path, size: int, sha256: str, server_pid: int):
    env = _server_env()
    process = subprocess.Popen(  # noqa: S603 (our own interpreter)
        [sys.executable, "-c", _CLIENT, url, action, str(job.pk), token, str(path), str(size), sha256],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    client, server = _Peak(process.pid), _Peak(server_pid)
    process.stdin.write("go\n")
    process.stdin.flush()
    result = json.loads(process.stdout.readline())
    process.wait(60)
    growth = client.growth_mb(), server.growth_mb()
    return result["seconds"], *growth, client.peak_mb(), server.peak_mb()


def transfer(*, size_mb: int, store: str) -> dict[str, object]:
    from datetime import timedelta

    from django.utils import timezone

    from runs.models import Job, JobStatus

    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-artifacts-"))
    moto = server = None
    try:
        env = _server_env()
        if store == "s3":
            import boto3

            moto_port = _free_port()
            moto_bin = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
            moto = subprocess.Popen(
                [moto_bin, "-H", "127.0.0.1", "-p", str(moto_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # noqa: S603,E501
            endpoint = f"http://127.0.0.1:{moto_port}"
            s3 = boto3.client(
                "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="b", aws_secret_access_key="b"
            )
            for _ in range(100):
                try:
                    s3.create_bucket(Bucket="bench-artifacts")
                    break
                except Exception:
                    time.sleep(0.1)
            env.update(
                ARTIFACTS_S3_BUCKET="bench-artifacts",
                ARTIFACTS_S3_ENDPOINT_URL=endpoint,
                ARTIFACTS_S3_REGION="us-east-1",
                AWS_ACCESS_KEY_ID="b",
                AWS_SECRET_ACCESS_KEY="b",
            )  # noqa: E501
        else:
            env["ARTIFACTS_DIR"] = str(work / "storage")
        port = _free_port()
        # uvicorn in one process: the server's peak RSS is read off the process this starts.
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "cicd.asgi:application",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        server = subprocess.Popen(command, cwd=ROOT, env=env)  # noqa: S603
        _wait_healthy(port, server)
        size = size_mb * 2**20
        source = work / "artifact.bin"
        sha256 = _random_file(source, size)
        jobs, tokens = _jobs()
        url = f"http://127.0.0.1:{port}"
        up_s, up_client, up_server, up_client_peak, up_server_peak = _client(
            url, "upload", jobs["build"], tokens["build"], source, size, sha256, server.pid
        )
        Job.objects.filter(pk=jobs["build"].pk).update(status=JobStatus.SUCCESS, finished_at=timezone.now())
        Job.objects.filter(pk=jobs["test"].pk).update(
            status=JobStatus.RUNNING, lease_expires_at=timezone.now() + timedelta(hours=1)
        )  # noqa: E501
        target = work / "downloaded.bin"
        down_s, down_client, down_server, down_client_peak, down_server_peak = _client(
            url, "download", jobs["test"], tokens["test"], target, size, sha256, server.pid
        )  # noqa: E501
        assert target.stat().st_size == size
        return {
            "store": store,
            "size_mb": size_mb,
            "upload_mb_s": round(size_mb / up_s, 1),
            "download_mb_s": round(size_mb / down_s, 1),
            "client_rss_growth_mb": max(up_client, down_client),
            "server_rss_growth_mb": max(up_server, down_server),
            "client_peak_rss_mb": max(up_client_peak, down_client_peak),
            "server_peak_rss_mb": max(up_server_peak, down_server_peak),
        }
    finally:
        for process in (server, moto):
            if process is not None:
                process.terminate()
                process.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Artifact transfer benchmark")
    parser.add_argument("--size-mb", type=int, default=1024)
    args = parser.parse_args()
    setup_django()
    ensure_database()
    rows = [transfer(size_mb=args.size_mb, store=store) for store in ("filesystem", "s3")]
    print_table(rows, COLUMNS)


if __name__ == "__main__":
    main()
