"""Fuzzing with hypothesis, beyond the property tests beside the code (the parser's in
pipelines/tests/test_config_properties.py, the webhook endpoints' in test_webhook_views.py):

- configs whose jobs extend, reference, anchor and need one another in random graphs, with
  random `rules: if:` expressions and variables: a spec or a ConfigError with messages;
- the lint API over HTTP with random bodies and content types: a 2xx or a 4xx, never a 500;
- webhook deliveries end to end: whatever arrives, the answer is a 2xx or a 4xx, a refused
  request leaves no row behind, and an accepted one is processed (against a real git
  repository) to a final status without the processor's safety net ever being needed.

CONVEYOR_FUZZ_EXAMPLES sets the examples per test (default 60).
"""

from __future__ import annotations

import json
import os
import uuid
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.config.dag import effective_edges
from pipelines.config.parser import parse_pipeline
from pipelines.config.spec import ConfigError, TriggerContext
from pipelines.deliveries import delivery_process
from pipelines.models import DeliveryStatus, WebhookDelivery
from pipelines.tests import webhook_payloads as p
from pipelines.tests.conftest import SECRET
from runs.models import PipelineRun

EXAMPLES = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
COUNTS: dict[str, int] = {}


def counted(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def print_counts(request):
    """What the examples exercised, printed once the module is done (seen with -s)."""
    yield
    if COUNTS:
        print("\nfuzz counts:", json.dumps(dict(sorted(COUNTS.items()))))


# --- Configs: random graphs of extends, !reference, anchors and needs.

NAMES = ["a", "b", "c", ".t", ".u"]
VARIABLES = ["X", "Y", "CI_COMMIT_BRANCH", "CI_PIPELINE_SOURCE", "CI_COMMIT_TAG", "NOPE"]

atoms = st.sampled_from(
    [f"${name}" for name in VARIABLES]
    + ['"main"', "'x'", "null", "/^v[0-9]+/", "/(/", "/(a+)+$/", "/^feat/i", '"$X"', "$", '"', "1", "(", ")"]
)
expressions = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["==", "!=", "=~", "!~", "&&", "||", ""]), inner).map(" ".join),
        inner.map(lambda e: f"({e})"),
    ),
    max_leaves=8,
)


def quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@st.composite
def composed_configs(draw) -> str:
    """A config text whose jobs and templates point at each other (or at nothing)."""
    lines: list[str] = []
    if draw(st.booleans()):
        stages = draw(st.lists(st.sampled_from(["build", "x", "deploy"]), unique=True, max_size=2))
        lines.append(f"stages: [{', '.join([*stages, 'test'])}]")
    if draw(st.booleans()):
        values = draw(
            st.lists(st.sampled_from(["X: y", "Y: $X", "X: $Y", "Z: '${X}${Y}'", "W: $W"]), unique=True, max_size=3)
        )
        lines.append("variables: {" + ", ".join(values) + "}")
    anchors: list[str] = []
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True, min_size=1, max_size=5)):
        anchor = f"x{len(anchors)}"
        lines.append(f"{name}: &{anchor}" if draw(st.booleans()) else f"{name}:")
        if f"{name}: &{anchor}" in lines[-1]:
            anchors.append(anchor)
        elif anchors and draw(st.booleans()):
            lines.append(f"  <<: *{draw(st.sampled_from(anchors))}")
        extends = draw(
            st.one_of(st.none(), st.none(), st.sampled_from([*NAMES, "missing"]), st.lists(st.sampled_from(NAMES)))
        )
        if extends is not None:
            lines.append(f"  extends: {json.dumps(extends)}")
        script = draw(
            st.sampled_from(
                ["echo hi"] * 6
                + ["[a, [b, [c]]]", "!reference [.t, script]", "!reference [a, nope]", "!reference [b]"]
                + [f"*{anchor}" for anchor in anchors]
                + [None]
            )
        )
        if script is not None:
            lines.append(f"  script: {script}")
        needs = draw(
            st.one_of(
                st.none(),
                st.lists(st.sampled_from([*NAMES, "missing"]), max_size=3).map(json.dumps),
                st.sampled_from(
                    ["[{job: a, optional: true}]", "[{job: b, artifacts: false}]", "[{pipeline: x}]", "a", "[[a]]"]
                ),
            )
        )
        if needs is not None:
            lines.append(f"  needs: {needs}")
        rules = draw(st.integers(0, 2))
        if rules:
            lines.append("  rules:")
        for _ in range(rules):
            when = draw(st.sampled_from(["", ", when: manual", ", when: never", ", when: delayed, start_in: 1h"]))
            lines.append(f"    - {{if: {quoted(draw(expressions))}{when}}}")
        if draw(st.integers(0, 3)) == 0:
            lines.append(f"  parallel: {draw(st.sampled_from(['2', '3', '{matrix: [{A: [1, 2]}]}', '0', 'x']))}")
    return "\n".join(lines) + "\n"


CONTEXTS = st.builds(
    TriggerContext,
    source=st.sampled_from(["push", "merge_request_event", "schedule", "api"]),
    ref=st.sampled_from(["main", "feature/x", "v1"]),
    is_tag=st.booleans(),
    variables=st.dictionaries(st.sampled_from(["X", "Y"]), st.sampled_from(["", "y", "main", "$X"]), max_size=2),
)


@FUZZ
@given(composed_configs(), CONTEXTS)
def test_configs_whose_jobs_point_at_each_other_give_a_spec_or_config_errors_with_messages(text, context):
    try:
        spec = parse_pipeline(text, context=context, read_file=lambda path: (_ for _ in ()).throw(FileNotFoundError))
    except ConfigError as exc:
        counted("config: errors")
        assert exc.problems and all(problem.message for problem in exc.problems)
        assert not any("internal error" in problem.message for problem in exc.problems), exc.problems
    else:
        counted("config: specs")
        assert set(effective_edges(spec)) == {job.name for job in spec.jobs}


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), expressions), min_size=1, max_size=4), CONTEXTS)
def test_random_rule_expressions_are_evaluated_or_reported_as_config_errors(rules, context):
    text = "".join(f"{name}:\n  script: x\n  rules:\n    - if: {quoted(expression)}\n" for name, expression in rules)
    try:
        parse_pipeline(text, context=context)
    except ConfigError as exc:
        counted("expressions: errors")
        assert not any("internal error" in problem.message for problem in exc.problems), exc.problems
    else:
        counted("expressions: evaluated")


# --- The lint API over HTTP.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
lint_bodies = st.one_of(
    st.binary(max_size=200),
    composed_configs().map(str.encode),
    st.fixed_dictionaries(
        {},
        optional={
            "config": st.one_of(composed_configs(), json_values),
            "ref": json_values,
            "event": st.one_of(st.sampled_from(["push", "api", "nope"]), json_values),
            "tag": json_values,
            "variables": st.one_of(
                st.dictionaries(st.text(max_size=12), st.one_of(st.text(max_size=12), json_values), max_size=3),
                json_values,
            ),
        },
    ).map(lambda body: json.dumps(body).encode()),
)
content_types = st.sampled_from(
    ["application/json", "text/plain", "application/yaml", "", "multipart/form-data; boundary=x"]
    + ["application/json; charset=latin-1", "application/x-www-form-urlencoded", "text/plain; charset=utf-16"]
)


@pytest.fixture
def lint_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("linter"))
    return client


@FUZZ
@pytest.mark.django_db
@given(body=lint_bodies, content_type=content_types)
def test_the_lint_api_answers_any_body_with_a_report_or_a_client_error(lint_client, body, content_type):
    response = lint_client.generic("POST", "/api/v1/lint/", data=body, content_type=content_type)

    counted(f"lint: {response.status_code}")
    assert response.status_code in {200, 400, 413, 415}, response.content[:500]
    if response.status_code == 200:
        assert set(response.json()) >= {"stages", "jobs", "errors", "warnings"}
    else:
        assert response.json()


# --- Webhook deliveries, received and processed.

HEADER_SPELLINGS = [str.lower, str.upper, lambda name: name]
SHAPES = ["github push", "github pr", "github ping", "gitlab push", "gitlab tag", "gitlab mr", "generic push"]


def shape(kind: str, forge, sha: str, ref: str) -> tuple[str, str, dict]:
    path = forge.repository.forge_project
    if kind == "github push":
        return "github", "push", p.github_push(ref=ref, after=sha, full_name=path)
    if kind == "github pr":
        return "github", "pull_request", p.github_pull_request(action="opened", head_sha=sha, full_name=path)
    if kind == "github ping":
        return "github", "ping", p.github_ping(full_name=path)
    if kind == "gitlab push":
        return "gitlab", "Push Hook", p.gitlab_push(ref=ref, after=sha, path=path)
    if kind == "gitlab tag":
        return "gitlab", "Tag Push Hook", p.gitlab_push(ref="refs/tags/v1", after=sha, path=path, tag=True)
    if kind == "gitlab mr":
        return "gitlab", "Merge Request Hook", p.gitlab_merge_request(action="update", last_commit=sha, oldrev=sha)
    return "generic", "", {"repository": forge.repository.name, "ref": ref, "after": sha}


@st.composite
def deliveries(draw, forge):
    provider, event, payload = shape(
        draw(st.sampled_from(SHAPES)),
        forge,
        draw(st.sampled_from([forge.sha, "f" * 40, forge.sha.upper(), forge.sha[:39], "0" * 40])),
        draw(st.sampled_from(["refs/heads/main", "refs/heads/feature/x", "main", "refs/tags/v2", "refs/pull/1"])),
    )
    for key in draw(st.lists(st.sampled_from(sorted(payload)), max_size=2)):
        payload[key] = draw(json_values)
    body = json.dumps(payload).encode()
    content_type = draw(st.sampled_from(["application/json", "APPLICATION/JSON; charset=utf-8", "text/plain", ""]))
    if draw(st.integers(0, 4)) == 0:
        body = urlencode({"payload": body.decode()}).encode()
        content_type = "application/x-www-form-urlencoded"
    signature = draw(
        st.sampled_from(
            [p.sign(SECRET, body), p.sign(SECRET, body).upper(), p.sign("wrong", body), "sha1=abc", "", "sha256="]
        )
    )
    spelled = draw(st.sampled_from(HEADER_SPELLINGS))
    headers = {
        spelled("X-GitHub-Event"): event,
        spelled("X-Gitlab-Event"): event,
        spelled("X-Hub-Signature-256"): signature,
        spelled("X-Conveyor-Signature-256"): signature,
        spelled("X-Gitlab-Token"): draw(st.sampled_from([SECRET, SECRET.upper(), "", "é"])),
        spelled("Idempotency-Key"): draw(st.one_of(st.just(str(uuid.uuid4())), st.text(max_size=250))),
        spelled("X-GitHub-Delivery"): str(uuid.uuid4()),
    }
    headers = {name: value for name, value in headers.items() if value and "\n" not in value and "\r" not in value}
    query = draw(st.sampled_from(["", f"?repository={forge.repository.name}", "?repository=nope"]))
    return provider, body, content_type, headers, query


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_any_webhook_delivery_is_refused_leaving_nothing_or_accepted_and_processed_to_an_end(client, forge, data):
    provider, body, content_type, headers, query = data.draw(deliveries(forge))
    deliveries_before = WebhookDelivery.objects.count()
    runs_before = PipelineRun.objects.count()

    response = client.generic(
        "POST", f"/webhooks/{provider}/{query}", data=body, content_type=content_type, headers=headers
    )

    counted(f"webhook: {response.status_code}")
    assert response.status_code in {200, 202, 400, 401, 404}, response.content[:500]
    assert response.json()
    # Runs are created by the processor, never by the request itself.
    assert PipelineRun.objects.count() == runs_before
    if response.status_code >= 400:
        assert WebhookDelivery.objects.count() == deliveries_before
        return
    # A new delivery is stored once (202 queued or ignored, 200 pong); a redelivery (200) adds none.
    added = WebhookDelivery.objects.count() - deliveries_before
    assert added == (0 if response.json()["status"] in {"duplicate", "requeued"} else 1), response.json()
    queued = WebhookDelivery.objects.filter(status=DeliveryStatus.QUEUED).order_by("-pk").first()
    if queued is None:
        return
    delivery = delivery_process(delivery_id=queued.pk)

    assert delivery is not None
    delivery.refresh_from_db()
    counted(f"processed: {delivery.status}")
    assert delivery.status in {
        DeliveryStatus.DONE,
        DeliveryStatus.SKIPPED,
        DeliveryStatus.IGNORED,
        DeliveryStatus.FAILED,
    }
    # The processor turns any exception into FAILED "internal error": it must never be needed.
    assert delivery.result != "internal error", delivery.error_message
    if delivery.status == DeliveryStatus.DONE:
        assert delivery.runs.exists()
    else:
        assert PipelineRun.objects.count() == runs_before


# --- The runner API (a machine protocol, outside the OpenAPI schema).

RUNNER_FIELDS = ["offset", "content", "status", "exit_code", "reason", "name", "tags", "concurrency", "executor"]
RUNNER_FIELDS += ["registration_token", "version"]
runner_values = st.one_of(
    json_values,
    st.sampled_from(["SUCCESS", "FAILURE", "CANCELLED", "RUNNING", "shell", "kubernetes", "cvg_registration"]),
    st.integers(-(2**40), 2**40),
    st.text(alphabet=st.sampled_from(["a", "\x00", "\ud800", "é", "\n"]), max_size=5),
)
runner_bodies = st.one_of(
    st.binary(max_size=40),
    st.fixed_dictionaries({"offset": st.integers(-1, 40), "content": st.text(max_size=20)}).map(
        lambda body: json.dumps(body).encode("utf-8", "surrogatepass")
    ),
    st.fixed_dictionaries({"status": st.sampled_from(["SUCCESS", "FAILURE", "x"]), "exit_code": runner_values}).map(
        lambda body: json.dumps(body).encode("utf-8", "surrogatepass")
    ),
    st.dictionaries(st.sampled_from(RUNNER_FIELDS), runner_values, max_size=5).map(
        lambda body: json.dumps(body).encode("utf-8", "surrogatepass")
    ),
)


@pytest.fixture
def held_job(db):
    """A runner's token and the job it holds (RUNNING, one step), and a registration token."""
    from cicd.tokens import token_hash
    from runners.models import RegistrationToken, Runner
    from runners.services import job_claim
    from tests.test_huge_inputs import running_job_with_a_step

    token, step = running_job_with_a_step()
    claimed = job_claim(runner=Runner.objects.get(token_hash=token_hash(token)))
    assert claimed is not None
    RegistrationToken.objects.create(description="fuzz", token_hash=token_hash("cvg_registration"))
    return token, claimed


@FUZZ
@given(data=st.data())
def test_the_runner_api_answers_any_body_with_json_and_never_a_server_error(client, held_job, data):
    token, job = held_job
    step = job.steps[0].id
    path = data.draw(
        st.sampled_from(
            ["register", f"jobs/{job.id}/heartbeat", f"jobs/{job.id}/finish", f"jobs/{job.id}/release"]
            + [f"jobs/{job.id}/steps/{step}/{action}" for action in ("start", "finish", "log")]
        )
    )
    auth = data.draw(
        st.sampled_from([f"Bearer {token}"] * 4 + [f"Bearer {job.job_token}"] * 2 + ["Bearer nope", "", "Basic x"])
    )
    body = data.draw(runner_bodies)
    content_type = data.draw(st.sampled_from(["application/json", "text/plain", ""]))

    response = client.generic(
        "POST", f"/api/runner/{path}", data=body, content_type=content_type, headers={"Authorization": auth}
    )

    counted(f"runner api: {response.status_code}")
    assert response.status_code < 500, response.content[:500]
    assert response.json() is not None
