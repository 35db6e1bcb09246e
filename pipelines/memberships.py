"""Writes of repository memberships, each one audited (audit.services, in the same transaction).

The admin saves and deletes through membership_save and membership_delete (the admin's own
permissions decide who may). The repository page and the REST API go through membership_add,
membership_set_role and membership_remove, which check the person themselves.

Who may, there: the repository's maintainers (superusers count as maintainers everywhere), and staff
who may edit memberships in the admin anyway (the `pipelines.change_repositorymembership`
permission): the page offers no more than the admin would. A repository always keeps a
maintainer: removing or demoting its last maintainer membership is refused. Changes to one
repository's memberships are serialized on its row lock, so two maintainers demoting each
other at once cannot both succeed and leave nobody.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction

from audit.models import AuditAction
from audit.services import audit_record
from pipelines.models import Repository, RepositoryMembership, Role
from pipelines.permissions import can_maintain


def _audit_details(membership: RepositoryMembership, **extra: Any) -> dict[str, Any]:
    who = {"user": membership.user.get_username()} if membership.user_id else {"group": membership.group.name}
    return {**who, "role": membership.role, **extra}


def _audit(action: str, *, membership: RepositoryMembership, user: Any, **extra: Any) -> None:
    audit_record(
        action=action,
        user=user,
        repository_id=membership.repository_id,
        target=membership,
        details=_audit_details(membership, **extra),
    )


# --- The admin's writes.


@transaction.atomic
def membership_save(*, membership: RepositoryMembership, user: Any) -> RepositoryMembership:
    """Create or change a membership as the admin's form filled it in, and audit it (with
    the role it had before, for a change)."""
    previous = None
    if membership.pk is not None:
        previous = RepositoryMembership.objects.filter(pk=membership.pk).values_list("role", flat=True).first()
    membership.save()
    extra = {"previous_role": previous} if previous is not None else {}
    _audit(AuditAction.MEMBERSHIP_SAVE, membership=membership, user=user, **extra)
    return membership


@transaction.atomic
def membership_delete(*, membership: RepositoryMembership, user: Any) -> None:
    """Delete a membership and audit it."""
    _audit(AuditAction.MEMBERSHIP_DELETE, membership=membership, user=user)
    RepositoryMembership.objects.filter(pk=membership.pk).delete()


# --- The repository page's and the API's writes.


class MembershipError(ValueError):
    """A change that cannot be made (told to the person as it is, never a 500)."""


def may_manage_memberships(user: Any, repository: Repository) -> bool:
    """May the user add, change and remove the repository's members?"""
    if can_maintain(user, repository):
        return True
    return bool(
        getattr(user, "is_staff", False)
        and getattr(user, "is_active", False)
        and user.has_perm("pipelines.change_repositorymembership")
    )


def _require(user: Any, repository: Repository) -> None:
    if not may_manage_memberships(user, repository):
        raise PermissionDenied(f"{user.get_username()} does not maintain {repository.name}")


def _role(value: str) -> str:
    if value not in Role.values:
        raise MembershipError(f"role: one of {', '.join(Role.values)}")
    return value


def _lock(repository: Repository) -> None:
    Repository.objects.select_for_update().filter(pk=repository.pk).values_list("pk", flat=True).first()


def _keeps_a_maintainer(repository: Repository, *, without: RepositoryMembership) -> bool:
    return (
        RepositoryMembership.objects.filter(repository=repository, role=Role.MAINTAINER).exclude(pk=without.pk).exists()
    )


@transaction.atomic
def membership_add(*, repository: Repository, username: str, role: str, by: Any) -> RepositoryMembership:
    """Give the user `username` a role in the repository. A user who has one already keeps a
    single membership: use membership_set_role to change it."""
    _require(by, repository)
    role = _role(role)
    username = (username or "").strip()
    if not username:
        raise MembershipError("username: whom to add")
    user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}, is_active=True).first()
    if user is None:
        raise MembershipError(f"There is no active user {username!r}.")
    _lock(repository)
    if RepositoryMembership.objects.filter(repository=repository, user=user).exists():
        raise MembershipError(f"{username} is a member of {repository.name} already: change their role instead.")
    try:
        with transaction.atomic():
            membership = RepositoryMembership.objects.create(repository=repository, user=user, role=role)
    except IntegrityError:  # added by someone else a moment ago (membership_unique_user)
        raise MembershipError(f"{username} is a member of {repository.name} already.") from None
    _audit(AuditAction.MEMBERSHIP_SAVE, membership=membership, user=by)
    return membership


@transaction.atomic
def membership_set_role(*, membership: RepositoryMembership, role: str, by: Any) -> RepositoryMembership:
    """Change a member's (a user's or a group's) role."""
    repository = membership.repository
    _require(by, repository)
    role = _role(role)
    _lock(repository)
    current = RepositoryMembership.objects.filter(pk=membership.pk, repository=repository).first()
    if current is None:
        raise MembershipError("That membership is gone.")
    if (
        current.role == Role.MAINTAINER
        and role != Role.MAINTAINER
        and not _keeps_a_maintainer(repository, without=current)
    ):
        raise MembershipError(f"{repository.name} needs a maintainer: make someone else a maintainer first.")
    if current.role == role:
        return current
    RepositoryMembership.objects.filter(pk=current.pk).update(role=role)
    previous, current.role = current.role, role
    _audit(AuditAction.MEMBERSHIP_SAVE, membership=current, user=by, previous_role=previous)
    membership.role = role
    return membership


@transaction.atomic
def membership_remove(*, membership: RepositoryMembership, by: Any) -> None:
    """Take a member's role away (a maintainer may remove themselves, but not the last one)."""
    repository = membership.repository
    _require(by, repository)
    _lock(repository)
    current = RepositoryMembership.objects.filter(pk=membership.pk, repository=repository).first()
    if current is None:
        return  # removed already: the same outcome
    if current.role == Role.MAINTAINER and not _keeps_a_maintainer(repository, without=current):
        raise MembershipError(f"{repository.name} needs a maintainer: this is its last one.")
    _audit(AuditAction.MEMBERSHIP_DELETE, membership=current, user=by)
    RepositoryMembership.objects.filter(pk=current.pk).delete()
