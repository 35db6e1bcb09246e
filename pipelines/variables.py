"""CI/CD variables of repositories: the writes (audited), protected refs, and what a job gets.

Precedence, as in GitLab (later wins): the predefined CI_* variables, then the config's
(`variables:` globally and in the job), then the repository's CI/CD variables, then the
variables given when the run was triggered (a manual run, the API, a schedule). CI_JOB_TOKEN
is the job's own and nothing overrides it.

A protected variable reaches a job only if the run's ref is protected (matches one of the
repository's `protected_refs` globs; none set: the default branch) or the job deploys to a
protected environment. A variable whose `environment_scope` is not `*` reaches only jobs
with a matching `environment:`; of several variables with one key, the most specific scope
wins (a name over a glob over `*`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Exists, OuterRef

from audit.models import AuditAction
from audit.services import audit_record
from cicd.db import prepared_cursor
from logs.masking import MIN_MASKED_LENGTH
from pipelines.models import VARIABLE_KEY_VALIDATOR, Pipeline, Repository, Variable

# Never set by a CI/CD variable: the job's own credential.
RESERVED_KEYS = frozenset({"CI_JOB_TOKEN"})
VALUE_MAX_LENGTH = Variable._meta.get_field("value").max_length
_KEY_MAX_LENGTH = Variable._meta.get_field("key").max_length
_SCOPE_MAX_LENGTH = Variable._meta.get_field("environment_scope").max_length
_DESCRIPTION_MAX_LENGTH = Variable._meta.get_field("description").max_length


def variable_errors(
    *, key: str, value: str | None, masked: bool, environment_scope: str, description: str = ""
) -> dict[str, str]:
    """What is wrong with a variable, by field (empty: nothing). Shared by the admin form
    (Variable.clean), the API and the services."""
    errors: dict[str, str] = {}
    try:
        VARIABLE_KEY_VALIDATOR(key or "")
    except ValidationError as exc:
        errors["key"] = exc.messages[0]
    if key in RESERVED_KEYS:
        errors["key"] = f"{key} is set by Conveyor for every job and cannot be a variable"
    if len(key or "") > _KEY_MAX_LENGTH:
        errors["key"] = f"at most {_KEY_MAX_LENGTH} characters"
    if value is not None:
        if len(value) > VALUE_MAX_LENGTH:
            errors["value"] = f"at most {VALUE_MAX_LENGTH} characters"
        elif "\x00" in value:
            errors["value"] = "no NUL characters"
        elif masked and (len(value) < MIN_MASKED_LENGTH or "\n" in value or "\r" in value):
            errors["value"] = (
                f"a masked value must be at least {MIN_MASKED_LENGTH} characters on a single line "
                "(shorter ones would mask ordinary words in logs); make it longer or unmask it"
            )
    scope = environment_scope or ""
    if not scope.strip() or len(scope) > _SCOPE_MAX_LENGTH or any(ord(c) < 32 for c in scope):
        errors["environment_scope"] = "'*' for every environment, or an environment name or glob"
    if len(description or "") > _DESCRIPTION_MAX_LENGTH or "\x00" in (description or ""):
        errors["description"] = f"at most {_DESCRIPTION_MAX_LENGTH} characters, no NUL"
    return errors


def _check(*, key: str, value: str | None, masked: bool, environment_scope: str, description: str) -> None:
    errors = variable_errors(
        key=key, value=value, masked=masked, environment_scope=environment_scope, description=description
    )
    if errors:
        raise ValidationError(errors)


def _audit_details(variable: Variable, **extra: Any) -> dict[str, Any]:
    # Never the value: only what identifies the variable and its flags.
    return {
        "key": variable.key,
        "environment_scope": variable.environment_scope,
        "masked": variable.masked,
        "protected": variable.protected,
        **extra,
    }


@transaction.atomic
def variable_create(
    *,
    repository: Repository,
    key: str,
    value: str,
    masked: bool = False,
    protected: bool = False,
    environment_scope: str = "*",
    description: str = "",
    user: Any = None,
) -> Variable:
    """Add a variable. Raises ValidationError (nothing stored) for a bad key, value or scope,
    or a key already set for that scope."""
    _check(key=key, value=value, masked=masked, environment_scope=environment_scope, description=description)
    if Variable.objects.filter(repository=repository, key=key, environment_scope=environment_scope).exists():
        raise ValidationError({"key": f"{key} is already set for environment scope {environment_scope!r}"})
    variable = Variable.objects.create(
        repository=repository,
        key=key,
        value=value,
        masked=masked,
        protected=protected,
        environment_scope=environment_scope,
        description=description,
    )
    audit_record(
        action=AuditAction.VARIABLE_CREATE,
        user=user,
        repository=repository,
        target=variable,
        details=_audit_details(variable),
    )
    return variable


@transaction.atomic
def variable_update(
    *,
    variable: Variable,
    user: Any = None,
    value: str | None = None,
    key: str | None = None,
    masked: bool | None = None,
    protected: bool | None = None,
    environment_scope: str | None = None,
    description: str | None = None,
) -> Variable:
    """Change a variable; None leaves a field as it is (`value=None` keeps the stored value).
    Raises ValidationError, changing nothing."""
    current = Variable.objects.select_for_update().get(pk=variable.pk)
    changes = {
        name: new
        for name, new in {
            "key": key,
            "masked": masked,
            "protected": protected,
            "environment_scope": environment_scope,
            "description": description,
        }.items()
        if new is not None and new != getattr(current, name)
    }
    value_changed = value is not None and value != current.value
    for name, new in changes.items():
        setattr(current, name, new)
    if value_changed:
        current.value = value
    _check(
        key=current.key,
        value=current.value,
        masked=current.masked,
        environment_scope=current.environment_scope,
        description=current.description,
    )
    clash = Variable.objects.filter(
        repository_id=current.repository_id, key=current.key, environment_scope=current.environment_scope
    ).exclude(pk=current.pk)
    if clash.exists():
        raise ValidationError(
            {"key": f"{current.key} is already set for environment scope {current.environment_scope!r}"}
        )
    if changes or value_changed:
        current.save()
        audit_record(
            action=AuditAction.VARIABLE_UPDATE,
            user=user,
            repository=current.repository,
            target=current,
            details=_audit_details(current, changed=sorted([*changes, *(["value"] if value_changed else [])])),
        )
    return current


@transaction.atomic
def variable_delete(*, variable: Variable, user: Any = None) -> None:
    audit_record(
        action=AuditAction.VARIABLE_DELETE,
        user=user,
        repository=variable.repository,
        target=variable,
        details=_audit_details(variable),
    )
    Variable.objects.filter(pk=variable.pk).delete()


# --- Protected refs.


def protected_ref_patterns(*, protected_refs: str, default_branch: str) -> list[str]:
    patterns = [line.strip() for line in (protected_refs or "").splitlines() if line.strip()]
    return patterns or [default_branch]


def ref_is_protected(*, protected_refs: str, default_branch: str, ref: str) -> bool:
    """Is the branch or tag `ref` protected? Globs as in a shell (`release/*`, `v*`), matched
    case-sensitively against the whole name."""
    if not ref:
        return False
    patterns = protected_ref_patterns(protected_refs=protected_refs, default_branch=default_branch)
    return any(fnmatch.fnmatchcase(ref, pattern) for pattern in patterns)


# --- What a job gets (at claim time).


@dataclass
class JobVariables:
    """The repository's variables a job gets, decrypted, and the keys whose values are masked."""

    values: dict[str, str] = field(default_factory=dict)
    masked: list[str] = field(default_factory=list)


def _scope_rank(scope: str, environment: str) -> int | None:
    """How well a variable's environment scope fits the job's environment: None, not at all;
    higher is more specific."""
    if scope == "*":
        return 0
    if not environment:
        return None
    if scope == environment:
        return 2
    return 1 if fnmatch.fnmatchcase(environment, scope) else None


def variables_for_job(*, repository_name: str, default_branch: str, ref: str, environment: str) -> JobVariables:
    """The CI/CD variables of a job of the repository on `ref`, deploying to `environment`
    ("" for none). One query, whatever the number of variables: the repository's protected
    refs and whether the environment is protected come with the rows."""
    from runs.models import Environment

    protected_environment = Environment.objects.filter(
        repository_id=OuterRef("repository_id"), name=environment, protected=True
    )
    rows = (
        Variable.objects.filter(repository__name=repository_name)
        .annotate(environment_protected=Exists(protected_environment))
        .values_list(
            "key",
            "value",
            "masked",
            "protected",
            "environment_scope",
            "repository__protected_refs",
            "environment_protected",
        )
    )
    best: dict[str, tuple[int, str, bool]] = {}
    for key, value, masked, protected, scope, protected_refs, environment_protected in rows:
        rank = _scope_rank(scope, environment)
        if rank is None:
            continue
        if protected and not (
            (environment and environment_protected)
            or ref_is_protected(protected_refs=protected_refs, default_branch=default_branch, ref=ref)
        ):
            continue
        if key not in best or rank > best[key][0]:
            best[key] = (rank, value, masked)
    return JobVariables(
        values={key: value for key, (_, value, _) in best.items()},
        masked=sorted(key for key, (_, _, masked) in best.items() if masked),
    )


@cache
def _masked_values_sql() -> str:
    from runs.models import Job, PipelineRun  # runs builds on this app: imported when first needed

    return (
        f"SELECT v.value FROM {Job._meta.db_table} j "  # noqa: S608 (our tables)
        f"JOIN {PipelineRun._meta.db_table} r ON r.id = j.run_id "
        f"JOIN {Pipeline._meta.db_table} p ON p.id = r.pipeline_id "
        f"JOIN {Variable._meta.db_table} v ON v.repository_id = p.repository_id "
        "WHERE j.id = %s::uuid AND v.masked"
    )


def masked_values_of_job(*, job_id: Any) -> list[str]:
    """Every masked value of the job's repository, to mask its log at ingest (defence in depth:
    the runner masks them first). All of them, whichever reached the job: masking a value the
    job never had costs nothing. One query, read for every log chunk: a prepared statement
    (cicd.db), the values decrypted as the ORM reads them."""
    value = Variable._meta.get_field("value")
    with prepared_cursor() as cursor:
        cursor.execute(_masked_values_sql(), [job_id])
        return [value.from_db_value(stored, None, connection) for (stored,) in cursor.fetchall()]
