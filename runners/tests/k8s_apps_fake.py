"""A fake Kubernetes API server for rollout tests: real HTTP, real JSON, a simulated controller.

It speaks the part of the API a deploy uses, with the shapes a real API server sends, so the
rollout code is tested through the real `kubernetes` client library:

- apps/v1 deployments: get, list (+ `watch=true` streams), create, replace, delete, and patch in
  the three types the client sends (strategic merge for a dict body, JSON patch for a list,
  merge patch when asked);
- apps/v1 replicasets and core/v1 pods: get and list by label selector (+ watch);
- core/v1 services: get, list, create, patch, delete.

A controller thread plays the Deployment and ReplicaSet controllers and the kubelets, one tick
every `tick_s`: a new pod template gets a ReplicaSet with the next `deployment.kubernetes.io/revision`
(an older ReplicaSet with the same template is reused and renumbered, as on `rollout undo`);
replicas move over one at a time (maxSurge 1, maxUnavailable 0); pods start, become ready or
get stuck according to their image's Behaviour; the Deployment's status and conditions follow,
including ProgressDeadlineExceeded after `progressDeadlineSeconds`.

    with FakeCluster() as cluster:
        cluster.add_deployment("shop", "web", image="registry.test/web:1")
        cluster.behave("registry.test/web:2", Behaviour.CRASH_LOOP)
        apps = kubernetes.client.AppsV1Api(cluster.api_client())
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

from runners.tests.k8s_fake import _now, _status

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
# How long a new pod is Pending ("pulling", "creating") before its image's behaviour shows.
POD_START_S = 0.04
# A watch without timeoutSeconds still ends after this long, so no test leaks a stream.
MAX_WATCH_S = 60.0

_PATH = re.compile(
    r"^/(?P<group>api/v1|apis/apps/v1)/namespaces/(?P<ns>[^/]+)/(?P<kind>deployments|replicasets|pods|services)"
    r"(?:/(?P<name>[^/]+))?$"
)
_GROUPS = {"deployments": "apis/apps/v1", "replicasets": "apis/apps/v1", "pods": "api/v1", "services": "api/v1"}
_KINDS = {"deployments": "Deployment", "replicasets": "ReplicaSet", "pods": "Pod", "services": "Service"}
_API_VERSIONS = {"deployments": "apps/v1", "replicasets": "apps/v1", "pods": "v1", "services": "v1"}
# Strategic merge patch merges these lists by a key instead of replacing them.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "conditions": "type",
}


class Behaviour(StrEnum):
    HEALTHY = "healthy"  # ready right after starting
    SLOW = "slow"  # running, ready only after `FakeCluster.slow_ready_s`
    NEVER_READY = "never-ready"  # running, its readiness probe never passes
    CRASH_LOOP = "crash-loop"  # exits 1 at once, again and again: CrashLoopBackOff
    IMAGE_PULL_ERROR = "image-pull-error"  # ErrImagePull, then ImagePullBackOff
    CONFIG_ERROR = "config-error"  # a missing Secret: CreateContainerConfigError


@dataclass
class _Event:
    resource_version: int
    kind: str
    namespace: str
    type: str
    obj: dict[str, Any]


@dataclass
class _Fault:
    method: str
    path_contains: str
    status: int
    remaining: int


class FakeCluster:
    """The API server and its controllers. Use as a context manager."""

    def __init__(self, *, tick_s: float = 0.02, slow_ready_s: float = 30.0):
        self.tick_s = tick_s
        self.slow_ready_s = slow_ready_s
        self.behaviours: dict[str, Behaviour] = {}
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {kind: {} for kind in _KINDS}
        self.events: list[_Event] = []
        # Every request as (method, path, content type), in order, for tests to assert on.
        self.requests: list[tuple[str, str, str]] = []
        # Every PATCH as (path, content type, body), in order.
        self.patches: list[tuple[str, str, Any]] = []
        self.cond = threading.Condition(threading.RLock())
        self.closing = False
        self._faults: list[_Fault] = []
        self._resource_versions = itertools.count(1)
        self._pod_born: dict[tuple[str, str], float] = {}
        # Per Deployment: (the ReplicaSet being rolled out to, when that started).
        self._rollouts: dict[tuple[str, str], tuple[str, float]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.cluster = self  # type: ignore[attr-defined]
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-apps", daemon=True
            ),
            threading.Thread(target=self._control_loop, name="fake-apps-controller", daemon=True),
        ]

    # --- the test's side ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def api_client(self) -> client.ApiClient:
        return client.ApiClient(client.Configuration(host=self.url))

    def __enter__(self) -> FakeCluster:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._threads[1].join(timeout=5)

    def behave(self, image: str, behaviour: Behaviour) -> None:
        """Pods running `image` behave so from now on (images not named are healthy)."""
        with self.cond:
            self.behaviours[image] = behaviour

    def fail_next(self, method: str, path_contains: str, *, status: int = 500, times: int = 1) -> None:
        """The next `times` matching requests get an error Status (an API server hiccup)."""
        with self.cond:
            self._faults.append(_Fault(method, path_contains, status, times))

    def add_deployment(
        self,
        namespace: str,
        name: str,
        *,
        image: str,
        replicas: int = 2,
        container: str = "app",
        labels: dict[str, str] | None = None,
        ports: list[int] | None = None,
        progress_deadline_s: int = 600,
        wait: bool = True,
    ) -> dict[str, Any]:
        """A Deployment as `kubectl apply` would create it; waits until rolled out unless told not to."""
        labels = labels or {"app": name}
        container_spec: dict[str, Any] = {"name": container, "image": image}
        if ports:
            container_spec["ports"] = [{"containerPort": port, "protocol": "TCP"} for port in ports]
        manifest = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {
                "replicas": replicas,
                "progressDeadlineSeconds": progress_deadline_s,
                "selector": {"matchLabels": dict(labels)},
                "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": [container_spec]}},
            },
        }
        code, body = self.create("deployments", namespace, manifest)
        assert code == 201, body
        if wait:
            self.wait_until(lambda: self.rolled_out(namespace, name), what=f"deployment {name} to roll out")
        return self.get("deployments", namespace, name)

    def add_service(
        self, namespace: str, name: str, *, selector: dict[str, str], port: int = 80, target_port: int = 8080
    ) -> dict[str, Any]:
        manifest = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": dict(selector), "ports": [{"port": port, "targetPort": target_port}]},
        }
        code, body = self.create("services", namespace, manifest)
        assert code == 201, body
        return body

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.cond:
            obj = self.objects[kind].get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def select(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        with self.cond:
            return [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(self.objects[kind].items())
                if ns == namespace and _labels_match(obj, selector)
            ]

    def image_of(self, namespace: str, deployment: str, container: str = "app") -> str | None:
        obj = self.get("deployments", namespace, deployment)
        if obj is None:
            return None
        return next(c["image"] for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == container)

    def pod_images(self, namespace: str, selector: str = "") -> list[str]:
        return sorted(pod["spec"]["containers"][0]["image"] for pod in self.select("pods", namespace, selector))

    def rolled_out(self, namespace: str, name: str) -> bool:
        obj = self.get("deployments", namespace, name)
        if obj is None:
            return False
        status, desired = obj.get("status") or {}, obj["spec"].get("replicas", 1)
        return (
            status.get("observedGeneration", 0) >= obj["metadata"]["generation"]
            and status.get("updatedReplicas", 0) == desired
            and status.get("replicas", 0) == desired
            and status.get("availableReplicas", 0) == desired
        )

    def wait_until(self, condition: Any, *, timeout: float = 10.0, what: str = "the condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(self.tick_s)

    # --- the store: every change is an event for watchers -------------------------------------

    def _put(self, kind: str, obj: dict[str, Any], event_type: str) -> None:
        with self.cond:
            rv = next(self._resource_versions)
            obj["metadata"]["resourceVersion"] = str(rv)
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            if event_type == "DELETED":
                self.objects[kind].pop(key, None)
            else:
                self.objects[kind][key] = obj
            self.events.append(_Event(rv, kind, key[0], event_type, copy.deepcopy(obj)))
            self.cond.notify_all()

    def _update(self, kind: str, obj: dict[str, Any], before: dict[str, Any]) -> None:
        """Store `obj` and tell watchers, unless nothing changed (the controller re-syncs often)."""
        if obj != before:
            self._put(kind, obj, "MODIFIED")

    def create(self, kind: str, namespace: str, manifest: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = (manifest.get("metadata") or {}).get("name")
        if not name:
            return 422, _status(422, "Invalid", f"{_KINDS[kind]}.metadata.name: Required value", kind=kind)
        with self.cond:
            if (namespace, name) in self.objects[kind]:
                return 409, _status(409, "AlreadyExists", f'{kind} "{name}" already exists', name=name, kind=kind)
            obj = copy.deepcopy(manifest)
            obj["apiVersion"], obj["kind"] = _API_VERSIONS[kind], _KINDS[kind]
            obj["metadata"] |= {"namespace": namespace, "uid": str(uuid.uuid4()), "creationTimestamp": _now()}
            if kind == "deployments":
                obj["metadata"]["generation"] = 1
                spec = obj["spec"]
                spec.setdefault("replicas", 1)
                spec.setdefault("progressDeadlineSeconds", 600)
                spec.setdefault("revisionHistoryLimit", 10)
                spec.setdefault("strategy", {"type": "RollingUpdate"})
                obj["status"] = {}
            self._put(kind, obj, "ADDED")
            return 201, copy.deepcopy(obj)

    def replace(self, kind: str, namespace: str, name: str, manifest: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.cond:
            current = self.objects[kind].get((namespace, name))
            if current is None:
                return 404, _not_found(kind, name)
            sent_version = (manifest.get("metadata") or {}).get("resourceVersion")
            if sent_version and sent_version != current["metadata"]["resourceVersion"]:
                message = (
                    f'Operation cannot be fulfilled on {kind} "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again"
                )
                return 409, _status(409, "Conflict", message, name=name, kind=kind)
            obj = copy.deepcopy(manifest)
            obj["apiVersion"], obj["kind"] = _API_VERSIONS[kind], _KINDS[kind]
            obj["metadata"] = {
                **obj.get("metadata", {}),
                **{k: current["metadata"][k] for k in ("namespace", "uid", "creationTimestamp", "generation")},
            }
            return self._store_change(kind, current, obj)

    def patch(self, kind: str, namespace: str, name: str, content_type: str, patch: Any) -> tuple[int, dict[str, Any]]:
        with self.cond:
            current = self.objects[kind].get((namespace, name))
            if current is None:
                return 404, _not_found(kind, name)
            try:
                if content_type == "application/json-patch+json":
                    obj = _json_patch(current, patch)
                elif content_type == "application/merge-patch+json":
                    obj = _merge_patch(current, patch)
                elif content_type == "application/strategic-merge-patch+json":
                    obj = _strategic_merge(current, patch)
                else:
                    return 415, _status(
                        415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
                    )
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                return 422, _status(422, "Invalid", f"the patch could not be applied: {exc}", name=name, kind=kind)
            return self._store_change(kind, current, obj)

    def _store_change(self, kind: str, current: dict[str, Any], obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if kind == "deployments":
            if obj["spec"].get("selector") != current["spec"].get("selector"):
                message = (
                    f'Deployment.apps "{current["metadata"]["name"]}" is invalid: spec.selector: field is immutable'
                )
                return 422, _status(422, "Invalid", message, name=current["metadata"]["name"], kind=kind)
            obj["status"] = current.get("status", {})
            # As on a real API server: only a change of the spec is a new generation.
            obj["metadata"]["generation"] = current["metadata"]["generation"] + (obj["spec"] != current["spec"])
        self._update(kind, obj, current)
        return 200, copy.deepcopy(self.objects[kind][(obj["metadata"]["namespace"], obj["metadata"]["name"])])

    def delete(self, kind: str, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        with self.cond:
            obj = self.objects[kind].get((namespace, name))
            if obj is None:
                return 404, _not_found(kind, name)
            self._put(kind, obj, "DELETED")
            self._rollouts.pop((namespace, name), None)
            # Garbage collection of what it owned, and what that owned (background propagation, at once).
            doomed = {obj["metadata"]["uid"]}
            for owned_kind in ("replicasets", "pods"):
                for owned in list(self.objects[owned_kind].values()):
                    if any(ref["uid"] in doomed for ref in owned["metadata"].get("ownerReferences") or []):
                        doomed.add(owned["metadata"]["uid"])
                        self._put(owned_kind, owned, "DELETED")
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name},
        }

    @staticmethod
    def _owned_by(obj: dict[str, Any], uid: str) -> bool:
        return any(ref["uid"] == uid for ref in obj["metadata"].get("ownerReferences") or [])

    def take_fault(self, method: str, path: str) -> _Fault | None:
        with self.cond:
            for fault in self._faults:
                if fault.remaining > 0 and fault.method == method and fault.path_contains in path:
                    fault.remaining -= 1
                    return fault
        return None

    # --- the controllers ------------------------------------------------------------------------

    def _control_loop(self) -> None:
        while not self.closing:
            with self.cond:
                # A Deployment's spec bookkeeping and its status change together, in one event:
                # a watcher must never see the new observedGeneration with the old counts.
                before = {key: copy.deepcopy(d) for key, d in self.objects["deployments"].items()}
                for deployment in list(self.objects["deployments"].values()):
                    self._sync_deployment(deployment)
                for replica_set in list(self.objects["replicasets"].values()):
                    self._sync_replica_set(replica_set)
                for pod in list(self.objects["pods"].values()):
                    self._sync_pod(pod)
                for replica_set in list(self.objects["replicasets"].values()):
                    self._sync_replica_set_status(replica_set)
                for key, deployment in list(self.objects["deployments"].items()):
                    self._sync_deployment_status(deployment)
                    self._update("deployments", deployment, before[key])
            time.sleep(self.tick_s)

    def _replica_sets_of(self, deployment: dict[str, Any]) -> list[dict[str, Any]]:
        uid = deployment["metadata"]["uid"]
        return [rs for rs in self.objects["replicasets"].values() if self._owned_by(rs, uid)]

    def _pods_of(self, replica_set: dict[str, Any]) -> list[dict[str, Any]]:
        uid = replica_set["metadata"]["uid"]
        return [pod for pod in self.objects["pods"].values() if self._owned_by(pod, uid)]

    def _new_replica_set(self, deployment: dict[str, Any]) -> dict[str, Any] | None:
        wanted = _without_hash(deployment["spec"]["template"])
        for replica_set in self._replica_sets_of(deployment):
            if _without_hash(replica_set["spec"]["template"]) == wanted:
                return replica_set
        return None

    def _sync_deployment(self, deployment: dict[str, Any]) -> None:
        key = (deployment["metadata"]["namespace"], deployment["metadata"]["name"])
        replica_sets = self._replica_sets_of(deployment)
        newest = max((_revision(rs) for rs in replica_sets), default=0)
        new = self._new_replica_set(deployment)
        if new is None:
            new = self._create_replica_set(deployment, revision=newest + 1)
        elif _revision(new) < newest:
            # An old template again (a rollback): its ReplicaSet comes back as the newest revision.
            rs_before = copy.deepcopy(new)
            new["metadata"]["annotations"][REVISION] = str(newest + 1)
            self._update("replicasets", new, rs_before)
        if self._rollouts.get(key, ("",))[0] != new["metadata"]["name"]:
            self._rollouts[key] = (new["metadata"]["name"], time.monotonic())
            _set_condition(
                deployment,
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                f'ReplicaSet "{new["metadata"]["name"]}" is progressing.',
            )
        annotations = deployment["metadata"].setdefault("annotations", {})
        annotations[REVISION] = new["metadata"]["annotations"][REVISION]
        deployment["status"]["observedGeneration"] = deployment["metadata"]["generation"]
        self._scale(deployment, new, [rs for rs in replica_sets if rs is not new])

    def _create_replica_set(self, deployment: dict[str, Any], *, revision: int) -> dict[str, Any]:
        template = copy.deepcopy(deployment["spec"]["template"])
        pod_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = pod_hash
        owner = deployment["metadata"]
        # The Deployment's own annotations (a change-cause) travel with the revision, as on a cluster.
        annotations = {k: v for k, v in (owner.get("annotations") or {}).items() if k != REVISION}
        replica_set = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{owner['name']}-{pod_hash}",
                "namespace": owner["namespace"],
                "uid": str(uuid.uuid4()),
                "creationTimestamp": _now(),
                "generation": 1,
                "labels": dict(template["metadata"]["labels"]),
                "annotations": annotations | {REVISION: str(revision)},
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": owner["name"],
                        "uid": owner["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {
                "replicas": 0,
                "selector": {
                    "matchLabels": {**deployment["spec"]["selector"].get("matchLabels", {}), HASH_LABEL: pod_hash}
                },
                "template": template,
            },
            "status": {"replicas": 0},
        }
        self._put("replicasets", replica_set, "ADDED")
        return replica_set

    def _scale(self, deployment: dict[str, Any], new: dict[str, Any], old: list[dict[str, Any]]) -> None:
        """A rolling update with maxSurge 1 and maxUnavailable 0: one extra pod at a time, and an
        old pod goes only when a new one is ready."""
        desired = deployment["spec"].get("replicas", 1)
        new_ready = sum(_pod_ready(pod) for pod in self._pods_of(new))
        old_total = sum(rs["spec"]["replicas"] for rs in old)
        wanted_new = new["spec"]["replicas"]
        if wanted_new > desired:
            wanted_new = desired
        elif wanted_new < desired and wanted_new + old_total < desired + 1:
            wanted_new += 1
        self._set_replicas(new, wanted_new)
        excess_old = old_total - max(0, desired - new_ready)
        for replica_set in sorted(old, key=_revision):
            if excess_old <= 0:
                break
            cut = min(excess_old, replica_set["spec"]["replicas"])
            self._set_replicas(replica_set, replica_set["spec"]["replicas"] - cut)
            excess_old -= cut

    def _set_replicas(self, replica_set: dict[str, Any], replicas: int) -> None:
        if replica_set["spec"]["replicas"] != replicas:
            before = copy.deepcopy(replica_set)
            replica_set["spec"]["replicas"] = replicas
            self._update("replicasets", replica_set, before)

    def _sync_replica_set(self, replica_set: dict[str, Any]) -> None:
        pods = self._pods_of(replica_set)
        wanted = replica_set["spec"]["replicas"]
        for _ in range(wanted - len(pods)):
            self._create_pod(replica_set)
        # Not-ready pods go first, then the youngest: what the ReplicaSet controller prefers.
        extra = sorted(pods, key=lambda pod: (_pod_ready(pod), -self._pod_born.get(_key(pod), 0.0)))
        for pod in extra[: max(0, len(pods) - wanted)]:
            self._put("pods", pod, "DELETED")
            self._pod_born.pop(_key(pod), None)

    def _create_pod(self, replica_set: dict[str, Any]) -> None:
        template = replica_set["spec"]["template"]
        metadata = replica_set["metadata"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{metadata['name']}-{uuid.uuid4().hex[:5]}",
                "namespace": metadata["namespace"],
                "uid": str(uuid.uuid4()),
                "creationTimestamp": _now(),
                "labels": dict(template["metadata"]["labels"]),
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": metadata["name"],
                        "uid": metadata["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Pending", "qosClass": "BestEffort"},
        }
        self._pod_born[_key(pod)] = time.monotonic()
        self._put("pods", pod, "ADDED")

    def _sync_pod(self, pod: dict[str, Any]) -> None:
        before = copy.deepcopy(pod)
        age = time.monotonic() - self._pod_born.get(_key(pod), time.monotonic())
        statuses = [self._container_status(container, age) for container in pod["spec"]["containers"]]
        # A running container keeps the start time it got, or every tick would be a change.
        previous = {s["name"]: s for s in before["status"].get("containerStatuses") or []}
        for container_status in statuses:
            state = previous.get(container_status["name"], {}).get("state", {})
            started_at = state.get("running", {}).get("startedAt")
            if "running" in container_status["state"] and started_at:
                container_status["state"]["running"]["startedAt"] = started_at
        ready = all(status["ready"] for status in statuses)
        started = age >= POD_START_S
        running = started and all("running" in s["state"] or s["restartCount"] for s in statuses)
        status = pod["status"]
        status["phase"] = "Running" if running else "Pending"
        status["containerStatuses"] = statuses
        if started and "startTime" not in status:
            status["startTime"] = _now()
            status["hostIP"] = status["podIP"] = "127.0.0.1"
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
            {"type": "ContainersReady", "status": "True" if ready else "False"},
        ]
        self._update("pods", pod, before)

    def _container_status(self, container: dict[str, Any], age: float) -> dict[str, Any]:
        image = container["image"]
        behaviour = self.behaviours.get(image, Behaviour.HEALTHY)
        status: dict[str, Any] = {
            "name": container["name"],
            "image": image,
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}},
            "lastState": {},
        }
        if age < POD_START_S:
            return status
        if behaviour is Behaviour.IMAGE_PULL_ERROR:
            reason = "ErrImagePull" if age < 3 * POD_START_S else "ImagePullBackOff"
            message = f'failed to pull and unpack image "{image}": not found'
            if reason == "ImagePullBackOff":
                message = f'Back-off pulling image "{image}"'
            return status | {"state": {"waiting": {"reason": reason, "message": message}}}
        if behaviour is Behaviour.CONFIG_ERROR:
            message = 'secret "web-credentials" not found'
            return status | {"state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}}}
        if behaviour is Behaviour.CRASH_LOOP:
            restarts = 1 + int((age - POD_START_S) / (2 * POD_START_S))
            return status | {
                "restartCount": restarts,
                "state": {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off 10s restarting failed container={container['name']}",
                    }
                },
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            }
        ready = behaviour is Behaviour.HEALTHY or (behaviour is Behaviour.SLOW and age >= self.slow_ready_s)
        return status | {"ready": ready, "started": True, "state": {"running": {"startedAt": _now()}}}

    def _sync_replica_set_status(self, replica_set: dict[str, Any]) -> None:
        before = copy.deepcopy(replica_set)
        pods = self._pods_of(replica_set)
        ready = sum(_pod_ready(pod) for pod in pods)
        replica_set["status"] = {
            "replicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": replica_set["metadata"].get("generation", 1),
        }
        self._update("replicasets", replica_set, before)

    def _sync_deployment_status(self, deployment: dict[str, Any]) -> None:
        key = (deployment["metadata"]["namespace"], deployment["metadata"]["name"])
        new = self._new_replica_set(deployment)
        all_pods = [pod for rs in self._replica_sets_of(deployment) for pod in self._pods_of(rs)]
        new_pods = self._pods_of(new) if new else []
        desired = deployment["spec"].get("replicas", 1)
        ready = sum(_pod_ready(pod) for pod in all_pods)
        status = deployment["status"]
        status |= {
            "replicas": len(all_pods),
            "updatedReplicas": len(new_pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, len(all_pods) - ready),
        }
        for field in ("readyReplicas", "availableReplicas", "updatedReplicas", "replicas"):
            if not status[field]:
                status.pop(field)  # a real API server omits zero counts
        _set_condition(
            deployment,
            "Available",
            "True" if ready >= desired else "False",
            "MinimumReplicasAvailable" if ready >= desired else "MinimumReplicasUnavailable",
            "Deployment has minimum availability."
            if ready >= desired
            else "Deployment does not have minimum availability.",
        )
        complete = len(new_pods) == desired == len(all_pods) and sum(_pod_ready(pod) for pod in new_pods) == desired
        progressing = _condition(deployment, "Progressing") or {}
        if complete and new is not None:
            _set_condition(
                deployment,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{new["metadata"]["name"]}" has successfully progressed.',
            )
        elif key in self._rollouts and progressing.get("reason") != "ProgressDeadlineExceeded":
            started = self._rollouts[key][1]
            if time.monotonic() - started > deployment["spec"].get("progressDeadlineSeconds", 600):
                _set_condition(
                    deployment,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    f'ReplicaSet "{self._rollouts[key][0]}" has timed out progressing.',
                )


# --- patches, as the API server applies them -------------------------------------------------


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes' strategic merge patch, the part a deploy uses: a merge patch in which lists
    of named things (containers, env, ports, ...) merge item by item on their key."""
    if isinstance(patch, list) and isinstance(target, list) and field in _MERGE_KEYS:
        merge_key = _MERGE_KEYS[field]
        result = copy.deepcopy(target)
        for item in patch:
            match = next((i for i, old in enumerate(result) if old.get(merge_key) == item.get(merge_key)), None)
            if match is None:
                result.append(copy.deepcopy(item))
            else:
                result[match] = _strategic_merge(result[match], item)
        return result
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _strategic_merge(result.get(key), value, key)
    return result


def _json_patch(target: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 JSON patch: add, replace, remove and test."""
    result = copy.deepcopy(target)
    for operation in operations:
        op, path = operation["op"], operation["path"]
        parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
        parent = result
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if op == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent[last]
            if current != operation["value"]:
                raise ValueError(f"test failed at {path}")
        elif op == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif op == "replace":
            if isinstance(parent, list):
                parent[int(last)] = copy.deepcopy(operation["value"])
            elif last not in parent:
                raise KeyError(f"replace of a missing path {path}")
            else:
                parent[last] = copy.deepcopy(operation["value"])
        elif op == "add":
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                parent.insert(index, copy.deepcopy(operation["value"]))
            else:
                parent[last] = copy.deepcopy(operation["value"])
        else:
            raise ValueError(f"unsupported operation {op!r}")
    return result


# --- small helpers -----------------------------------------------------------------------------


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


def _revision(obj: dict[str, Any]) -> int:
    return int((obj["metadata"].get("annotations") or {}).get(REVISION, 0))


def _without_hash(template: dict[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(template)
    (template.get("metadata") or {}).get("labels", {}).pop(HASH_LABEL, None)
    return template


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def _condition(deployment: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in deployment["status"].get("conditions") or [] if c["type"] == kind), None)


def _set_condition(deployment: dict[str, Any], kind: str, status: str, reason: str, message: str) -> None:
    conditions = deployment["status"].setdefault("conditions", [])
    existing = _condition(deployment, kind)
    if existing is not None and (existing["status"], existing["reason"], existing["message"]) == (
        status,
        reason,
        message,
    ):
        return
    now = _now()
    condition = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
    }
    if existing is None:
        conditions.append(condition)
    else:
        existing |= condition


def _labels_match(obj: dict[str, Any], selector: str) -> bool:
    """Equality-based label selectors: `a=b`, `a==b`, `a!=b`, `a` (exists), `!a`."""
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(obj: dict[str, Any], selector: str) -> bool:
    """Field selectors on metadata.name and metadata.namespace, as the API supports for every kind."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.replace("==", "=").partition("=")
        field = {"metadata.name": "name", "metadata.namespace": "namespace"}.get(key)
        if field is None or obj["metadata"].get(field) != value:
            return False
    return True


def _not_found(kind: str, name: str) -> dict[str, Any]:
    group = "apps" if _GROUPS[kind] == "apis/apps/v1" else ""
    resource = f"{kind}.{group}" if group else kind
    return _status(404, "NotFound", f'{resource} "{name}" not found', name=name, kind=kind)


class _Handler(BaseHTTPRequestHandler):
    # Chunked transfer (watch streams) and keep-alive need HTTP/1.1.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, each response
    # would wait for the client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True
    server: Any

    @property
    def cluster(self) -> FakeCluster:
        return self.server.cluster

    def log_message(self, format: str, *args: Any) -> None:
        pass  # pytest shows a failing test's output; request lines would drown it

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        cluster = self.cluster
        with cluster.cond:
            cluster.requests.append((method, url.path, content_type))
        fault = cluster.take_fault(method, self.path)
        if fault is not None:
            return self._json(fault.status, _status(fault.status, "InternalError", "etcdserver: request timed out"))
        match = _PATH.match(url.path)
        if match is None or _GROUPS[match["kind"]] != match["group"]:
            return self._json(404, _status(404, "NotFound", "the server could not find the requested resource"))
        kind, namespace, name = match["kind"], match["ns"], match["name"]
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._json(400, _status(400, "BadRequest", "the body of the request is not valid JSON"))
        if method == "PATCH" and name:
            with cluster.cond:
                cluster.patches.append((url.path, content_type, body))
            return self._json(*cluster.patch(kind, namespace, name, content_type, body))
        if method == "POST" and not name:
            return self._json(*cluster.create(kind, namespace, body or {}))
        if method == "PUT" and name:
            return self._json(*cluster.replace(kind, namespace, name, body or {}))
        if method == "DELETE" and name:
            return self._json(*cluster.delete(kind, namespace, name))
        if method != "GET":
            return self._json(405, _status(405, "MethodNotAllowed", "the server does not allow this method"))
        if name:
            obj = cluster.get(kind, namespace, name)
            if obj is None:
                return self._json(404, _not_found(kind, name))
            return self._json(200, obj)
        labels, fields = query.get("labelSelector", ""), query.get("fieldSelector", "")
        if query.get("watch") in {"true", "1"}:
            return self._watch(kind, namespace, labels, fields, query)
        with cluster.cond:
            items = [obj for obj in cluster.select(kind, namespace, labels) if _fields_match(obj, fields)]
            version = str(cluster.events[-1].resource_version if cluster.events else 0)
        self._json(
            200,
            {
                "kind": f"{_KINDS[kind]}List",
                "apiVersion": _API_VERSIONS[kind],
                "metadata": {"resourceVersion": version},
                "items": items,
            },
        )

    def _watch(self, kind: str, namespace: str, labels: str, fields: str, query: dict[str, str]) -> None:
        cluster = self.cluster
        timeout = min(float(query.get("timeoutSeconds") or MAX_WATCH_S), MAX_WATCH_S)
        end = time.monotonic() + timeout
        since = query.get("resourceVersion")
        with cluster.cond:
            if since and since != "0":
                cursor = next(
                    (i for i, e in enumerate(cluster.events) if e.resource_version > int(since)), len(cluster.events)
                )
                pending: list[tuple[str, dict[str, Any]]] = []
            else:
                # No resourceVersion: the current state first, as ADDED events, then the changes.
                cursor = len(cluster.events)
                pending = [
                    ("ADDED", obj) for obj in cluster.select(kind, namespace, labels) if _fields_match(obj, fields)
                ]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                for event_type, obj in pending:
                    self._chunk((json.dumps({"type": event_type, "object": obj}) + "\n").encode())
                with cluster.cond:
                    while cursor == len(cluster.events) and not cluster.closing and time.monotonic() < end:
                        cluster.cond.wait(min(0.1, max(0.0, end - time.monotonic())))
                    batch = cluster.events[cursor:]
                    cursor = len(cluster.events)
                    finished = cluster.closing or time.monotonic() >= end
                pending = [
                    (event.type, event.obj)
                    for event in batch
                    if event.kind == kind
                    and event.namespace == namespace
                    and _labels_match(event.obj, labels)
                    and _fields_match(event.obj, fields)
                ]
                if finished:
                    for event_type, obj in pending:
                        self._chunk((json.dumps({"type": event_type, "object": obj}) + "\n").encode())
                    self.wfile.write(b"0\r\n\r\n")
                    return
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    def _json(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
