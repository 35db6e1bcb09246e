"""A `deploy:` job on the shell executor: its deploy step runs the rollout against the fake API
server, streams the rollout's log into the step, and maps the outcome to the job's result."""

from __future__ import annotations

import textwrap
import threading
import time

import pytest

from runners.deploy.job import FAILED_REASON, ROLLED_BACK_REASON, deploy_step_command, expand, expand_section
from runners.executors.shell import ShellExecutor
from runners.tests.k8s_apps_fake import Behaviour, FakeCluster
from runners.tests.recording import RecordingReporter, claimed_job

V1 = "registry.test/shop/web:1.0"
V2 = "registry.test/shop/web:2.0"


@pytest.fixture
def cluster():
    with FakeCluster() as fake:
        fake.add_deployment("shop", "web", image=V1, replicas=2)
        yield fake


@pytest.fixture
def kubeconfig(cluster, tmp_path, settings):
    path = tmp_path / "kubeconfig"
    path.write_text(
        textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: Config
            clusters: [{{name: fake, cluster: {{server: "{cluster.url}"}}}}]
            users: [{{name: deployer, user: {{token: not-a-real-token}}}}]
            contexts: [{{name: fake, context: {{cluster: fake, user: deployer}}}}]
            current-context: fake
            """
        )
    )
    settings.CONVEYOR_DEPLOY_KUBECONFIG = str(path)
    return path


@pytest.fixture
def repo(make_git_repo):
    return make_git_repo({"smoke.sh": '#!/bin/sh\ntest -n "$DEPLOY_IMAGE"\n'})


@pytest.fixture
def reporter():
    return RecordingReporter()


SECTION = {"namespace": "shop", "deployment": "web", "image": "registry.test/shop/web:$VERSION", "rollout_timeout": 20}


def deploy(reporter, repo, tmp_path, *, script="echo building", section=None, stop=None, **variables):
    path, sha = repo
    section = section or SECTION
    job = claimed_job(
        clone_url=str(path),
        commit_sha=sha,
        steps=[("script", script), ("deploy", deploy_step_command(section)), ("after_script", "echo cleanup")],
        **{"VERSION": "2.0", **variables},
    )
    job.spec = {"deploy": section}
    executor = ShellExecutor(reporter=reporter, builds_dir=tmp_path / "builds")
    result = executor.run(job, stop or threading.Event())
    reporter.complete(job, result)  # as the runner hands it to its backend
    return result


def test_a_deploy_job_rolls_out_its_image_after_the_script_and_logs_every_step(
    cluster, kubeconfig, reporter, repo, tmp_path
):
    result = deploy(reporter, repo, tmp_path)

    assert (result.status, result.exit_code, result.reason) == ("SUCCESS", 0, "")
    assert cluster.image_of("shop", "web") == V2
    assert reporter.started == ["s0", "s1", "s2"]
    assert reporter.finished == {"s0": ("SUCCESS", 0), "s1": ("SUCCESS", 0), "s2": ("SUCCESS", 0)}
    log = reporter.log_of("s1")
    assert log.startswith(f"$ deploy rolling shop/web {V2}\n")
    assert f"Rolling update of deployment shop/web to {V2}\n" in log
    assert 'deployment "web" successfully rolled out' in log
    assert "cleanup" in reporter.log_of("s2")


def test_a_crash_looping_image_is_rolled_back_and_fails_the_job_saying_so(
    cluster, kubeconfig, reporter, repo, tmp_path
):
    cluster.behave(V2, Behaviour.CRASH_LOOP)

    result = deploy(reporter, repo, tmp_path)

    assert (result.status, result.exit_code) == ("FAILURE", 1)
    assert result.reason.startswith(ROLLED_BACK_REASON)
    assert "CrashLoopBackOff" in result.reason
    assert reporter.finished["s1"] == ("FAILURE", 1)
    assert reporter.finished["s2"] == ("SUCCESS", 0), "after_script runs after a failed deploy too"
    assert cluster.image_of("shop", "web") == V1
    assert "Rolling back deployment shop/web to revision 1" in reporter.log_of("s1")


def test_the_deploy_step_is_skipped_when_the_script_failed(cluster, kubeconfig, reporter, repo, tmp_path):
    result = deploy(reporter, repo, tmp_path, script="exit 4")

    assert (result.status, result.exit_code) == ("FAILURE", 4)
    assert reporter.finished["s1"] == ("SKIPPED", None)
    assert cluster.patches == []


def test_a_bad_deploy_section_fails_the_deploy_step_with_the_message(cluster, kubeconfig, reporter, repo, tmp_path):
    section = {**SECTION, "image": "registry.test/shop/web"}

    result = deploy(reporter, repo, tmp_path, section=section)

    assert result.status == "FAILURE"
    assert result.reason.startswith(FAILED_REASON + "deploy:image: 'registry.test/shop/web' has no tag or digest")
    assert "has no tag or digest" in reporter.log_of("s1")
    assert cluster.patches == []


def test_a_smoke_command_runs_in_the_jobs_checkout_with_the_jobs_variables(
    cluster, kubeconfig, reporter, repo, tmp_path
):
    section = {**SECTION, "smoke_test": {"command": 'sh smoke.sh && test "$GREETING" = hi', "retries": 0}}

    result = deploy(reporter, repo, tmp_path, section=section, GREETING="hi")

    assert result.status == "SUCCESS", reporter.log_of("s1")
    assert "Smoke test passed" in reporter.log_of("s1")


def test_cancelling_a_deploy_job_stops_the_rollout_and_undoes_it(cluster, kubeconfig, reporter, repo, tmp_path):
    cluster.behave(V2, Behaviour.SLOW)  # never ready within the test
    stop = threading.Event()

    def cancel_once_the_image_is_set() -> None:
        deadline = time.monotonic() + 30
        while cluster.image_of("shop", "web") != V2 and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()

    threading.Thread(target=cancel_once_the_image_is_set, daemon=True).start()

    result = deploy(reporter, repo, tmp_path, stop=stop)

    assert result.status == "CANCELLED"
    assert reporter.finished["s1"] == ("CANCELLED", None)
    assert cluster.image_of("shop", "web") == V1


def test_an_unreadable_kubeconfig_fails_the_deploy_step(cluster, reporter, repo, tmp_path, settings):
    settings.CONVEYOR_DEPLOY_KUBECONFIG = str(tmp_path / "missing")

    result = deploy(reporter, repo, tmp_path)

    assert result.status == "FAILURE"
    assert result.reason.startswith(f"{FAILED_REASON}cannot configure the Kubernetes client from {tmp_path}/missing")


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("web:$TAG", "web:1.2"),
        ("web:${TAG}-x", "web:1.2-x"),
        ("$$TAG", "$TAG"),
        ("web:$UNSET", "web:"),
        ("no variables", "no variables"),
    ],
)
def test_deploy_values_expand_variables_as_gitlab_does(text, expanded):
    assert expand(text, {"TAG": "1.2"}) == expanded


def test_every_string_of_a_deploy_section_is_expanded_and_nothing_else():
    section = {"image": "web:$TAG", "smoke_test": {"url": "http://$HOST/", "retries": 3}, "list": ["$TAG", 1]}

    assert expand_section(section, {"TAG": "7", "HOST": "shop"}) == {
        "image": "web:7",
        "smoke_test": {"url": "http://shop/", "retries": 3},
        "list": ["7", 1],
    }
