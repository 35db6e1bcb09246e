"""The Kubernetes executor: each job in one pod of its own.

The whole job runs as one shell script inside one container, so the working directory and
exported variables carry over between steps for free (through a small state file, as in the
shell executor) and there is only one pod to schedule, pull and clean up. The script prints
marker lines around every step; the runner follows the pod's log and splits it back into
per-step logs, start/finish reports and exit codes. A per-job random nonce in the markers
keeps a step that happens to print something marker-like (a `cat` of another job's log)
from being read as one.

Artifacts and caches do not travel into or out of pods yet: `_PodRun._artifacts_preflight`
says so in the job's log and fails the jobs that would otherwise miss files (README:
Artifacts, "On the Kubernetes executor").
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from django.conf import settings
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from runners.executors.base import LOG_FLUSH_S, JobResult, LogStream, Reporter
from runners.kube import describe_api_error
from runners.services import ClaimedJob, ClaimedStep, JobNotHeld
from runs.models import JobStatus, StepKind, StepStatus

logger = logging.getLogger(__name__)

_CONTAINER = "job"
_MARK = b"\x1e\x1econveyor:"
# A marker body is short ("step-end:12:127"); anything longer after a marker prefix is not one.
_MAX_MARKER_BODY = 128
# The pod's own activeDeadlineSeconds is the timeout that normally fires; the runner's clock
# is the backstop for a pod that never starts (its deadline only counts once it is bound to
# a node) or a kubelet that does not enforce it.
_DEADLINE_SLACK_S = 5.0
# A container's log stream can end a moment before the kubelet reports the pod terminated.
_TERMINAL_WAIT_S = 10.0
# How often a follow stream that ended while the script still runs (an API server or proxy
# cutting a long-lived connection) is reopened before the job is given up as lost.
_MAX_LOG_RECONNECTS = 5
_API_TIMEOUT_S = 30
# Waiting reasons after which a pod will not start without someone changing something.
_FATAL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})

T = TypeVar("T")


# --- The script run in the pod --------------------------------------------------------------


def pod_script(job: ClaimedJob, *, nonce: str, builds_root: str) -> str:
    """The container's `sh -c` script: check out the commit, then run the steps between markers.

    Main steps stop at the first failure; after_script steps always run and never change the
    script's exit code, which is the first failing main step's (or 0)."""
    project, state = shlex.quote(f"{builds_root}/project"), shlex.quote(f"{builds_root}/.conveyor")
    url, sha = shlex.quote(job.clone_url), shlex.quote(job.commit_sha)
    lines = [
        # One stream in order: stdout and stderr travel separately through the container
        # runtime, which could reorder a step's error against its own output and its markers.
        "exec 2>&1",
        f"__cv_mark() {{ printf '\\036\\036conveyor:%s:%s\\n' {nonce} \"$1\"; }}",
        f"mkdir -p {project} {state} && cd {project} || {{ __cv_mark checkout-failed:1; exit 1; }}",
        "if command -v git >/dev/null 2>&1; then",
        f"  echo {shlex.quote(f'Fetching {job.commit_sha[:12]} ({job.ref}) into {builds_root}/project')}",
        f"  git -c init.defaultBranch=main init --quiet . && git remote add origin {url} \\",
        # Servers that refuse fetching by sha: fetch everything, then pick the commit.
        f"    && {{ git fetch --quiet --depth 1 origin {sha} >/dev/null 2>&1 || git fetch --quiet origin; }} \\",
        f"    && git checkout --quiet --detach {sha}",
        "  __cv_rc=$?",
        '  if [ "$__cv_rc" -ne 0 ]; then',
        '    echo "Checkout failed (exit $__cv_rc)"; __cv_mark "checkout-failed:$__cv_rc"; exit "$__cv_rc"',
        "  fi",
        "else",
        f"  echo {shlex.quote(f'git is not installed in the image: the steps run in an empty {builds_root}/project')}",
        "fi",
        f"__cv_save() {{ __cv_rc=$?; export -p > {state}/env.tmp && mv {state}/env.tmp {state}/env;"
        f" pwd > {state}/cwd; exit $__cv_rc; }}",
        "__cv_step() {",
        '  __cv_mark "step-start:$1"',
        "  (",
        f"    if [ -f {state}/env ]; then . {state}/env; fi",
        f'    cd "$(cat {state}/cwd 2>/dev/null || echo {project})" || exit 1',
        "    trap __cv_save EXIT",
        "    (set -o pipefail) 2>/dev/null && set -o pipefail",
        # `set -e` only holds because the step's subshell is a plain command here: inside an
        # `if` condition or an `a || b` list the shell would silently ignore it.
        "    set -e",
        "    __cv_command=$2",
        "    set --",
        '    eval "$__cv_command"',
        "  ) </dev/null",
        "  __cv_rc=$?",
        '  __cv_mark "step-end:$1:$__cv_rc"',
        "  return $__cv_rc",
        "}",
        "__cv_result=0",
    ]
    for step in job.steps:
        call = f"__cv_step {step.index} {shlex.quote(step.command)}"
        if step.kind == StepKind.AFTER_SCRIPT:
            lines.append(call)
        else:
            lines.append(
                f'if [ "$__cv_result" -eq 0 ]; then {call}; __cv_rc=$?;'
                ' [ "$__cv_rc" -eq 0 ] || __cv_result=$__cv_rc; fi'
            )
    lines += ['__cv_mark "job-end:$__cv_result"', 'exit "$__cv_result"', ""]
    return "\n".join(lines)


# --- Reading the markers back -----------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    kind: str  # step-start | step-end | checkout-failed | job-end
    args: tuple[int, ...]


_ARITY = {"step-start": 1, "step-end": 2, "checkout-failed": 1, "job-end": 1}


class MarkerParser:
    """Splits a pod's log bytes into text and markers, whatever the read boundaries.

    A marker may arrive in pieces, so bytes that could still turn out to be one are held back
    until its newline; all other text is passed on at once, so output without a newline (a
    progress prompt) still shows up while the step runs."""

    def __init__(self, nonce: str):
        self._prefix = _MARK + nonce.encode() + b":"
        self._held = b""

    def feed(self, data: bytes) -> list[bytes | Marker]:
        buffer = self._held + data
        events: list[bytes | Marker] = []
        while True:
            start = buffer.find(self._prefix)
            if start < 0:
                break
            end = buffer.find(b"\n", start + len(self._prefix))
            if end < 0:
                if len(buffer) - start - len(self._prefix) <= _MAX_MARKER_BODY:
                    _append_text(events, buffer[:start])
                    self._held = buffer[start:]
                    return events
                # Too long to be a marker: text, and look for a real one after the prefix.
                _append_text(events, buffer[: start + len(self._prefix)])
                buffer = buffer[start + len(self._prefix) :]
                continue
            marker = self._parse(buffer[start + len(self._prefix) : end])
            if marker is None:
                _append_text(events, buffer[: start + len(self._prefix)])
                buffer = buffer[start + len(self._prefix) :]
                continue
            _append_text(events, buffer[:start])
            events.append(marker)
            buffer = buffer[end + 1 :]
        # Hold back a tail that is the beginning of a marker prefix (e.g. a lone b"\x1e").
        keep = 0
        for size in range(min(len(buffer), len(self._prefix) - 1), 0, -1):
            if self._prefix.startswith(buffer[-size:]):
                keep = size
                break
        _append_text(events, buffer[: len(buffer) - keep])
        self._held = buffer[len(buffer) - keep :]
        return events

    def finish(self) -> list[bytes | Marker]:
        """Whatever is held back is text after all: the stream has ended."""
        events: list[bytes | Marker] = []
        _append_text(events, self._held)
        self._held = b""
        return events

    @staticmethod
    def _parse(body: bytes) -> Marker | None:
        kind, _, rest = body.decode("ascii", errors="replace").partition(":")
        fields = rest.split(":") if rest else []
        if _ARITY.get(kind) != len(fields) or not all(f.isdigit() for f in fields):
            return None
        return Marker(kind=kind, args=tuple(int(f) for f in fields))


def _append_text(events: list[bytes | Marker], text: bytes) -> None:
    if not text:
        return
    if events and isinstance(events[-1], bytes):
        events[-1] += text
    else:
        events.append(text)


class _StepTracker:
    """Turns the pod's log into step reports. Fed by the log-following thread and ticked by
    the executor's thread; one lock keeps the reports of the two in order."""

    def __init__(self, reporter: Reporter, job: ClaimedJob, nonce: str):
        self._reporter, self._job = reporter, job
        self._parser = MarkerParser(nonce)
        self._steps = {step.index: step for step in job.steps}
        first = job.steps[0]
        # Text before the first marker (the checkout) heads the first step's log.
        self._logs = {first.index: LogStream(reporter, job, first)}
        self._current = first.index
        self._running: ClaimedStep | None = None
        self.outcomes: dict[int, tuple[str, int | None]] = {}
        self.job_exit: int | None = None
        self.checkout_exit: int | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def script_ended(self) -> bool:
        return self.job_exit is not None or self.checkout_exit is not None

    @property
    def running_step(self) -> ClaimedStep | None:
        return self._running

    def feed(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            for event in self._parser.feed(data):
                self._apply(event)

    def note(self, text: str) -> None:
        """A line of the runner's own, at the head of the current step's log."""
        with self._lock:
            if not self._closed:
                self._logs[self._current].write(text)

    def tick(self) -> None:
        with self._lock:
            if not self._closed:
                self._logs[self._current].maybe_flush()

    def end_of_stream(self) -> None:
        with self._lock:
            if not self._closed:
                for event in self._parser.finish():
                    self._apply(event)

    def conclude(self, *, running_status: str, note: str = "") -> None:
        """Report every step not yet finished: the running one as running_status, the rest
        SKIPPED. Afterwards the tracker ignores whatever the log still brings."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for event in self._parser.finish():
                self._apply(event)
            if note:
                if self._running is not None:
                    self._logs[self._running.index].write(f"\n{note}\n")
                elif not self.outcomes:
                    self._logs[self._current].write(f"{note}\n")
            for stream in self._logs.values():
                stream.flush(final=True)
            for step in self._job.steps:
                if step.index in self.outcomes:
                    continue
                status = running_status if step is self._running else StepStatus.SKIPPED
                self.outcomes[step.index] = (status, None)
                self._reporter.step_finished(self._job, step, status=status, exit_code=None)
            self._running = None

    def _apply(self, event: bytes | Marker) -> None:
        if isinstance(event, bytes):
            self._logs[self._current].write_bytes(event)
            return
        if event.kind == "step-start":
            step = self._steps.get(event.args[0])
            if step is None or step.index in self.outcomes or self._running is not None:
                return
            self._logs[self._current].flush(final=True)
            stream = self._logs.setdefault(step.index, LogStream(self._reporter, self._job, step))
            self._reporter.step_started(self._job, step)
            stream.write(f"$ {step.command}\n")
            self._running, self._current = step, step.index
        elif event.kind == "step-end":
            index, exit_code = event.args
            step = self._running
            if step is None or step.index != index:
                return
            stream = self._logs[index]
            if exit_code != 0:
                stream.write(f"\nexit code {exit_code}\n")
            # Later stray output (a step's background process) stays with this step's log.
            stream.flush(final=True)
            status = StepStatus.SUCCESS if exit_code == 0 else StepStatus.FAILURE
            self.outcomes[index] = (status, exit_code)
            self._running = None
            self._reporter.step_finished(self._job, step, status=status, exit_code=exit_code)
        elif event.kind == "checkout-failed":
            self.checkout_exit = event.args[0]
        elif event.kind == "job-end":
            self.job_exit = event.args[0]


# --- Following the log ------------------------------------------------------------------------


class _LogFollower(threading.Thread):
    """Streams the container's log into the tracker until the script ends or it is aborted."""

    def __init__(self, api: client.CoreV1Api, namespace: str, name: str, tracker: _StepTracker):
        super().__init__(name=f"k8s-log-{name}", daemon=True)
        self._api, self._namespace, self._name, self._tracker = api, namespace, name, tracker
        self._aborted = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None
        self.error = ""

    def abort(self) -> None:
        self._aborted.set()
        with self._lock:
            response = self._response
        if response is not None:
            # Unblocks the read the thread is waiting in; the stream would otherwise only
            # end once the API server notices the pod is gone.
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                response.shutdown()

    def run(self) -> None:
        try:
            self._follow()
        except Exception as exc:  # a dead reader must show up as a failed job, not a silent hang
            logger.exception("following the log of pod %s failed", self._name)
            self.error = f"{type(exc).__name__}: {exc}"

    def _follow(self) -> None:
        consumed = 0
        for attempt in range(_MAX_LOG_RECONNECTS + 1):
            if attempt:
                self._aborted.wait(0.2 * attempt)
            if self._aborted.is_set():
                return
            try:
                # No read timeout: a step may rightly print nothing for an hour.
                response = self._api.read_namespaced_pod_log(
                    self._name, self._namespace, container=_CONTAINER, follow=True, _preload_content=False
                )
            except ApiException as exc:
                # E.g. 400 "container ... is waiting to start" for a pod that failed before
                # its container ran: the pod's status tells the rest.
                self.error = describe_api_error(exc)
                return
            with self._lock:
                # abort() sets the flag before it looks for a response to shut down.
                if self._aborted.is_set():
                    response.close()
                    return
                self._response = response
            # A reopened stream starts again at the beginning of the container's log: skip
            # what was read already. (A log rotated by the kubelet in between would shift
            # this; it needs megabytes of output and a cut stream at once.)
            skip = consumed
            clean = False
            try:
                for chunk in response.stream(65536, decode_content=False):
                    if self._aborted.is_set():
                        return
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk, skip = chunk[skip:], 0
                    consumed += len(chunk)
                    self._tracker.feed(chunk)
                clean, self.error = not self._aborted.is_set(), ""
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self.error = f"log stream broke: {exc}"
            finally:
                with self._lock:
                    self._response = None
                if not clean:
                    response.close()  # never hand a half-read or shut-down connection back to the pool
                response.release_conn()
            if self._aborted.is_set() or self._tracker.script_ended or not self._pod_is_running():
                return
            logger.info("log stream of pod %s ended early; reopening it", self._name)
        self.error = self.error or "the log stream kept ending while the pod ran"

    def _pod_is_running(self) -> bool:
        try:
            pod = self._api.read_namespaced_pod(self._name, self._namespace, _request_timeout=_API_TIMEOUT_S)
        except (ApiException, urllib3.exceptions.HTTPError):
            return False
        return _phase(pod) == "Running"


# --- The executor -----------------------------------------------------------------------------


class KubernetesExecutor:
    """Runs each job in a pod. Arguments left as None come from the CONVEYOR_K8S_* settings,
    then from the defaults here."""

    def __init__(
        self,
        reporter: Reporter,
        *,
        namespace: str | None = None,
        service_account: str | None = None,
        default_image: str | None = None,
        cpu_request: str | None = None,
        cpu_limit: str | None = None,
        memory_request: str | None = None,
        memory_limit: str | None = None,
        api_client: client.ApiClient | None = None,
        poll_interval: float = 0.5,
        builds_root: str = "/builds",
    ):
        self.reporter = reporter
        self.namespace = namespace or _setting("CONVEYOR_K8S_NAMESPACE", "conveyor-jobs")
        self.service_account = service_account or _setting("CONVEYOR_K8S_SERVICE_ACCOUNT", None)
        self.default_image = default_image or _setting("CONVEYOR_K8S_DEFAULT_IMAGE", "alpine:3")
        self.cpu_request = cpu_request or _setting("CONVEYOR_K8S_CPU_REQUEST", None)
        self.cpu_limit = cpu_limit or _setting("CONVEYOR_K8S_CPU_LIMIT", None)
        self.memory_request = memory_request or _setting("CONVEYOR_K8S_MEMORY_REQUEST", None)
        self.memory_limit = memory_limit or _setting("CONVEYOR_K8S_MEMORY_LIMIT", None)
        self.poll_interval = poll_interval
        # The pod's emptyDir mount; tests against the fake API server point it at a temp dir.
        self.builds_root = builds_root.rstrip("/") or "/builds"
        self.api = client.CoreV1Api(api_client or _load_api_client())

    def run(self, job: ClaimedJob, stop: threading.Event) -> JobResult:
        if not job.steps:
            return JobResult(status=JobStatus.SUCCESS, exit_code=0)
        # One executor serves all of a runner's concurrent jobs: per-job state lives in _PodRun.
        return _PodRun(self, job, stop).execute()

    def pod_name(self, job: ClaimedJob) -> str:
        return re.sub(r"[^a-z0-9-]", "-", f"conveyor-job-{job.id[:8]}-{job.attempt}".lower())

    def pod_manifest(self, job: ClaimedJob, *, nonce: str, extra_env: dict[str, str] | None = None) -> client.V1Pod:
        image = (job.spec or {}).get("image")
        image_name = (image.get("name") if isinstance(image, dict) else image) or self.default_image
        env = {"CI_BUILDS_DIR": self.builds_root, **job.variables, **(extra_env or {})}
        # The checkout is there whatever a variable says.
        env["CI_PROJECT_DIR"] = f"{self.builds_root}/project"
        requests = {k: v for k, v in {"cpu": self.cpu_request, "memory": self.memory_request}.items() if v}
        limits = {k: v for k, v in {"cpu": self.cpu_limit, "memory": self.memory_limit}.items() if v}
        container = client.V1Container(
            name=_CONTAINER,
            image=str(image_name),
            command=["/bin/sh", "-c", pod_script(job, nonce=nonce, builds_root=self.builds_root)],
            env=[client.V1EnvVar(name=name, value=value) for name, value in env.items()],
            resources=client.V1ResourceRequirements(requests=requests or None, limits=limits or None),
            volume_mounts=[client.V1VolumeMount(name="builds", mount_path=self.builds_root)],
        )
        return client.V1Pod(
            api_version="v1",
            kind="Pod",
            metadata=client.V1ObjectMeta(
                name=self.pod_name(job),
                labels={
                    "app": "conveyor-job",
                    "conveyor/job-id": job.id,
                    "conveyor/run-id": job.run_id,
                    "conveyor/attempt": str(job.attempt),
                },
            ),
            spec=client.V1PodSpec(
                restart_policy="Never",
                active_deadline_seconds=job.timeout_s,
                service_account_name=self.service_account,
                # A job gets API credentials only when a service account was chosen for it.
                automount_service_account_token=None if self.service_account else False,
                # Like the shell executor's environment, a job sees only its own variables,
                # not one *_SERVICE_HOST/PORT pair per service in the namespace.
                enable_service_links=False,
                containers=[container],
                volumes=[client.V1Volume(name="builds", empty_dir=client.V1EmptyDirVolumeSource())],
            ),
        )


class _PodRun:
    def __init__(self, executor: KubernetesExecutor, job: ClaimedJob, stop: threading.Event):
        self.executor, self.api, self.namespace = executor, executor.api, executor.namespace
        self.job, self.stop = job, stop
        self.name = executor.pod_name(job)
        self.nonce = secrets.token_hex(8)
        self.tracker = _StepTracker(executor.reporter, job, self.nonce)
        self.follower: _LogFollower | None = None
        # Only a pod this run created is ever deleted: a name clash may be another job's pod.
        self.created = False
        self.deleted = False
        # CONVEYOR_IMAGE_* of the images the job's dependencies recorded (runners.artifacts).
        self.extra_env: dict[str, str] = {}

    def execute(self) -> JobResult:
        try:
            result = self._execute()
        except ApiException as exc:
            result = JobResult(status=JobStatus.FAILURE, reason=f"kubernetes API error: {describe_api_error(exc)}")
        except urllib3.exceptions.HTTPError as exc:
            result = JobResult(status=JobStatus.FAILURE, reason=f"kubernetes API unreachable: {exc}")
        finally:
            if self.follower is not None:
                self.follower.abort()
            if self.created and not self.deleted:
                self._delete_pod()
        self.tracker.conclude(running_status=StepStatus.FAILURE, note=result.reason)
        return result

    def _artifacts_preflight(self) -> JobResult | None:
        """Artifacts and caches are not carried in and out of pods yet. Say so, and fail a job
        whose steps would silently miss files rather than let it pass without them: one that
        declares `artifacts:` to keep, or that would receive its dependencies' archives.
        `cache:` only makes a job faster, so it runs without (with a warning). The images its
        dependencies recorded do reach it (CONVEYOR_IMAGE_*: only variables)."""
        from runners.artifacts import _retry, artifact_transport, image_variables

        spec = self.job.spec or {}
        section = spec.get("artifacts") or {}
        declared = [f"artifacts:{key}" for key in ("paths", "reports", "reuse") if section.get(key)]
        problem = ""
        if declared:
            problem = f"artifacts: not supported on the Kubernetes executor yet ({', '.join(declared)})"
        transport = artifact_transport(self.executor.reporter)
        if transport is not None and not problem:
            try:
                available, missing = _retry(lambda: transport.dependencies(self.job), "artifact list")
                if available or missing:
                    names = ", ".join(sorted({f"{a['name']} of job {a['job']}" for a in [*available, *missing]}))
                    problem = (
                        f"artifacts: this job would receive the artifacts {names}, which the Kubernetes executor "
                        "cannot put into its pod yet (set `dependencies: []` if it does not use them)"
                    )
                else:
                    self.extra_env = image_variables(_retry(lambda: transport.images(self.job), "image list"))
            except JobNotHeld:
                raise
            except Exception as exc:
                problem = f"artifacts: the list of this job's dependencies is unavailable: {exc}"
        if problem:
            reason = f"{problem}; route this job to a shell runner with tags"
            self.tracker.conclude(running_status=StepStatus.FAILURE, note=f"ERROR: {reason}")
            return JobResult(status=JobStatus.FAILURE, reason=reason)
        if spec.get("cache"):
            self.tracker.note(
                "WARNING: cache: not supported on the Kubernetes executor yet: this job runs without its cache "
                "(route it to a shell runner with tags to use it)\n"
            )
        for name, value in self.extra_env.items():
            if name.startswith("CONVEYOR_IMAGE_") and not name.endswith(("_REFERENCE", "_DIGEST")):
                self.tracker.note(f"Image of the jobs this job depends on: {name}={value}\n")
        return None

    def _execute(self) -> JobResult:
        timeout = self.job.timeout_s
        deadline = time.monotonic() + timeout + _DEADLINE_SLACK_S
        refused = self._artifacts_preflight()
        if refused is not None:
            return refused
        if not self._create_pod():
            self.tracker.conclude(running_status=StepStatus.CANCELLED)
            return JobResult(status=JobStatus.CANCELLED, reason="cancelled")
        early = self._wait_until_started(deadline)
        if early is not None:
            return early
        self.follower = _LogFollower(self.api, self.namespace, self.name, self.tracker)
        self.follower.start()
        while self.follower.is_alive():
            if self.stop.wait(min(self.executor.poll_interval, LOG_FLUSH_S)):
                return self._cancel()
            self.tracker.tick()
            if time.monotonic() > deadline:
                return self._give_up(f"timed out after {timeout}s", note=f"Timeout: timed out after {timeout}s")
        self.tracker.end_of_stream()
        if self.tracker.checkout_exit is not None:
            # The script said why in the first step's log; no step ran.
            self.tracker.conclude(running_status=StepStatus.FAILURE)
            return JobResult(status=JobStatus.FAILURE, reason=f"checkout failed (exit {self.tracker.checkout_exit})")
        if self.tracker.job_exit is not None:
            return self._result_from_markers()
        return self._result_from_pod()

    def _create_pod(self) -> bool:
        """Create the job's pod. False: cancelled while a leftover pod was in the way."""
        manifest = self.executor.pod_manifest(self.job, nonce=self.nonce, extra_env=self.extra_env)
        try:
            self.api.create_namespaced_pod(self.namespace, manifest, _request_timeout=_API_TIMEOUT_S)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # Left over from an earlier try of this very attempt (a runner that died mid-job):
            # ours to replace, once. A pod of another job that merely shares the name is not.
            existing = self._read_pod()
            if existing is not None and (existing.metadata.labels or {}).get("conveyor/job-id") != self.job.id:
                raise
            logger.info("replacing leftover pod %s", self.name)
            self._delete_pod()
            self._wait_until_gone()
            if self.stop.is_set():
                return False
            self.api.create_namespaced_pod(self.namespace, manifest, _request_timeout=_API_TIMEOUT_S)
        self.created = True
        return True

    def _wait_until_started(self, deadline: float) -> JobResult | None:
        """Wait for the container to run (or to have run). A result means the job ends here."""
        while True:
            if self.stop.is_set():
                return self._cancel()
            if time.monotonic() > deadline:
                timeout = self.job.timeout_s
                return self._give_up(
                    f"timed out after {timeout}s", note=f"Timeout: the pod did not start in {timeout}s"
                )
            pod = _retry(
                lambda: self.api.read_namespaced_pod(self.name, self.namespace, _request_timeout=_API_TIMEOUT_S)
            )
            if _phase(pod) in {"Running", *_TERMINAL_PHASES}:
                return None
            problem = _pending_problem(pod)
            if problem:
                reason = f"the pod cannot start: {problem}"
                self.tracker.conclude(
                    running_status=StepStatus.FAILURE, note=f"Pod {self.name} cannot start: {problem}"
                )
                return JobResult(status=JobStatus.FAILURE, reason=reason)
            self.stop.wait(self.executor.poll_interval)

    def _cancel(self) -> JobResult:
        # Deleting first stops the work at once; reporting can wait a moment.
        self._delete_pod()
        self._stop_following()
        self.tracker.conclude(running_status=StepStatus.CANCELLED, note="Cancelled: cancelled")
        return JobResult(status=JobStatus.CANCELLED, reason="cancelled")

    def _give_up(self, reason: str, *, note: str) -> JobResult:
        self._delete_pod()
        self._stop_following()
        self.tracker.conclude(running_status=StepStatus.FAILURE, note=note)
        return JobResult(status=JobStatus.FAILURE, reason=reason)

    def _stop_following(self) -> None:
        if self.follower is not None:
            self.follower.abort()
            self.follower.join(timeout=2.0)

    def _result_from_markers(self) -> JobResult:
        self.tracker.conclude(running_status=StepStatus.FAILURE)
        for step in self.job.steps:
            if step.kind == StepKind.AFTER_SCRIPT:
                continue  # its outcome never changes the job's
            status, exit_code = self.tracker.outcomes[step.index]
            if status == StepStatus.FAILURE:
                return JobResult(
                    status=JobStatus.FAILURE, exit_code=exit_code, reason=f"step {step.name!r} exited with {exit_code}"
                )
        if self.tracker.job_exit:
            return JobResult(status=JobStatus.FAILURE, exit_code=self.tracker.job_exit, reason="the job script failed")
        return JobResult(status=JobStatus.SUCCESS, exit_code=0)

    def _result_from_pod(self) -> JobResult:
        """The log ended before the script did: ask the pod why."""
        pod = self._read_pod()
        # A log that ended cleanly means the container ended: its status follows shortly.
        waited_until = time.monotonic() + (0 if self.follower and self.follower.error else _TERMINAL_WAIT_S)
        while pod is not None and _phase(pod) not in _TERMINAL_PHASES and time.monotonic() < waited_until:
            if self.stop.wait(self.executor.poll_interval):
                return self._cancel()
            pod = self._read_pod()
        exit_code: int | None = None
        if pod is None:
            reason = "the pod was deleted before the job finished"
        elif pod.status and pod.status.reason == "DeadlineExceeded":
            reason = f"timed out after {self.job.timeout_s}s"
        elif _phase(pod) in _TERMINAL_PHASES:
            terminated = _terminated(pod)
            exit_code = terminated.exit_code if terminated else None
            why = (terminated.reason if terminated else None) or pod.status.reason or _phase(pod)
            message = (terminated.message if terminated else None) or pod.status.message
            reason = f"the pod ended before the job finished: {why}" + (f" ({message})" if message else "")
            if exit_code is not None:
                reason += f", exit code {exit_code}"
        else:
            reason = f"lost the pod's log: {self.follower.error if self.follower else 'no log stream'}"
        note = f"Timeout: {reason}" if reason.startswith("timed out") else reason
        self.tracker.conclude(running_status=StepStatus.FAILURE, note=note)
        return JobResult(status=JobStatus.FAILURE, exit_code=exit_code, reason=reason)

    def _read_pod(self) -> client.V1Pod | None:
        try:
            return _retry(
                lambda: self.api.read_namespaced_pod(self.name, self.namespace, _request_timeout=_API_TIMEOUT_S)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _wait_until_gone(self) -> None:
        until = time.monotonic() + 60
        while self._read_pod() is not None:
            if time.monotonic() > until or self.stop.wait(self.executor.poll_interval):
                return  # the create that follows reports the clash

    def _delete_pod(self) -> None:
        # Deleting a leftover pod before ours exists does not count as cleaning up ours.
        self.deleted = self.created
        try:
            self.api.delete_namespaced_pod(
                self.name,
                self.namespace,
                grace_period_seconds=0,
                propagation_policy="Background",
                _request_timeout=_API_TIMEOUT_S,
            )
        except ApiException as exc:
            if exc.status != 404:
                logger.warning("could not delete pod %s/%s: %s", self.namespace, self.name, describe_api_error(exc))
        except urllib3.exceptions.HTTPError as exc:
            logger.warning("could not delete pod %s/%s: %s", self.namespace, self.name, exc)


# --- Helpers ----------------------------------------------------------------------------------


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default) or default


def _load_api_client() -> client.ApiClient:
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _retry(call: Callable[[], T], attempts: int = 3) -> T:
    """Reads survive a blip of the API server (a restart, a 5xx from its load balancer)."""
    for attempt in range(1, attempts):
        try:
            return call()
        except ApiException as exc:
            if (exc.status or 0) < 500 and exc.status != 429:
                raise
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.5 * attempt)
    return call()


def _phase(pod: client.V1Pod) -> str | None:
    return pod.status.phase if pod.status else None


def _pending_problem(pod: client.V1Pod) -> str:
    status = pod.status
    if status is None:
        return ""
    for container in status.container_statuses or []:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason in _FATAL_WAITING:
            return f"{waiting.reason}: {waiting.message}" if waiting.message else waiting.reason
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
            return f"Unschedulable: {condition.message}" if condition.message else "Unschedulable"
    return ""


def _terminated(pod: client.V1Pod) -> Any:
    for container in (pod.status.container_statuses if pod.status else None) or []:
        if container.name == _CONTAINER and container.state and container.state.terminated:
            return container.state.terminated
    return None
