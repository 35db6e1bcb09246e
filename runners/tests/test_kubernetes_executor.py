"""The Kubernetes executor against a fake API server (real HTTP, real client, real processes)."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from kubernetes import client

from runners.executors.kubernetes import KubernetesExecutor, Marker, MarkerParser
from runners.tests.k8s_fake import FakeKubernetes
from runners.tests.recording import RecordingReporter, claimed_job

POD = "conveyor-job-00000000-1"  # claimed_job's id and attempt
POD_PATH = f"/api/v1/namespaces/ci/pods/{POD}"


@pytest.fixture
def k8s(tmp_path):
    with FakeKubernetes(tmp_path / "cluster") as fake:
        yield fake


@pytest.fixture
def reporter():
    return RecordingReporter()


@pytest.fixture
def make_executor(k8s, reporter, tmp_path):
    def make(**kwargs) -> KubernetesExecutor:
        return KubernetesExecutor(
            reporter,
            namespace="ci",
            api_client=k8s.api_client(),
            builds_root=str(tmp_path / "builds"),
            poll_interval=0.05,
            **kwargs,
        )

    return make


@pytest.fixture
def executor(make_executor):
    return make_executor()


@pytest.fixture
def repo(make_git_repo):
    return make_git_repo({"hello.txt": "hello from the repo\n", "sub/inner.txt": "inner\n"})


def run(executor, repo, steps, stop=None, **kwargs):
    path, sha = repo
    job = claimed_job(clone_url=str(path), commit_sha=sha, steps=steps, **kwargs)
    return executor.run(job, stop or threading.Event())


def test_a_job_of_three_steps_succeeds_and_each_step_log_holds_exactly_its_output(executor, reporter, repo, k8s):
    result = run(
        executor, repo, [("before_script", "cat hello.txt"), ("script", "echo two"), ("after_script", "echo three")]
    )

    assert (result.status, result.exit_code) == ("SUCCESS", 0)
    assert reporter.started == ["s0", "s1", "s2"]
    assert reporter.finished == {"s0": ("SUCCESS", 0), "s1": ("SUCCESS", 0), "s2": ("SUCCESS", 0)}
    # The checkout's output heads the first step's log.
    assert reporter.log_of("s0").startswith(f"Fetching {repo[1][:12]} (main)")
    assert reporter.log_of("s0").endswith("$ cat hello.txt\nhello from the repo\n")
    assert reporter.log_of("s1") == "$ echo two\ntwo\n"
    assert reporter.log_of("s2") == "$ echo three\nthree\n"
    assert ("DELETE", POD_PATH) in k8s.requests


def test_steps_run_in_a_checkout_of_the_exact_commit(executor, reporter, repo):
    result = run(executor, repo, [("script", "git rev-parse HEAD && pwd")])

    assert result.status == "SUCCESS"
    assert repo[1] in reporter.log_of("s0")
    assert reporter.log_of("s0").rstrip().endswith("/builds/project")


def test_a_failing_step_fails_the_job_with_its_exit_code_and_after_script_still_runs(executor, reporter, repo, k8s):
    result = run(
        executor,
        repo,
        [("before_script", "true"), ("script", "exit 3"), ("script", "echo never"), ("after_script", "echo cleanup")],
    )

    assert (result.status, result.exit_code) == ("FAILURE", 3)
    assert "'s1' exited with 3" in result.reason
    assert reporter.finished == {
        "s0": ("SUCCESS", 0),
        "s1": ("FAILURE", 3),
        "s2": ("SKIPPED", None),
        "s3": ("SUCCESS", 0),
    }
    assert "s2" not in reporter.started
    assert reporter.log_of("s1") == "$ exit 3\n\nexit code 3\n"
    assert reporter.log_of("s3") == "$ echo cleanup\ncleanup\n"
    assert ("DELETE", POD_PATH) in k8s.requests


def test_a_failing_after_script_does_not_fail_the_job(executor, reporter, repo):
    result = run(executor, repo, [("script", "true"), ("after_script", "exit 5")])

    assert (result.status, result.exit_code) == ("SUCCESS", 0)
    assert reporter.finished["s1"] == ("FAILURE", 5)


def test_a_failing_command_inside_a_multi_line_step_fails_it(executor, reporter, repo):
    result = run(executor, repo, [("script", "false\necho after")])

    assert (result.status, result.exit_code) == ("FAILURE", 1)
    assert "after" not in reporter.log_of("s0").split("$ false\necho after\n", 1)[1]


def test_jobs_see_their_variables_but_never_the_runners_environment(executor, reporter, repo, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://secret")
    monkeypatch.setenv("SECRET_KEY", "the-server-secret")

    result = run(executor, repo, [("script", "env")], DEPLOY_TARGET="staging")

    log = reporter.log_of("s0")
    assert result.status == "SUCCESS"
    assert "DEPLOY_TARGET=staging" in log
    assert "CI_JOB_TOKEN=cvj_test" in log
    assert "CI_PROJECT_DIR=" in log
    assert "postgres://secret" not in log and "DATABASE_URL" not in log and "the-server-secret" not in log


def test_the_working_directory_and_exports_carry_over_between_steps(executor, reporter, repo):
    result = run(
        executor,
        repo,
        [("script", 'cd sub && export GREETING="hi there"'), ("script", 'cat inner.txt; echo "$GREETING"')],
    )

    assert result.status == "SUCCESS"
    assert reporter.log_of("s1").endswith("inner\nhi there\n")


def test_a_job_past_its_timeout_fails_as_timed_out_and_its_pod_is_deleted(executor, reporter, repo, k8s):
    started = time.monotonic()

    # 2 s: time enough for the checkout to finish and the step to start even on a busy machine.
    result = run(executor, repo, [("script", "sleep 30"), ("script", "echo no")], timeout_s=2)

    assert result.status == "FAILURE"
    assert "timed out after 2s" in result.reason
    assert time.monotonic() - started < 6
    assert reporter.finished == {"s0": ("FAILURE", None), "s1": ("SKIPPED", None)}
    assert "timed out after 2s" in reporter.log_of("s0")
    assert ("DELETE", POD_PATH) in k8s.requests


def test_cancel_deletes_the_pod_and_reports_the_running_step_cancelled(executor, reporter, repo, k8s, tmp_path):
    stop = threading.Event()
    survivor = tmp_path / "child-survived"
    threading.Thread(target=_stop_once_started, args=(reporter, "s0", stop), daemon=True).start()
    started = time.monotonic()

    result = run(
        executor,
        repo,
        [("script", f"(sleep 1; touch {survivor}) & sleep 30"), ("script", "echo no"), ("after_script", "echo no")],
        stop=stop,
    )

    assert result.status == "CANCELLED"
    assert time.monotonic() - started < 3, "the cancel took too long"
    assert reporter.finished == {"s0": ("CANCELLED", None), "s1": ("SKIPPED", None), "s2": ("SKIPPED", None)}
    assert ("DELETE", POD_PATH) in k8s.requests
    time.sleep(1.5)
    assert not survivor.exists(), "a process of the cancelled pod outlived the delete"


def test_an_image_that_cannot_be_pulled_fails_the_job_naming_err_image_pull(executor, reporter, repo, k8s):
    path, sha = repo
    job = claimed_job(clone_url=str(path), commit_sha=sha, steps=[("script", "true"), ("script", "true")])
    job.spec = {"image": {"name": "registry.example/does-not-exist:1"}}

    result = executor.run(job, threading.Event())

    assert result.status == "FAILURE"
    assert "ErrImagePull" in result.reason
    assert "ErrImagePull" in reporter.log_of("s0")
    assert reporter.finished == {"s0": ("SKIPPED", None), "s1": ("SKIPPED", None)}
    assert k8s.created[0]["spec"]["containers"][0]["image"] == "registry.example/does-not-exist:1"
    assert ("DELETE", POD_PATH) in k8s.requests


def test_a_pod_no_node_can_take_fails_the_job_as_unschedulable(make_executor, reporter, repo, k8s):
    result = run(make_executor(memory_request="1Ti"), repo, [("script", "true")])

    assert result.status == "FAILURE"
    assert "Unschedulable" in result.reason and "Insufficient memory" in result.reason
    assert ("DELETE", POD_PATH) in k8s.requests


def test_a_namespace_the_runner_may_not_use_fails_the_job_with_the_api_message(executor, reporter, repo, k8s):
    k8s.forbidden_namespaces.add("ci")

    result = run(executor, repo, [("script", "true")])

    assert result.status == "FAILURE"
    assert "403" in result.reason and "cannot create resource" in result.reason
    assert reporter.finished == {"s0": ("SKIPPED", None)}
    assert "403" in reporter.log_of("s0")
    # Nothing was created, so nothing is deleted.
    assert k8s.requested("DELETE") == []


def test_an_unreachable_api_server_fails_the_job_instead_of_crashing(reporter, repo):
    configuration = client.Configuration(host="http://127.0.0.1:9")  # nothing listens there
    configuration.retries = 0
    executor = KubernetesExecutor(reporter, namespace="ci", api_client=client.ApiClient(configuration))

    result = run(executor, repo, [("script", "true")])

    assert result.status == "FAILURE"
    assert "kubernetes API unreachable" in result.reason
    assert reporter.finished == {"s0": ("SKIPPED", None)}


def test_a_leftover_pod_of_the_same_job_is_replaced(executor, reporter, repo, k8s):
    k8s.deletion_delay_s = 0.3  # terminating pods keep their name for a while
    _create_pod(k8s, job_id="00000000-0000-0000-0000-000000000001")

    result = run(executor, repo, [("script", "echo fresh")])

    assert result.status == "SUCCESS"
    assert "fresh" in reporter.log_of("s0")
    assert [m for m, _ in k8s.requests if m in {"POST", "DELETE"}] == ["POST", "POST", "DELETE", "POST", "DELETE"]


def test_a_pod_of_another_job_that_has_the_same_name_is_left_alone(executor, reporter, repo, k8s):
    _create_pod(k8s, job_id="00000000-ffff-ffff-ffff-ffffffffffff")

    result = run(executor, repo, [("script", "true")])

    assert result.status == "FAILURE"
    assert "409" in result.reason and "already exists" in result.reason
    assert k8s.requested("DELETE") == []
    assert k8s.pods[("ci", POD)].phase == "Running"


def test_a_log_stream_cut_mid_job_is_reopened_without_losing_or_repeating_output(executor, reporter, repo, k8s):
    k8s.cut_first_log_stream_after = 300

    result = run(executor, repo, [("script", "seq 1 50; sleep 0.3; seq 51 100"), ("script", "echo done")])

    assert result.status == "SUCCESS"
    numbers = [line for line in reporter.log_of("s0").splitlines() if line.isdigit()]
    assert numbers == [str(i) for i in range(1, 101)]
    assert reporter.log_of("s1") == "$ echo done\ndone\n"
    assert len(k8s.requested("GET", "/log")) >= 2


def test_output_in_many_small_writes_arrives_whole_and_in_order(executor, reporter, repo):
    result = run(executor, repo, [("script", "for i in $(seq 1 2000); do echo line-$i; done")])

    lines = [line for line in reporter.log_of("s0").splitlines() if line.startswith("line-")]
    assert result.status == "SUCCESS"
    assert lines == [f"line-{i}" for i in range(1, 2001)]


def test_an_unreachable_repository_fails_the_checkout_and_runs_no_step(executor, reporter, tmp_path):
    job = claimed_job(clone_url=str(tmp_path / "missing"), commit_sha="a" * 40, steps=[("script", "echo no")])

    result = executor.run(job, threading.Event())

    assert result.status == "FAILURE"
    assert "checkout failed" in result.reason
    assert "Checkout failed" in reporter.log_of("s0")
    assert reporter.started == []
    assert reporter.finished == {"s0": ("SKIPPED", None)}


def test_without_git_in_the_image_the_steps_run_in_an_empty_project_dir(executor, reporter, repo, tmp_path):
    # An "image" whose PATH has the basics but no git.
    bin_dir = tmp_path / "image-bin"
    bin_dir.mkdir()
    for tool in ("mkdir", "cat", "mv", "ls"):
        (bin_dir / tool).symlink_to(shutil.which(tool))

    result = run(executor, repo, [("script", "ls -A; echo listed")], PATH=str(bin_dir))

    log = reporter.log_of("s0")
    assert result.status == "SUCCESS"
    assert "git is not installed in the image" in log
    assert log.endswith("$ ls -A; echo listed\nlisted\n")


def test_the_pod_asks_for_the_jobs_image_deadline_env_and_resources(make_executor, repo, k8s):
    path, sha = repo
    job = claimed_job(clone_url=str(path), commit_sha=sha, steps=[("script", "true")], timeout_s=90, FOO="bar")
    job.spec = {"image": {"name": "python:3.12"}}
    executor = make_executor(cpu_request="250m", memory_limit="1Gi")

    executor.run(job, threading.Event())

    pod = k8s.created[0]
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert pod["metadata"]["name"] == POD
    assert pod["metadata"]["labels"]["app"] == "conveyor-job"
    assert pod["metadata"]["labels"]["conveyor/job-id"] == job.id
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 90
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    assert container["image"] == "python:3.12"
    assert container["command"][:2] == ["/bin/sh", "-c"]
    assert container["resources"] == {"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FOO"] == "bar" and env["CI_PROJECT_DIR"] == f"{executor.builds_root}/project"


def test_a_job_without_an_image_gets_the_default_and_a_service_account_gets_its_token(make_executor, repo, k8s):
    run(make_executor(service_account="deployer", default_image="busybox:1"), repo, [("script", "true")])

    spec = k8s.created[0]["spec"]
    assert spec["containers"][0]["image"] == "busybox:1"
    assert spec["serviceAccountName"] == "deployer"
    assert "automountServiceAccountToken" not in spec


def test_a_job_without_steps_succeeds_without_a_pod(executor, k8s):
    job = claimed_job(clone_url="/nowhere", commit_sha="a" * 40, steps=[])

    assert executor.run(job, threading.Event()).status == "SUCCESS"
    assert k8s.requests == []


# --- the marker parser ---

NONCE = "0123abcd"
START = b"\x1e\x1econveyor:0123abcd:step-start:0\n"
END = b"\x1e\x1econveyor:0123abcd:step-end:0:2\n"


def parse_in_pieces(data: bytes, size: int) -> list[bytes | Marker]:
    parser = MarkerParser(NONCE)
    events: list[bytes | Marker] = []
    for i in range(0, len(data), size):
        events += parser.feed(data[i : i + size])
    events += parser.finish()
    # Adjacent text events from separate reads are one text, as far as a log is concerned.
    merged: list[bytes | Marker] = []
    for event in events:
        if merged and isinstance(event, bytes) and isinstance(merged[-1], bytes):
            merged[-1] += event
        else:
            merged.append(event)
    return merged


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_markers_split_across_reads_are_parsed_whole(size):
    data = b"checkout\n" + START + b"out\nno newline" + END + b"stray\n"

    assert parse_in_pieces(data, size) == [
        b"checkout\n",
        Marker("step-start", (0,)),
        b"out\nno newline",
        Marker("step-end", (0, 2)),
        b"stray\n",
    ]


def test_text_that_only_looks_like_the_start_of_a_marker_is_passed_on():
    parser = MarkerParser(NONCE)

    assert parser.feed(b"a\x1e") == [b"a"]  # could still be a marker: held back
    assert parser.feed(b"b\n") == [b"\x1eb\n"]
    assert parser.feed(b"\x1e\x1econveyor:") == []
    assert parser.finish() == [b"\x1e\x1econveyor:"]


def test_markers_with_another_nonce_or_a_garbled_body_are_plain_text():
    other = b"\x1e\x1econveyor:ffffffff:step-start:0\n"
    garbled = b"\x1e\x1econveyor:0123abcd:step-end:zero\n"

    assert parse_in_pieces(other + garbled + START, 4) == [other + garbled, Marker("step-start", (0,))]


def test_text_without_a_newline_is_passed_on_while_the_step_runs():
    parser = MarkerParser(NONCE)

    assert parser.feed(b"Downloading... 45%") == [b"Downloading... 45%"]


def test_the_fake_runs_pods_with_only_their_own_environment(k8s, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://secret")
    api = client.CoreV1Api(k8s.api_client())
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="env"),
        spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[
                client.V1Container(
                    name="job", image="alpine:3", command=["env"], env=[client.V1EnvVar(name="A", value="1")]
                )
            ],
        ),
    )
    api.create_namespaced_pod("ci", pod)
    while api.read_namespaced_pod("env", "ci").status.phase != "Succeeded":
        time.sleep(0.02)

    log = api.read_namespaced_pod_log("env", "ci")

    # The spec's env plus what a container runtime adds; nothing of the test process's own.
    assert {line.split("=", 1)[0] for line in log.splitlines()} == {"A", "PATH", "HOME", "HOSTNAME"}
    assert "postgres://secret" not in log


def _stop_once_started(reporter: RecordingReporter, step: str, stop: threading.Event) -> None:
    until = time.monotonic() + 10
    while step not in reporter.started and time.monotonic() < until:
        time.sleep(0.02)
    time.sleep(0.3)  # well into the step's `sleep`
    stop.set()


def _create_pod(k8s: FakeKubernetes, *, job_id: str) -> None:
    api = client.CoreV1Api(k8s.api_client())
    api.create_namespaced_pod(
        "ci",
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=POD, labels={"app": "conveyor-job", "conveyor/job-id": job_id}),
            spec=client.V1PodSpec(
                restart_policy="Never",
                containers=[client.V1Container(name="job", image="alpine:3", command=["sleep", "30"])],
            ),
        ),
    )
    while api.read_namespaced_pod(POD, "ci").status.phase != "Running":
        time.sleep(0.02)
