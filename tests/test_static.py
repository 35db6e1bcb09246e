"""Collected static files are served by Django itself (nothing sits in front of uvicorn in `make run`)."""

from __future__ import annotations

import pytest
from django.test import Client

# No query is made, but the request_finished signal checks the test database connection.
pytestmark = pytest.mark.django_db


@pytest.fixture
def static_root(settings, tmp_path):
    settings.STATIC_ROOT = str(tmp_path / "static")
    (tmp_path / "static" / "css").mkdir(parents=True)
    (tmp_path / "static" / "css" / "app.css").write_text("body { color: black; }\n")
    (tmp_path / "secret.txt").write_text("not for the web")
    return tmp_path / "static"


def test_collected_files_are_served_in_one_buffered_response(client, static_root) -> None:
    response = client.get("/static/css/app.css")
    assert response.status_code == 200
    assert not response.streaming
    assert response.content == b"body { color: black; }\n"
    assert response["Content-Type"].startswith("text/css")
    assert response["Content-Length"] == str(len(response.content))


def test_unchanged_files_answer_not_modified(client, static_root) -> None:
    first = client.get("/static/css/app.css")
    again = client.get("/static/css/app.css", HTTP_IF_MODIFIED_SINCE=first["Last-Modified"])
    assert again.status_code == 304


@pytest.mark.parametrize("path", ["/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/css/missing.css"])
def test_nothing_outside_the_static_root_is_served(static_root, path: str) -> None:
    client = Client(raise_request_exception=False)
    response = client.get(path)
    # Django answers a path that escapes the root as a suspicious operation (400).
    assert response.status_code in {400, 404}
    assert b"not for the web" not in response.content
