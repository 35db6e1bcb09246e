"""Kubernetes rollouts for `deploy:` jobs, through the `kubernetes` client library.

Rolling (what `kubectl set image`, `kubectl rollout status` and `kubectl rollout undo` do):
read the Deployment and remember its revision and pod template; PATCH the container's image;
watch the Deployment until it is rolled out by kubectl's own rule (observedGeneration caught up,
every replica updated, no old replica left, every updated replica available), failing early when
the Deployment's progress deadline passes or a pod of the new ReplicaSet cannot start
(CrashLoopBackOff, ImagePullBackOff, ...); run the smoke test. On any failure, PATCH the
Deployment's template back to the previous revision's ReplicaSet template and wait for that.

Blue-green: the Deployments `<deployment>-blue` and `<deployment>-green` carry a `color` label and
a Service selects the live colour. The idle colour's Deployment is created (or replaced) from the
live one with the new image, watched as above, smoke-tested through a URL or command in which
`{color}` names the idle colour, and only then does the Service's selector switch; the old
colour's Deployment is deleted afterwards. Any failure before the switch deletes the idle colour
and leaves the Service alone.

Nothing here raises: every API error, timeout and cancellation ends as a RolloutResult, and every
action is one line through `log`, which the runner streams into the job log.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from runners.deploy.smoke import run_smoke_test
from runners.deploy.spec import DeploySpec, Strategy
from runners.kube import describe_api_error

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
CHANGE_CAUSE_ANNOTATION = "kubernetes.io/change-cause"
COLOR_LABEL = "color"
COLORS = ("blue", "green")

# Waiting reasons after which a pod does not start without someone changing something.
FATAL_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
# The Deployment annotations `kubectl rollout undo` keeps from the Deployment rather than take
# from the ReplicaSet it rolls back to (kubectl's annotationsToSkip).
_DEPLOYMENT_OWN_ANNOTATIONS = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION_ANNOTATION,
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "deprecated.deployment.rollback.to",
    }
)
# Each API request gives up after this long: a black-holed connection must not hang a deploy.
REQUEST_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
# A watch is reopened at least this often, to look at the new pods between Deployment events
# (a pod stuck in CrashLoopBackOff changes nothing on the Deployment).
DEFAULT_WATCH_WINDOW_S = 5

T = TypeVar("T")

logger = logging.getLogger(__name__)


class RolloutStatus(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    # The new image failed and the previous version is what runs: undone (rolling), or never
    # switched to (blue-green).
    ROLLED_BACK = "ROLLED_BACK"
    # Nothing was deployed, or the cluster is not known to run the previous version any more
    # (the rollback failed too): the message says which.
    FAILED = "FAILED"


@dataclass(frozen=True)
class RolloutResult:
    status: RolloutStatus
    message: str
    previous_image: str | None = None
    new_image: str | None = None
    # Rolling: the Deployment's revision before the deploy and the one the new image got.
    previous_revision: int | None = None
    new_revision: int | None = None
    # Blue-green: the colour the Service selects at the end.
    live_color: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is RolloutStatus.SUCCEEDED


class _Failed(Exception):
    """A step failed; the message says what and why, in words fit for the job log."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def api_client_for(spec: DeploySpec, *, config_file: str | None = None) -> client.ApiClient:
    """The client for the spec's cluster: its kubeconfig context if it names one, else the
    in-cluster service account (a runner pod), else the kubeconfig's current context.
    Raises kubernetes.config.ConfigException when none is usable."""
    if spec.context:
        return config.new_client_from_config(config_file=config_file, context=spec.context)
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        return config.new_client_from_config(config_file=config_file)
    return client.ApiClient(configuration)


def rollout(
    spec: DeploySpec,
    *,
    log: Callable[[str], None],
    api_client: client.ApiClient | None = None,
    stop: threading.Event | None = None,
    smoke_env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    change_cause: str | None = None,
    watch_window_s: int = DEFAULT_WATCH_WINDOW_S,
) -> RolloutResult:
    """Deploy `spec.image` as the spec says. Never raises; see RolloutResult.

    `stop` cancels (a rolling update is then undone); `smoke_env` is the environment of a smoke
    test command (the job's variables; never the runner's own); `change_cause` is recorded on the
    Deployment as `kubectl rollout history` shows it."""
    if api_client is None:
        try:
            api_client = api_client_for(spec)
        except (config.ConfigException, OSError, ValueError) as exc:
            where = f"kubeconfig context {spec.context!r}" if spec.context else "the in-cluster or kubeconfig settings"
            message = f"cannot configure the Kubernetes client from {where}: {exc}"
            log(message)
            return RolloutResult(RolloutStatus.FAILED, message, new_image=spec.image)
    engine = _Rollout(
        api_client,
        spec,
        log=log,
        stop=stop or threading.Event(),
        smoke_env=smoke_env,
        workdir=workdir,
        change_cause=change_cause,
        watch_window_s=watch_window_s,
    )
    return engine.run()


def rollout_status(deployment: client.V1Deployment) -> tuple[bool, str]:
    """(done, message), by the rule of `kubectl rollout status`; raises _Failed when the
    Deployment's progress deadline has passed."""
    name = deployment.metadata.name
    status = deployment.status or client.V1DeploymentStatus()
    if (deployment.metadata.generation or 0) > (status.observed_generation or 0):
        return False, f'Waiting for deployment "{name}" spec update to be observed...'
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            raise _Failed(f'deployment "{name}" exceeded its progress deadline')
    desired = deployment.spec.replicas if deployment.spec.replicas is not None else 1
    updated = status.updated_replicas or 0
    if updated < desired:
        return False, (
            f'Waiting for deployment "{name}" rollout to finish: {updated} out of {desired} new replicas '
            "have been updated..."
        )
    if (status.replicas or 0) > updated:
        return False, (
            f'Waiting for deployment "{name}" rollout to finish: {(status.replicas or 0) - updated} old replicas '
            "are pending termination..."
        )
    if (status.available_replicas or 0) < updated:
        return False, (
            f'Waiting for deployment "{name}" rollout to finish: {status.available_replicas or 0} of {updated} '
            "updated replicas are available..."
        )
    return True, f'deployment "{name}" successfully rolled out'


@dataclass
class _Watching:
    """What one wait has already said, so the log gets each status line once."""

    message: str = ""
    reported_pods: set[str] = field(default_factory=set)


class _Rollout:
    def __init__(
        self,
        api_client: client.ApiClient,
        spec: DeploySpec,
        *,
        log: Callable[[str], None],
        stop: threading.Event,
        smoke_env: Mapping[str, str] | None,
        workdir: str | None,
        change_cause: str | None,
        watch_window_s: int,
    ):
        self.api_client = api_client
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.spec = spec
        self.log = log
        self.stop = stop
        self.smoke_env = smoke_env
        self.workdir = workdir
        self.change_cause = change_cause
        self.watch_window_s = max(1, int(watch_window_s))
        self.host = api_client.configuration.host

    def run(self) -> RolloutResult:
        try:
            if self.spec.strategy is Strategy.BLUE_GREEN:
                return self._blue_green()
            return self._rolling()
        except Exception as exc:
            # Only failures before anything changed get here: later ones are handled where
            # they happen, with a rollback.
            failure = _as_failure(exc)
            self.log(f"Deploy failed: {failure}")
            return RolloutResult(RolloutStatus.FAILED, str(failure), new_image=self.spec.image)

    # --- rolling ---------------------------------------------------------------------------

    def _rolling(self) -> RolloutResult:
        spec = self.spec
        ns, name = spec.namespace, spec.deployment
        where = f"deployment {ns}/{name}"
        self.log(f"Rolling update of {where} to {spec.image}")
        before = self._call(f"reading {where}", self.apps.read_namespaced_deployment, name, ns)
        container = _pick_container(before.spec.template, spec.container, where)
        previous_image = container.image
        previous_revision = _revision(before)
        if before.spec.paused:
            raise _Failed(f"{where} is paused: resume it (kubectl rollout resume) before deploying")
        self.log(f"{where} runs {previous_image} (revision {previous_revision}), {_replicas(before)} replicas")
        result = _ResultBuilder(
            previous_image=previous_image, new_image=spec.image, previous_revision=previous_revision
        )

        if previous_image == spec.image:
            self.log(f"Container {container.name} already runs {spec.image}: nothing to roll out, checking its health")
            try:
                current = self._wait_for_rollout(ns, name, cancellable=True)
                self._smoke_test(color=None)
            except Exception as exc:
                message = f"{_as_failure(exc)}; nothing to roll back to: {spec.image} was already deployed"
                self.log(f"Deploy failed: {message}")
                return result.build(RolloutStatus.FAILED, message)
            return result.build(
                RolloutStatus.SUCCEEDED,
                f"{where} already ran {spec.image}",
                new_revision=_revision(current),
            )

        patch: dict[str, Any] = {
            "spec": {"template": {"spec": {"containers": [{"name": container.name, "image": spec.image}]}}}
        }
        if self.change_cause:
            patch["metadata"] = {"annotations": {CHANGE_CAUSE_ANNOTATION: self.change_cause}}
        self.log(f"Setting image: kubectl set image deployment/{name} {container.name}={spec.image} -n {ns}")
        # A strategic merge patch names the container, so the other containers stay as they are.
        self._call(f"updating the image of {where}", self.apps.patch_namespaced_deployment, name, ns, patch)

        try:
            current = self._wait_for_rollout(ns, name, cancellable=True)
            result.new_revision = _revision(current)
            self._smoke_test(color=None)
        except Exception as exc:
            # Whatever went wrong once the image changed (even a bug here), the previous version must come back.
            failure = _as_failure(exc)
            self.log(f"Deploy failed: {failure}")
            return self._undo(before, result, reason=str(failure))
        self.log(f"Deployed {spec.image} to {where} (revision {result.new_revision})")
        return result.build(RolloutStatus.SUCCEEDED, f"{where} runs {spec.image} (revision {result.new_revision})")

    def _undo(self, before: client.V1Deployment, result: _ResultBuilder, *, reason: str) -> RolloutResult:
        """What `kubectl rollout undo --to-revision=<the revision before the deploy>` does."""
        ns, name = self.spec.namespace, self.spec.deployment
        where = f"deployment {ns}/{name}"
        target = result.previous_revision
        self.log(f"Rolling back {where} to revision {target} ({result.previous_image})")
        try:
            current = self._call(f"reading {where}", self.apps.read_namespaced_deployment, name, ns)
            if result.new_revision is None and _revision(current) != target:
                result.new_revision = _revision(current)
            replica_set = self._replica_set_of_revision(current, target)
            if replica_set is not None:
                template = _without_hash(self._plain(replica_set.spec.template))
                annotations = _undo_annotations(current, replica_set)
                self.log(f"Restoring the pod template of ReplicaSet {replica_set.metadata.name} (revision {target})")
            else:
                # The history limit may have pruned it; the template read before the deploy is the same thing.
                template = self._plain(before.spec.template)
                annotations = None
                self.log(
                    f"No ReplicaSet of revision {target} is left: restoring the pod template read before the deploy"
                )
            operations: list[dict[str, Any]] = [{"op": "replace", "path": "/spec/template", "value": template}]
            if annotations is not None:
                # "add" rather than kubectl's "replace": it also works on a Deployment without annotations.
                operations.append({"op": "add", "path": "/metadata/annotations", "value": annotations})
            self._call(f"rolling back {where}", self.apps.patch_namespaced_deployment, name, ns, operations)
            restored = self._wait_for_rollout(ns, name, cancellable=False)
        except Exception as exc:
            failure = _as_failure(exc)
            message = f"{reason}; the rollback to revision {target} failed too: {failure}"
            self.log(f"Rollback failed: {failure}")
            return result.build(RolloutStatus.FAILED, message)
        self.log(f"Rolled back: {where} runs {result.previous_image} again (revision {_revision(restored)})")
        return result.build(
            RolloutStatus.ROLLED_BACK,
            f"{reason}; rolled back to {result.previous_image} (revision {target}, now revision {_revision(restored)})",
        )

    def _replica_set_of_revision(self, deployment: client.V1Deployment, revision: int | None) -> Any:
        if revision is None:
            return None
        for replica_set in self._replica_sets_of(deployment):
            if _revision(replica_set) == revision:
                return replica_set
        return None

    def _replica_sets_of(self, deployment: client.V1Deployment) -> list[Any]:
        ns = deployment.metadata.namespace or self.spec.namespace
        listed = self._call(
            f"listing the ReplicaSets of deployment {ns}/{deployment.metadata.name}",
            self.apps.list_namespaced_replica_set,
            ns,
            label_selector=_selector(deployment),
        )
        uid = deployment.metadata.uid
        # The label selector may match other Deployments' ReplicaSets too: ownership decides.
        return [rs for rs in listed.items if any(ref.uid == uid for ref in rs.metadata.owner_references or [])]

    # --- blue-green ------------------------------------------------------------------------

    def _blue_green(self) -> RolloutResult:
        spec = self.spec
        ns, base = spec.namespace, spec.deployment
        assert spec.service is not None  # the spec parser requires it for blue-green
        service_where = f"service {ns}/{spec.service}"
        self.log(f"Blue-green deploy of {spec.image} behind {service_where}")
        service = self._read_optional(f"reading {service_where}", self.core.read_namespaced_service, spec.service, ns)
        selector = dict((service.spec.selector if service and service.spec else None) or {})
        live = selector.get(COLOR_LABEL)
        if live is not None and live not in COLORS:
            raise _Failed(f"{service_where} selects {COLOR_LABEL}={live}; expected blue or green")
        idle = "green" if live == "blue" else "blue"
        source_name = f"{base}-{live}" if live else base
        source = self._read_optional(
            f"reading deployment {ns}/{source_name}", self.apps.read_namespaced_deployment, source_name, ns
        )
        if source is None:
            if live:
                raise _Failed(
                    f"{service_where} selects {COLOR_LABEL}={live} but deployment {ns}/{source_name} does not exist"
                )
            raise _Failed(
                f"deployment {ns}/{base} does not exist: the first blue-green deploy copies its pod template "
                f"(or give {service_where} a {COLOR_LABEL} selector and create {base}-blue)"
            )
        container = _pick_container(source.spec.template, spec.container, f"deployment {ns}/{source_name}")
        ports = list(container.ports or [])
        if service is None and not ports:
            raise _Failed(
                f"{service_where} does not exist and container {container.name} declares no ports to create it with"
            )
        if service is not None and live is None:
            self.log(
                f"Warning: {service_where} does not select by {COLOR_LABEL} yet, so the new pods may get traffic "
                "before the switch"
            )
        result = _ResultBuilder(previous_image=container.image, new_image=spec.image, live_color=live)
        idle_name = f"{base}-{idle}"
        idle_where = f"deployment {ns}/{idle_name}"
        live_text = f"{COLOR_LABEL}={live} ({source_name})" if live else f"{source_name} (no colour yet)"
        self.log(f"Live: {live_text}, running {container.image}; deploying {spec.image} as {idle_where}")
        body = _colored_deployment(
            self._plain(source), name=idle_name, color=idle, container=container.name, image=spec.image
        )
        if self.change_cause:
            body["metadata"]["annotations"] = {CHANGE_CAUSE_ANNOTATION: self.change_cause}
        self._create_or_replace_deployment(ns, idle_name, body)

        try:
            self._wait_for_rollout(ns, idle_name, cancellable=True)
            self._smoke_test(color=idle)
        except Exception as exc:
            failure = _as_failure(exc)
            self.log(f"Deploy failed: {failure}")
            self.log(f"{service_where} was not switched: it still selects {_live_text(live, source_name)}")
            self._delete_deployment(ns, idle_name, why="removing the failed colour")
            return result.build(
                RolloutStatus.ROLLED_BACK,
                f"{failure}; {service_where} still selects {_live_text(live, source_name)}; {idle_name} removed",
            )

        try:
            if service is None:
                self._create_service(ns, spec.service, body, ports)
            else:
                self.log(f"Switching {service_where} to {COLOR_LABEL}={idle}")
                # The new Deployment's whole selector, not just the colour: a Service that selected
                # by something else too must end up selecting exactly the new pods.
                patch = {"spec": {"selector": body["spec"]["selector"]["matchLabels"]}}
                self._call(f"switching {service_where}", self.core.patch_namespaced_service, spec.service, ns, patch)
        except Exception as exc:
            # Whether a lost response applied the switch is unknown: both colours stay up.
            message = (
                f"{_as_failure(exc)}; {service_where} may still select {_live_text(live, source_name)}; "
                f"{idle_where} ({spec.image}) is left running"
            )
            self.log(f"Deploy failed: {message}")
            return result.build(RolloutStatus.FAILED, message)
        result.live_color = idle
        self.log(f"{service_where} now selects {COLOR_LABEL}={idle} ({spec.image})")
        if live:
            self._delete_deployment(ns, source_name, why="removing the old colour")
        else:
            self.log(f"Deployment {ns}/{base} is no longer selected by {service_where}; delete it when done with it")
        return result.build(RolloutStatus.SUCCEEDED, f"{service_where} serves {spec.image} from {idle_name}")

    def _create_or_replace_deployment(self, ns: str, name: str, body: dict[str, Any]) -> None:
        where = f"deployment {ns}/{name}"
        existing = self._read_optional(f"reading {where}", self.apps.read_namespaced_deployment, name, ns)
        if existing is None:
            self.log(f"Creating {where}")
            self._call(f"creating {where}", self.apps.create_namespaced_deployment, ns, body)
            return
        # A leftover idle colour (scaled down, or from an interrupted deploy): replace it whole.
        self.log(f"Replacing {where} (a leftover idle colour)")
        body["metadata"]["resourceVersion"] = existing.metadata.resource_version
        self._call(f"replacing {where}", self.apps.replace_namespaced_deployment, name, ns, body)

    def _create_service(self, ns: str, name: str, deployment: dict[str, Any], ports: list[Any]) -> None:
        selector = dict(deployment["spec"]["selector"]["matchLabels"])
        service_ports = []
        for index, port in enumerate(ports):
            entry: dict[str, Any] = {
                "port": port.container_port,
                "targetPort": port.container_port,
                "protocol": port.protocol or "TCP",
            }
            if port.name or len(ports) > 1:
                entry["name"] = port.name or f"port-{index}"
            service_ports.append(entry)
        body = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector, "ports": service_ports},
        }
        self.log(f"Creating service {ns}/{name} selecting {_labels_text(selector)}")
        self._call(f"creating service {ns}/{name}", self.core.create_namespaced_service, ns, body)

    def _delete_deployment(self, ns: str, name: str, *, why: str) -> None:
        """Best effort: the deploy's outcome is already decided, a leftover is only logged."""
        self.log(f"Deleting deployment {ns}/{name} ({why})")
        try:
            self._call(
                f"deleting deployment {ns}/{name}",
                self.apps.delete_namespaced_deployment,
                name,
                ns,
                propagation_policy="Background",
            )
        except _Failed as exc:
            self.log(f"Warning: {exc}; delete it by hand")

    # --- waiting ---------------------------------------------------------------------------

    def _wait_for_rollout(self, ns: str, name: str, *, cancellable: bool) -> client.V1Deployment:
        """Watch the Deployment until `kubectl rollout status` would say it is rolled out.

        Raises _Failed on the progress deadline, a new pod that cannot start, the rollout
        timeout, a cancellation (when `cancellable`) or a lasting API error."""
        timeout_s = self.spec.rollout_timeout_s
        deadline = time.monotonic() + timeout_s
        watching = _Watching()
        watcher = watch.Watch()
        where = f"deployment {ns}/{name}"
        while True:
            if cancellable and self.stop.is_set():
                raise _Failed("cancelled")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                last = f" (last status: {watching.message.rstrip('.')})" if watching.message else ""
                raise _Failed(f"{where} did not finish rolling out within {timeout_s:g}s{last}")
            window = max(1, min(self.watch_window_s, math.ceil(remaining)))
            try:
                for event in watcher.stream(
                    self.apps.list_namespaced_deployment,
                    ns,
                    field_selector=f"metadata.name={name}",
                    timeout_seconds=window,
                    _request_timeout=(CONNECT_TIMEOUT_S, window + REQUEST_TIMEOUT_S),
                ):
                    if event["type"] == "DELETED":
                        raise _Failed(f"{where} was deleted during the rollout")
                    if event["type"] not in {"ADDED", "MODIFIED"}:
                        continue
                    if self._look(event["object"], watching):
                        return event["object"]
                    if time.monotonic() >= deadline or (cancellable and self.stop.is_set()):
                        break
                # The window closed: nothing changed on the Deployment, but its new pods may be stuck.
                current = self._call(f"reading {where}", self.apps.read_namespaced_deployment, name, ns)
                if self._look(current, watching):
                    return current
            except _Failed as exc:
                if not exc.transient:
                    raise
                self._retry_later(f"watching {where}", str(exc), deadline)
            except ApiException as exc:
                if not _transient(exc):
                    raise _Failed(f"watching {where}: {describe_api_error(exc)}") from exc
                self._retry_later(f"watching {where}", describe_api_error(exc), deadline)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self._retry_later(f"watching {where}", self._describe_connection_error(exc), deadline)

    def _look(self, deployment: client.V1Deployment, watching: _Watching) -> bool:
        """True when rolled out; logs status changes; raises _Failed on a stuck new pod."""
        done, message = rollout_status(deployment)
        if message != watching.message:
            self.log(message)
            watching.message = message
        if not done:
            self._check_new_pods(deployment, watching)
        return done

    def _check_new_pods(self, deployment: client.V1Deployment, watching: _Watching) -> None:
        status = deployment.status or client.V1DeploymentStatus()
        if (status.observed_generation or 0) < (deployment.metadata.generation or 0):
            return  # the controller has not made the new ReplicaSet yet
        new_replica_set = self._new_replica_set(deployment)
        if new_replica_set is None:
            return
        pod_hash = (new_replica_set.metadata.labels or {}).get(HASH_LABEL)
        if not pod_hash:
            return
        ns = deployment.metadata.namespace or self.spec.namespace
        pods = self._call(
            f"listing the pods of ReplicaSet {ns}/{new_replica_set.metadata.name}",
            self.core.list_namespaced_pod,
            ns,
            label_selector=f"{_selector(deployment)},{HASH_LABEL}={pod_hash}",
        )
        for pod in pods.items:
            pod_status = pod.status
            if pod_status is None:
                continue
            for container in (pod_status.init_container_statuses or []) + (pod_status.container_statuses or []):
                waiting = container.state.waiting if container.state else None
                if waiting is None or not waiting.reason:
                    continue
                if waiting.reason in FATAL_WAITING_REASONS:
                    detail = f": {waiting.message}" if waiting.message else ""
                    raise _Failed(
                        f"pod {pod.metadata.name} of the new ReplicaSet {new_replica_set.metadata.name}: "
                        f"container {container.name} is in {waiting.reason}{detail}"
                    )
                key = f"{pod.metadata.name}/{container.name}/{waiting.reason}"
                if waiting.reason != "ContainerCreating" and key not in watching.reported_pods:
                    watching.reported_pods.add(key)
                    self.log(f"Pod {pod.metadata.name}: container {container.name} is waiting ({waiting.reason})")

    def _new_replica_set(self, deployment: client.V1Deployment) -> Any:
        """The ReplicaSet whose template is the Deployment's (the controller's FindNewReplicaSet)."""
        wanted = _without_hash(self._plain(deployment.spec.template))
        for replica_set in self._replica_sets_of(deployment):
            if _without_hash(self._plain(replica_set.spec.template)) == wanted:
                return replica_set
        return None

    def _retry_later(self, doing: str, detail: str, deadline: float) -> None:
        self.log(f"Kubernetes API error while {doing}, retrying: {detail}")
        pause = min(1.0, max(0.0, deadline - time.monotonic()))
        self.stop.wait(pause)

    # --- smoke test ------------------------------------------------------------------------

    def _smoke_test(self, *, color: str | None) -> None:
        test = self.spec.smoke_test
        if test is None:
            self.log("No smoke test configured")
            return
        if self.stop.is_set():
            raise _Failed("cancelled")
        env = dict(self.smoke_env) if self.smoke_env is not None else _minimal_env()
        env |= {
            "DEPLOY_NAMESPACE": self.spec.namespace,
            "DEPLOY_DEPLOYMENT": self.spec.deployment,
            "DEPLOY_IMAGE": self.spec.image,
        }
        if color:
            env["DEPLOY_COLOR"] = color
        failure = run_smoke_test(test, log=self.log, env=env, color=color, workdir=self.workdir, stop=self.stop)
        if failure is not None:
            raise _Failed(failure)

    # --- API plumbing ----------------------------------------------------------------------

    def _call(self, doing: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One API request; any error becomes a _Failed saying what was being done."""
        kwargs.setdefault("_request_timeout", (CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S))
        try:
            return function(*args, **kwargs)
        except ApiException as exc:
            raise _Failed(f"{doing}: {describe_api_error(exc)}", transient=_transient(exc)) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Failed(f"{doing}: {self._describe_connection_error(exc)}", transient=True) from exc

    def _read_optional(self, doing: str, function: Callable[..., T], *args: Any) -> T | None:
        try:
            return self._call(doing, function, *args)
        except _Failed as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404:
                return None
            raise

    def _describe_connection_error(self, exc: BaseException) -> str:
        reason: BaseException = exc
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            reason = exc.reason
        # urllib3 wraps the socket error; its own text repeats the connection object.
        cause = reason.__cause__ or reason.__context__
        if isinstance(cause, OSError) and cause.strerror:
            text = cause.strerror
        elif isinstance(reason, OSError) and reason.strerror:
            text = reason.strerror
        else:
            text = str(reason) or type(reason).__name__
        return f"cannot reach the Kubernetes API at {self.host}: {text}"

    def _plain(self, model: Any) -> dict[str, Any]:
        """A model as the JSON the API server sent (camelCase keys, no None values)."""
        return self.api_client.sanitize_for_serialization(model)


@dataclass
class _ResultBuilder:
    previous_image: str | None = None
    new_image: str | None = None
    previous_revision: int | None = None
    new_revision: int | None = None
    live_color: str | None = None

    def build(self, status: RolloutStatus, message: str, **overrides: Any) -> RolloutResult:
        values = {
            "previous_image": self.previous_image,
            "new_image": self.new_image,
            "previous_revision": self.previous_revision,
            "new_revision": self.new_revision,
            "live_color": self.live_color,
        } | overrides
        return RolloutResult(status=status, message=message, **values)


def _as_failure(exc: BaseException) -> _Failed:
    if isinstance(exc, _Failed):
        return exc
    # A bug or a response the client could not parse: the job log gets one line, the
    # runner's log the traceback.
    logger.exception("deploy step failed unexpectedly")
    return _Failed(f"unexpected error: {type(exc).__name__}: {exc}")


def _pick_container(template: client.V1PodTemplateSpec, name: str | None, where: str) -> client.V1Container:
    containers = list(template.spec.containers or []) if template.spec else []
    names = ", ".join(c.name for c in containers)
    if name is None:
        if len(containers) != 1:
            raise _Failed(f"{where} has {len(containers)} containers ({names}): name one in deploy:container")
        return containers[0]
    for container in containers:
        if container.name == name:
            return container
    raise _Failed(f"{where} has no container named {name!r} (it has: {names})")


def _revision(obj: Any) -> int | None:
    value = (obj.metadata.annotations or {}).get(REVISION_ANNOTATION) if obj is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _replicas(deployment: client.V1Deployment) -> int:
    return deployment.spec.replicas if deployment.spec.replicas is not None else 1


def _selector(deployment: client.V1Deployment) -> str:
    labels = (deployment.spec.selector.match_labels if deployment.spec.selector else None) or {}
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _without_hash(template: dict[str, Any]) -> dict[str, Any]:
    """A pod template minus the label the controller adds to its ReplicaSet (kubectl's equalIgnoreHash)."""
    template = copy.deepcopy(template)
    labels = (template.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    return template


def _undo_annotations(deployment: client.V1Deployment, replica_set: Any) -> dict[str, str]:
    """kubectl's getPatchAnnotations: the Deployment's own bookkeeping plus the ReplicaSet's
    other annotations (which brings back the old change-cause)."""
    own = deployment.metadata.annotations or {}
    merged = {key: value for key, value in own.items() if key in _DEPLOYMENT_OWN_ANNOTATIONS}
    for key, value in (replica_set.metadata.annotations or {}).items():
        if key not in _DEPLOYMENT_OWN_ANNOTATIONS:
            merged[key] = value
    return merged


def _colored_deployment(source: dict[str, Any], *, name: str, color: str, container: str, image: str) -> dict[str, Any]:
    """A copy of `source` (a Deployment as JSON) named `name`, its selector and pods labelled `color`,
    running `image` in `container`."""
    spec = copy.deepcopy(source["spec"])
    spec.pop("paused", None)
    spec.setdefault("selector", {}).setdefault("matchLabels", {})[COLOR_LABEL] = color
    template = spec["template"]
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    labels[COLOR_LABEL] = color
    labels.pop(HASH_LABEL, None)
    for entry in template["spec"]["containers"]:
        if entry["name"] == container:
            entry["image"] = image
    metadata = source.get("metadata") or {}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": metadata.get("namespace"),
            "labels": {**(metadata.get("labels") or {}), COLOR_LABEL: color},
        },
        "spec": spec,
    }


def _live_text(live: str | None, source_name: str) -> str:
    return f"{COLOR_LABEL}={live}" if live else f"the pods of {source_name}"


def _transient(exc: ApiException) -> bool:
    status = exc.status or 0
    return status >= 500 or status == 429 or status == 0


def _minimal_env() -> dict[str, str]:
    # Without the job's variables a smoke command still finds its tools, but never sees the
    # runner's own environment (its API token, its database URL).
    return {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
