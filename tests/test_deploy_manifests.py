"""The files in deploy/ describe a system this project can actually run.

Nothing in deploy/ is deployed by CI (the build machines have no cluster and no Docker engine), so
these tests hold the files against the code instead: every container runs a real entry point with
flags its own parser accepts, every probe, Service, autoscaler and RBAC rule points at something that
exists, and no secret is written in plain text.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUSTOMIZATION = KUBERNETES / "kustomization.yaml"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"

IMAGE_NAME = "conveyor"
APP_NAMESPACE = "conveyor"
JOB_NAMESPACE = "conveyor-jobs"
PLACEHOLDER = "CHANGE-ME"
HEALTH_PATH = "/healthz"
# After its grace period a runner hands each remaining job back and waits up to this long for it to
# stop (runners/worker.py, RunnerLoop._shutdown), one job after the other.
RUNNER_HAND_BACK_WAIT_S = 10

# Which entry point each component must run.
KUBERNETES_ENTRY_POINTS = {
    ("Deployment", "conveyor-web"): "uvicorn",
    ("Deployment", "conveyor-worker"): "celery worker",
    ("Deployment", "conveyor-beat"): "celery beat",
    ("Deployment", "conveyor-runner"): "manage.py runner",
    ("Job", "conveyor-migrate"): "manage.py migrate",
}
COMPOSE_ENTRY_POINTS = {
    "migrate": "manage.py migrate",
    "web": "uvicorn",
    "worker": "celery worker",
    "beat": "celery beat",
    "runner": "manage.py runner",
}
SERVERS_AFTER_MIGRATIONS = ["conveyor-web", "conveyor-worker", "conveyor-beat"]

# Where each workload kind keeps its pod spec.
POD_SPEC_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
# Names of settings that hold credentials: they must come from a Secret, never a literal value.
SECRET_LOOKING_NAME = re.compile(
    r"SECRET_KEY|.*_PASSWORD|.*_TOKEN|DATABASE_URL|REDIS_URL|CELERY_BROKER_URL|AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY"
)
# Maps of resource quantities, where Kubernetes accepts plain numbers as well as strings.
QUANTITY_MAPS = {"requests", "limits", "default", "defaultRequest", "max", "min", "maxLimitRequestRatio", "hard"}
ENV_REFERENCE = re.compile(r"\$\((\w+)\)")


# --- Reading the files.


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [document for document in yaml.safe_load_all(handle) if document is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.iterdir() if p.suffix in {".yaml", ".yml"} and p != KUSTOMIZATION)


@functools.cache
def kubernetes_objects() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, object) for every document of every manifest but the kustomization."""
    return tuple((path.name, obj) for path in manifest_files() for obj in load_yaml_documents(path))


def objects_of_kind(kind: str) -> list[dict[str, Any]]:
    return [obj for _, obj in kubernetes_objects() if obj.get("kind") == kind]


def the_object(kind: str, name: str) -> dict[str, Any]:
    found = [obj for obj in objects_of_kind(kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind} named {name!r}, found {len(found)}"
    return found[0]


def dig(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return dig(workload, POD_SPEC_PATHS[workload["kind"]])


def workloads() -> list[dict[str, Any]]:
    return [obj for _, obj in kubernetes_objects() if obj.get("kind") in POD_SPEC_PATHS]


def containers_of(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']} should run one container"
    return containers[0]


def all_containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(workload, container) for workload in workloads() for container in containers_of(pod_spec(workload))]


def container_id(item: tuple[dict[str, Any], dict[str, Any]]) -> str:
    workload, container = item
    return f"{workload['kind']}/{workload['metadata']['name']}/{container['name']}"


def config_map_data(name: str) -> dict[str, str]:
    return the_object("ConfigMap", name).get("data", {})


def secret_keys(name: str) -> set[str]:
    secret = the_object("Secret", name)
    return {*secret.get("stringData", {}), *secret.get("data", {})}


def container_env_names(container: dict[str, Any]) -> set[str]:
    names = {variable["name"] for variable in container.get("env", [])}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            names |= {prefix + key for key in config_map_data(source["configMapRef"]["name"])}
        if "secretRef" in source:
            names |= {prefix + key for key in secret_keys(source["secretRef"]["name"])}
    return names


def allowed_hosts() -> list[str]:
    return [host.strip() for host in config_map_data("conveyor-config")["ALLOWED_HOSTS"].split(",") if host.strip()]


@functools.cache
def compose_file() -> dict[str, Any]:
    with COMPOSE.open() as handle:
        return yaml.safe_load(handle)


def compose_services() -> dict[str, dict[str, Any]]:
    return compose_file()["services"]


def conveyor_compose_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose_services().items()
        if str(service.get("image", "")).split(":")[0] == IMAGE_NAME
    }


def compose_argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert command, "the service relies on the image's default command"
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def parse_quantity(value: str | int | float) -> float:
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in sorted(suffixes.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def top_level_names(source: Path) -> set[str]:
    """Names a module defines at its top level, read without importing it."""
    names: set[str] = set()
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
    return names


# --- The project's entry points, checked by their own parsers.


@dataclass
class EntryPoint:
    name: str  # "uvicorn", "celery worker", "manage.py runner", ...
    options: dict[str, Any] = field(default_factory=dict)


def entry_point(argv: list[str]) -> EntryPoint:
    """The project entry point argv starts; fails if it starts none or passes flags it would reject."""
    assert argv, "empty command"
    program, *args = argv
    program = Path(program).name
    if program == "uvicorn":
        return uvicorn_entry_point(args)
    if program == "celery":
        return celery_entry_point(args)
    if re.fullmatch(r"python(3(\.\d+)?)?", program) and args[:1] == ["manage.py"]:
        return manage_py_entry_point(args[1:])
    pytest.fail(f"{shlex.join(argv)!r} starts none of the project's entry points (uvicorn, celery, manage.py)")


def uvicorn_entry_point(args: list[str]) -> EntryPoint:
    import click
    from uvicorn.main import main as uvicorn_cli

    try:
        context = uvicorn_cli.make_context("uvicorn", list(args))
    except click.ClickException as exc:
        pytest.fail(f"uvicorn rejects {shlex.join(args)!r}: {exc.format_message()}")
    # Importing cicd.asgi would set up the whole application: read the module instead.
    module, _, attribute = context.params["app"].partition(":")
    source = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    assert source.is_file(), f"uvicorn serves {module!r}, but {source.relative_to(ROOT)} does not exist"
    assert attribute in top_level_names(source), f"{source.relative_to(ROOT)} defines no {attribute!r}"
    return EntryPoint("uvicorn", context.params)


def celery_entry_point(args: list[str]) -> EntryPoint:
    import click
    from celery import Celery
    from celery.app.utils import find_app
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as celery_cli

    split = next((i for i, arg in enumerate(args) if arg in celery_cli.commands), None)
    assert split is not None, f"celery {shlex.join(args)!r} names no celery sub-command"
    name = args[split]
    try:
        group = celery_cli.make_context("celery", list(args[: split + 1]))
        assert group.params.get("app"), "celery runs without -A: it would not find the project's app"
        # What celery itself does with `-A cicd`: import cicd and find its app (cicd/celery.py: app).
        app = find_app(group.params["app"])
        assert isinstance(app, Celery), f"-A {group.params['app']} finds {app!r}, not a Celery app"
        group.obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
        command = celery_cli.commands[name].make_context(name, list(args[split + 1 :]), parent=group)
    except click.ClickException as exc:
        pytest.fail(f"celery rejects {shlex.join(args)!r}: {exc.format_message()}")
    return EntryPoint(f"celery {name}", command.params)


def manage_py_entry_point(args: list[str]) -> EntryPoint:
    from django.core.management import get_commands, load_command_class
    from django.core.management.base import CommandError

    assert args, "manage.py without a command"
    name, *rest = args
    commands = get_commands()
    assert name in commands, f"`manage.py {name}` is not a management command of this project"
    command = load_command_class(commands[name], name)
    try:
        options = command.create_parser("manage.py", name).parse_args(rest)
    except CommandError as exc:
        pytest.fail(f"manage.py {name} rejects {shlex.join(rest)!r}: {exc}")
    return EntryPoint(f"manage.py {name}", vars(options))


def container_entry_point(container: dict[str, Any]) -> EntryPoint:
    """The container's entry point, with $(VAR) references replaced by placeholders."""
    command = container.get("command")
    assert command, f"container {container['name']} relies on the image's default command: say what it runs"
    argv = [str(part) for part in [*command, *container.get("args", [])]]
    return entry_point([ENV_REFERENCE.sub(lambda m: f"placeholder-{m[1].lower()}", part) for part in argv])


# --- Checking objects against the Kubernetes API schema (the models of the kubernetes client).


def schema_errors(data: Any, type_name: str, where: str, key: str = "") -> list[str]:
    import kubernetes.client

    if match := re.fullmatch(r"List\[(.+)\]", type_name):
        if not isinstance(data, list):
            return [f"{where}: expected a list"]
        return [e for i, item in enumerate(data) for e in schema_errors(item, match[1], f"{where}[{i}]")]
    if match := re.fullmatch(r"Dict\[str, (.+)\]", type_name):
        if not isinstance(data, dict):
            return [f"{where}: expected a mapping"]
        return [e for k, v in data.items() for e in schema_errors(v, match[1], f"{where}.{k}", key)]
    if type_name == "str":
        numbers_allowed = key in QUANTITY_MAPS and isinstance(data, int | float) and not isinstance(data, bool)
        return [] if isinstance(data, str) or numbers_allowed else [f"{where}: expected a string (quote it)"]
    if type_name == "int":
        return [] if isinstance(data, int) and not isinstance(data, bool) else [f"{where}: expected an integer"]
    if type_name == "bool":
        return [] if isinstance(data, bool) else [f"{where}: expected true or false"]
    model = getattr(kubernetes.client, type_name, None)
    if model is None or not hasattr(model, "attribute_map"):
        return []  # free-form ("object": int-or-string and the like)
    if not isinstance(data, dict):
        return [f"{where}: expected a mapping ({type_name})"]
    fields = {json_key: model.openapi_types[attribute] for attribute, json_key in model.attribute_map.items()}
    errors = []
    for name, value in data.items():
        if name not in fields:
            errors.append(f"{where}.{name}: not a field of {type_name}")
        else:
            errors.extend(schema_errors(value, fields[name], f"{where}.{name}", name))
    return errors


# --- Kubernetes: the folder as a whole.


def test_every_kubernetes_manifest_parses_and_names_its_objects() -> None:
    assert manifest_files(), "deploy/kubernetes holds no manifests"
    for file_name, obj in kubernetes_objects():
        assert obj.get("apiVersion") and obj.get("kind"), f"{file_name}: a document without apiVersion/kind"
        assert obj.get("metadata", {}).get("name"), f"{file_name}: a {obj['kind']} without a name"


@pytest.mark.parametrize(
    "file_name,obj",
    kubernetes_objects(),
    ids=[f"{name}:{obj.get('kind')}/{obj.get('metadata', {}).get('name')}" for name, obj in kubernetes_objects()],
)
def test_every_kubernetes_object_uses_only_fields_kubernetes_knows(file_name: str, obj: dict[str, Any]) -> None:
    import kubernetes.client

    version = obj["apiVersion"].split("/")[-1]
    model_name = f"{version[0].upper()}{version[1:]}{obj['kind']}"
    assert hasattr(kubernetes.client, model_name), f"{file_name}: unknown kind {obj['apiVersion']} {obj['kind']}"
    assert schema_errors(obj, model_name, f"{file_name}:{obj['kind']}") == []


def test_the_kustomization_lists_every_manifest_in_the_folder() -> None:
    (kustomization,) = load_yaml_documents(KUSTOMIZATION)
    listed = kustomization.get("resources", [])
    assert sorted(listed) == sorted(set(listed)), "a manifest is listed twice"
    assert set(listed) == {path.name for path in manifest_files()}


def test_every_namespaced_object_names_its_namespace() -> None:
    # The kustomization sets no namespace: it would move the runner's Role out of the job namespace.
    (kustomization,) = load_yaml_documents(KUSTOMIZATION)
    assert "namespace" not in kustomization
    namespaces = {obj["metadata"]["name"] for obj in objects_of_kind("Namespace")}
    assert namespaces == {APP_NAMESPACE, JOB_NAMESPACE}
    for file_name, obj in kubernetes_objects():
        if obj["kind"] not in CLUSTER_SCOPED_KINDS:
            assert obj["metadata"].get("namespace") in namespaces, f"{file_name}: {obj['kind']} has no namespace"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_folder_into_the_same_objects() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    rendered = [document for document in yaml.safe_load_all(built.stdout) if document]

    def identity(obj: dict[str, Any]) -> tuple[str, str, str]:
        return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]

    assert sorted(map(identity, rendered)) == sorted(identity(obj) for _, obj in kubernetes_objects())


# --- Kubernetes: containers.


@pytest.mark.parametrize("workload,container", all_containers(), ids=[container_id(item) for item in all_containers()])
def test_every_container_uses_the_conveyor_image(workload: dict[str, Any], container: dict[str, Any]) -> None:
    assert container["image"].split(":")[0] == IMAGE_NAME


@pytest.mark.parametrize("workload,container", all_containers(), ids=[container_id(item) for item in all_containers()])
def test_every_container_runs_a_project_entry_point_with_flags_it_accepts(
    workload: dict[str, Any], container: dict[str, Any]
) -> None:
    container_entry_point(container)


@pytest.mark.parametrize("workload,container", all_containers(), ids=[container_id(item) for item in all_containers()])
def test_every_container_requests_and_limits_cpu_and_memory(
    workload: dict[str, Any], container: dict[str, Any]
) -> None:
    resources = container.get("resources", {})
    for resource in ("cpu", "memory"):
        request = resources.get("requests", {}).get(resource)
        limit = resources.get("limits", {}).get(resource)
        assert request is not None and limit is not None, f"no {resource} request and limit"
        assert parse_quantity(request) <= parse_quantity(limit), f"{resource} request exceeds its limit"


@pytest.mark.parametrize("workload,container", all_containers(), ids=[container_id(item) for item in all_containers()])
def test_env_references_in_commands_are_defined_for_the_container(
    workload: dict[str, Any], container: dict[str, Any]
) -> None:
    # Kubernetes leaves an undefined $(VAR) in the command as it is: the process would get the literal text.
    used = {
        m[1]
        for part in [*container.get("command", []), *container.get("args", [])]
        for m in ENV_REFERENCE.finditer(str(part))
    }
    assert used <= container_env_names(container)


def test_each_component_runs_its_own_entry_point() -> None:
    for (kind, name), expected in KUBERNETES_ENTRY_POINTS.items():
        assert container_entry_point(main_container(the_object(kind, name))).name == expected, name


def test_the_migrate_job_applies_migrations_without_prompting() -> None:
    options = container_entry_point(main_container(the_object("Job", "conveyor-migrate"))).options
    assert options["interactive"] is False
    assert not options["check_unapplied"]


def test_web_worker_and_beat_start_only_once_migrations_are_applied() -> None:
    for name in SERVERS_AFTER_MIGRATIONS:
        waits = [
            container_entry_point(init) for init in pod_spec(the_object("Deployment", name)).get("initContainers", [])
        ]
        assert any(e.name == "manage.py migrate" and e.options["check_unapplied"] for e in waits), name


# --- Kubernetes: web, runner, beat, autoscaling, RBAC.


def test_the_health_endpoint_the_probes_ask_is_served_by_the_app() -> None:
    from django.urls import resolve

    assert resolve(HEALTH_PATH).url_name == "healthz"


def test_the_web_probes_ask_healthz_on_the_port_uvicorn_serves() -> None:
    container = main_container(the_object("Deployment", "conveyor-web"))
    port = container_entry_point(container).options["port"]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert port in ports.values(), "the container does not declare the port uvicorn listens on"
    assert {"readinessProbe", "livenessProbe"} <= set(container)
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe_name not in container:
            continue
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == HEALTH_PATH, probe_name
        assert ports.get(probe["port"], probe["port"]) == port, probe_name
        # Django answers 400 to a Host it does not allow; the kubelet would send the pod's IP.
        host = {h["name"].lower(): h["value"] for h in probe.get("httpHeaders", [])}.get("host")
        assert host is not None, f"{probe_name} sends no Host header"
        from django.http.request import validate_host

        assert validate_host(host, allowed_hosts()), f"{probe_name}: Host {host!r} is not in ALLOWED_HOSTS"


def test_the_web_service_sends_traffic_to_the_web_pods_on_the_uvicorn_port() -> None:
    web = the_object("Deployment", "conveyor-web")
    service = the_object("Service", "conveyor-web")
    pod_labels = web["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container = main_container(web)
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    (service_port,) = service["spec"]["ports"]
    target = service_port.get("targetPort", service_port["port"])
    assert ports.get(target, target) == container_entry_point(container).options["port"]


def test_the_runners_reach_the_web_service_under_a_host_django_allows() -> None:
    from django.http.request import validate_host

    options = container_entry_point(main_container(the_object("Deployment", "conveyor-runner"))).options
    url = urlsplit(options["url"])
    service = the_object("Service", "conveyor-web")
    assert url.hostname == service["metadata"]["name"]
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    assert validate_host(url.hostname, allowed_hosts())


def test_the_ingress_routes_to_the_web_service_and_keeps_websockets_open() -> None:
    service = the_object("Service", "conveyor-web")
    service_ports = {p.get("name") for p in service["spec"]["ports"]} | {p["port"] for p in service["spec"]["ports"]}
    for ingress in objects_of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"]
                assert set(backend["port"].values()) <= service_ports
        annotations = ingress["metadata"].get("annotations", {})
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600


def test_the_runner_uses_the_kubernetes_executor_with_a_token_from_a_secret() -> None:
    container = main_container(the_object("Deployment", "conveyor-runner"))
    options = container_entry_point(container).options
    assert options["executor"] == "kubernetes"
    assert options["token"] is None, "a token on the command line is visible to every process on the node"
    token = next(variable for variable in container["env"] if variable["name"] == "CONVEYOR_RUNNER_TOKEN")
    reference = token["valueFrom"]["secretKeyRef"]
    assert reference["key"] in secret_keys(reference["name"])


def test_the_runner_has_time_to_finish_its_jobs_before_it_is_killed() -> None:
    runner = the_object("Deployment", "conveyor-runner")
    options = container_entry_point(main_container(runner)).options
    needed = options["grace_period"] + RUNNER_HAND_BACK_WAIT_S * options["concurrency"]
    assert pod_spec(runner)["terminationGracePeriodSeconds"] > needed


def test_the_runner_holds_no_server_credentials() -> None:
    container = main_container(the_object("Deployment", "conveyor-runner"))
    assert "envFrom" not in container, "the runner needs its token, not the server's configuration and secrets"
    secrets_read = {v["valueFrom"]["secretKeyRef"]["name"] for v in container["env"] if "valueFrom" in v}
    assert secrets_read == {"conveyor-runner"}


def test_beat_runs_as_a_single_replica_that_is_recreated_not_rolled() -> None:
    beat = the_object("Deployment", "conveyor-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"


def test_the_autoscaler_scales_the_runner_deployment_on_cpu() -> None:
    (hpa,) = objects_of_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "conveyor-runner")
    runner = the_object("Deployment", target["name"])
    assert hpa["metadata"]["namespace"] == runner["metadata"]["namespace"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]
    # CPU utilization is measured against the request; a replica count here would fight the autoscaler.
    assert "cpu" in main_container(runner)["resources"]["requests"]
    assert "replicas" not in runner["spec"]


def test_the_runner_may_create_and_delete_pods_and_read_their_logs_in_the_job_namespace() -> None:
    runner = the_object("Deployment", "conveyor-runner")
    account = pod_spec(runner)["serviceAccountName"]
    assert the_object("ServiceAccount", account)["metadata"]["namespace"] == runner["metadata"]["namespace"]
    (binding,) = [b for b in objects_of_kind("RoleBinding") if b["metadata"]["namespace"] == JOB_NAMESPACE]
    assert {"kind": "ServiceAccount", "name": account, "namespace": runner["metadata"]["namespace"]} in binding[
        "subjects"
    ]
    role = the_object(binding["roleRef"]["kind"], binding["roleRef"]["name"])
    assert role["metadata"]["namespace"] == JOB_NAMESPACE
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""], "pods live in the core API group"
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
    assert {"create", "get", "list", "watch", "delete"} <= granted.get("pods", set())
    assert "get" in granted.get("pods/log", set())


def test_the_runner_role_is_in_the_namespace_where_the_kubernetes_executor_creates_pods() -> None:
    import kubernetes.client

    from runners.executors.kubernetes import KubernetesExecutor

    # An API client without configuration: building the executor makes no request.
    executor = KubernetesExecutor(reporter=None, api_client=kubernetes.client.ApiClient())
    assert executor.namespace == JOB_NAMESPACE
    assert the_object("Role", "conveyor-runner")["metadata"]["namespace"] == executor.namespace


def test_only_the_runner_gets_a_kubernetes_api_token() -> None:
    for workload in workloads():
        spec = pod_spec(workload)
        if "serviceAccountName" not in spec:
            assert spec.get("automountServiceAccountToken") is False, workload["metadata"]["name"]


# --- Kubernetes: configuration and secrets.


def test_secrets_appear_only_in_the_example_and_only_as_placeholders() -> None:
    for file_name, obj in kubernetes_objects():
        if obj["kind"] == "Secret":
            assert file_name == "secret.example.yaml", f"{file_name} holds a Secret"
            assert "data" not in obj, "write placeholders as stringData, where they can be read"
            for key, value in obj["stringData"].items():
                assert PLACEHOLDER in value, f"{key} in {obj['metadata']['name']} is not marked {PLACEHOLDER}"
    for config_map in objects_of_kind("ConfigMap"):
        assert not [key for key in config_map["data"] if SECRET_LOOKING_NAME.fullmatch(key)]


@pytest.mark.parametrize("workload,container", all_containers(), ids=[container_id(item) for item in all_containers()])
def test_credentials_reach_containers_only_from_secrets(workload: dict[str, Any], container: dict[str, Any]) -> None:
    for variable in container.get("env", []):
        if SECRET_LOOKING_NAME.fullmatch(variable["name"]):
            assert "secretKeyRef" in variable.get("valueFrom", {}), f"{variable['name']} is written in plain text"


@pytest.mark.parametrize("workload,container", all_containers(), ids=[container_id(item) for item in all_containers()])
def test_every_config_map_and_secret_a_container_reads_exists(
    workload: dict[str, Any], container: dict[str, Any]
) -> None:
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            the_object("ConfigMap", source["configMapRef"]["name"])
        if "secretRef" in source:
            the_object("Secret", source["secretRef"]["name"])
    for variable in container.get("env", []):
        reference = variable.get("valueFrom", {})
        if "secretKeyRef" in reference:
            assert reference["secretKeyRef"]["key"] in secret_keys(reference["secretKeyRef"]["name"])
        if "configMapKeyRef" in reference:
            assert reference["configMapKeyRef"]["key"] in config_map_data(reference["configMapKeyRef"]["name"])


# --- Docker Compose.


def test_compose_runs_postgres_16_and_redis_7_with_healthchecks() -> None:
    services = compose_services()
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"


def test_compose_runs_one_service_per_entry_point_all_from_the_conveyor_image() -> None:
    assert set(conveyor_compose_services()) == set(COMPOSE_ENTRY_POINTS)


@pytest.mark.parametrize("name,expected", COMPOSE_ENTRY_POINTS.items())
def test_compose_services_run_the_project_entry_points(name: str, expected: str) -> None:
    assert entry_point(compose_argv(compose_services()[name])).name == expected


def test_compose_services_start_after_migrate_completes() -> None:
    services = conveyor_compose_services()
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        if name == "migrate":
            assert depends_on["postgres"]["condition"] == "service_healthy"
        else:
            assert depends_on["migrate"]["condition"] == "service_completed_successfully", name
    assert entry_point(compose_argv(services["migrate"])).options["interactive"] is False


def test_compose_services_use_the_compose_postgres_and_redis() -> None:
    for name, service in conveyor_compose_services().items():
        environment = service["environment"]
        assert environment["DATABASE_URL"] == "postgres://conveyor:conveyor@postgres:5432/conveyor", name
        assert urlsplit(environment["REDIS_URL"]).hostname == "redis", name


def test_compose_runner_is_a_trusted_shell_runner() -> None:
    options = entry_point(compose_argv(compose_services()["runner"])).options
    assert options["url"] is None and options["token"] is None, "trusted mode claims through the database"
    assert (options["executor"], options["name"], options["concurrency"]) == ("shell", "compose-runner", 2)


def test_compose_takes_the_secret_key_from_the_environment_and_insists_on_it() -> None:
    for name, service in conveyor_compose_services().items():
        assert re.fullmatch(r"\$\{SECRET_KEY:\?[^}]*\}", service["environment"]["SECRET_KEY"]), name


# --- The Dockerfile.


def test_the_image_is_python_3_11_slim() -> None:
    froms = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    assert froms == ["python:3.11-slim"]


def test_the_image_serves_the_web_app_by_default() -> None:
    (cmd,) = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "CMD"]
    argv = json.loads(cmd)  # exec form: uvicorn gets the signals, not a shell
    assert not [keyword for keyword, _ in dockerfile_instructions() if keyword == "ENTRYPOINT"]
    web = entry_point(argv)
    assert web.name == "uvicorn"
    # Inside a container the server must listen on every interface, or nothing outside could reach it.
    assert web.options["host"] == "0.0.0.0"  # noqa: S104


def test_the_image_installs_the_requirements_and_git_and_collects_static_files() -> None:
    runs = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"]
    assert any("pip install -r requirements.txt" in run for run in runs)
    assert any(re.search(r"apt-get install .*\bgit\b", run) for run in runs)
    (collect,) = [run for run in runs if "manage.py collectstatic" in run]
    assert "--noinput" in collect
    assert re.search(r"\bSECRET_KEY=\S+", collect), "collectstatic needs a (throw-away) SECRET_KEY at build time"


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "USER"]
    assert users, "the image runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric, non-zero uid (Kubernetes' runAsNonRoot checks it)"
    for workload in workloads():
        assert pod_spec(workload)["securityContext"]["runAsUser"] == int(uid), workload["metadata"]["name"]


def test_the_build_context_leaves_out_local_state_and_secrets() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if not line.startswith("#")}
    assert {"var", ".venv", ".git", "**/.env"} <= ignored
