"""One matrix for every way into a private repository: outsider, viewer, developer, maintainer
and superuser against its pages, API, badge, raw log downloads and the live log WebSocket.
All of them ask pipelines.permissions (logs.selectors routes its check there too)."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.urls import reverse

from cicd.asgi import application
from logs.tests.conftest import websocket_communicator
from pipelines.api_tokens import api_token_create
from tests.access import MAINTAINS, ROLES, RUNS, SEES, make_people
from tests.builders import make_run_tree

pytestmark = pytest.mark.django_db(transaction=True)

WAIT_S = 20  # an upper bound for the handshake, never a measurement


@pytest.fixture
def matrix():
    tree = make_run_tree()
    people = make_people(tree.run.pipeline.repository)
    people.tree = tree
    return people


def reads(people) -> dict[str, str]:
    tree = people.tree
    return {
        "repository page": reverse("runs:repository", args=[people.repository.name]),
        "run page": reverse("runs:run", args=[tree.run.pk]),
        "job page": reverse("runs:job", args=[tree.jobs["build"].pk]),
        "log page": reverse("logs:job", args=[tree.jobs["build"].pk]),
        "raw job log": reverse("logs:job-raw", args=[tree.jobs["build"].pk]),
        "raw step log": reverse("logs:step-raw", args=[tree.step.pk]),
        "run status": reverse("runs:run-status", args=[tree.run.pk]),
        "badge": reverse("runs:badge", kwargs={"repository": people.repository.name, "branch": "main"}),
        "api run": f"/api/v1/runs/{tree.run.pk}/",
        "api step log": f"/api/v1/steps/{tree.step.pk}/log/",
    }


@pytest.mark.parametrize("role", ROLES)
def test_reads_of_a_private_repository_are_200_for_those_who_see_it_and_404_for_everyone_else(matrix, role) -> None:
    _row, token = api_token_create(user=matrix[role], description="matrix")
    session = matrix.client(role)
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    for name, url in reads(matrix).items():
        client = api if name.startswith("api") else session
        assert client.get(url).status_code == (200 if SEES[role] else 404), name


@pytest.mark.parametrize("role", ROLES)
def test_writes_need_a_developer_and_deliveries_a_maintainer(matrix, role) -> None:
    client = matrix.client(role)
    refused = 403 if SEES[role] else 404
    form = reverse("runs:pipeline-run", args=[matrix.repository.name, matrix.tree.run.pipeline_id])
    assert client.get(form).status_code == (200 if RUNS[role] else refused)
    delivery = matrix.repository.webhook_deliveries.first()
    assert client.get(reverse("runs:delivery", args=[delivery.pk])).status_code == (200 if MAINTAINS[role] else 404)
    cancel = client.post(reverse("runs:run-cancel", args=[matrix.tree.run.pk]))
    assert cancel.status_code == (302 if RUNS[role] else refused)


def test_anonymous_visitors_see_nothing_of_a_private_repository(matrix) -> None:
    client = Client()
    for name, url in reads(matrix).items():
        assert client.get(url).status_code in {302, 401, 403, 404}, name


@pytest.mark.parametrize("role", [*ROLES, "anonymous"])
def test_the_live_log_websocket_admits_exactly_those_who_see_the_repository(matrix, role) -> None:
    WebsocketCommunicator = websocket_communicator()
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if role != "anonymous":
        headers.append((b"cookie", f"sessionid={matrix.client(role).cookies['sessionid'].value}".encode()))

    async def connect() -> bool:
        socket = WebsocketCommunicator(application, f"/ws/steps/{matrix.tree.step.pk}/", headers=headers)
        connected, _ = await socket.connect(timeout=WAIT_S)
        await socket.disconnect()
        return connected

    assert async_to_sync(connect)() is SEES.get(role, False)
