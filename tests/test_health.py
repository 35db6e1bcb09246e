"""`/healthz`: 200 when PostgreSQL and Redis answer, 503 naming what does not."""

from __future__ import annotations

import psycopg
import pytest

from cicd import health

pytestmark = pytest.mark.django_db


def test_healthz_is_ok_when_database_and_redis_answer(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "redis": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_needs_no_login(client) -> None:
    assert client.get("/healthz").status_code == 200


def test_healthz_names_redis_when_it_is_down(client, settings, tmp_path) -> None:
    settings.REDIS_URL = f"unix://{tmp_path / 'nothing-listens-here.sock'}"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"database": "ok", "redis": "down"}


def test_healthz_names_the_database_when_it_is_down(client, monkeypatch) -> None:
    def refuse(**params):
        assert params["connect_timeout"] == health.TIMEOUT_S
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(health.psycopg, "connect", refuse)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"database": "down", "redis": "ok"}


def test_healthz_does_not_reveal_why_a_check_failed(client, monkeypatch) -> None:
    def refuse(**params):
        raise psycopg.OperationalError("could not connect to server at db.internal.example")

    monkeypatch.setattr(health.psycopg, "connect", refuse)
    assert b"db.internal" not in client.get("/healthz").content


def test_healthz_answers_only_get(client) -> None:
    assert client.post("/healthz").status_code == 405
