"""Dashboard pages of repositories and what starts their runs: repositories with their
pipelines, the Run pipeline form, schedules, webhook deliveries, environments, and
personal API tokens. Reads start from pipelines.permissions' visible_* querysets (an
outsider gets a 404 for a private repository); the form needs a developer (403 otherwise)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, OuterRef, Prefetch, Q, Subquery
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from pipelines import services
from pipelines.admin import RunPipelineForm
from pipelines.api_tokens import api_token_create, api_token_revoke
from pipelines.deliveries import delivery_replay
from pipelines.memberships import (
    MembershipError,
    may_manage_memberships,
    membership_add,
    membership_remove,
    membership_set_role,
)
from pipelines.models import ApiToken, DeliveryStatus, Pipeline, Repository, RepositoryMembership, Role
from pipelines.permissions import (
    can_run,
    can_view,
    repository_role,
    repository_roles,
    visible_deliveries,
    visible_environments,
    visible_repositories,
    visible_runs,
    visible_schedules,
)
from runs import actions
from runs.page_selectors import FilterError, text_param

DELIVERIES_PER_PAGE = 50
DEPLOYMENTS_PER_PAGE = 25
REPOSITORY_RECENT_RUNS = 10


def _latest_run(field: str) -> Subquery:
    from runs.models import PipelineRun

    return Subquery(PipelineRun.objects.filter(pipeline=OuterRef("pk")).order_by("-created_at").values(field)[:1])


def _pipelines_with_latest_run():
    # The latest run of each pipeline as subqueries: one query for all of them.
    return Pipeline.objects.order_by("name").annotate(
        last_run_id=_latest_run("id"), last_run_number=_latest_run("number"), last_run_status=_latest_run("status")
    )


@login_required
@require_GET
def repositories_list(request: HttpRequest) -> HttpResponse:
    repositories = list(
        visible_repositories(request.user)
        .order_by("name")
        .prefetch_related(Prefetch("pipelines", queryset=_pipelines_with_latest_run()))
    )
    roles = repository_roles(request.user, [r.pk for r in repositories])
    for repository in repositories:
        repository.role = Role(roles[repository.pk]).label if repository.pk in roles else ""
    return render(request, "pipelines/repositories.html", {"repositories": repositories})


def _repository_or_404(request: HttpRequest, name: str) -> Repository:
    repository = visible_repositories(request.user).filter(name=name).first()
    if repository is None:
        raise Http404("No such repository")
    return repository


@login_required
@require_GET
def repository_detail(request: HttpRequest, name: str) -> HttpResponse:
    repository = _repository_or_404(request, name)
    role = repository_role(request.user, repository)
    runs = (
        visible_runs(request.user)
        .filter(pipeline__repository=repository)
        .select_related("pipeline__repository")
        .order_by("-created_at")[:REPOSITORY_RECENT_RUNS]
    )
    badge = request.build_absolute_uri(
        reverse("runs:badge", kwargs={"repository": repository.name, "branch": repository.default_branch})
    )
    context = {
        "repository": repository,
        "role": Role(role).label if role else "",
        "pipelines": list(_pipelines_with_latest_run().filter(repository=repository)),
        "runs": list(runs),
        "schedules": list(visible_schedules(request.user).filter(pipeline__repository=repository)),
        "can_run": role in Role.CAN_RUN,
        "can_maintain": role in Role.CAN_MAINTAIN,
        "badge_url": badge,
        "runs_url": reverse("runs:list") + f"?repository={repository.name}",
    }
    # Members: listed to the repository's own people (and staff), editable by its maintainers.
    manage = may_manage_memberships(request.user, repository)
    if role is not None or manage or request.user.is_staff:
        context["members"] = list(
            RepositoryMembership.objects.filter(repository=repository)
            .select_related("user", "group")
            .order_by("group__name", "user__username")
        )
        context["can_manage_members"] = manage
        context["roles"] = Role.choices
    return render(request, "pipelines/repository_detail.html", context)


# --- Members (pipelines.memberships decides who may and what is allowed).


def _members_url(repository: Repository) -> str:
    return reverse("runs:repository", args=[repository.name]) + "#members"


def _membership_or_404(repository: Repository, membership_id: int) -> RepositoryMembership:
    membership = (
        RepositoryMembership.objects.filter(repository=repository, pk=membership_id)
        .select_related("repository", "user", "group")
        .first()
    )
    if membership is None:
        raise Http404("No such member")
    return membership


def _after_membership_change(request: HttpRequest, repository: Repository, call: Any, success: str) -> HttpResponse:
    try:
        call()
    except MembershipError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, success)
    if not can_view(request.user, repository):  # they took their own role away
        return redirect("runs:repositories")
    return redirect(_members_url(repository))


@login_required
@require_POST
def member_add(request: HttpRequest, name: str) -> HttpResponse:
    repository = _repository_or_404(request, name)
    username = (request.POST.get("username") or "").strip()[:150]
    role = request.POST.get("role") or ""

    def call() -> None:
        membership_add(repository=repository, username=username, role=role, by=request.user)

    return _after_membership_change(request, repository, call, f"{username} added as {role}.")


@login_required
@require_POST
def member_role(request: HttpRequest, name: str, membership_id: int) -> HttpResponse:
    repository = _repository_or_404(request, name)
    membership = _membership_or_404(repository, membership_id)
    role = request.POST.get("role") or ""

    def call() -> None:
        membership_set_role(membership=membership, role=role, by=request.user)

    return _after_membership_change(request, repository, call, f"{_member_name(membership)} is now {role}.")


@login_required
@require_POST
def member_remove(request: HttpRequest, name: str, membership_id: int) -> HttpResponse:
    repository = _repository_or_404(request, name)
    membership = _membership_or_404(repository, membership_id)

    def call() -> None:
        membership_remove(membership=membership, by=request.user)

    return _after_membership_change(request, repository, call, f"{_member_name(membership)} removed.")


def _member_name(membership: RepositoryMembership) -> str:
    return membership.user.get_username() if membership.user_id else f"group {membership.group.name}"


@login_required
@require_http_methods(["GET", "POST"])
def pipeline_run(request: HttpRequest, name: str, pipeline_id: int) -> HttpResponse:
    """The Run pipeline form: a branch or tag and variables (developers and maintainers)."""
    repository = _repository_or_404(request, name)
    pipeline = Pipeline.objects.filter(repository=repository, pk=pipeline_id).select_related("repository").first()
    if pipeline is None:
        raise Http404("No such pipeline")
    if not can_run(request.user, repository):
        raise PermissionDenied(f"{request.user.get_username()} is not a developer of {repository.name}")
    form = RunPipelineForm(request.POST or None, initial={"ref": repository.default_branch})
    if request.method == "POST" and form.is_valid():
        try:
            run = actions.pipeline_run_as(
                pipeline=pipeline,
                user=request.user,
                ref=form.cleaned_data["ref"].strip(),
                variables=form.cleaned_data["variables"],
                source="web",
            )
        except services.RunNotCreated as exc:
            form.add_error(None, f"No run: the config's workflow rules filtered it out ({exc}).")
        except services.TriggerError as exc:
            form.add_error("ref", str(exc))
        else:
            messages.success(request, f"Started {run} on {run.branch}.")
            return redirect("runs:run", run_id=run.pk)
    return render(request, "pipelines/pipeline_run.html", {"pipeline": pipeline, "form": form})


@login_required
@require_GET
def schedules_list(request: HttpRequest) -> HttpResponse:
    schedules = visible_schedules(request.user).select_related("pipeline__repository", "last_run")
    return render(request, "pipelines/schedules.html", {"schedules": schedules})


@login_required
@require_GET
def deliveries_list(request: HttpRequest) -> HttpResponse:
    """Webhook deliveries of the repositories the user maintains."""
    deliveries = (
        visible_deliveries(request.user)
        .select_related("repository")
        .annotate(run_count=Count("runs"))
        .order_by("-received_at")
        .defer("body", "headers")
    )
    try:
        repository = text_param(request.GET, "repository")
    except FilterError as exc:
        return HttpResponseBadRequest(str(exc))
    if repository:
        deliveries = deliveries.filter(repository__name=repository)
    page = Paginator(deliveries, DELIVERIES_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "pipelines/deliveries.html", {"page": page, "repository": repository})


@login_required
@require_GET
def delivery_detail(request: HttpRequest, delivery_id: int) -> HttpResponse:
    delivery = visible_deliveries(request.user).select_related("repository").filter(pk=delivery_id).first()
    if delivery is None:
        raise Http404("No such delivery")
    runs = delivery.runs.select_related("pipeline__repository").order_by("-created_at")
    context = {"delivery": delivery, "runs": runs, "can_redeliver": delivery.status not in DeliveryStatus.PENDING}
    return render(request, "pipelines/delivery_detail.html", context)


@login_required
@require_POST
def delivery_redeliver(request: HttpRequest, delivery_id: int) -> HttpResponse:
    """Process a stored delivery again (maintainers: others get the 404 of the page itself).
    Runs that already exist for its commit are linked, not created twice."""
    delivery = visible_deliveries(request.user).select_related("repository").filter(pk=delivery_id).first()
    if delivery is None:
        raise Http404("No such delivery")
    if delivery_replay(delivery=delivery):
        messages.success(request, "Redelivered: the delivery is queued to be processed again.")
    else:
        messages.error(request, "The delivery is being processed right now; try again when it is done.")
    return redirect("runs:delivery", delivery_id=delivery.pk)


@login_required
@require_GET
def environments_list(request: HttpRequest) -> HttpResponse:
    """Environments with what runs there now and how many deploys wait (one query)."""
    from runs.models import Deployment, DeploymentStatus

    current = Deployment.objects.filter(environment=OuterRef("pk"), status=DeploymentStatus.SUCCEEDED).order_by(
        "-finished_at"
    )
    environments = (
        visible_environments(request.user)
        .select_related("repository")
        .annotate(
            current_image=Subquery(current.values("image")[:1]),
            current_job=Subquery(current.values("job__name")[:1]),
            current_run=Subquery(current.values("run_id")[:1]),
            current_at=Subquery(current.values("finished_at")[:1]),
            waiting=Count("deployments", filter=Q(deployments__status=DeploymentStatus.WAITING)),
        )
        .order_by("repository__name", "name")
    )
    return render(request, "pipelines/environments.html", {"environments": environments})


@login_required
@require_GET
def environment_detail(request: HttpRequest, environment_id: int) -> HttpResponse:
    """An environment's deployment history: who deployed which run and commit, with what
    outcome, the approvals each got (who, when), rollbacks and redeploys; newest first."""
    from runs.deployment_selectors import environment_current_deployment
    from runs.page_selectors import environment_deployments

    environment = (
        visible_environments(request.user)
        .select_related("repository", "approver_group")
        .filter(pk=environment_id)
        .first()
    )
    if environment is None:
        raise Http404("No such environment")
    page = Paginator(environment_deployments(environment=environment), DEPLOYMENTS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    context = {
        "environment": environment,
        "repository": environment.repository,
        "page": page,
        "deployments": page.object_list,
        "current": environment_current_deployment(environment=environment),
    }
    return render(request, "pipelines/environment_detail.html", context)


# --- Personal API tokens.


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    created: str | None = None
    if request.method == "POST":
        description = (request.POST.get("description") or "").strip()[:255]
        if not description:
            messages.error(request, "Say what the token is for.")
        else:
            _row, created = api_token_create(user=request.user, description=description)
    rows = ApiToken.objects.filter(user=request.user).order_by("-created_at")
    context: dict[str, Any] = {"tokens": rows, "created": created, "now": timezone.now()}
    return render(request, "pipelines/tokens.html", context)


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = ApiToken.objects.filter(user=request.user, pk=token_id).first()
    if token is None:
        raise Http404("No such token")
    api_token_revoke(token=token)
    messages.success(request, f"Token {token.description!r} revoked.")
    return redirect("runs:tokens")
