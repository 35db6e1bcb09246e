"""Docker images without a daemon, for real: a job builds an image with buildah (vfs storage,
chroot isolation, FROM scratch: nothing is pulled), pushes it to Debian's docker-registry on
127.0.0.1, and records it with `conveyor-artifact docker`; a rerun on the same commit reuses
it. Skipped, saying why, where buildah or docker-registry is not installed (`.ci/run`
installs both as root: apt-get install buildah docker-registry)."""

from __future__ import annotations

import shutil
import subprocess
import textwrap

import pytest
import requests

from artifacts.models import Artifact, ArtifactType
from pipelines.models import Trigger
from pipelines.services import run_trigger
from runs.models import RunStatus, StepStatus
from tests.test_runner_e2e import assert_run_ends, current, free_port, step_log, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MANIFESTS = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture
def registry(tmp_path):
    """Debian's docker-registry on a free loopback port, storing under tmp_path."""
    missing = [tool for tool in ("buildah", "docker-registry") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install buildah docker-registry)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        textwrap.dedent(
            f"""
            version: 0.1
            storage:
              filesystem:
                rootdirectory: {tmp_path / "registry-data"}
            http:
              addr: 127.0.0.1:{port}
            """
        )
    )
    log = (tmp_path / "registry.log").open("wb")
    process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    address = f"127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, (tmp_path / "registry.log").read_text()
        try:
            return requests.get(f"http://{address}/v2/", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(up, timeout=30, what="the registry")
    yield address
    process.terminate()
    process.wait(10)
    log.close()


def test_a_job_builds_and_pushes_an_image_with_buildah_and_a_rerun_reuses_it(harness, trigger, registry, tmp_path):
    buildah = 'buildah --storage-driver vfs --root "$HOME/containers" --runroot "$TMPDIR/containers"'
    image = f"{registry}/app:$CI_COMMIT_SHORT_SHA"
    first = trigger(
        f"""
        build-image:
          script:
            - {buildah} bud --isolation chroot -t {image} .
            - {buildah} push --tls-verify=false --digestfile digest.txt {image}
            - conveyor-artifact docker {image} --digest-file digest.txt
          artifacts:
            reuse: true
        """,
        files={"Dockerfile": "FROM scratch\nCOPY hello.txt /hello.txt\n", "hello.txt": "hello\n"},
    )
    runner = harness.runner("buildah", ARTIFACTS_DIR=str(tmp_path / "artifact-storage"))

    assert_run_ends(first, RunStatus.SUCCESS, runners=[runner], timeout=300)

    job = current(first, "build-image")
    (recorded,) = Artifact.objects.filter(job=job)
    tag = first.commit_sha[:8]
    manifest = requests.head(f"http://{registry}/v2/app/manifests/{tag}", headers={"Accept": MANIFESTS}, timeout=10)
    assert (recorded.type, recorded.storage_path) == (ArtifactType.DOCKER, f"{registry}/app:{tag}")
    assert recorded.digest == manifest.headers["Docker-Content-Digest"]
    assert recorded.cache_key.startswith("reuse:")
    assert f"Recorded image {registry}/app:{tag}@{recorded.digest}" in step_log(job, 2)

    again = run_trigger(pipeline=first.pipeline, ref="main", trigger=Trigger.PUSH, triggered_by="e2e")
    assert_run_ends(again, RunStatus.SUCCESS, runners=[runner], timeout=120)

    reused = current(again, "build-image")
    (copy,) = Artifact.objects.filter(job=reused)
    assert (copy.digest, copy.reused_from_id) == (recorded.digest, recorded.pk)
    assert set(reused.steps.values_list("status", flat=True)) == {StepStatus.SKIPPED}
