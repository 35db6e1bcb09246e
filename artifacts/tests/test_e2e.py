"""End to end: real `manage.py runner` processes (trusted, and HTTP against a real uvicorn)
archive, upload, download and unpack artifacts of real jobs from real git repositories, to
the file system and to a real S3-protocol server. Nothing is mocked. The memory bounds are
measured on the real runner and server processes (psutil), never on this one."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from artifacts.models import Artifact, ArtifactStatus, ArtifactType, TestReport
from artifacts.tests.conftest import s3_storage_settings
from pipelines.models import Trigger
from pipelines.services import run_trigger
from runs.models import Job, JobStatus, RunStatus, StepStatus
from tests.test_runner_e2e import (
    Harness,
    Process,
    assert_run_ends,
    current,
    free_port,
    register_http_runner,
    step_log,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024


def storage_env(tmp_path: Path) -> dict[str, str]:
    return {"ARTIFACTS_DIR": str(tmp_path / "artifact-storage")}


@pytest.mark.slow
def test_a_trusted_runner_passes_a_build_archive_to_the_job_that_needs_it_and_keeps_its_test_report(
    harness, trigger, tmp_path, settings
):
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": tmp_path / "artifact-storage"},
        },
    }
    run = trigger(
        """
        stages: [build, test]
        build:
          stage: build
          script:
            - mkdir -p dist/sub && echo "built $CI_COMMIT_SHORT_SHA" > dist/app.txt && echo x > dist/sub/x.txt
            - echo scratch > dist/skip.tmp && ln -s /etc/passwd dist/leak
          artifacts:
            name: "app-$CI_COMMIT_REF_NAME"
            paths: [dist/]
            exclude: ["**/*.tmp"]
        test:
          stage: test
          script:
            - cat dist/app.txt dist/sub/x.txt
            - test ! -e dist/skip.tmp && test ! -e dist/leak
            - >-
              printf '<testsuite name="unit"><testcase name="a"/><testcase name="b"><skipped/></testcase></testsuite>'
              > report.xml
          artifacts:
            reports:
              junit: report.xml
        """
    )
    runner = harness.runner("artifacts-trusted", **storage_env(tmp_path))

    assert_run_ends(run, RunStatus.SUCCESS, runners=[runner])

    build, test = current(run, "build"), current(run, "test")
    (archive,) = Artifact.objects.filter(job=build)
    assert (archive.name, archive.type, archive.status) == ("app-main", ArtifactType.BINARY, ArtifactStatus.AVAILABLE)
    assert (tmp_path / "artifact-storage" / archive.storage_path).stat().st_size == archive.size_bytes
    assert f"built {run.commit_sha[:8]}" in step_log(test, 0)
    build_log, test_log = step_log(build, 1), step_log(test, 0)
    assert "Uploading artifacts app-main: dist/" in build_log
    assert "dist/leak: a symlink to /etc/passwd, outside the project: skipped" in build_log
    assert "Downloading artifacts app-main of job build" in test_log
    report = TestReport.objects.get(job=test)
    assert (report.tests, report.skipped, report.failed) == (2, 1, 0)


@pytest.mark.slow
def test_a_rerun_on_the_same_commit_reuses_the_build_and_its_dependents_still_get_the_files(
    harness, trigger, tmp_path, settings
):
    config = """
        stages: [build, test]
        build:
          stage: build
          script:
            - mkdir -p dist && echo "image of $CI_COMMIT_SHA" > dist/image.txt
          artifacts:
            paths: [dist/]
            reuse:
              files: [Dockerfile]
        test:
          stage: test
          script: [cat dist/image.txt]
    """
    first = trigger(config, files={"Dockerfile": "FROM scratch\n"})
    runner = harness.runner("artifacts-reuse", **storage_env(tmp_path))
    assert_run_ends(first, RunStatus.SUCCESS, runners=[runner])

    second = run_trigger(pipeline=first.pipeline, ref="main", trigger=Trigger.PUSH, triggered_by="e2e")
    assert_run_ends(second, RunStatus.SUCCESS, runners=[runner])

    built, reused = current(first, "build"), current(second, "build")
    assert reused.status == JobStatus.SUCCESS
    assert reused.status_reason == f"reused the artifacts of job build (run #{first.number})"
    assert set(reused.steps.values_list("status", flat=True)) == {StepStatus.SKIPPED}
    (original,) = Artifact.objects.filter(job=built)
    (copy,) = Artifact.objects.filter(job=reused)
    assert (copy.reused_from_id, copy.storage_path, copy.cache_key) == (
        original.pk,
        original.storage_path,
        original.cache_key,
    )
    assert original.cache_key.startswith("reuse:")
    assert f"image of {first.commit_sha}" in step_log(current(second, "test"), 0)
    assert "Reusing the artifacts of job build" in step_log(reused, 0)


@dataclass
class _Server:
    url: str
    process: Process


def start_server(harness: Harness, **env: str) -> _Server:
    """uvicorn cicd.asgi:application on a free port, with the storage settings in `env`."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "cicd.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
    process = harness.start("server", [*args, "--log-level", "warning"], **env)
    server = _Server(url=f"http://127.0.0.1:{port}", process=process)

    def healthy() -> bool:
        assert process.alive(), process.output()
        try:
            return requests.get(f"{server.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(healthy, timeout=60, what="the server to answer", diagnose=process.output)
    return server


class PeakRss:
    """Samples the resident memory of processes (not their children) until stopped."""

    def __init__(self, pids: dict[str, int]):
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.baseline = {name: p.memory_info().rss for name, p in self.processes.items()}
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for name, process in self.processes.items():
                with contextlib.suppress(psutil.Error):
                    self.peak[name] = max(self.peak[name], process.memory_info().rss)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {name: (self.peak[name] - self.baseline[name]) / MiB for name in self.processes}


BIG = 256 * MiB
BIG_CONFIG = """
stages: [build, test]
big:
  stage: build
  variables: {{ARTIFACT_COMPRESSION_LEVEL: fastest}}
  script:
    - head -c {size} /dev/urandom > big.bin && sha256sum big.bin
  artifacts:
    paths: [big.bin]
check:
  stage: test
  script: [sha256sum big.bin]
"""


@pytest.mark.slow
@pytest.mark.parametrize("store", ["filesystem", "s3"])
def test_a_256_mib_artifact_goes_up_and_down_over_http_with_flat_runner_and_server_memory(
    harness: Harness, trigger, tmp_path, store, request
):
    env = storage_env(tmp_path)
    if store == "s3":
        moto = request.getfixturevalue("moto_server")
        import boto3

        bucket = f"e2e-{int(time.time() * 1000) % 10**8}"
        boto3.client(
            "s3", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
        ).create_bucket(Bucket=bucket)
        options = s3_storage_settings(moto, bucket)["OPTIONS"]
        env = {
            "ARTIFACTS_S3_BUCKET": bucket,
            "ARTIFACTS_S3_ENDPOINT_URL": moto,
            "ARTIFACTS_S3_REGION": options["region_name"],
            "AWS_ACCESS_KEY_ID": "t",
            "AWS_SECRET_ACCESS_KEY": "t",
        }
    server = start_server(harness, **env)
    token = register_http_runner(server, harness, "artifacts-http")
    runner = harness.runner("artifacts-http", "--url", server.url, CONVEYOR_RUNNER_TOKEN=token)
    wait_until(lambda: "waiting for jobs" in runner.output(), timeout=60, what="the runner to start")
    # A small run first, so that what the first transfer imports and caches (boto3, clients,
    # connection pools) is in the baseline: the growth measured is what the size costs.
    warm_up = trigger(BIG_CONFIG.format(size=1024))
    assert_run_ends(warm_up, RunStatus.SUCCESS, runners=[runner, server.process], timeout=120)
    run = trigger(BIG_CONFIG.format(size=BIG))
    memory = PeakRss({"runner": runner.pid, "server": server.process.pid})

    assert_run_ends(run, RunStatus.SUCCESS, runners=[runner, server.process], timeout=600)

    growth = memory.stop()
    (artifact,) = Artifact.objects.filter(run=run)
    assert artifact.size_bytes > BIG
    produced = step_log(current(run, "big"), 0).split("$ ", 2)[1].splitlines()[1]
    checked = step_log(current(run, "check"), 0).split("$ ", 2)[-1].splitlines()[1]
    assert produced.split()[0] == checked.split()[0], (produced, checked)
    # The whole file went through both processes; neither held more than a sliver of it.
    assert growth["runner"] < 64, growth
    assert growth["server"] < 64, growth
    print(f"\n{store}: RSS growth during a {BIG // MiB} MiB transfer: {growth}")
    assert Job.objects.filter(run=run, status=JobStatus.SUCCESS).count() == 2
