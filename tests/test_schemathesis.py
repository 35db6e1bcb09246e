"""Schemathesis against the REST API's own OpenAPI schema (/api/v1/schema/): every operation,
in-process against the WSGI app, as a maintainer of a repository with a run, jobs, steps, a
log, an artifact and a deployment. No answer is a 5xx, and every answer conforms to the schema
(status code documented or a 4xx, content type, body).

Each operation gets CONVEYOR_SCHEMATHESIS_EXAMPLES examples (20 by default). Every example is
sent twice: as generated (ids are random, so mostly 404s) and with the path's id replaced by a
real object's, so the random query strings and bodies reach the code behind a found object.
"""

from __future__ import annotations

import json
import os

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.openapi.checks import UndefinedStatusCode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pipelines.api_tokens import api_token_create
from tests.access import make_people
from tests.builders import make_run_tree

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

EXAMPLES = int(os.environ.get("CONVEYOR_SCHEMATHESIS_EXAMPLES", "20"))


def documented_status_or_a_clear_client_error(ctx, response, case) -> None:
    """The schema documents each operation's success; DRF's 400/401/403/404/405/409 answers
    are not listed in it, so those pass when they are 4xx with a message in the body."""
    try:
        status_code_conformance(ctx, response, case)
    except UndefinedStatusCode:
        if not 400 <= response.status_code < 500:
            raise
        assert response.content.strip(), f"a {response.status_code} without a message"


CHECKS = [
    not_a_server_error,
    documented_status_or_a_clear_client_error,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api(db):
    """The data every operation can find, and a maintainer's bearer token."""
    tree = make_run_tree()
    people = make_people(tree.run.pipeline.repository)
    _row, token = api_token_create(user=people["maintainer"], description="schemathesis")
    deployment = tree.jobs["deploy"].deployment
    repository = tree.run.pipeline.repository
    ids = {
        "/api/v1/approvals/{id}/": deployment.approvals.first().pk,
        "/api/v1/artifacts/{id}/": tree.artifact.pk,
        "/api/v1/deployments/{id}/": deployment.pk,
        "/api/v1/environments/{id}/": deployment.environment_id,
        "/api/v1/jobs/{id}/": tree.jobs["build"].pk,
        "/api/v1/jobs/{id}/log/": tree.jobs["build"].pk,
        "/api/v1/jobs/{id}/play/": tree.jobs["deploy"].pk,
        "/api/v1/jobs/{id}/retry/": tree.jobs["build"].pk,
        "/api/v1/pipelines/{id}/": tree.run.pipeline_id,
        "/api/v1/runners/{id}/": tree.runner.pk,
        "/api/v1/runs/{id}/": tree.run.pk,
        "/api/v1/runs/{id}/cancel/": tree.run.pk,
        "/api/v1/runs/{id}/retry/": tree.run.pk,
        "/api/v1/schedules/{id}/": tree.run.pipeline.schedules.first().pk,
        "/api/v1/steps/{id}/": tree.step.pk,
        "/api/v1/steps/{id}/log/": tree.step.pk,
    }
    by_name = {
        "name": repository.name,
        "repository_name": repository.name,
        "membership_id": repository.memberships.filter(user=people["viewer"]).values_list("pk", flat=True).first(),
    }
    return {"headers": {"Authorization": f"Bearer {token}"}, "ids": ids, "by_name": by_name}


def _load_schema():
    """The schema the API serves at /api/v1/schema/, generated in-process: it needs no database,
    so it is loaded while tests are collected (schemathesis makes one test per operation)."""
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    document = json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))
    loaded = schemathesis.openapi.from_dict(document)
    loaded.app = get_wsgi_application()
    return loaded


schema = _load_schema()


@pytest.fixture(autouse=True)
def keep_the_test_connection():
    # As Django's test client does: a request must not close the connection that holds the
    # test's transaction (the data of `api` lives only in it).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


SENT: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def print_counts():
    """Requests sent per operation, printed once the module is done (seen with -s)."""
    yield
    if SENT:
        print(f"\nschemathesis: {sum(SENT.values())} requests over {len(SENT)} operations")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_api_operation_answers_a_server_error_or_outside_its_schema(case, api) -> None:
    SENT[case.operation.label] = SENT.get(case.operation.label, 0) + 1
    case.call_and_validate(headers=api["headers"], checks=CHECKS)
    real = {name: api["by_name"].get(name) for name in case.path_parameters or {}}
    if "id" in real:
        real["id"] = api["ids"].get(case.operation.path)
    real = {name: str(value) for name, value in real.items() if value is not None}
    if real:
        case.path_parameters = {**case.path_parameters, **real}
        SENT[case.operation.label] += 1
        case.call_and_validate(headers=api["headers"], checks=CHECKS)
