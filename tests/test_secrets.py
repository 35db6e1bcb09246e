"""Secrets: encrypted at rest, CI/CD variables (masked, protected, scoped) reaching jobs at claim
time in GitLab's precedence, masked in logs, never shown by the admin or the API."""

from __future__ import annotations

import importlib
import itertools
import textwrap
from datetime import timedelta
from types import SimpleNamespace

import pytest
from cryptography.fernet import Fernet
from django.apps import apps as django_apps
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditAction, AuditEvent
from cicd import crypto
from logs.masking import MASK
from logs.selectors import log_text
from pipelines.config.parser import parse_pipeline
from pipelines.config.spec import TriggerContext
from pipelines.models import Pipeline, Repository, Trigger, Variable
from pipelines.variables import (
    ref_is_protected,
    variable_create,
    variable_delete,
    variable_update,
    variables_for_job,
)
from runners.models import Runner
from runners.services import ClaimedJob, job_claim, step_log
from runs.deployments import deployment_approve
from runs.models import Deployment, Environment, PipelineNotifications
from runs.services import run_create

pytestmark = pytest.mark.django_db

_numbers = itertools.count(1)

SINGLE_JOB = """
build:
  script: [make]
"""


def stored(table_model, pk, column: str) -> str:
    """The value as the database holds it (what a dump or a backup shows)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table_model._meta.db_table} WHERE id = %s", [pk])  # noqa: S608
        return cursor.fetchone()[0]


def rows_containing(text: str) -> list[str]:
    """Every table of the database with a row whose text contains `text`."""
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(
                f'SELECT count(*) FROM "{table}" AS t WHERE strpos(row_to_json(t)::text, %s) > 0',  # noqa: S608
                [text],
            )
            if cursor.fetchone()[0]:
                found.append(table)
    return found


def make_repository(**fields) -> Repository:
    return Repository.objects.create(name=f"secrets-{next(_numbers)}", clone_url="/nonexistent", **fields)


def make_run(repository: Repository, config: str = SINGLE_JOB, *, ref: str = "main", is_tag=False, variables=None):
    pipeline, _ = Pipeline.objects.get_or_create(repository=repository, name="default")
    sha = f"{next(_numbers):040x}"
    context = TriggerContext(ref=ref, is_tag=is_tag, commit_sha=sha, default_branch=repository.default_branch)
    spec = parse_pipeline(textwrap.dedent(config), context=context)
    return run_create(
        pipeline=pipeline,
        spec=spec,
        commit_sha=sha,
        branch=ref,
        is_tag=is_tag,
        trigger=Trigger.MANUAL if variables else Trigger.PUSH,
        variables=variables,
    )


def claim() -> ClaimedJob:
    runner = Runner.objects.create(name=f"runner-{next(_numbers)}", tags=[])
    claimed = job_claim(runner=runner)
    assert claimed is not None
    claimed.runner = runner
    return claimed


@pytest.fixture
def repository() -> Repository:
    return make_repository()


# --- Encryption at rest.


def test_a_value_encrypts_to_a_different_ciphertext_each_time_and_decrypts_back() -> None:
    first, second = crypto.encrypt("hunter2-secret"), crypto.encrypt("hunter2-secret")

    assert first != second
    assert first.startswith(crypto.PREFIX) and "hunter2" not in first
    assert crypto.decrypt(first) == crypto.decrypt(second) == "hunter2-secret"
    assert crypto.encrypt("") == ""


def test_repository_secrets_slack_urls_and_variables_are_ciphertext_in_the_database(repository) -> None:
    Repository.objects.filter(pk=repository.pk).update(forge_token="ghp_forge-token-value")
    repository.refresh_from_db()
    pipeline = Pipeline.objects.create(repository=repository, name="default")
    slack = "https://hooks.slack.com/services/T000/B000/slack-secret-path"
    environment = Environment.objects.create(repository=repository, name="staging", slack_webhook_url=slack)
    settings_row = PipelineNotifications.objects.create(pipeline=pipeline, slack_webhook_url=slack + "-2")
    variable = variable_create(repository=repository, key="API_KEY", value="variable-secret-value")

    assert repository.forge_token == "ghp_forge-token-value"
    assert crypto.decrypt(stored(Repository, repository.pk, "webhook_secret")) == repository.webhook_secret
    for plaintext in [
        repository.webhook_secret,
        "ghp_forge-token-value",
        "slack-secret-path",
        "variable-secret-value",
    ]:
        assert rows_containing(plaintext) == [], plaintext
    assert stored(Variable, variable.pk, "value").startswith(crypto.PREFIX)
    assert Environment.objects.get(pk=environment.pk).slack_webhook_url == slack
    assert PipelineNotifications.objects.get(pk=settings_row.pk).slack_webhook_url == slack + "-2"


def test_an_empty_secret_is_stored_empty_so_is_it_set_lookups_keep_working(repository) -> None:
    assert stored(Repository, repository.pk, "forge_token") == ""
    assert Repository.objects.filter(pk=repository.pk, forge_token="").exists()
    Repository.objects.filter(pk=repository.pk).update(forge_token="set")
    assert not Repository.objects.filter(pk=repository.pk, forge_token="").exists()


def test_the_data_migrations_encrypt_plaintext_rows_and_leave_encrypted_ones(repository) -> None:
    pipeline = Pipeline.objects.create(repository=repository, name="default")
    settings_row = PipelineNotifications.objects.create(pipeline=pipeline)
    already = stored(Repository, repository.pk, "webhook_secret")
    with connection.cursor() as cursor:
        # Rows as they were before the migrations: plaintext.
        cursor.execute(
            f"UPDATE {Repository._meta.db_table} SET forge_token = 'legacy-token' WHERE id = %s",  # noqa: S608
            [repository.pk],
        )
        cursor.execute(
            f"UPDATE {PipelineNotifications._meta.db_table} SET slack_webhook_url = 'https://legacy.example/hook' "  # noqa: S608
            "WHERE id = %s",
            [settings_row.pk],
        )
    editor = SimpleNamespace(connection=connection)

    for module in [
        "pipelines.migrations.0005_encrypt_existing_secrets",
        "runs.migrations.0006_encrypt_existing_slack_webhook_urls",
    ]:  # noqa: E501
        importlib.import_module(module).encrypt(django_apps, editor)

    assert stored(Repository, repository.pk, "webhook_secret") == already  # not encrypted twice
    assert rows_containing("legacy-token") == [] and rows_containing("legacy.example") == []
    repository.refresh_from_db()
    assert repository.forge_token == "legacy-token"
    assert PipelineNotifications.objects.get(pk=settings_row.pk).slack_webhook_url == "https://legacy.example/hook"
    # And back, for a rolled back migration.
    importlib.import_module("pipelines.migrations.0005_encrypt_existing_secrets").decrypt(django_apps, editor)
    assert stored(Repository, repository.pk, "forge_token") == "legacy-token"


def test_a_rotated_key_still_decrypts_with_the_old_one_and_reencrypt_moves_everything_to_the_new(
    repository, settings
) -> None:
    variable = variable_create(repository=repository, key="ROTATED", value="before-rotation")
    old_key = settings.CONVEYOR_ENCRYPTION_KEY
    settings.CONVEYOR_ENCRYPTION_KEY = Fernet.generate_key().decode()
    settings.CONVEYOR_ENCRYPTION_OLD_KEYS = [old_key]

    assert Variable.objects.get(pk=variable.pk).value == "before-rotation"
    call_command("reencrypt_secrets", stdout=None)

    settings.CONVEYOR_ENCRYPTION_OLD_KEYS = []  # the old key is gone for good
    assert Variable.objects.get(pk=variable.pk).value == "before-rotation"
    repository.refresh_from_db()
    assert repository.webhook_secret


def test_a_value_no_configured_key_opens_is_a_clear_error(repository, settings) -> None:
    variable_create(repository=repository, key="LOST", value="encrypted-with-a-lost-key")
    settings.CONVEYOR_ENCRYPTION_KEY = Fernet.generate_key().decode()

    with pytest.raises(crypto.DecryptionError, match="CONVEYOR_ENCRYPTION_OLD_KEYS"):
        Variable.objects.get(key="LOST")


def test_a_ciphertext_read_again_is_decrypted_once_and_a_key_that_cannot_open_it_still_refuses_it(
    settings, monkeypatch
) -> None:
    stored = crypto.encrypt("read-on-every-delivery")
    opened = []
    fernet = crypto._fernet
    monkeypatch.setattr(crypto, "_fernet", lambda keys: opened.append(keys) or fernet(keys))

    assert crypto.decrypt(stored) == crypto.decrypt(stored) == "read-on-every-delivery"
    assert len(opened) == 1
    settings.CONVEYOR_ENCRYPTION_KEY = Fernet.generate_key().decode()  # the key it was made with is gone
    with pytest.raises(crypto.DecryptionError, match="CONVEYOR_ENCRYPTION_OLD_KEYS"):
        crypto.decrypt(stored)


def test_a_bad_encryption_key_setting_fails_at_start_up() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="Fernet key"):
        crypto.check_key("CONVEYOR_ENCRYPTION_KEY", "not-a-key")
    assert crypto.check_key("X", crypto.derive_key("some secret")) == crypto.derive_key("some secret")


# --- Validation.


@pytest.mark.parametrize(
    ("key", "value", "masked", "field"),
    [
        ("1ABC", "value", False, "key"),
        ("WITH-DASH", "value", False, "key"),
        ("CI_JOB_TOKEN", "value", False, "key"),
        ("SHORT", "1234567", True, "value"),
        ("MULTILINE", "line one\nline two", True, "value"),
        ("NUL", "bad\x00value", False, "value"),
    ],
)
def test_bad_variables_are_refused_with_a_message_and_nothing_is_stored(repository, key, value, masked, field) -> None:
    with pytest.raises(ValidationError) as caught:
        variable_create(repository=repository, key=key, value=value, masked=masked)

    assert field in caught.value.message_dict
    assert not Variable.objects.exists()
    assert not AuditEvent.objects.filter(action=AuditAction.VARIABLE_CREATE).exists()


def test_a_masked_value_must_stay_maskable_when_changed(repository) -> None:
    variable = variable_create(repository=repository, key="TOKEN", value="long-enough-value", masked=True)

    with pytest.raises(ValidationError, match="at least 8 characters"):
        variable_update(variable=variable, value="short")
    assert Variable.objects.get(pk=variable.pk).value == "long-enough-value"


def test_a_key_is_set_once_per_environment_scope(repository) -> None:
    variable_create(repository=repository, key="URL", value="everywhere")
    variable_create(repository=repository, key="URL", value="prod only", environment_scope="production")

    with pytest.raises(ValidationError, match="already set"):
        variable_create(repository=repository, key="URL", value="again")


# --- Protected refs.


@pytest.mark.parametrize(
    ("patterns", "ref", "protected"),
    [
        ("", "main", True),
        ("", "feature/x", False),
        ("release/*\nv*", "release/1.2", True),
        ("release/*\nv*", "v2.0", True),
        ("release/*\nv*", "main", False),  # listing patterns replaces the default
        ("main\n", "Main", False),  # case-sensitive, as git is
        ("", "", False),
    ],
)
def test_protected_refs_are_globs_defaulting_to_the_default_branch(patterns, ref, protected) -> None:
    assert ref_is_protected(protected_refs=patterns, default_branch="main", ref=ref) is protected


# --- What jobs get.


def test_variables_reach_the_claimed_job_decrypted_and_are_not_stored_in_the_job_row(repository) -> None:
    variable_create(repository=repository, key="DEPLOY_KEY", value="claimed-secret-value", masked=True)
    variable_create(repository=repository, key="REGION", value="eu-west-1")
    make_run(repository)

    claimed = claim()

    assert claimed.variables["DEPLOY_KEY"] == "claimed-secret-value"
    assert claimed.variables["REGION"] == "eu-west-1"
    assert claimed.masked_variables == ["DEPLOY_KEY", "CI_JOB_TOKEN"]
    assert rows_containing("claimed-secret-value") == []


def test_the_claim_costs_one_query_more_for_variables(repository, django_assert_num_queries) -> None:
    for n in range(5):
        variable_create(repository=repository, key=f"VAR_{n}", value=f"value-{n}")
    make_run(repository)
    # Seen "just now" (in the future, whatever the machine's speed): the claim writes no last_seen_at.
    runner = Runner.objects.create(name="counted", tags=[], last_seen_at=timezone.now() + timedelta(hours=1))

    # The claim statement, and the variables: however many there are.
    with django_assert_num_queries(2):
        claimed = job_claim(runner=runner)
    assert claimed.variables["VAR_4"] == "value-4"


def test_precedence_is_config_then_repository_variables_then_trigger_variables(repository) -> None:
    config = """
    variables:
      FROM_CONFIG: config
      OVERRIDDEN_BY_PROJECT: config
      OVERRIDDEN_BY_TRIGGER: config
    build:
      script: [make]
    """
    variable_create(repository=repository, key="OVERRIDDEN_BY_PROJECT", value="project")
    variable_create(repository=repository, key="OVERRIDDEN_BY_TRIGGER", value="project")
    make_run(repository, config, variables={"OVERRIDDEN_BY_TRIGGER": "trigger"})

    variables = claim().variables

    assert variables["FROM_CONFIG"] == "config"
    assert variables["OVERRIDDEN_BY_PROJECT"] == "project"
    assert variables["OVERRIDDEN_BY_TRIGGER"] == "trigger"


def test_protected_variables_reach_only_runs_of_protected_refs(repository) -> None:
    Repository.objects.filter(pk=repository.pk).update(protected_refs="main\nv*")
    variable_create(repository=repository, key="PROD_TOKEN", value="protected-value", protected=True)
    variable_create(repository=repository, key="PLAIN", value="everyone")

    make_run(repository, ref="feature/login")
    feature = claim().variables
    make_run(repository, ref="v1.0", is_tag=True)
    tag = claim().variables
    make_run(repository, ref="main")
    main = claim().variables

    assert "PROD_TOKEN" not in feature and feature["PLAIN"] == "everyone"
    assert tag["PROD_TOKEN"] == "protected-value"
    assert main["PROD_TOKEN"] == "protected-value"


def test_protected_variables_reach_a_deploy_to_a_protected_environment_from_any_ref(repository) -> None:
    Environment.objects.create(repository=repository, name="production", protected=True)
    variable_create(repository=repository, key="PROD_TOKEN", value="protected-value", protected=True)
    approver = get_user_model().objects.create_superuser("approver")
    make_run(repository, "deploy:\n  script: [deploy]\n  environment: production\n", ref="hotfix/1")
    deployment_approve(deployment=Deployment.objects.get(), user=approver)

    assert claim().variables["PROD_TOKEN"] == "protected-value"


def test_an_environment_scoped_variable_reaches_only_that_environments_jobs_and_the_most_specific_wins(
    repository,
) -> None:
    variable_create(repository=repository, key="URL", value="default")
    variable_create(repository=repository, key="URL", value="any review app", environment_scope="review/*")
    variable_create(repository=repository, key="URL", value="staging", environment_scope="staging")
    variable_create(repository=repository, key="ONLY_STAGING", value="yes", environment_scope="staging")

    def get(environment: str) -> dict[str, str]:
        return variables_for_job(
            repository_name=repository.name, default_branch="main", ref="main", environment=environment
        ).values

    assert get("") == {"URL": "default"}
    assert get("review/feature-1") == {"URL": "any review app"}
    assert get("staging") == {"URL": "staging", "ONLY_STAGING": "yes"}
    assert get("production") == {"URL": "default"}


# --- Masking in logs.


def test_a_masked_variable_is_masked_at_ingest_even_split_across_two_chunks(repository) -> None:
    secret = "split-secret-0123456789"
    variable_create(repository=repository, key="SPLIT", value=secret, masked=True)
    variable_create(repository=repository, key="VISIBLE", value="not-a-secret-value")
    make_run(repository)
    claimed = claim()
    step = claimed.steps[0]
    first = f"token: {secret[:9]}"
    second = f"{secret[9:]} and not-a-secret-value\nagain {secret}\n"

    offset = step_log(job_id=claimed.id, step_id=step.id, offset=0, text=first, job_token=claimed.job_token)
    step_log(job_id=claimed.id, step_id=step.id, offset=offset, text=second, job_token=claimed.job_token)

    text = log_text(step=step.id)
    assert secret not in text and secret[:9] not in text
    assert text == f"token: {MASK} and not-a-secret-value\nagain {MASK}\n"


def test_the_runner_masks_masked_variables_before_sending(repository) -> None:
    from runners.executors.base import job_masked_values

    variable_create(repository=repository, key="RUNNER_SIDE", value="masked-on-the-runner", masked=True)
    make_run(repository)
    claimed = claim()

    assert set(job_masked_values(claimed)) == {"masked-on-the-runner", claimed.job_token}


# --- Never shown.


@pytest.fixture
def admin_client_with_variable(admin_client, repository):
    variable = variable_create(repository=repository, key="SHOWN_NOWHERE", value="admin-invisible-value", masked=True)
    return admin_client, variable


def test_the_admin_never_shows_a_variables_value(admin_client_with_variable, repository) -> None:
    client, variable = admin_client_with_variable
    pages = [
        reverse("admin:pipelines_variable_changelist"),
        reverse("admin:pipelines_variable_changelist") + "?q=SHOWN",
        reverse("admin:pipelines_variable_change", args=[variable.pk]),
        reverse("admin:pipelines_repository_change", args=[repository.pk]),
        reverse("admin:audit_auditevent_changelist"),
    ]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        html = response.content.decode()
        assert "admin-invisible-value" not in html, page
        assert crypto.PREFIX not in html, page
    assert "SHOWN_NOWHERE" in client.get(pages[0]).content.decode()


def test_the_admin_keeps_a_value_left_blank_and_refuses_an_unmaskable_one(admin_client_with_variable) -> None:
    client, variable = admin_client_with_variable
    url = reverse("admin:pipelines_variable_change", args=[variable.pk])
    form = {"key": "SHOWN_NOWHERE", "value": "", "masked": "on", "environment_scope": "*", "description": ""}

    kept = client.post(url, form)
    assert kept.status_code == 302, kept.context["adminform"].form.errors
    assert Variable.objects.get(pk=variable.pk).value == "admin-invisible-value"
    refused = client.post(url, {**form, "value": "short"})
    assert refused.status_code == 200
    assert "at least 8 characters" in refused.content.decode()
    assert Variable.objects.get(pk=variable.pk).value == "admin-invisible-value"
    assert client.post(url, {**form, "value": "a-new-long-value"}).status_code == 302
    assert Variable.objects.get(pk=variable.pk).value == "a-new-long-value"


def test_the_admin_adds_and_deletes_variables_through_the_audited_services(admin_client, repository) -> None:
    form = {
        "repository": repository.pk,
        "key": "ADDED",
        "value": "added-in-the-admin",
        "environment_scope": "*",
        "description": "",
    }
    assert admin_client.post(reverse("admin:pipelines_variable_add"), form).status_code == 302
    variable = Variable.objects.get(key="ADDED")
    assert variable.value == "added-in-the-admin"
    delete = reverse("admin:pipelines_variable_delete", args=[variable.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302

    actions = list(AuditEvent.objects.order_by("id").values_list("action", "actor", "details"))
    assert [a for a, _, _ in actions] == [AuditAction.VARIABLE_CREATE, AuditAction.VARIABLE_DELETE]
    assert all(actor == "admin" and "added-in-the-admin" not in str(details) for _, actor, details in actions)


def test_the_repository_api_never_returns_secrets(repository) -> None:
    Repository.objects.filter(pk=repository.pk).update(forge_token="ghp_api-hidden-token")
    variable_create(repository=repository, key="API_HIDDEN", value="api-hidden-value")
    admin = get_user_model().objects.create_superuser("api-admin")
    client = Client()
    client.force_login(admin)

    listing = client.get("/api/v1/repositories/").content.decode()

    assert repository.name in listing
    for secret in ["ghp_api-hidden-token", "api-hidden-value", repository.webhook_secret, crypto.PREFIX]:
        assert secret not in listing


def test_variable_changes_are_audited_without_their_values(repository) -> None:
    user = get_user_model().objects.create_user("maintainer")
    variable = variable_create(repository=repository, key="AUDITED", value="audited-value-1", user=user)
    variable_update(variable=variable, value="audited-value-2", protected=True, user=user)
    variable_update(variable=variable, value="audited-value-2", user=user)  # no change: no event
    variable_delete(variable=variable, user=user)

    events = list(AuditEvent.objects.filter(repository=repository).order_by("id"))
    assert [e.action for e in events] == [
        AuditAction.VARIABLE_CREATE,
        AuditAction.VARIABLE_UPDATE,
        AuditAction.VARIABLE_DELETE,
    ]
    assert events[1].details["changed"] == ["protected", "value"]
    assert {e.actor for e in events} == {"maintainer"}
    assert rows_containing("audited-value") == []


def test_a_job_whose_variables_cannot_be_decrypted_fails_saying_why_and_the_claim_goes_on(repository, settings) -> None:
    from runs.models import Job, JobStatus

    variable_create(repository=repository, key="UNREADABLE", value="encrypted-with-another-key")
    unreadable = make_run(repository)
    readable = make_run(make_repository())  # queued behind it, in a repository without variables
    settings.CONVEYOR_ENCRYPTION_KEY = Fernet.generate_key().decode()  # a runner with another key

    claimed = job_claim(runner=Runner.objects.create(name="wrong-key", tags=[]))

    failed = Job.objects.get(run=unreadable)
    assert failed.status == JobStatus.FAILURE
    assert "CONVEYOR_ENCRYPTION_KEY" in failed.status_reason
    assert claimed is not None and claimed.id == str(Job.objects.get(run=readable).pk)


# --- The REST API of variables (maintainers only; values write-only).


@pytest.fixture
def people(repository):
    from tests.access import make_people

    Repository.objects.filter(pk=repository.pk).update(is_private=True)
    return make_people(repository)


def api_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("role", "status"),
    [("outsider", 404), ("viewer", 403), ("developer", 403), ("maintainer", 200), ("superuser", 200)],
)
def test_only_maintainers_may_list_a_repositorys_variables(people, repository, role, status) -> None:
    variable_create(repository=repository, key="LISTED", value="listed-secret-value")

    response = api_client(people[role]).get(f"/api/v1/repositories/{repository.name}/variables/")

    assert response.status_code == status
    assert "listed-secret-value" not in response.content.decode()
    if status == 200:
        assert [row["key"] for row in response.json()] == ["LISTED"]
        assert "value" not in response.json()[0]


def test_a_maintainer_creates_changes_and_deletes_a_variable_without_ever_reading_its_value(people, repository) -> None:
    client = api_client(people["maintainer"])
    url = f"/api/v1/repositories/{repository.name}/variables/"

    created = client.post(
        url, {"key": "NEW_KEY", "value": "api-written-value", "masked": True}, content_type="application/json"
    )
    variable = Variable.objects.get(key="NEW_KEY")
    changed = client.patch(f"{url}{variable.pk}/", {"protected": True}, content_type="application/json")
    deleted = client.delete(f"{url}{variable.pk}/")

    assert created.status_code == 201, created.content
    assert changed.status_code == 200 and changed.json()["protected"] is True
    for response in (created, changed):
        assert "api-written-value" not in response.content.decode() and "value" not in response.json()
    assert deleted.status_code == 204 and not Variable.objects.exists()
    assert [e.action for e in AuditEvent.objects.order_by("id")] == [
        AuditAction.VARIABLE_CREATE,
        AuditAction.VARIABLE_UPDATE,
        AuditAction.VARIABLE_DELETE,
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"key": "SHORT_MASKED", "value": "short", "masked": True}, "value"),
        ({"key": "1BAD", "value": "whatever"}, "key"),
        ({"key": "NO_VALUE"}, "value"),
        ({"key": "NUL", "value": "x", "description": "a\x00b"}, "description"),
        ({"key": "SCOPE", "value": "x", "environment_scope": ""}, "environment_scope"),
        ({"key": "K" * 300, "value": "x"}, "key"),
    ],
)
def test_bad_variables_through_the_api_are_a_400_naming_the_field(people, repository, body, field) -> None:
    response = api_client(people["maintainer"]).post(
        f"/api/v1/repositories/{repository.name}/variables/", body, content_type="application/json"
    )

    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not Variable.objects.exists()


def test_a_second_variable_with_the_same_key_and_scope_is_a_400(people, repository) -> None:
    variable_create(repository=repository, key="TAKEN", value="first")

    response = api_client(people["maintainer"]).post(
        f"/api/v1/repositories/{repository.name}/variables/",
        {"key": "TAKEN", "value": "second"},
        content_type="application/json",
    )

    assert response.status_code == 400 and "already set" in response.json()["key"][0]
