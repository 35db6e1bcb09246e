"""The dashboard's live-status WebSockets (runs.consumers) through the real ASGI stack
(sessions, origin check, routing) and the real channel layer (Redis Pub/Sub), with the changes
made by the real services and announced by their after-commit hook."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from django.db import connection, transaction
from django.test import Client

from cicd.asgi import application
from logs.tests.conftest import websocket_communicator
from runs.models import JobStatus, PipelineRun, RunStatus
from runs.services import job_finish, run_cancel
from tests.access import ROLES, SEES, make_people
from tests.builders import make_pipeline, make_run_tree, make_runs

WebsocketCommunicator = websocket_communicator()

pytestmark = pytest.mark.django_db(transaction=True)

WAIT_S = 20  # an upper bound for a message to arrive, never a measurement


class Rollback(Exception):
    pass


@pytest.fixture
def tree_people():
    tree = make_run_tree()
    people = make_people(tree.run.pipeline.repository)
    people.tree = tree
    return people


def cookie_of(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def open_socket(path: str, cookie: bytes | None):
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if cookie:
        headers.append((b"cookie", cookie))
    socket = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await socket.connect(timeout=WAIT_S)
    return socket, connected, code


async def read_until(socket, predicate) -> list[dict]:
    """Messages up to and including the first one `predicate` accepts."""
    seen = []
    while True:
        message = await socket.receive_json_from(timeout=WAIT_S)
        seen.append(message)
        if predicate(message):
            return seen


def in_thread(call, *args, **kwargs):
    """Run a service in another thread with its own connection, as a runner or a view would."""

    def run():
        try:
            return call(*args, **kwargs)
        finally:
            connection.close()

    return asyncio.to_thread(run)


def cancel(run_id) -> None:
    run_cancel(run=PipelineRun.objects.get(pk=run_id), by="ada")


def run_path(run: PipelineRun) -> str:
    return f"/ws/runs/{run.pk}/"


# --- The run page's socket: who may connect.


@pytest.mark.parametrize("role", [*ROLES, "anonymous"])
def test_only_people_who_see_the_repository_can_follow_a_run(tree_people, role) -> None:
    cookie = None if role == "anonymous" else cookie_of(tree_people[role])

    async def scenario():
        socket, connected, code = await open_socket(run_path(tree_people.tree.run), cookie)
        first = await socket.receive_json_from(timeout=WAIT_S) if connected else None
        await socket.disconnect()
        return connected, code, first

    connected, code, first = async_to_sync(scenario)()

    assert connected is SEES.get(role, False)
    if connected:
        assert first["type"] == "run"
        assert first["run"]["id"] == str(tree_people.tree.run.pk)
    else:
        assert code == 4403


def test_a_run_that_does_not_exist_is_refused_like_a_hidden_one(tree_people) -> None:
    cookie = cookie_of(tree_people["superuser"])
    path = run_path(tree_people.tree.run)
    PipelineRun.objects.filter(pk=tree_people.tree.run.pk).delete()

    async def scenario():
        socket, connected, code = await open_socket(path, cookie)
        await socket.disconnect()
        return connected, code

    assert async_to_sync(scenario)() == (False, 4403)


# --- The run page's socket: the snapshot, then every change.


def test_a_viewer_gets_the_runs_snapshot_then_each_committed_change(tree_people) -> None:
    tree = tree_people.tree
    cookie = cookie_of(tree_people["viewer"])

    async def scenario():
        socket, _, _ = await open_socket(run_path(tree.run), cookie)
        before = await read_until(socket, lambda m: m["type"] == "ready")
        await in_thread(job_finish, job_id=tree.jobs["test"].pk, status=JobStatus.SUCCESS, exit_code=0)
        after_finish = await read_until(socket, lambda m: _job_status(m, tree.jobs["test"]) == JobStatus.SUCCESS)
        await in_thread(cancel, tree.run.pk)
        after_cancel = await read_until(socket, lambda m: m.get("run", {}).get("status") == RunStatus.CANCELLED)
        await socket.disconnect()
        return before, after_finish, after_cancel

    before, after_finish, after_cancel = async_to_sync(scenario)()

    snapshot = before[0]
    assert snapshot["type"] == "run"
    assert snapshot["run"]["status"] == RunStatus.RUNNING
    assert {job["name"]: job["status"] for job in snapshot["jobs"]} == {
        "build": JobStatus.SUCCESS,
        "lint": JobStatus.SUCCESS,
        "test": JobStatus.RUNNING,
        "deploy": JobStatus.PENDING,
    }
    assert before[-1] == {"type": "ready", "live": True}
    finished = after_finish[-1]
    assert finished["type"] == "run"
    assert next(job for job in finished["jobs"] if job["name"] == "test")["duration_s"] is not None
    cancelled = after_cancel[-1]
    assert cancelled["run"]["finished"] is True
    assert next(job for job in cancelled["jobs"] if job["name"] == "deploy")["status"] in JobStatus.TERMINAL


def _job_status(message: dict, job) -> str | None:
    if message.get("type") != "run":
        return None
    return next((j["status"] for j in message["jobs"] if j["id"] == str(job.pk)), None)


def test_a_rolled_back_change_sends_nothing_to_the_run_page(tree_people) -> None:
    tree = tree_people.tree
    cookie = cookie_of(tree_people["viewer"])

    def cancel_then_roll_back():
        try:
            with transaction.atomic():
                cancel(tree.run.pk)
                raise Rollback
        except Rollback:
            pass

    async def scenario():
        socket, _, _ = await open_socket(run_path(tree.run), cookie)
        await read_until(socket, lambda m: m["type"] == "ready")
        await in_thread(cancel_then_roll_back)
        await in_thread(job_finish, job_id=tree.jobs["test"].pk, status=JobStatus.FAILURE, exit_code=1)
        changes = await read_until(socket, lambda m: _job_status(m, tree.jobs["test"]) == JobStatus.FAILURE)
        await socket.disconnect()
        return changes

    changes = async_to_sync(scenario)()

    # The first change heard is the committed one: the run was never cancelled.
    assert all(m["run"]["status"] != RunStatus.CANCELLED for m in changes if m["type"] == "run")


# --- The runs list's socket.


def test_the_runs_list_socket_needs_a_login() -> None:
    async def scenario():
        socket, connected, code = await open_socket("/ws/runs/", None)
        await socket.disconnect()
        return connected, code

    assert async_to_sync(scenario)() == (False, 4403)


@pytest.mark.parametrize("role", ROLES)
def test_the_runs_list_hears_of_a_private_runs_changes_only_with_the_right_to_see_it(tree_people, role) -> None:
    tree = tree_people.tree
    public = make_pipeline("everyones")
    public.repository.is_private = False
    public.repository.save()
    (public_run,) = make_runs(public, 1)
    PipelineRun.objects.filter(pk=public_run.pk).update(status=RunStatus.RUNNING, finished_at=None, duration_s=None)
    cookie = cookie_of(tree_people[role])

    async def scenario():
        socket, connected, _ = await open_socket("/ws/runs/", cookie)
        assert connected
        await read_until(socket, lambda m: m["type"] == "ready")
        # The private run changes first, the public one after: everyone hears the public one,
        # and whoever hears the private one hears it first (one channel, in order).
        await in_thread(cancel, tree.run.pk)
        await in_thread(cancel, public_run.pk)
        heard = await read_until(socket, lambda m: m["type"] == "runs" and m["run"]["id"] == str(public_run.pk))
        await socket.disconnect()
        return heard

    heard = async_to_sync(scenario)()

    private_heard = [m["run"] for m in heard if m["run"]["id"] == str(tree.run.pk)]
    assert bool(private_heard) is SEES[role]
    if private_heard:
        assert private_heard[-1]["status"] == RunStatus.CANCELLED
        assert private_heard[-1]["repository"] == tree.run.pipeline.repository.name
        assert "repository_id" not in private_heard[-1]


@pytest.mark.parametrize("role", ROLES)
def test_the_runs_list_asks_for_the_current_statuses_of_the_runs_it_shows(tree_people, role) -> None:
    tree = tree_people.tree
    public = make_pipeline("everyones-snapshot")
    public.repository.is_private = False
    public.repository.save()
    (public_run,) = make_runs(public, 1)
    cookie = cookie_of(tree_people[role])

    async def scenario():
        socket, _, _ = await open_socket("/ws/runs/", cookie)
        await read_until(socket, lambda m: m["type"] == "ready")
        await socket.send_json_to({"type": "snapshot", "ids": [str(public_run.pk), "not-a-uuid"]})
        await socket.send_json_to({"type": "snapshot", "ids": [str(tree.run.pk)]})
        await socket.send_json_to({"type": "snapshot", "ids": [str(public_run.pk)]})
        heard = await read_until(socket, lambda m: m["type"] == "runs" and m["run"]["id"] == str(public_run.pk))
        await socket.disconnect()
        return heard

    heard = async_to_sync(scenario)()

    # A malformed request is ignored; the private run is told only to those who see it.
    assert [m["run"]["id"] for m in heard if m["type"] == "runs"] == (
        [str(tree.run.pk), str(public_run.pk)] if SEES[role] else [str(public_run.pk)]
    )
    assert heard[-1]["run"]["status"] == RunStatus.SUCCESS


def test_the_runs_list_hears_a_runs_own_changes_not_each_jobs(tree_people) -> None:
    tree = tree_people.tree
    cookie = cookie_of(tree_people["superuser"])

    async def scenario():
        socket, _, _ = await open_socket("/ws/runs/", cookie)
        await read_until(socket, lambda m: m["type"] == "ready")
        # The job's finish queues the next job and leaves the run RUNNING: nothing the list
        # shows changed. The cancel ends the run: the list's first word of it is that.
        await in_thread(job_finish, job_id=tree.jobs["test"].pk, status=JobStatus.SUCCESS, exit_code=0)
        await in_thread(cancel, tree.run.pk)
        heard = await read_until(socket, lambda m: m["type"] == "runs" and m["run"]["id"] == str(tree.run.pk))
        await socket.disconnect()
        return heard

    heard = async_to_sync(scenario)()

    assert heard[-1]["run"]["status"] == RunStatus.CANCELLED
    assert PipelineRun.objects.get(pk=tree.run.pk).status == RunStatus.CANCELLED
