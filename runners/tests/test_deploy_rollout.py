"""Kubernetes rollouts against a fake API server (real HTTP, the real `kubernetes` client)."""

from __future__ import annotations

import socket
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from runners.deploy import (
    DeploySpecError,
    RolloutResult,
    RolloutStatus,
    Strategy,
    api_client_for,
    parse_deploy_spec,
    rollout,
)
from runners.tests.k8s_apps_fake import Behaviour, FakeCluster

V1 = "registry.test/shop/web:1.0"
V2 = "registry.test/shop/web:2.0"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"


@pytest.fixture
def cluster():
    with FakeCluster() as fake:
        fake.add_deployment("shop", "web", image=V1, replicas=3)
        yield fake


class Smoke:
    """A stand-in for the deployed app's health endpoint: answers each path with a chosen status."""

    def __init__(self) -> None:
        self.statuses: dict[str, list[int]] = {}
        self.hits: list[str] = []
        smoke = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                smoke.hits.append(self.path)
                answers = smoke.statuses.get(self.path) or [404]
                # The last status repeats: [500, 200] fails once, then passes.
                status = answers.pop(0) if len(answers) > 1 else answers[0]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self, path: str, *statuses: int) -> str:
        self.statuses[path] = list(statuses)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture
def smoke():
    server = Smoke()
    yield server
    server.server.shutdown()
    server.server.server_close()


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self)


def deploy(cluster: FakeCluster, log: Log | None = None, **keys: Any) -> RolloutResult:
    options = {k: keys.pop(k) for k in ("stop", "smoke_env", "change_cause") if k in keys}
    section = {"namespace": "shop", "deployment": "web", "image": V2, "rollout_timeout": 20} | keys
    return rollout(
        parse_deploy_spec(section),
        log=log if log is not None else Log(),
        api_client=cluster.api_client(),
        watch_window_s=1,
        **options,
    )


def web_pods_run_only(cluster: FakeCluster, image: str) -> bool:
    return cluster.rolled_out("shop", "web") and cluster.pod_images("shop", "app=web") == [image] * 3


# --- rolling updates ---------------------------------------------------------------------------


def test_a_healthy_rolling_update_moves_every_pod_to_the_new_image(cluster):
    log = Log()

    result = deploy(cluster, log)

    assert result.status is RolloutStatus.SUCCEEDED
    assert (result.previous_image, result.new_image) == (V1, V2)
    assert (result.previous_revision, result.new_revision) == (1, 2)
    assert cluster.image_of("shop", "web") == V2
    assert web_pods_run_only(cluster, V2)
    assert 'deployment "web" successfully rolled out' in log
    # What `kubectl set image` sends: a strategic merge patch naming only the container.
    assert cluster.patches == [
        (
            "/apis/apps/v1/namespaces/shop/deployments/web",
            STRATEGIC_MERGE,
            {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": V2}]}}}},
        )
    ]


def test_the_log_tells_the_rollout_step_by_step(cluster):
    log = Log()

    deploy(cluster, log)

    assert log[0] == f"Rolling update of deployment shop/web to {V2}"
    assert f"Setting image: kubectl set image deployment/web app={V2} -n shop" in log
    assert any("out of 3 new replicas have been updated" in line for line in log)
    assert log[-1] == f"Deployed {V2} to deployment shop/web (revision 2)"


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (Behaviour.CRASH_LOOP, "CrashLoopBackOff"),
        (Behaviour.IMAGE_PULL_ERROR, "Im"),  # ErrImagePull or ImagePullBackOff, whichever is seen first
        (Behaviour.CONFIG_ERROR, "CreateContainerConfigError"),
    ],
)
def test_a_new_pod_that_cannot_start_rolls_the_deployment_back_to_the_previous_image(cluster, behaviour, reason):
    cluster.behave(V2, behaviour)
    log = Log()

    result = deploy(cluster, log)

    assert result.status is RolloutStatus.ROLLED_BACK
    assert reason in result.message
    assert f"rolled back to {V1}" in result.message
    assert (result.previous_revision, result.new_revision) == (1, 2)
    assert cluster.image_of("shop", "web") == V1
    cluster.wait_until(lambda: web_pods_run_only(cluster, V1), what="only the old pods to be left")
    # Revision 1's ReplicaSet came back as the newest revision, as after `kubectl rollout undo`.
    annotations = cluster.get("deployments", "shop", "web")["metadata"]["annotations"]
    assert annotations["deployment.kubernetes.io/revision"] == "3"
    assert "Rolling back deployment shop/web to revision 1 (registry.test/shop/web:1.0)" in log


def test_the_rollback_is_the_json_patch_kubectl_rollout_undo_sends(cluster):
    cluster.behave(V2, Behaviour.CRASH_LOOP)
    revision_1 = next(
        rs
        for rs in cluster.select("replicasets", "shop", "app=web")
        if rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    )

    deploy(cluster)

    path, content_type, operations = cluster.patches[-1]
    assert content_type == JSON_PATCH
    assert operations[0]["op"] == "replace" and operations[0]["path"] == "/spec/template"
    # The ReplicaSet's template without the label the controller added to it.
    expected = revision_1["spec"]["template"]
    del expected["metadata"]["labels"]["pod-template-hash"]
    assert operations[0]["value"] == expected


def test_a_rollout_past_its_progress_deadline_is_rolled_back(cluster):
    cluster.add_deployment("shop", "api", image=V1, replicas=1, progress_deadline_s=1)
    cluster.behave(V2, Behaviour.NEVER_READY)

    result = deploy(cluster, deployment="api")

    assert result.status is RolloutStatus.ROLLED_BACK
    assert 'deployment "api" exceeded its progress deadline' in result.message
    assert cluster.image_of("shop", "api") == V1


def test_a_rollout_that_does_not_finish_within_the_rollout_timeout_is_rolled_back(cluster):
    cluster.behave(V2, Behaviour.SLOW)  # ready only after 30 s

    result = deploy(cluster, rollout_timeout="1s")

    assert result.status is RolloutStatus.ROLLED_BACK
    assert "did not finish rolling out within 1s" in result.message
    # The last status it saw: one new pod at a time (maxSurge 1), and the first never got ready.
    assert '(last status: Waiting for deployment "web" rollout to finish: 1 out of 3 new replicas' in result.message
    assert cluster.image_of("shop", "web") == V1


def test_a_rollback_that_fails_too_is_reported_as_failed(cluster):
    cluster.behave(V2, Behaviour.CRASH_LOOP)
    # The old image broke meanwhile (a deleted tag, a rotated secret): nothing healthy to go back to.
    cluster.behave(V1, Behaviour.CONFIG_ERROR)
    for pod in cluster.select("pods", "shop"):
        cluster.delete("pods", "shop", pod["metadata"]["name"])

    result = deploy(cluster, rollout_timeout=5)

    assert result.status is RolloutStatus.FAILED
    assert "CrashLoopBackOff" in result.message
    assert "the rollback to revision 1 failed too" in result.message
    assert "CreateContainerConfigError" in result.message


def test_deploying_the_image_already_running_changes_nothing(cluster):
    result = deploy(cluster, image=V1)

    assert result.status is RolloutStatus.SUCCEEDED
    assert cluster.patches == []
    assert result.new_revision == 1


def test_the_change_cause_is_recorded_for_rollout_history(cluster):
    cause = "conveyor: pipeline #42, job deploy-production"

    deploy(cluster, change_cause=cause)

    new = max(
        cluster.select("replicasets", "shop", "app=web"),
        key=lambda rs: int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]),
    )
    assert new["metadata"]["annotations"]["kubernetes.io/change-cause"] == cause


def test_cancelling_a_rollout_rolls_it_back(cluster):
    cluster.behave(V2, Behaviour.SLOW)
    stop = threading.Event()
    log = Log()

    def cancel_once_it_rolls(line: str) -> None:
        log(line)
        if "new replicas have been updated" in line:
            stop.set()

    result = deploy(cluster, cancel_once_it_rolls, stop=stop)

    assert result.status is RolloutStatus.ROLLED_BACK
    assert result.message.startswith("cancelled;")
    assert cluster.image_of("shop", "web") == V1


def test_an_unexpected_error_after_the_image_changed_still_rolls_back(cluster, monkeypatch):
    def broken_smoke_test(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("runners.deploy.kubernetes.run_smoke_test", broken_smoke_test)

    result = deploy(cluster, smoke_test={"command": "true"})

    assert result.status is RolloutStatus.ROLLED_BACK
    assert result.message.startswith("unexpected error: RuntimeError: boom;")
    assert cluster.image_of("shop", "web") == V1


# --- smoke tests -------------------------------------------------------------------------------


def test_a_passing_smoke_test_completes_the_deploy(cluster, smoke):
    url = smoke.answer("/healthz", 200)

    result = deploy(cluster, smoke_test={"url": url})

    assert result.status is RolloutStatus.SUCCEEDED
    assert smoke.hits == ["/healthz"]


def test_a_smoke_test_is_retried_until_the_app_answers(cluster, smoke):
    url = smoke.answer("/healthz", 503, 503, 200)

    result = deploy(cluster, smoke_test={"url": url, "retries": 3, "interval": 0})

    assert result.status is RolloutStatus.SUCCEEDED
    assert smoke.hits == ["/healthz"] * 3


def test_a_smoke_url_answering_500_rolls_the_deploy_back(cluster, smoke):
    url = smoke.answer("/healthz", 500)
    log = Log()

    result = deploy(cluster, log, smoke_test={"url": url, "retries": 1, "interval": 0})

    assert result.status is RolloutStatus.ROLLED_BACK
    assert f"smoke test failed after 2 attempts: GET {url} returned 500" in result.message
    assert smoke.hits == ["/healthz", "/healthz"]
    assert cluster.image_of("shop", "web") == V1
    assert f"Smoke test attempt 1/2 failed: GET {url} returned 500 Internal Server Error" in log


def test_a_smoke_url_nobody_listens_on_rolls_the_deploy_back(cluster):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]

    result = deploy(cluster, smoke_test={"url": f"http://127.0.0.1:{port}/", "retries": 0})

    assert result.status is RolloutStatus.ROLLED_BACK
    assert "Connection refused" in result.message


def test_a_smoke_command_exiting_1_rolls_the_deploy_back_and_its_output_is_logged(cluster):
    log = Log()

    result = deploy(cluster, log, smoke_test={"command": "echo checking the checkout page; exit 1", "retries": 0})

    assert result.status is RolloutStatus.ROLLED_BACK
    assert "`echo checking the checkout page; exit 1` exited 1" in result.message
    assert "  | checking the checkout page" in log
    assert cluster.image_of("shop", "web") == V1


def test_a_smoke_command_that_hangs_is_killed_at_its_timeout(cluster):
    result = deploy(cluster, smoke_test={"command": "sleep 30", "timeout": 0.3, "retries": 0})

    assert result.status is RolloutStatus.ROLLED_BACK
    assert "`sleep 30` timed out after 0.3s" in result.message


def test_a_smoke_command_sees_the_job_variables_and_the_deploy_but_not_the_runners_environment(
    cluster, monkeypatch, tmp_path
):
    monkeypatch.setenv("RUNNER_SECRET", "do-not-leak")
    out = tmp_path / "env.txt"
    command = f'echo "$SHOP_URL $DEPLOY_NAMESPACE $DEPLOY_DEPLOYMENT $DEPLOY_IMAGE ${{RUNNER_SECRET:-unset}}" > {out}'

    result = deploy(
        cluster,
        smoke_test={"command": command},
        smoke_env={"PATH": "/usr/bin:/bin", "SHOP_URL": "https://shop.test"},
    )

    assert result.status is RolloutStatus.SUCCEEDED
    assert out.read_text() == f"https://shop.test shop web {V2} unset\n"


# --- blue-green --------------------------------------------------------------------------------


@pytest.fixture
def blue_live(cluster):
    """web-blue serves V1 through Service web; there is no green yet."""
    cluster.add_deployment("shop", "web-blue", image=V1, labels={"app": "shop", "color": "blue"}, ports=[8080])
    cluster.add_service("shop", "web", selector={"app": "shop", "color": "blue"})
    return cluster


def blue_green(cluster: FakeCluster, smoke: Smoke, log: Log | None = None, **keys: Any) -> RolloutResult:
    keys.setdefault("smoke_test", {"url": smoke.url("/{color}/healthz"), "retries": 0})
    return deploy(cluster, log, strategy="blue-green", service="web", **keys)


def test_blue_green_starts_green_smoke_tests_it_switches_the_service_and_removes_blue(blue_live, smoke):
    cluster = blue_live
    smoke.answer("/green/healthz", 200)
    log = Log()

    result = blue_green(cluster, smoke, log)

    assert result.status is RolloutStatus.SUCCEEDED
    assert (result.previous_image, result.new_image, result.live_color) == (V1, V2, "green")
    assert cluster.get("services", "shop", "web")["spec"]["selector"] == {"app": "shop", "color": "green"}
    assert cluster.image_of("shop", "web-green") == V2
    assert cluster.rolled_out("shop", "web-green")
    assert cluster.get("deployments", "shop", "web-blue") is None
    assert cluster.select("pods", "shop", "color=blue") == []
    # The smoke test ran against the new colour only, before the switch.
    assert smoke.hits == ["/green/healthz"]
    assert log.text.index("Smoke test passed") < log.text.index("Switching service shop/web to color=green")


def test_the_next_blue_green_deploy_goes_back_to_blue(blue_live, smoke):
    cluster = blue_live
    smoke.answer("/green/healthz", 200)
    smoke.answer("/blue/healthz", 200)
    blue_green(cluster, smoke)
    v3 = "registry.test/shop/web:3.0"

    result = blue_green(cluster, smoke, image=v3)

    assert (result.status, result.previous_image, result.live_color) == (RolloutStatus.SUCCEEDED, V2, "blue")
    assert cluster.get("services", "shop", "web")["spec"]["selector"]["color"] == "blue"
    assert cluster.image_of("shop", "web-blue") == v3
    assert cluster.get("deployments", "shop", "web-green") is None


@pytest.mark.parametrize("failure", ["crash loop", "smoke test"])
def test_a_failed_blue_green_deploy_never_switches_the_service_and_removes_the_new_colour(blue_live, smoke, failure):
    cluster = blue_live
    if failure == "crash loop":
        cluster.behave(V2, Behaviour.CRASH_LOOP)
        smoke.answer("/green/healthz", 200)
    else:
        smoke.answer("/green/healthz", 500)
    switches = []
    log = Log()

    def watch_the_service(line: str) -> None:
        log(line)
        switches.append(cluster.get("services", "shop", "web")["spec"]["selector"]["color"])

    result = blue_green(cluster, smoke, watch_the_service)

    assert result.status is RolloutStatus.ROLLED_BACK
    assert "service shop/web still selects color=blue" in result.message
    assert set(switches) == {"blue"}  # at every step of the way
    assert not any(method == "PATCH" and "/services/" in path for method, path, _ in cluster.requests)
    assert cluster.get("deployments", "shop", "web-green") is None
    assert cluster.image_of("shop", "web-blue") == V1
    assert cluster.rolled_out("shop", "web-blue")
    assert result.live_color == "blue"


def test_a_leftover_idle_colour_is_replaced_with_the_new_image(blue_live, smoke):
    cluster = blue_live
    cluster.add_deployment("shop", "web-green", image=V1, replicas=1, labels={"app": "shop", "color": "green"})
    smoke.answer("/green/healthz", 200)
    log = Log()

    result = blue_green(cluster, smoke, log)

    assert result.status is RolloutStatus.SUCCEEDED
    assert "Replacing deployment shop/web-green (a leftover idle colour)" in log
    assert cluster.image_of("shop", "web-green") == V2
    assert cluster.get("deployments", "shop", "web-green")["spec"]["replicas"] == 2  # as many as blue had
    assert cluster.get("services", "shop", "web")["spec"]["selector"]["color"] == "green"


def test_a_first_blue_green_deploy_copies_the_plain_deployment_and_creates_the_service(smoke):
    with FakeCluster() as cluster:
        cluster.add_deployment("shop", "web", image=V1, replicas=2, ports=[8080])
        smoke.answer("/blue/healthz", 200)

        result = blue_green(cluster, smoke)

        assert (result.status, result.live_color) == (RolloutStatus.SUCCEEDED, "blue")
        service = cluster.get("services", "shop", "web")
        assert service["spec"]["selector"] == {"app": "web", "color": "blue"}
        assert service["spec"]["ports"] == [{"port": 8080, "targetPort": 8080, "protocol": "TCP"}]
        assert cluster.image_of("shop", "web-blue") == V2
        # The plain Deployment is left to its owner; it no longer gets traffic.
        assert cluster.image_of("shop", "web") == V1


def test_a_blue_green_deploy_without_anything_to_copy_fails_before_touching_the_cluster(smoke):
    with FakeCluster() as cluster:
        result = blue_green(cluster, smoke)

        assert result.status is RolloutStatus.FAILED
        assert "deployment shop/web does not exist" in result.message
        assert not [request for request in cluster.requests if request[0] != "GET"]


# --- API errors --------------------------------------------------------------------------------


def test_an_unreachable_api_server_fails_with_a_clear_message():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    log = Log()
    spec = parse_deploy_spec({"namespace": "shop", "deployment": "web", "image": V2})
    api_client = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))

    result = rollout(spec, log=log, api_client=api_client)

    assert result.status is RolloutStatus.FAILED
    assert result.message == (
        f"reading deployment shop/web: cannot reach the Kubernetes API at http://127.0.0.1:{port}: Connection refused"
    )
    assert log[-1] == f"Deploy failed: {result.message}"


def test_a_missing_deployment_fails_without_changing_anything(cluster):
    result = deploy(cluster, deployment="checkout")

    assert result.status is RolloutStatus.FAILED
    assert result.message == 'reading deployment shop/checkout: 404 Not Found: deployments.apps "checkout" not found'
    assert cluster.patches == []


def test_a_container_the_deployment_does_not_have_fails_without_changing_anything(cluster):
    result = deploy(cluster, container="sidecar")

    assert result.status is RolloutStatus.FAILED
    assert result.message == "deployment shop/web has no container named 'sidecar' (it has: app)"
    assert cluster.patches == []


def test_api_server_hiccups_while_watching_are_retried(cluster):
    cluster.fail_next("GET", "watch=true", status=503, times=2)
    log = Log()

    result = deploy(cluster, log)

    assert result.status is RolloutStatus.SUCCEEDED
    assert sum("Kubernetes API error while watching deployment shop/web, retrying" in line for line in log) == 2


def test_a_kubeconfig_context_picks_the_cluster(cluster, tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: Config
            clusters:
            - name: fake
              cluster: {{server: "{cluster.url}"}}
            - name: elsewhere
              cluster: {{server: "http://127.0.0.1:9"}}
            users:
            - name: deployer
              user: {{token: not-a-real-token}}
            contexts:
            - name: production
              context: {{cluster: fake, user: deployer}}
            - name: staging
              context: {{cluster: elsewhere, user: deployer}}
            current-context: staging
            """
        )
    )
    spec = parse_deploy_spec({"namespace": "shop", "deployment": "web", "image": V2, "context": "production"})

    result = rollout(spec, log=Log(), api_client=api_client_for(spec, config_file=str(kubeconfig)))

    assert result.status is RolloutStatus.SUCCEEDED
    assert cluster.image_of("shop", "web") == V2


def test_an_unknown_kubeconfig_context_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-config"))
    spec = parse_deploy_spec({"namespace": "shop", "deployment": "web", "image": V2, "context": "nowhere"})

    result = rollout(spec, log=Log())

    assert result.status is RolloutStatus.FAILED
    assert result.message.startswith("cannot configure the Kubernetes client from kubeconfig context 'nowhere':")


# --- the deploy: section -----------------------------------------------------------------------


def test_a_full_deploy_section_is_parsed():
    spec = parse_deploy_spec(
        {
            "namespace": "shop",
            "deployment": "web",
            "container": "app",
            "image": "registry.example.com:5000/shop/web@sha256:" + "a" * 64,
            "strategy": "blue-green",
            "service": "web",
            "smoke_test": {"url": "https://web-{color}.shop.test/", "timeout": "5s", "retries": 2, "interval": 1},
            "rollout_timeout": "1h30m",
            "context": "production",
        }
    )

    assert spec.strategy is Strategy.BLUE_GREEN
    assert spec.rollout_timeout_s == 5400
    assert spec.smoke_test is not None
    assert (spec.smoke_test.timeout_s, spec.smoke_test.attempts, spec.smoke_test.interval_s) == (5, 3, 1)


def test_a_minimal_deploy_section_gets_the_defaults():
    spec = parse_deploy_spec({"namespace": "shop", "deployment": "web", "image": "web:1.0"})

    assert (spec.strategy, spec.container, spec.smoke_test, spec.rollout_timeout_s) == (
        Strategy.ROLLING,
        None,
        None,
        600,
    )


GOOD = {"namespace": "shop", "deployment": "web", "image": "registry.test/web:1.0"}


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        (["web"], "", "must be a mapping"),
        ({**GOOD, "replicas": 3}, "replicas", "unknown key; expected one of container, context, deployment"),
        ({"deployment": "web", "image": "web:1"}, "namespace", "is required"),
        ({**GOOD, "namespace": "Shop"}, "namespace", "'Shop' is not a valid name"),
        ({**GOOD, "deployment": ""}, "deployment", "must be a non-empty string"),
        ({**GOOD, "deployment": "web_app"}, "deployment", "'web_app' is not a valid name"),
        ({**GOOD, "container": 7}, "container", "must be a non-empty string, got int 7"),
        ({"namespace": "shop", "deployment": "web"}, "image", "is required"),
        ({**GOOD, "image": "registry.test/web"}, "image", "has no tag or digest"),
        ({**GOOD, "image": "registry.test/Web:1"}, "image", "is not a valid image reference"),
        ({**GOOD, "image": "web:1 && rm -rf /"}, "image", "is not a valid image reference"),
        ({**GOOD, "strategy": "canary"}, "strategy", "must be rolling or blue-green, got 'canary'"),
        ({**GOOD, "service": "web"}, "service", "only applies to strategy blue-green"),
        ({**GOOD, "strategy": "blue-green"}, "service", "is required"),
        ({**GOOD, "strategy": "blue-green", "service": "1web"}, "service", "is not a valid name"),
        ({**GOOD, "smoke_test": "http://web/"}, "smoke_test", "must be a mapping with url or command"),
        ({**GOOD, "smoke_test": {}}, "smoke_test", "needs exactly one of url or command"),
        ({**GOOD, "smoke_test": {"url": "http://x/", "command": "true"}}, "smoke_test", "exactly one of"),
        ({**GOOD, "smoke_test": {"url": "file:///etc/passwd"}}, "smoke_test:url", "must be an http:// or https:// URL"),
        ({**GOOD, "smoke_test": {"url": "http://web-{color}/"}}, "smoke_test:url", "only applies to blue-green"),
        (
            {**GOOD, "strategy": "blue-green", "service": "web", "smoke_test": {"url": "http://web.shop.svc/healthz"}},
            "smoke_test:url",
            "must contain {color} with strategy blue-green",
        ),
        ({**GOOD, "smoke_test": {"command": "  "}}, "smoke_test:command", "must be a non-empty string"),
        ({**GOOD, "smoke_test": {"command": "true", "retries": -1}}, "smoke_test:retries", "from 0 to 100"),
        ({**GOOD, "smoke_test": {"command": "true", "retries": True}}, "smoke_test:retries", "a whole number"),
        ({**GOOD, "smoke_test": {"command": "true", "timeout": 0}}, "smoke_test:timeout", "more than zero"),
        ({**GOOD, "smoke_test": {"command": "true", "wait": 1}}, "smoke_test:wait", "unknown key"),
        ({**GOOD, "rollout_timeout": "ten minutes"}, "rollout_timeout", 'like 30, "90s", "5m" or "1h30m"'),
        ({**GOOD, "rollout_timeout": -5}, "rollout_timeout", "must be more than zero"),
        ({**GOOD, "rollout_timeout": "48h"}, "rollout_timeout", "at most 24h"),
        ({**GOOD, "context": ""}, "context", "must be a non-empty string"),
    ],
)
def test_a_bad_deploy_section_is_refused_with_a_message_naming_the_key(section, key, message):
    with pytest.raises(DeploySpecError) as caught:
        parse_deploy_spec(section)

    assert caught.value.key == key
    assert str(caught.value).startswith(f"deploy:{key}: " if key else "deploy: ")
    assert message in str(caught.value)
