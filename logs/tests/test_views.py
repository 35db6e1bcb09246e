"""The job log page and raw log downloads."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.shortcuts import resolve_url
from django.test import AsyncClient, Client
from django.urls import reverse

from logs.services import log_chunk_append
from runs.models import Step, StepStatus

from .conftest import make_running_job

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def write(step: Step, *lines: str) -> str:
    offset = 0
    for line in lines:
        offset = log_chunk_append(step=step, offset=offset, content=line)
    return "".join(lines)


@pytest.fixture
def finished_first_step(running):
    write(running.steps[0], "$ make\n", "\x1b[31mred <b>\x1b[0m\n", "done\n")
    Step.objects.filter(pk=running.steps[0].pk).update(status=StepStatus.SUCCESS, exit_code=0)
    write(running.steps[1], "still going\n")
    Step.objects.filter(pk=running.steps[1].pk).update(status=StepStatus.RUNNING)
    return running


# --- The job log page.


def test_the_job_page_renders_finished_steps_and_follows_running_ones_live(staff, finished_first_step):
    running = finished_first_step

    html = client_for(staff).get(reverse("logs:job", args=[running.job.pk])).content.decode()

    assert '<span class="ansi-fg-1">red &lt;b&gt;</span>' in html
    assert 'id="s0-L3"' in html
    assert f'data-ws="/ws/steps/{running.steps[1].pk}/"' in html
    assert "still going" not in html  # the browser gets it over the WebSocket
    assert reverse("logs:step-raw", args=[running.steps[0].pk]) in html
    assert "js/log-viewer.js" in html


def test_a_long_finished_step_shows_its_tail_with_the_right_line_numbers_and_a_raw_link(staff, running, settings):
    settings.CONVEYOR_LOG_RENDER_MAX_BYTES = 1000
    write(running.step, *[f"line {n:03d} {'x' * 89}\n" for n in range(50)])  # 100 bytes each
    Step.objects.filter(pk=running.step.pk).update(status=StepStatus.FAILURE, exit_code=1)

    html = client_for(staff).get(reverse("logs:job", args=[running.job.pk])).content.decode()

    assert "line 039" not in html
    assert "line 040" in html and "line 049" in html
    assert 'id="s0-L41"' in html
    assert "Showing the end of a long log" in html


@pytest.mark.parametrize("chunks", [1, 40])
def test_the_page_query_count_does_not_grow_with_the_log(staff, running, django_assert_num_queries, chunks):
    write(running.step, *["x\n"] * chunks)
    Step.objects.filter(pk=running.step.pk).update(status=StepStatus.SUCCESS)
    client = client_for(staff)

    # Session, user, job (with run and repository), steps, whether the log expired; then for the
    # finished step: where its tail starts (the whole log fits) and its chunks. The running step
    # costs nothing here.
    with django_assert_num_queries(5 + 2):
        assert client.get(reverse("logs:job", args=[running.job.pk])).status_code == 200


def test_a_member_sees_the_logs_of_a_public_repository(member):
    public = make_running_job(private=False)

    assert client_for(member).get(reverse("logs:job", args=[public.job.pk])).status_code == 200


def test_an_outsider_gets_a_404_for_a_private_repository(outsider, running):
    assert client_for(outsider).get(reverse("logs:job", args=[running.job.pk])).status_code == 404


def test_an_anonymous_visitor_is_sent_to_the_login(running):
    response = client_for(None).get(reverse("logs:job", args=[running.job.pk]))

    assert response.status_code == 302
    assert response["Location"].startswith(resolve_url(settings.LOGIN_URL))


# --- Raw logs.


def test_the_raw_log_of_a_step_streams_exactly_its_text(staff, running):
    text = write(running.step, "héllo\n", "\x1b[32mgreen\x1b[0m\n", "no newline")

    response = client_for(staff).get(reverse("logs:step-raw", args=[running.step.pk]))

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert b"".join(response.streaming_content).decode() == text


def test_the_raw_log_of_a_job_is_its_steps_one_after_the_other(staff, running):
    first = write(running.steps[0], "first step\n")
    second = write(running.steps[1], "second step\n")

    response = client_for(staff).get(reverse("logs:job-raw", args=[running.job.pk]))

    assert b"".join(response.streaming_content).decode() == first + second


def test_the_raw_log_streams_under_asgi_too(staff, running):
    text = write(running.step, *[f"{n}\n" for n in range(200)])  # more than one batch of chunks

    async def fetch():
        client = AsyncClient()
        await client.aforce_login(staff)
        response = await client.get(reverse("logs:step-raw", args=[running.step.pk]))
        return response.status_code, b"".join([part async for part in response.streaming_content])

    status, body = async_to_sync(fetch)()

    assert status == 200
    assert body.decode() == text


@pytest.mark.parametrize(("who", "status"), [("outsider", 404), (None, 302)])
def test_raw_logs_of_a_private_repository_are_refused_to_outsiders(who, status, running, request):
    user = request.getfixturevalue(who) if who else None
    write(running.step, "secret build output\n")

    for url in (reverse("logs:step-raw", args=[running.step.pk]), reverse("logs:job-raw", args=[running.job.pk])):
        response = client_for(user).get(url)
        assert response.status_code == status
        assert not response.streaming and b"secret build output" not in response.content
