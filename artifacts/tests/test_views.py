from __future__ import annotations

import hashlib

import pytest
from django.test import Client

from artifacts.models import Artifact, ArtifactStatus
from artifacts.tests.conftest import job_named
from artifacts.tests.helpers import TWO_STAGES, upload
from tests.access import ROLES, SEES, make_people

CONFIG = TWO_STAGES


def api(client: Client, method: str, path: str, token: str, **kwargs):
    return getattr(client, method)(f"/api/runner/{path}", HTTP_AUTHORIZATION=f"Bearer {token}", **kwargs)


def upload_over_http(client: Client, job, token: str, data: bytes, **fields):
    body = {"name": "dist", "type": "BINARY", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), **fields}
    begun = api(client, "post", f"jobs/{job.pk}/artifacts", token, data=body, content_type="application/json")
    assert begun.status_code == 201, begun.content
    target = begun.json()["upload"]
    put = api(client, "put", target["path"], token, data=data, content_type="application/octet-stream")
    assert put.status_code == 200, put.content
    return api(client, "post", begun.json()["commit"], token)


def test_a_job_uploads_with_its_own_token_and_a_dependent_job_downloads_it(make_run, start, finish):
    client = Client()
    run = make_run(CONFIG)
    build, build_token = start(job_named(run, "build"))
    data = b"\x1f\x8b archive bytes" * 1000

    committed = upload_over_http(client, build, build_token, data)
    finish(build)
    test, test_token = start(job_named(run, "test"))
    listing = api(client, "get", f"jobs/{test.pk}/artifacts/dependencies", test_token).json()
    (entry,) = listing["artifacts"]
    download = api(client, "get", entry["path"], test_token)

    assert committed.status_code == 200 and committed.json()["status"] == ArtifactStatus.AVAILABLE
    assert (entry["name"], entry["job"], entry["size"]) == ("dist", "build", len(data))
    assert listing["missing"] == []
    assert b"".join(download.streaming_content) == data


def test_artifact_calls_need_the_token_of_the_running_job(make_run, start, finish):
    client = Client()
    run = make_run(CONFIG)
    build, token = start(job_named(run, "build"))
    path = f"jobs/{build.pk}/artifacts/dependencies"

    assert api(client, "get", path, "cvj_not-a-token").status_code == 401
    assert api(client, "get", path, "cvr_not-a-runner").status_code == 401
    assert api(client, "get", path, token).status_code == 200
    finish(build)
    response = api(client, "get", path, token)
    assert (response.status_code, response.json()["code"]) == (409, "job_not_held")


def test_a_job_cannot_read_artifacts_it_does_not_depend_on(make_run, start, finish, pipeline):
    client = Client()
    run = make_run(CONFIG)
    build, _ = start(job_named(run, "build"))
    artifact = upload(build, b"secret build output")
    finish(build)
    other_run = make_run(CONFIG)
    stranger, token = start(job_named(other_run, "build"))

    response = api(client, "get", f"jobs/{stranger.pk}/artifacts/{artifact.pk}/content", token)

    assert response.status_code == 404


def test_an_upload_whose_content_differs_from_its_declaration_is_refused(make_run, start):
    client = Client()
    build, token = start(job_named(make_run(CONFIG), "build"))
    body = {"name": "dist", "type": "BINARY", "size": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}
    begun = api(client, "post", f"jobs/{build.pk}/artifacts", token, data=body, content_type="application/json").json()

    put = api(client, "put", begun["upload"]["path"], token, data=b"HELLO", content_type="application/octet-stream")

    assert put.status_code == 400 and "is not what was declared" in put.json()["detail"]
    assert Artifact.objects.get(pk=begun["id"]).status == ArtifactStatus.PENDING


def test_images_and_reuse_lookups_go_through_the_runner_api(make_run, start):
    client = Client()
    build, token = start(job_named(make_run(CONFIG), "build"))
    body = {"reference": "127.0.0.1:5000/app:1", "digest": "sha256:" + "0" * 64}

    recorded = api(
        client, "post", f"jobs/{build.pk}/artifacts/docker", token, data=body, content_type="application/json"
    )
    refused = api(
        client,
        "post",
        f"jobs/{build.pk}/artifacts/docker",
        token,
        data={**body, "digest": "x"},
        content_type="application/json",
    )
    lookup = api(
        client,
        "post",
        f"jobs/{build.pk}/artifacts/reuse",
        token,
        data={"cache_key": "reuse:none"},
        content_type="application/json",
    )

    assert recorded.status_code == 201 and recorded.json()["reference"] == "127.0.0.1:5000/app:1"
    assert refused.status_code == 400
    assert lookup.json() == {"reused": False}


@pytest.mark.parametrize("role", ROLES)
def test_downloading_an_artifact_of_a_private_repository_takes_the_right_to_see_it(
    make_run, start, finish, pipeline, role
):
    people = make_people(pipeline.repository)
    build, _ = start(job_named(make_run(CONFIG), "build"))
    artifact = upload(build, b"payload")

    response = people.client(role).get(f"/artifacts/{artifact.pk}/download")

    if SEES[role]:
        assert response.status_code == 200
        assert response["Content-Disposition"] == 'attachment; filename="dist.tar.gz"'
        assert b"".join(response.streaming_content) == b"payload"
    else:
        assert response.status_code == 404


def test_anyone_logged_in_downloads_from_a_public_repository_and_nobody_anonymously(
    make_run, start, pipeline, django_user_model
):
    pipeline.repository.is_private = False
    pipeline.repository.save()
    build, _ = start(job_named(make_run(CONFIG), "build"))
    artifact = upload(build, b"payload")
    client = Client()

    anonymous = client.get(f"/artifacts/{artifact.pk}/download")
    client.force_login(django_user_model.objects.create_user("someone"))
    logged_in = client.get(f"/artifacts/{artifact.pk}/download")

    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
    assert logged_in.status_code == 200


def test_access_developer_in_the_config_keeps_viewers_out(make_run, start, pipeline):
    people = make_people(pipeline.repository)
    config = CONFIG.replace("paths: [dist/]", "paths: [dist/]\n    access: developer")
    build, _ = start(job_named(make_run(config), "build"))
    artifact = upload(build, b"payload")

    assert people.client("viewer").get(f"/artifacts/{artifact.pk}/download").status_code == 404
    assert people.client("developer").get(f"/artifacts/{artifact.pk}/download").status_code == 200


def test_an_artifact_being_deleted_is_not_served(make_run, start, pipeline):
    people = make_people(pipeline.repository)
    build, _ = start(job_named(make_run(CONFIG), "build"))
    artifact = upload(build, b"payload")
    Artifact.objects.filter(pk=artifact.pk).update(status=ArtifactStatus.DELETING)

    assert people.client("superuser").get(f"/artifacts/{artifact.pk}/download").status_code == 404
