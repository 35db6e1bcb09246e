"""Repository members through the REST API (/api/v1/repositories/<name>/members/): listed to
the repository's own people, changed by its maintainers, through pipelines.memberships."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from pipelines.models import RepositoryMembership
from tests.access import MAINTAINS, ROLES, SEES

pytestmark = pytest.mark.django_db


def members_url(people, membership=None) -> str:
    base = f"/api/v1/repositories/{people.repository.name}/members/"
    return base if membership is None else f"{base}{membership.pk}/"


@pytest.mark.parametrize("role", ROLES)
def test_the_members_list_is_for_the_repositorys_people(people, role) -> None:
    response = people.client(role).get(members_url(people))
    assert response.status_code == (200 if SEES[role] else 404)
    if SEES[role]:
        rows = response.json()
        assert {"user": people["developer"].username, "group": None, "role": "developer"}.items() <= next(
            row for row in rows if row["user"] == people["developer"].username
        ).items()
        assert any(row["group"] and row["role"] == "developer" for row in rows)


@pytest.mark.parametrize("role", ROLES)
def test_only_maintainers_add_members_through_the_api(people, role) -> None:
    newcomer = get_user_model().objects.create_user(f"api-newcomer-{role}")
    response = people.client(role).post(
        members_url(people), {"username": newcomer.username, "role": "viewer"}, content_type="application/json"
    )
    assert response.status_code == (201 if MAINTAINS[role] else 403 if SEES[role] else 404)
    assert RepositoryMembership.objects.filter(user=newcomer).exists() is MAINTAINS[role]
    if MAINTAINS[role]:
        assert response.json()["user"] == newcomer.username


def test_bad_member_changes_are_400s_that_say_why(people) -> None:
    client = people.client("maintainer")
    unknown = client.post(
        members_url(people), {"username": "nobody", "role": "viewer"}, content_type="application/json"
    )
    bad_role = client.post(
        members_url(people), {"username": people["outsider"].username, "role": "owner"}, content_type="application/json"
    )
    last = RepositoryMembership.objects.get(repository=people.repository, user=people["maintainer"])
    demote = client.patch(members_url(people, last), {"role": "viewer"}, content_type="application/json")
    remove = client.delete(members_url(people, last))
    assert (unknown.status_code, bad_role.status_code, demote.status_code, remove.status_code) == (400, 400, 400, 400)
    assert "no active user" in unknown.json()["detail"]
    assert "role" in bad_role.json()
    assert "needs a maintainer" in remove.json()["detail"]
    last.refresh_from_db()
    assert last.role == "maintainer"


def test_a_maintainer_changes_a_role_and_removes_a_member_through_the_api(people) -> None:
    client = people.client("maintainer")
    viewer = RepositoryMembership.objects.get(repository=people.repository, user=people["viewer"])
    changed = client.patch(members_url(people, viewer), {"role": "developer"}, content_type="application/json")
    assert changed.status_code == 200 and changed.json()["role"] == "developer"
    assert client.delete(members_url(people, viewer)).status_code == 204
    assert not RepositoryMembership.objects.filter(pk=viewer.pk).exists()
    assert client.delete(members_url(people, viewer)).status_code == 404


@pytest.mark.parametrize("role", ["viewer", "developer"])
def test_members_who_do_not_maintain_cannot_change_roles_through_the_api(people, role) -> None:
    maintainer = RepositoryMembership.objects.get(repository=people.repository, user=people["maintainer"])
    client = people.client(role)
    assert (
        client.patch(members_url(people, maintainer), {"role": "viewer"}, content_type="application/json").status_code
        == 403
    )
    assert client.delete(members_url(people, maintainer)).status_code == 403
    maintainer.refresh_from_db()
    assert maintainer.role == "maintainer"
