"""pipelines.permissions: who may see, run and maintain a repository, and what lists show."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Group

from pipelines.models import Repository, RepositoryMembership, Role
from pipelines.permissions import (
    can_maintain,
    can_run,
    can_view,
    can_view_badge,
    maintained_repositories,
    repository_role,
    repository_roles,
    runnable_repositories,
    visible_artifacts,
    visible_deliveries,
    visible_jobs,
    visible_repositories,
    visible_runs,
    visible_steps,
)
from tests.access import MAINTAINS, ROLES, RUNS, SEES
from tests.builders import make_pipeline, make_runs

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("role", ROLES)
def test_each_role_sees_runs_and_maintains_a_private_repository_as_the_matrix_says(people, role) -> None:
    user, repository = people[role], people.repository
    assert can_view(user, repository) is SEES[role]
    assert can_run(user, repository) is RUNS[role]
    assert can_maintain(user, repository) is MAINTAINS[role]
    assert can_view_badge(user, repository) is SEES[role]


@pytest.mark.parametrize("role", ROLES)
def test_lists_hold_the_private_repository_and_its_rows_only_for_those_who_see_it(people, role) -> None:
    user, tree = people[role], people.tree
    assert visible_repositories(user).filter(pk=people.repository.pk).exists() is SEES[role]
    assert visible_runs(user).filter(pk=tree.run.pk).exists() is SEES[role]
    assert visible_jobs(user).filter(pk=tree.jobs["build"].pk).exists() is SEES[role]
    assert visible_steps(user).filter(pk=tree.step.pk).exists() is SEES[role]
    assert visible_artifacts(user).filter(pk=tree.artifact.pk).exists() is SEES[role]
    assert runnable_repositories(user).filter(pk=people.repository.pk).exists() is RUNS[role]
    assert maintained_repositories(user).filter(pk=people.repository.pk).exists() is MAINTAINS[role]
    assert visible_deliveries(user).filter(repository=people.repository).exists() is MAINTAINS[role]


def test_a_role_given_to_a_group_applies_to_its_members(people) -> None:
    member = people["group developer"]
    assert can_view(member, people.repository)
    assert can_run(member, people.repository)
    assert not can_maintain(member, people.repository)
    assert visible_runs(member).filter(pk=people.tree.run.pk).exists()


def test_the_highest_of_a_persons_own_and_group_roles_wins(people) -> None:
    viewer = people["viewer"]
    group = Group.objects.create(name="maintainers")
    RepositoryMembership.objects.create(repository=people.repository, group=group, role=Role.MAINTAINER)
    viewer.groups.add(group)
    assert repository_role(viewer, people.repository) == Role.MAINTAINER
    assert repository_roles(viewer, [people.repository.pk]) == {people.repository.pk: Role.MAINTAINER}
    assert can_maintain(viewer, people.repository)


def test_a_public_repository_is_seen_by_every_logged_in_user_but_run_only_by_developers(people) -> None:
    Repository.objects.filter(pk=people.repository.pk).update(is_private=False)
    people.repository.refresh_from_db()
    outsider = people["outsider"]
    assert can_view(outsider, people.repository)
    assert not can_run(outsider, people.repository)
    assert visible_runs(outsider).filter(pk=people.tree.run.pk).exists()
    assert can_run(people["developer"], people.repository)


def test_anonymous_and_inactive_users_see_nothing_but_a_public_badge(people) -> None:
    inactive = people["maintainer"]
    inactive.is_active = False
    inactive.save()
    for user in (AnonymousUser(), inactive, None):
        assert not can_view(user, people.repository)
        assert not visible_runs(user).exists()
        assert not visible_repositories(user).exists()
    public = Repository.objects.create(name="open-source", clone_url="/x", is_private=False)
    assert can_view_badge(AnonymousUser(), public)
    assert not can_view_badge(AnonymousUser(), people.repository)


def test_staff_see_every_repository_but_run_only_where_they_have_a_role(people) -> None:
    staff = get_user_model().objects.create_user("operator", password="x", is_staff=True)
    assert can_view(staff, people.repository)
    assert visible_runs(staff).filter(pk=people.tree.run.pk).exists()
    assert not can_run(staff, people.repository)


def test_a_role_in_one_repository_shows_nothing_of_another(people) -> None:
    (other_run,) = make_runs(make_pipeline("other-private"), 1)
    developer = people["developer"]
    assert not visible_runs(developer).filter(pk=other_run.pk).exists()
    assert not can_view(developer, other_run.pipeline.repository)
    assert visible_runs(developer).filter(pk=people.tree.run.pk).exists()


def test_visible_runs_is_one_query_whatever_the_number_of_memberships(people, django_assert_num_queries) -> None:
    for n in range(5):
        repository = Repository.objects.create(name=f"team-repo-{n}", clone_url="/x")
        RepositoryMembership.objects.create(repository=repository, user=people["viewer"], role=Role.VIEWER)
        make_runs(make_pipeline(repository.name), 2)
    with django_assert_num_queries(1):
        runs = list(visible_runs(people["viewer"]))
    assert len(runs) == len({*people.tree.run.pipeline.runs.values_list("pk", flat=True)}) + 10


def test_a_membership_names_a_user_or_a_group_never_both_or_neither(people) -> None:
    from django.db import IntegrityError, transaction

    group = Group.objects.create(name="both")
    with pytest.raises(IntegrityError), transaction.atomic():
        RepositoryMembership.objects.create(repository=people.repository, user=people["outsider"], group=group)
    with pytest.raises(IntegrityError), transaction.atomic():
        RepositoryMembership.objects.create(repository=people.repository, role=Role.VIEWER)
