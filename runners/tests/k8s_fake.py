"""A fake Kubernetes API server for executor tests: real HTTP, real JSON, real processes.

It speaks the part of the core/v1 pods API the Kubernetes executor uses, with the shapes a
real API server sends (Pod and Status objects, chunked `follow` logs), so the executor is
tested through the real `kubernetes` client library. A pod "runs" by executing its
container's command as a local subprocess: the image is ignored and the environment is the
pod spec's env plus what a container runtime adds (PATH, HOME, HOSTNAME). Deletion,
activeDeadlineSeconds, image pull failures and unschedulable pods behave as on a cluster.

    with FakeKubernetes(tmp_path) as fake:
        api = kubernetes.client.CoreV1Api(fake.api_client())
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

# The fake "node": a pod asking for more memory than this is Unschedulable.
NODE_MEMORY_BYTES = 16 * 1024**3
# How long a new pod stays Pending (scheduling, "pulling" the image) before it runs.
START_DELAY_S = 0.05

_POD = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+)(?P<log>/log)?)?$")
_QUANTITY = re.compile(r"^(?P<number>[0-9.]+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$")
_SUFFIXES = {
    None: 1,
    "m": 0.001,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bytes(quantity: str) -> float:
    match = _QUANTITY.match(str(quantity))
    if match is None:
        raise ValueError(f"quantities must match the regular expression: {quantity!r}")
    return float(match["number"]) * _SUFFIXES[match["suffix"]]


@dataclass
class FakePod:
    manifest: dict[str, Any]
    root: Path  # stands in for the container's filesystem
    phase: str = "Pending"
    reason: str | None = None
    message: str | None = None
    scheduled: bool | None = None  # None: not yet decided
    unschedulable_message: str = ""
    start_time: str | None = None
    container_state: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log: bytearray = field(default_factory=bytearray)
    # The container's output is complete (it exited, was killed, or never ran).
    log_done: bool = False
    deleted: bool = False
    deadline_exceeded: bool = False
    follow_connections: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def name(self) -> str:
        return self.manifest["metadata"]["name"]

    @property
    def container(self) -> dict[str, Any]:
        return self.manifest["spec"]["containers"][0]

    @property
    def started(self) -> bool:
        return self.process is not None

    def to_json(self) -> dict[str, Any]:
        with self.cond:
            status: dict[str, Any] = {"phase": self.phase, "qosClass": "BestEffort"}
            if self.reason:
                status["reason"] = self.reason
            if self.message:
                status["message"] = self.message
            if self.scheduled is not None:
                condition = {"type": "PodScheduled", "status": "True" if self.scheduled else "False"}
                if not self.scheduled:
                    condition |= {"reason": "Unschedulable", "message": self.unschedulable_message}
                status["conditions"] = [condition]
            if self.start_time:
                status["startTime"] = self.start_time
                status["hostIP"] = status["podIP"] = "127.0.0.1"
            if self.container_state:
                running = "running" in self.container_state
                status["containerStatuses"] = [
                    {
                        "name": self.container["name"],
                        "image": self.container["image"],
                        "imageID": "",
                        "ready": running,
                        "started": running,
                        "restartCount": 0,
                        "state": self.container_state,
                        "lastState": {},
                    }
                ]
            return {**self.manifest, "status": status}


class FakeKubernetes:
    """The API server. Use as a context manager; pods left running are killed on exit."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.pods: dict[tuple[str, str], FakePod] = {}
        # Every request as (method, path), in order, for tests to assert on.
        self.requests: list[tuple[str, str]] = []
        # Every pod manifest POSTed, as sent.
        self.created: list[dict[str, Any]] = []
        # Requests into these namespaces are refused as by RBAC (403 Forbidden).
        self.forbidden_namespaces: set[str] = set()
        # A deleted pod lingers this long (terminating) before its name is free again.
        self.deletion_delay_s = 0.0
        # Fault injection: the first follow stream of each pod breaks off after this many bytes.
        self.cut_first_log_stream_after: int | None = None
        self.lock = threading.Lock()
        self.closing = False
        self._timers: list[threading.Timer] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-k8s", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def api_client(self) -> client.ApiClient:
        return client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{self.port}"))

    def __enter__(self) -> FakeKubernetes:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.closing = True
        for timer in self._timers:
            timer.cancel()
        for pod in list(self.pods.values()):
            self._kill(pod)
            with pod.cond:
                pod.cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def requested(self, method: str, path_suffix: str = "") -> list[str]:
        with self.lock:
            return [path for m, path in self.requests if m == method and path.endswith(path_suffix)]

    # --- the pod lifecycle ---

    def create(self, namespace: str, manifest: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = (manifest.get("metadata") or {}).get("name")
        if not name:
            return 422, _status(422, "Invalid", 'Pod "" is invalid: metadata.name: Required value: name is required')
        with self.lock:
            if (namespace, name) in self.pods:
                return 409, _status(409, "AlreadyExists", f'pods "{name}" already exists', name=name)
            metadata = manifest.setdefault("metadata", {})
            metadata |= {
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": str(len(self.requests)),
                "creationTimestamp": _now(),
            }
            root = self.root / f"{namespace}-{name}-{metadata['uid'][:8]}"
            root.mkdir()
            pod = FakePod(manifest=manifest, root=root)
            self.pods[(namespace, name)] = pod
            self.created.append(json.loads(json.dumps(manifest)))
        threading.Thread(target=self._run, args=(pod,), name=f"pod-{name}", daemon=True).start()
        return 201, pod.to_json()

    def delete(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                return 404, _status(404, "NotFound", f'pods "{name}" not found', name=name)
            with pod.cond:
                pod.deleted = True
                pod.manifest["metadata"]["deletionTimestamp"] = _now()
                pod.manifest["metadata"]["deletionGracePeriodSeconds"] = 0
            if self.deletion_delay_s:
                self._later(self.deletion_delay_s, self._forget, namespace, name, pod)
            else:
                self.pods.pop((namespace, name))
        self._kill(pod)
        with pod.cond:
            pod.log_done = True
            pod.cond.notify_all()
        return 200, pod.to_json()

    def _forget(self, namespace: str, name: str, pod: FakePod) -> None:
        with self.lock:
            if self.pods.get((namespace, name)) is pod:
                self.pods.pop((namespace, name))

    def _later(self, delay: float, function: Any, *args: Any) -> None:
        timer = threading.Timer(delay, function, args=args)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _run(self, pod: FakePod) -> None:
        time.sleep(START_DELAY_S)
        spec = pod.manifest["spec"]
        memory = sum(
            _bytes(((c.get("resources") or {}).get("requests") or {}).get("memory", "0")) for c in spec["containers"]
        )
        with pod.cond:
            if pod.deleted:
                return
            if memory > NODE_MEMORY_BYTES:
                pod.scheduled = False
                pod.unschedulable_message = "0/1 nodes are available: 1 Insufficient memory."
                return
            pod.scheduled = True
            pod.start_time = _now()
            pod.container_state = {"waiting": {"reason": "ContainerCreating"}}
        deadline = spec.get("activeDeadlineSeconds")
        if deadline:
            self._later(float(deadline), self._deadline, pod)
        if "does-not-exist" in pod.container["image"]:
            with pod.cond:
                pod.container_state = {
                    "waiting": {
                        "reason": "ErrImagePull",
                        "message": f'failed to pull and unpack image "{pod.container["image"]}": not found',
                    }
                }
            return
        env = {e["name"]: e.get("value", "") for e in pod.container.get("env") or []}
        home = pod.root / "root"
        home.mkdir()
        # What a container runtime adds to the spec's env; never the test process's own.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "HOSTNAME": pod.name, **env}
        with pod.cond:
            if pod.deleted or pod.deadline_exceeded:
                return
            pod.process = subprocess.Popen(
                [*pod.container.get("command", []), *pod.container.get("args", [])],
                cwd=pod.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the container: a kill reaches every process in it
            )
            pod.phase = "Running"
            pod.container_state = {"running": {"startedAt": _now()}}
        reader = threading.Thread(target=self._read_output, args=(pod,), daemon=True)
        reader.start()
        exit_code = pod.process.wait()
        # The container ends with its main process: whatever it left behind goes too.
        self._kill(pod)
        reader.join()
        with pod.cond:
            if not (pod.deleted or pod.deadline_exceeded):
                pod.phase = "Succeeded" if exit_code == 0 else "Failed"
                pod.container_state = {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": "Completed" if exit_code == 0 else "Error",
                        "startedAt": pod.container_state.get("running", {}).get("startedAt", _now()),
                        "finishedAt": _now(),
                    }
                }
            pod.log_done = True
            pod.cond.notify_all()

    def _read_output(self, pod: FakePod) -> None:
        assert pod.process is not None and pod.process.stdout is not None
        while data := os.read(pod.process.stdout.fileno(), 65536):
            with pod.cond:
                pod.log += data
                pod.cond.notify_all()
        pod.process.stdout.close()

    def _deadline(self, pod: FakePod) -> None:
        with pod.cond:
            if pod.deleted or pod.phase in {"Succeeded", "Failed"}:
                return
            pod.deadline_exceeded = True
            pod.phase, pod.reason = "Failed", "DeadlineExceeded"
            pod.message = "Pod was active on the node longer than the specified deadline"
            if pod.started:
                pod.container_state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "Error",
                        "startedAt": pod.start_time,
                        "finishedAt": _now(),
                    }
                }
            else:
                pod.log_done = True
        self._kill(pod)

    @staticmethod
    def _kill(pod: FakePod) -> None:
        if pod.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pod.process.pid, signal.SIGKILL)


def _status(code: int, reason: str, message: str, *, name: str | None = None, kind: str = "pods") -> dict[str, Any]:
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if name is not None:
        status["details"] = {"name": name, "kind": kind}
    return status


class _Handler(BaseHTTPRequestHandler):
    # Chunked transfer (the follow stream) and keep-alive need HTTP/1.1.
    protocol_version = "HTTP/1.1"
    server: Any

    @property
    def fake(self) -> FakeKubernetes:
        return self.server.fake

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: pytest shows a failing test's output, and request lines would drown it.
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.fake.lock:
            self.fake.requests.append((method, url.path))
        match = _POD.match(url.path)
        if match is None:
            return self._json(404, _status(404, "NotFound", "the server could not find the requested resource"))
        namespace, name = match["ns"], match["name"]
        if namespace in self.fake.forbidden_namespaces:
            verb = {"GET": "get", "POST": "create", "DELETE": "delete"}[method]
            return self._json(
                403,
                _status(
                    403,
                    "Forbidden",
                    f'pods is forbidden: User "system:serviceaccount:conveyor:runner" cannot {verb} resource '
                    f'"pods" in API group "" in the namespace "{namespace}"',
                ),
            )
        if method == "POST" and name is None:
            return self._json(*self.fake.create(namespace, json.loads(body or b"{}")))
        if name is None:
            return self._json(405, _status(405, "MethodNotAllowed", "the server does not allow this method"))
        if method == "DELETE" and not match["log"]:
            return self._json(*self.fake.delete(namespace, name))
        if method != "GET":
            return self._json(405, _status(405, "MethodNotAllowed", "the server does not allow this method"))
        pod = self.fake.pods.get((namespace, name))
        if pod is None:
            return self._json(404, _status(404, "NotFound", f'pods "{name}" not found', name=name))
        if not match["log"]:
            return self._json(200, pod.to_json())
        if not pod.started:
            waiting = pod.container_state.get("waiting", {}).get("reason", "ContainerCreating")
            message = f'container "{pod.container["name"]}" in pod "{name}" is waiting to start: {waiting}'
            return self._json(400, _status(400, "BadRequest", message))
        if query.get("follow") == "true":
            return self._follow(pod)
        with pod.cond:
            data = bytes(pod.log)
        self._send(200, data, "text/plain")

    def _follow(self, pod: FakePod) -> None:
        with pod.cond:
            pod.follow_connections += 1
            first = pod.follow_connections == 1
        budget = self.fake.cut_first_log_stream_after if first else None
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        try:
            while True:
                with pod.cond:
                    while len(pod.log) == sent and not pod.log_done and not self.fake.closing:
                        pod.cond.wait(0.5)
                    data = bytes(pod.log[sent:])
                    done = pod.log_done or self.fake.closing
                if budget is not None and sent + len(data) >= budget:
                    # A connection cut mid-stream: no closing chunk, as when a proxy drops it.
                    self._chunk(data[: budget - sent])
                    self.close_connection = True
                    return
                if data:
                    self._chunk(data)
                    sent += len(data)
                if done:
                    self.wfile.write(b"0\r\n\r\n")
                    return
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    def _json(self, code: int, payload: dict[str, Any]) -> None:
        self._send(code, json.dumps(payload).encode(), "application/json")

    def _send(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
