"""People for permission tests: for one private repository, an outsider (logged in, no role),
a viewer, a developer, a maintainer (each through a membership of their own) and a
superuser; plus a member through a group. Import the `people` fixture into a test module.

The matrix every permission test walks (pipelines.permissions):

    who         sees   runs (trigger/retry/cancel)   maintains (webhook deliveries)
    outsider    404    404                           404
    viewer      yes    403                           403
    developer   yes    yes                           403
    maintainer  yes    yes                           yes
    superuser   yes    yes                           yes
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from pipelines.models import Repository, RepositoryMembership, Role

ROLES = ["outsider", "viewer", "developer", "maintainer", "superuser"]
SEES = {"outsider": False, "viewer": True, "developer": True, "maintainer": True, "superuser": True}
RUNS = {"outsider": False, "viewer": False, "developer": True, "maintainer": True, "superuser": True}
MAINTAINS = {"outsider": False, "viewer": False, "developer": False, "maintainer": True, "superuser": True}

_numbers = itertools.count(1)


@dataclass
class People:
    repository: Repository
    users: dict = field(default_factory=dict)

    def __getitem__(self, role: str):
        return self.users[role]

    def client(self, role: str) -> Client:
        client = Client()
        client.force_login(self.users[role])
        return client


def make_people(repository: Repository) -> People:
    n = next(_numbers)
    users = get_user_model().objects
    people = People(repository=repository)
    # No passwords (hashing one is slow on purpose): tests log in with force_login.
    people.users["outsider"] = users.create_user(f"outsider-{n}")
    for role in (Role.VIEWER, Role.DEVELOPER, Role.MAINTAINER):
        user = users.create_user(f"{role}-{n}")
        RepositoryMembership.objects.create(repository=repository, user=user, role=role)
        people.users[str(role)] = user
    people.users["superuser"] = users.create_superuser(f"root-{n}", email=None, password=None)
    # A member through a group only.
    group = Group.objects.create(name=f"team-{n}")
    RepositoryMembership.objects.create(repository=repository, group=group, role=Role.DEVELOPER)
    people.users["group developer"] = users.create_user(f"grouped-{n}")
    people.users["group developer"].groups.add(group)
    return people


@pytest.fixture
def people(db):
    """People around the private repository of a run tree (tests.builders.make_run_tree)."""
    from tests.builders import make_run_tree

    tree = make_run_tree()
    repository = tree.run.pipeline.repository
    assert repository.is_private
    result = make_people(repository)
    result.tree = tree
    return result
