"""The dashboard landing page at `/`."""

from __future__ import annotations

import pytest
from django.urls import reverse

from runs.views import DASHBOARD_RUNS
from tests.builders import make_pipeline, make_runs

pytestmark = pytest.mark.django_db


def test_landing_page_sends_anonymous_visitors_to_the_admin_login(client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('admin:login')}?next=/"


def test_landing_page_lists_runs_with_links_to_their_admin_pages(admin_client) -> None:
    (run,) = make_runs(make_pipeline("acme-web"), 1)
    html = admin_client.get("/").content.decode()
    assert "acme-web/default" in html
    assert f'href="{reverse("admin:runs_pipelinerun_change", args=[run.pk])}">#1</a>' in html
    assert run.commit_sha[:8] in html
    assert "Success" in html
    assert "ada" in html
    assert "1m 23s" in html


def test_landing_page_shows_only_the_newest_runs(admin_client) -> None:
    runs = make_runs(make_pipeline(), DASHBOARD_RUNS + 2)
    shown = list(admin_client.get("/").context["runs"])
    assert shown == sorted(runs, key=lambda run: run.created_at, reverse=True)[:DASHBOARD_RUNS]


def test_landing_page_without_runs_says_how_to_get_one(admin_client) -> None:
    assert "No runs yet" in admin_client.get("/").content.decode()


@pytest.mark.parametrize("count", [1, 10])
def test_landing_page_query_count_does_not_depend_on_the_number_of_runs(
    admin_client, django_assert_num_queries, count: int
) -> None:
    make_runs(make_pipeline("one"), count)
    make_runs(make_pipeline("two"), count)
    # Session, user, runs (with pipeline and repository joined).
    with django_assert_num_queries(3):
        response = admin_client.get("/")
    assert len(response.context["runs"]) == 2 * count
