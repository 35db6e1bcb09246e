"""The structured job sections: environment, artifacts, cache, image and services.

Each comes out as plain dicts/lists (no YAML locations, no shared objects) in one shape
whatever form the config used: `image: ruby:3` and `image: {name: ruby:3}` look the same
to the runner.
"""

from __future__ import annotations

from typing import Any

from pipelines.config.durations import describe
from pipelines.config.keywords import (
    as_bool,
    as_mapping,
    as_str,
    check_keys,
    duration,
    one_of,
    string_list,
    type_name,
    variables,
)
from pipelines.config.report import Invalid, Scope
from pipelines.config.yaml_loader import to_plain

MAX_EXPIRE_S = 10 * 365 * 24 * 3600
MAX_CACHES = 4


# --- environment ----------------------------------------------------------------------

_ENVIRONMENT_KEYS = {"name", "url", "action", "deployment_tier", "on_stop", "auto_stop_in", "kubernetes"}
_ACTIONS = ("start", "prepare", "stop", "verify", "access")
_TIERS = ("production", "staging", "testing", "development", "other")


def environment(value: Any, scope: Scope) -> dict[str, Any]:
    if isinstance(value, str):
        return {"name": as_str(value, "environment"), "action": "start"}
    mapping = as_mapping(value, "environment")
    check_keys(mapping, _ENVIRONMENT_KEYS, "environment", scope)
    if "name" not in mapping:
        raise Invalid("environment needs a name")
    result: dict[str, Any] = {"name": as_str(mapping["name"], "environment:name"), "action": "start"}
    if "url" in mapping:
        result["url"] = as_str(mapping["url"], "environment:url")
    if "action" in mapping:
        result["action"] = one_of(mapping["action"], _ACTIONS, "environment:action")
    if "deployment_tier" in mapping:
        result["deployment_tier"] = one_of(mapping["deployment_tier"], _TIERS, "environment:deployment_tier")
    if "on_stop" in mapping:
        result["on_stop"] = as_str(mapping["on_stop"], "environment:on_stop")
    if "auto_stop_in" in mapping:
        result["auto_stop_in"] = _expiry(mapping["auto_stop_in"], "environment:auto_stop_in")[0]
    if "kubernetes" in mapping:
        result["kubernetes"] = to_plain(as_mapping(mapping["kubernetes"], "environment:kubernetes"))
    return result


def _expiry(value: Any, what: str) -> tuple[str, int | None]:
    """(as written, seconds or None for 'never')."""
    if isinstance(value, str) and value.strip().lower() == "never":
        return value, None
    seconds = duration(value, what, maximum=MAX_EXPIRE_S)
    return (value if isinstance(value, str) else describe(seconds)), seconds


# --- artifacts ------------------------------------------------------------------------

_ARTIFACT_KEYS = {
    "paths",
    "exclude",
    "name",
    "expire_in",
    "when",
    "untracked",
    "reports",
    "expose_as",
    "public",
    "access",
    # Conveyor's own: reuse the artifacts of an earlier successful build with the same key
    # instead of building again (README: Artifacts, "Reuse").
    "reuse",
}
_ARTIFACT_WHEN = ("on_success", "on_failure", "always")
# The report types GitLab knows. File-list reports become lists of paths.
_FILE_REPORTS = {
    "accessibility",
    "annotations",
    "api_fuzzing",
    "browser_performance",
    "codequality",
    "container_scanning",
    "coverage_fuzzing",
    "cyclonedx",
    "dast",
    "dependency_scanning",
    "dotenv",
    "junit",
    "load_performance",
    "metrics",
    "requirements",
    "repository_xray",
    "sast",
    "secret_detection",
    "terraform",
}


def artifacts(value: Any, scope: Scope) -> dict[str, Any]:
    mapping = as_mapping(value, "artifacts")
    check_keys(mapping, _ARTIFACT_KEYS, "artifacts", scope)
    result: dict[str, Any] = {}
    for key in ("paths", "exclude"):
        if key in mapping:
            result[key] = string_list(mapping[key], f"artifacts:{key}")
    if "name" in mapping:
        result["name"] = as_str(mapping["name"], "artifacts:name")
    if "expire_in" in mapping:
        result["expire_in"], result["expire_in_s"] = _expiry(mapping["expire_in"], "artifacts:expire_in")
    result["when"] = one_of(mapping.get("when", "on_success"), _ARTIFACT_WHEN, "artifacts:when")
    if "untracked" in mapping:
        result["untracked"] = as_bool(mapping["untracked"], "artifacts:untracked")
    if "expose_as" in mapping:
        result["expose_as"] = as_str(mapping["expose_as"], "artifacts:expose_as")
    if "public" in mapping:
        result["public"] = as_bool(mapping["public"], "artifacts:public")
    if "access" in mapping:
        result["access"] = one_of(mapping["access"], ("all", "developer", "maintainer", "none"), "artifacts:access")
    if "reports" in mapping:
        result["reports"] = _reports(mapping["reports"], scope)
    if "reuse" in mapping:
        reuse = _reuse(mapping["reuse"], scope)
        if reuse is not None:
            result["reuse"] = reuse
    return result


def _reuse(value: Any, scope: Scope) -> dict[str, Any] | None:
    """`reuse: true`, or `reuse: {key: <text with $VARIABLES>, files: [paths]}`; false: none."""
    if isinstance(value, bool):
        return {} if value else None
    mapping = as_mapping(value, "artifacts:reuse")
    check_keys(mapping, {"key", "files"}, "artifacts:reuse", scope)
    result: dict[str, Any] = {}
    if "key" in mapping:
        result["key"] = as_str(mapping["key"], "artifacts:reuse:key")
    if "files" in mapping:
        result["files"] = string_list(mapping["files"], "artifacts:reuse:files")
    return result


def _reports(value: Any, scope: Scope) -> dict[str, Any]:
    mapping = as_mapping(value, "artifacts:reports")
    check_keys(mapping, _FILE_REPORTS | {"coverage_report"}, "artifacts:reports", scope)
    result: dict[str, Any] = {}
    for kind, raw in mapping.items():
        if kind in _FILE_REPORTS:
            result[kind] = string_list(raw, f"artifacts:reports:{kind}", allow_string=True)
        elif kind == "coverage_report":
            report = as_mapping(raw, "artifacts:reports:coverage_report")
            check_keys(report, {"coverage_format", "path"}, "artifacts:reports:coverage_report", scope)
            if "coverage_format" not in report or "path" not in report:
                raise Invalid("artifacts:reports:coverage_report needs coverage_format and path")
            result[kind] = {
                "coverage_format": one_of(report["coverage_format"], ("cobertura", "jacoco"), "coverage_format"),
                "path": as_str(report["path"], "coverage_report:path"),
            }
    return result


# --- cache ----------------------------------------------------------------------------

_CACHE_KEYS = {"key", "paths", "untracked", "unprotect", "when", "policy", "fallback_keys"}
_CACHE_POLICIES = ("pull", "push", "pull-push")


def cache(value: Any, scope: Scope) -> list[dict[str, Any]]:
    """One cache or a list of up to four; `cache: []` turns off an inherited default."""
    entries = value if isinstance(value, list) else [value]
    if len(entries) > MAX_CACHES:
        raise Invalid(f"at most {MAX_CACHES} caches per job")
    return [_cache(entry, scope) for entry in entries]


def _cache(value: Any, scope: Scope) -> dict[str, Any]:
    mapping = as_mapping(value, "cache")
    check_keys(mapping, _CACHE_KEYS, "cache", scope)
    result: dict[str, Any] = {"key": "default", "paths": [], "untracked": False, "when": "on_success"}
    if "key" in mapping:
        result["key"] = _cache_key(mapping["key"], scope)
    if "paths" in mapping:
        result["paths"] = string_list(mapping["paths"], "cache:paths")
    for flag in ("untracked", "unprotect"):
        if flag in mapping:
            result[flag] = as_bool(mapping[flag], f"cache:{flag}")
    if "when" in mapping:
        result["when"] = one_of(mapping["when"], _ARTIFACT_WHEN, "cache:when")
    policy = mapping.get("policy", "pull-push")
    # GitLab lets the policy come from a variable; it is checked when the job runs.
    if not (isinstance(policy, str) and policy.startswith("$")):
        one_of(policy, _CACHE_POLICIES, "cache:policy")
    result["policy"] = policy
    if "fallback_keys" in mapping:
        fallback = string_list(mapping["fallback_keys"], "cache:fallback_keys")
        if len(fallback) > 5:
            raise Invalid("cache:fallback_keys takes at most 5 keys")
        for key in fallback:
            _check_cache_key_text(key, "cache:fallback_keys")
        result["fallback_keys"] = fallback
    return result


def _check_cache_key_text(text: str, what: str) -> str:
    """GitLab's rules for a cache key: no `/` (nor `%2F`), not `.` or `..` (nor `%2E`,
    `%2E%2E`), at most 255 characters. Checked again on the runner once $VARIABLES are
    expanded (a key that is then unusable skips that cache, with a warning)."""
    decoded = text.replace("%2F", "/").replace("%2f", "/").replace("%2E", ".").replace("%2e", ".")
    if "/" in decoded:
        raise Invalid(f"{what} must not contain '/' (nor %2F); got {text!r}")
    if not text.strip() or decoded.strip(".") == "":
        raise Invalid(f"{what} must not be empty, '.' or '..'; got {text!r}")
    if len(text) > 255:
        raise Invalid(f"{what} has at most 255 characters")
    return text


def _cache_key(value: Any, scope: Scope) -> str | dict[str, Any]:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return _check_cache_key_text(str(value), "cache:key")
    mapping = as_mapping(value, "cache:key")
    check_keys(mapping, {"files", "prefix"}, "cache:key", scope)
    if "files" not in mapping:
        raise Invalid("cache:key as a mapping needs files: [..]")
    files = string_list(mapping["files"], "cache:key:files")
    if not 1 <= len(files) <= 2:
        raise Invalid("cache:key:files takes one or two files")
    result: dict[str, Any] = {"files": files}
    if "prefix" in mapping:
        result["prefix"] = _check_cache_key_text(as_str(mapping["prefix"], "cache:key:prefix"), "cache:key:prefix")
    return result


# --- image and services ---------------------------------------------------------------

_IMAGE_KEYS = {"name", "entrypoint", "pull_policy", "docker", "kubernetes"}
_SERVICE_KEYS = _IMAGE_KEYS | {"alias", "command", "variables"}
_PULL_POLICIES = ("always", "if-not-present", "never")


def image(value: Any, scope: Scope) -> dict[str, Any]:
    return _container(value, scope, _IMAGE_KEYS, "image")


def services(value: Any, scope: Scope) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise Invalid(f"must be a list of images, not {type_name(value)}")
    return [_container(entry, scope, _SERVICE_KEYS, "services") for entry in value]


def _container(value: Any, scope: Scope, allowed: set[str], what: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"name": as_str(value, what)}
    mapping = as_mapping(value, what)
    check_keys(mapping, allowed, what, scope)
    if "name" not in mapping:
        raise Invalid(f"{what} needs a name")
    result: dict[str, Any] = {"name": as_str(mapping["name"], f"{what}:name")}
    for key in ("entrypoint", "command"):
        if key in mapping:
            result[key] = string_list(mapping[key], f"{what}:{key}", allow_empty_items=True)
    if "alias" in mapping:
        result["alias"] = as_str(mapping["alias"], f"{what}:alias")
    if "pull_policy" in mapping:
        policies = string_list(mapping["pull_policy"], f"{what}:pull_policy", allow_string=True)
        for policy in policies:
            one_of(policy, _PULL_POLICIES, f"{what}:pull_policy")
        result["pull_policy"] = policies
    for key in ("docker", "kubernetes"):
        if key in mapping:
            result[key] = to_plain(as_mapping(mapping[key], f"{what}:{key}"))
    if "variables" in mapping:
        result["variables"], _descriptions = variables(mapping["variables"], scope)
    return result
