"""Who may see and do what, per repository: the one place that decides it.

Every page, API endpoint, badge, log download and WebSocket asks here (logs.selectors routes
its checks here too). The rules:

- Anonymous and inactive users: nothing (a public repository's badge excepted: badges are
  for READMEs, see `can_view_badge`).
- Superusers: everything. Staff (who operate the server and see every run in the admin)
  see every repository; what they may *do* comes from their roles, like anyone else.
- A repository that is not private: every logged-in user sees it.
- Otherwise a `RepositoryMembership` of the user, or of one of their groups, gives a role:
  viewer (sees), developer (+ runs, retries, cancels), maintainer (+ webhook deliveries and
  settings). The highest role wins.

Outsiders must not learn that a private repository exists: callers answer 404, not 403,
when `can_view` is False, and 403 only to someone who can see the thing but not change it.
The queryset helpers return lazy querysets, so lists filter in the database (one subquery,
not one check per row).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet

from pipelines.models import (
    Pipeline,
    PipelineSchedule,
    Repository,
    RepositoryMembership,
    Role,
    WebhookDelivery,
)


def _active(user: Any) -> bool:
    return user is not None and getattr(user, "is_authenticated", False) and getattr(user, "is_active", False)


def _sees_everything(user: Any) -> bool:
    return bool(user.is_superuser or user.is_staff)


def _memberships_of(user: Any) -> QuerySet[RepositoryMembership]:
    # The user's own rows and their groups' rows (a join on the user's groups, in the database).
    return RepositoryMembership.objects.filter(Q(user_id=user.pk) | Q(group__user__id=user.pk))


def repository_role(user: Any, repository: Repository) -> str | None:
    """The user's highest role in the repository (Role value), or None. One query; none for
    anonymous users. Superusers count as maintainers everywhere."""
    if not _active(user):
        return None
    if user.is_superuser:
        return Role.MAINTAINER
    roles = set(_memberships_of(user).filter(repository_id=repository.pk).values_list("role", flat=True))
    return max(roles, key=Role.RANK.__getitem__) if roles else None


def repository_roles(user: Any, repository_ids: list[Any]) -> dict[Any, str]:
    """repository id -> the user's highest role, for many repositories in one query (list
    pages showing buttons per row). Repositories without a role are left out."""
    if not _active(user) or not repository_ids:
        return {}
    if user.is_superuser:
        return dict.fromkeys(repository_ids, Role.MAINTAINER)
    best: dict[Any, str] = {}
    rows = _memberships_of(user).filter(repository_id__in=list(repository_ids)).values_list("repository_id", "role")
    for repository_id, role in rows:
        if repository_id not in best or Role.RANK[role] > Role.RANK[best[repository_id]]:
            best[repository_id] = role
    return best


def can_view(user: Any, repository: Repository) -> bool:
    """May the user see the repository, its pipelines, runs, jobs, logs and artifacts?"""
    if not _active(user):
        return False
    if _sees_everything(user) or not repository.is_private:
        return True
    return repository_role(user, repository) is not None


def can_run(user: Any, repository: Repository) -> bool:
    """May the user trigger runs, retry, start and cancel jobs and runs (developer or more)?"""
    return repository_role(user, repository) in Role.CAN_RUN


def can_maintain(user: Any, repository: Repository) -> bool:
    """May the user see the repository's webhook deliveries and settings, and manage its CI/CD
    variables (maintainer)?"""
    return repository_role(user, repository) in Role.CAN_MAINTAIN


def can_view_badge(user: Any, repository: Repository) -> bool:
    """A public repository's badge is for anyone (READMEs fetch it without a session);
    a private repository's only for those who can see the repository."""
    return not repository.is_private or can_view(user, repository)


# --- Querysets: what lists show.


def _membership_exists(user: Any, *, roles: frozenset[str] | None = None, ref: str = "pk") -> Exists:
    memberships = _memberships_of(user).filter(repository_id=OuterRef(ref))
    if roles is not None:
        memberships = memberships.filter(role__in=sorted(roles))
    return Exists(memberships)


def visible_repositories(user: Any) -> QuerySet[Repository]:
    """Every repository the user may see."""
    if not _active(user):
        return Repository.objects.none()
    if _sees_everything(user):
        return Repository.objects.all()
    return Repository.objects.filter(Q(is_private=False) | _membership_exists(user))


def runnable_repositories(user: Any) -> QuerySet[Repository]:
    """Every repository whose pipelines the user may run (developer or more)."""
    if not _active(user):
        return Repository.objects.none()
    if user.is_superuser:
        return Repository.objects.all()
    return Repository.objects.filter(_membership_exists(user, roles=Role.CAN_RUN))


def maintained_repositories(user: Any) -> QuerySet[Repository]:
    """Every repository the user maintains."""
    if not _active(user):
        return Repository.objects.none()
    if user.is_superuser:
        return Repository.objects.all()
    return Repository.objects.filter(_membership_exists(user, roles=Role.CAN_MAINTAIN))


def _visible_filter(user: Any, prefix: str) -> Q | None:
    """A filter on `<prefix>repository` for the user's visible repositories; None = no filter."""
    if _sees_everything(user):
        return None
    return Q(**{f"{prefix}repository__in": visible_repositories(user)})


def _filtered(queryset: QuerySet, user: Any, prefix: str) -> QuerySet:
    if not _active(user):
        return queryset.none()
    condition = _visible_filter(user, prefix)
    return queryset if condition is None else queryset.filter(condition)


def visible_pipelines(user: Any) -> QuerySet[Pipeline]:
    return _filtered(Pipeline.objects.all(), user, "")


def visible_runs(user: Any) -> QuerySet:
    from runs.models import PipelineRun

    return _filtered(PipelineRun.objects.all(), user, "pipeline__")


def visible_jobs(user: Any) -> QuerySet:
    from runs.models import Job

    return _filtered(Job.objects.all(), user, "run__pipeline__")


def visible_steps(user: Any) -> QuerySet:
    from runs.models import Step

    return _filtered(Step.objects.all(), user, "job__run__pipeline__")


def visible_artifacts(user: Any) -> QuerySet:
    from artifacts.models import Artifact

    return _filtered(Artifact.objects.all(), user, "run__pipeline__")


def visible_schedules(user: Any) -> QuerySet[PipelineSchedule]:
    return _filtered(PipelineSchedule.objects.all(), user, "pipeline__")


def visible_environments(user: Any) -> QuerySet:
    from runs.models import Environment

    return _filtered(Environment.objects.all(), user, "")


def visible_deployments(user: Any) -> QuerySet:
    from runs.models import Deployment

    return _filtered(Deployment.objects.all(), user, "environment__")


def visible_approvals(user: Any) -> QuerySet:
    from runs.models import Approval

    return _filtered(Approval.objects.all(), user, "deployment__environment__")


def visible_deliveries(user: Any) -> QuerySet[WebhookDelivery]:
    """Webhook deliveries hold request bodies and headers: maintainers only."""
    if not _active(user):
        return WebhookDelivery.objects.none()
    if user.is_superuser:
        return WebhookDelivery.objects.all()
    return WebhookDelivery.objects.filter(repository__in=maintained_repositories(user))
