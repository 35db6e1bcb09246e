"""Small builders shared by the artifact tests."""

from __future__ import annotations

import hashlib
import io
import tarfile

from artifacts.models import Artifact, ArtifactType
from artifacts.services import artifact_commit, artifact_receive, artifact_upload_begin
from runs.models import Job

# A build whose archive the test job of the next stage gets.
TWO_STAGES = """
stages: [build, test]
build:
  stage: build
  script: [make]
  artifacts:
    paths: [dist/]
test:
  stage: test
  script: [make test]
"""


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def upload(
    job: Job, data: bytes, *, name: str = "dist", type: str = ArtifactType.BINARY, cache_key: str = ""
) -> Artifact:
    """What a runner does: declare, stream the content, commit."""
    artifact = artifact_upload_begin(
        job=job, name=name, type=type, size=len(data), sha256=hashlib.sha256(data).hexdigest(), cache_key=cache_key
    )
    artifact_receive(artifact=artifact, stream=io.BytesIO(data))
    return artifact_commit(artifact=artifact)
