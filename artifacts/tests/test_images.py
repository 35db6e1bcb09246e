"""Images of dependencies: a job gets, as variables, the images (DOCKER artifacts) that the
jobs it depends on recorded, pinned to their digests; with GitLab's rules for which jobs
those are (needs, needs:artifacts: false, dependencies)."""

from __future__ import annotations

from datetime import timedelta

from django.test import Client
from django.utils import timezone

from artifacts.models import Artifact
from artifacts.services import artifact_docker_record
from artifacts.tests.conftest import job_named
from runners.artifacts import image_variables

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64

CONFIG = """
stages: [build, deploy]
api:
  stage: build
  script: [b]
web:
  stage: build
  script: [b]
deploy:
  stage: deploy
  needs: [api, {job: web, artifacts: false}]
  script: [d]
"""


def test_each_image_is_a_variable_named_after_it_pinned_to_its_digest() -> None:
    values = image_variables(
        [
            {"name": "api", "reference": "registry.test/api:1", "digest": A},
            {"name": "web-frontend", "reference": "registry.test/web@" + B, "digest": B},
        ]
    )

    assert values == {
        "CONVEYOR_IMAGE_API": f"registry.test/api:1@{A}",
        "CONVEYOR_IMAGE_API_REFERENCE": "registry.test/api:1",
        "CONVEYOR_IMAGE_API_DIGEST": A,
        # A reference that already names its digest is used as it is.
        "CONVEYOR_IMAGE_WEB_FRONTEND": f"registry.test/web@{B}",
        "CONVEYOR_IMAGE_WEB_FRONTEND_REFERENCE": f"registry.test/web@{B}",
        "CONVEYOR_IMAGE_WEB_FRONTEND_DIGEST": B,
        "CONVEYOR_IMAGES": f"registry.test/api:1@{A} registry.test/web@{B}",
    }


def test_a_single_image_also_comes_in_the_plain_form() -> None:
    values = image_variables([{"name": "127.0.0.1:5000/app:1.2", "reference": "127.0.0.1:5000/app:1.2", "digest": A}])

    assert values["CONVEYOR_IMAGE"] == f"127.0.0.1:5000/app:1.2@{A}"
    assert values["CONVEYOR_IMAGE_127_0_0_1_5000_APP_1_2"] == values["CONVEYOR_IMAGE"]
    assert image_variables([]) == {}


def test_the_api_lists_the_images_of_needed_jobs_but_not_of_needs_without_artifacts_nor_expired_ones(
    make_run, start, finish
):
    run = make_run(CONFIG)
    for name, digest in (("api", A), ("web", B)):
        job, _ = start(job_named(run, name))
        artifact_docker_record(job=job, reference=f"registry.test/{name}:1", digest=digest, name=name)
        artifact_docker_record(job=job, reference=f"registry.test/{name}-old:1", digest=digest, name=f"{name}-old")
        finish(job)
    Artifact.objects.filter(name="api-old").update(expires_at=timezone.now() - timedelta(minutes=1))
    deploy, token = start(job_named(run, "deploy"))

    response = Client().get(f"/api/runner/jobs/{deploy.pk}/artifacts/images", HTTP_AUTHORIZATION=f"Bearer {token}")

    assert response.json() == {
        "images": [{"name": "api", "job": "api", "reference": "registry.test/api:1", "digest": A}]
    }
    assert Client().get(f"/api/runner/jobs/{deploy.pk}/artifacts/images").status_code == 401
