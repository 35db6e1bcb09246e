"""Fixtures of the artifact tests: runs made by the real engine from real configs, jobs
started the way a runner starts them (with a job token), and a real S3-protocol server
(moto in server mode on 127.0.0.1) for the S3 storage."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from django.utils import timezone

from cicd.tokens import token_generate, token_hash
from pipelines.config.parser import parse_pipeline
from pipelines.config.spec import TriggerContext
from pipelines.models import Pipeline, Repository, Trigger
from runners.models import Runner
from runners.services import JOB_TOKEN_PREFIX
from runs.models import Job, JobStatus, PipelineRun
from runs.services import job_finish, run_create
from tests.test_runner_e2e import harness, trigger  # noqa: F401 (the end-to-end fixtures, for test_e2e)

_numbers = itertools.count(1)


@pytest.fixture(autouse=True)
def artifact_dir(settings, tmp_path: Path) -> Path:
    """Every test stores artifacts under its own temporary directory."""
    location = tmp_path / "artifact-storage"
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": location}},
    }
    return location


@pytest.fixture
def pipeline(db) -> Pipeline:
    repository = Repository.objects.create(name=f"art-{next(_numbers)}", clone_url="/nonexistent", is_private=True)
    return Pipeline.objects.create(repository=repository, name="default")


@pytest.fixture
def make_run(pipeline):
    """make_run(config, branch="main") -> a run the engine created from the YAML config."""

    def make(config: str, *, branch: str = "main", sha: str | None = None, on: Pipeline | None = None) -> PipelineRun:
        on = on or pipeline
        sha = sha or f"{next(_numbers):040x}"
        context = TriggerContext(ref=branch, commit_sha=sha, default_branch=on.repository.default_branch)
        spec = parse_pipeline(textwrap.dedent(config), context=context)
        return run_create(pipeline=on, spec=spec, commit_sha=sha, branch=branch, trigger=Trigger.PUSH)

    return make


@pytest.fixture
def runner(db) -> Runner:
    return Runner.objects.create(name=f"runner-{next(_numbers)}", tags=[])


@pytest.fixture
def start(runner):
    """start(job) -> (the job, RUNNING on `runner`, and its job token), as a claim makes it."""

    def begin(job: Job) -> tuple[Job, str]:
        token = token_generate(JOB_TOKEN_PREFIX)
        updated = Job.objects.filter(pk=job.pk, status__in=[JobStatus.QUEUED, JobStatus.PENDING]).update(
            status=JobStatus.RUNNING,
            runner=runner,
            token_hash=token_hash(token),
            lease_expires_at=timezone.now() + timedelta(hours=1),
        )
        assert updated == 1, f"{job.name} is not waiting to run"
        job.refresh_from_db()
        return job, token

    return begin


@pytest.fixture
def finish():
    def end(job: Job, status: str = JobStatus.SUCCESS) -> Job:
        assert job_finish(job_id=job.pk, status=status, exit_code=0 if status == JobStatus.SUCCESS else 1)
        job.refresh_from_db()
        return job

    return end


def job_named(run: PipelineRun, name: str) -> Job:
    return Job.objects.get(run=run, name=name, retried=False)


# --- S3: moto in server mode.


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """A real S3-protocol server on a free 127.0.0.1 port, for the whole session."""
    executable = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.skip("moto[server] is not installed (pip install -r requirements.txt)")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url, timeout=1)
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError(f"moto_server did not start:\n{log.read_text()}") from None
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(10)


def s3_storage_settings(endpoint: str, bucket: str, **options) -> dict:
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "access_key": "testing",
            "secret_key": "testing",
            "default_acl": None,
            "querystring_auth": True,
            "file_overwrite": True,
            # As cicd/settings.py sets them for ARTIFACTS_S3_BUCKET.
            "signature_version": "s3v4",
            "object_parameters": {"ContentType": "application/gzip"},
            **options,
        },
    }


@pytest.fixture
def s3(settings, moto_server):
    """STORAGES["artifacts"] on a fresh bucket of the moto server; yields the boto3 client."""
    import boto3

    bucket = f"artifacts-{next(_numbers)}-{int(time.time() * 1000) % 100000}"
    client = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=bucket)
    settings.STORAGES = {**settings.STORAGES, "artifacts": s3_storage_settings(moto_server, bucket)}
    client.bucket = bucket
    return client
