"""Validation and normalization of job keywords (scalars, lists, rules, needs, parallel, ...).

Each normalizer takes the raw YAML value and a Scope, returns the normalized value, and
raises Invalid when the value is unusable. Lesser problems go to `scope.error`/`scope.warn`
so one bad entry does not hide the next.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from pipelines.config.durations import DurationError, parse_duration
from pipelines.config.expressions import (
    Expression,
    ExpressionError,
    compile_regex_literal,
    is_regex_literal,
    parse_expression,
    regex_literal_to_python,
)
from pipelines.config.report import Invalid, Scope, located, suggest
from pipelines.config.yaml_loader import Where, to_plain

MAX_SCRIPT_NESTING = 10
MAX_PARALLEL = 200
MAX_START_IN_S = 7 * 24 * 3600
MAX_TIMEOUT_S = 30 * 24 * 3600
MAX_RETRY = 2

JOB_WHEN = ("on_success", "on_failure", "always", "manual", "delayed")
RULE_WHEN = (*JOB_WHEN, "never")
RETRY_WHEN = (
    "always",
    "unknown_failure",
    "script_failure",
    "api_failure",
    "stuck_or_timeout_failure",
    "runner_system_failure",
    "runner_unsupported",
    "stale_schedule",
    "job_execution_timeout",
    "archived_failure",
    "unmet_prerequisites",
    "scheduler_failure",
    "data_integrity_failure",
)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def as_bool(value: Any, what: str = "value") -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"{what} must be true or false, not {type_name(value)}")
    return value


def as_str(value: Any, what: str = "value", *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{what} must be a string, not {type_name(value)}")
    if not allow_empty and not value.strip():
        raise Invalid(f"{what} must not be empty")
    return value


def as_mapping(value: Any, what: str = "value") -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"{what} must be a mapping, not {type_name(value)}")
    return value


def check_keys(mapping: dict[Any, Any], allowed: set[str] | frozenset[str], what: str, scope: Scope) -> None:
    """Report keys of `mapping` that `what` does not know (as errors: they are typos)."""
    for key in mapping:
        if key not in allowed:
            scope.error(
                f"unknown key {key!r} in {what}{suggest(str(key), allowed)}; known keys: {', '.join(sorted(allowed))}",
                where=located(mapping, key),
            )


def one_of(value: Any, choices: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise Invalid(f"{what} must be one of {', '.join(choices)}; got {value!r}")
    return value


def flatten(value: list[Any], *, depth: int = 1) -> list[Any]:
    """Splice nested lists (from anchors or !reference) up to `depth` levels."""
    out: list[Any] = []
    for item in value:
        if isinstance(item, list) and depth > 0:
            out.extend(flatten(item, depth=depth - 1))
        else:
            out.append(item)
    return out


def string_list(value: Any, what: str, *, allow_string: bool = False, allow_empty_items: bool = False) -> list[str]:
    if isinstance(value, str) and allow_string:
        value = [value]
    if not isinstance(value, list):
        expected = "a string or a list of strings" if allow_string else "a list of strings (e.g. [a, b])"
        raise Invalid(f"{what} must be {expected}, not {type_name(value)}")
    items = flatten(value)
    for item in items:
        if not isinstance(item, str):
            raise Invalid(f"{what} must be a list of strings; {item!r} is {type_name(item)}")
        if not allow_empty_items and not item.strip():
            raise Invalid(f"{what} must not contain empty strings")
    return list(items)


def duration(value: Any, what: str, *, maximum: int) -> int:
    try:
        return parse_duration(value, maximum=maximum)
    except DurationError as exc:
        raise Invalid(f"{what}: {exc}") from None


def exit_codes(value: Any, what: str = "exit_codes") -> list[int]:
    codes = value if isinstance(value, list) else [value]
    if not codes:
        raise Invalid(f"{what} must not be empty")
    for code in codes:
        if isinstance(code, bool) or not isinstance(code, int) or not -(2**31) <= code < 2**31:
            raise Invalid(f"{what} must be an integer or a list of integers; got {code!r}")
    return list(codes)


# --- Scripts and simple keys -----------------------------------------------------------


def script(value: Any, scope: Scope, *, required: bool = False) -> list[str]:
    """A string or a list of strings nested up to 10 levels; each line becomes one step."""
    if isinstance(value, str):
        lines = [value]
    elif isinstance(value, list):
        lines = []
        _flatten_script(value, lines, 1)
    else:
        raise Invalid(f"must be a string or a list of strings, not {type_name(value)}")
    if required and not any(line.strip() for line in lines):
        raise Invalid("must not be empty")
    return lines


def _flatten_script(items: list[Any], out: list[str], depth: int) -> None:
    if depth > MAX_SCRIPT_NESTING:
        raise Invalid(f"lists nested more than {MAX_SCRIPT_NESTING} levels deep")
    for item in items:
        if isinstance(item, list):
            _flatten_script(item, out, depth + 1)
        elif isinstance(item, str):
            out.append(item)
        else:
            hint = " (quote it)" if isinstance(item, (int, float, bool)) or item is None else ""
            raise Invalid(f"each line must be a string; {item!r} is {type_name(item)}{hint}")


def variables(value: Any, scope: Scope) -> tuple[dict[str, str], dict[str, str]]:
    """`{NAME: value}` or `{NAME: {value, description, options, expand}}` -> values, descriptions."""
    mapping = as_mapping(value, "variables")
    values: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    for name, raw in mapping.items():
        where = located(mapping, name)
        try:
            if not isinstance(name, str) or not name:
                raise Invalid(f"variable names must be non-empty strings; got {name!r}")
            if isinstance(raw, dict):
                values[name] = _variable_with_options(name, raw, scope, descriptions)
            else:
                values[name] = _variable_value(name, raw)
        except Invalid as exc:
            scope.error(exc.message, where=where)
    return values, descriptions


def _variable_value(name: str, raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool) or raw is None:
        shown = "null" if raw is None else str(raw).lower()
        raise Invalid(f'variable {name!r}: {shown} must be quoted (variables are strings, e.g. {name}: "{shown}")')
    if isinstance(raw, (int, float)):
        return str(raw)
    raise Invalid(f"variable {name!r} must be a string or {{value, description}}, not {type_name(raw)}")


def _variable_with_options(name: str, raw: dict[Any, Any], scope: Scope, descriptions: dict[str, str]) -> str:
    check_keys(raw, {"value", "description", "options", "expand"}, f"variable {name!r}", scope)
    value = _variable_value(name, raw.get("value", ""))
    if "description" in raw:
        descriptions[name] = as_str(raw["description"], f"variable {name!r} description", allow_empty=True)
    if "options" in raw:
        options = string_list(raw["options"], f"variable {name!r} options", allow_empty_items=True)
        if value not in options:
            raise Invalid(f"variable {name!r}: value {value!r} is not one of its options {options}")
    if "expand" in raw and not as_bool(raw["expand"], f"variable {name!r} expand"):
        scope.warn(f"variable {name!r}: expand: false is not supported (the value is used as written)")
    return value


def job_when(value: Any) -> str:
    if value == "never":
        raise Invalid("when: never is only valid inside rules (use rules: [{when: never}])")
    return one_of(value, JOB_WHEN, "when")


def start_in(value: Any) -> int:
    return duration(value, "start_in", maximum=MAX_START_IN_S)


def allow_failure(value: Any, scope: Scope) -> tuple[bool, list[int]]:
    if isinstance(value, bool):
        return value, []
    if isinstance(value, dict):
        check_keys(value, {"exit_codes"}, "allow_failure", scope)
        if "exit_codes" not in value:
            raise Invalid("allow_failure as a mapping needs exit_codes: [..]")
        return True, exit_codes(value["exit_codes"], "allow_failure:exit_codes")
    raise Invalid(f"must be true, false or {{exit_codes: [..]}}, not {type_name(value)}")


def tags(value: Any) -> list[str]:
    if isinstance(value, str):
        raise Invalid(f"must be a list (tags: [{value}]), not a string")
    return string_list(value, "tags")


def timeout(value: Any) -> int:
    return duration(value, "timeout", maximum=MAX_TIMEOUT_S)


def retry(value: Any, scope: Scope) -> tuple[int, list[str], list[int]]:
    if isinstance(value, dict):
        check_keys(value, {"max", "when", "exit_codes"}, "retry", scope)
        # As in GitLab, {when: ...} without max retries nothing.
        maximum = _retry_max(value["max"]) if "max" in value else 0
        when: list[str] = []
        if "when" in value:
            when = string_list(value["when"], "retry:when", allow_string=True)
            for reason in when:
                one_of(reason, RETRY_WHEN, "retry:when")
        codes = exit_codes(value["exit_codes"], "retry:exit_codes") if "exit_codes" in value else []
        return maximum, when, codes
    return _retry_max(value), [], []


def _retry_max(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRY:
        raise Invalid(f"retry must be 0, 1 or 2 (or {{max, when, exit_codes}}); got {value!r}")
    return value


def coverage(value: Any) -> str:
    text = as_str(value, "coverage")
    if not is_regex_literal(text):
        raise Invalid(f"coverage must be a /regex/ literal, e.g. '/Total: (\\d+)%/'; got {text!r}")
    try:
        return regex_literal_to_python(text)
    except ExpressionError as exc:
        raise Invalid(str(exc)) from None


def deploy(value: Any) -> dict[str, Any]:
    return to_plain(as_mapping(value, "deploy"))


def dependencies(value: Any) -> list[str]:
    return string_list(value, "dependencies")


# --- needs ----------------------------------------------------------------------------


@dataclass
class NeedRef:
    """One `needs` entry before it is matched against the jobs this run actually has."""

    job: str
    optional: bool = False
    artifacts: bool = True
    # needs:parallel:matrix: only the instances with exactly these variable values.
    matrix: list[dict[str, str]] | None = None
    where: Where | None = None


_NEED_KEYS = {"job", "optional", "artifacts", "parallel"}


def needs(value: Any, scope: Scope) -> list[NeedRef]:
    if not isinstance(value, list):
        raise Invalid(f"must be a list of job names or {{job: ...}}, not {type_name(value)}")
    refs: list[NeedRef] = []
    for entry in flatten(value):
        where = located(entry) or scope.where
        try:
            ref = _need(entry, scope, where)
        except Invalid as exc:
            scope.error(exc.message, where=where)
            continue
        if ref is not None:
            refs.append(ref)
    return refs


def _need(entry: Any, scope: Scope, where: Where) -> NeedRef | None:
    if isinstance(entry, str):
        return NeedRef(as_str(entry, "a needed job name"), where=where)
    if not isinstance(entry, dict):
        raise Invalid(f"each entry must be a job name or {{job: ...}}; got {type_name(entry)}")
    if "pipeline" in entry or "project" in entry:
        scope.warn(
            "cross-pipeline needs ({pipeline: ...} / {project: ...}) are not supported; this entry is ignored",
            where=where,
        )
        return None
    check_keys(entry, _NEED_KEYS, "a needs entry", scope)
    if "job" not in entry:
        raise Invalid("a needs entry as a mapping needs job: <name>")
    ref = NeedRef(as_str(entry["job"], "needs:job"), where=where)
    if "optional" in entry:
        ref.optional = as_bool(entry["optional"], "needs:optional")
    if "artifacts" in entry:
        ref.artifacts = as_bool(entry["artifacts"], "needs:artifacts")
    if "parallel" in entry:
        parallel_spec = as_mapping(entry["parallel"], "needs:parallel")
        check_keys(parallel_spec, {"matrix"}, "needs:parallel", scope)
        if "matrix" not in parallel_spec:
            raise Invalid("needs:parallel needs matrix: [..]")
        ref.matrix = matrix(parallel_spec["matrix"], "needs:parallel:matrix")
    return ref


# --- parallel -------------------------------------------------------------------------


@dataclass
class Parallel:
    count: int | None = None
    # One dict of variable values per instance, in order (parallel: matrix:).
    matrix: list[dict[str, str]] | None = None

    def instances(self, name: str) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
        """(instance name, matrix variables, JobSpec.parallel) for each instance."""
        if self.matrix is not None:
            total = len(self.matrix)
            return [
                (
                    f"{name}: [{', '.join(values.values())}]",
                    dict(values),
                    {"base": name, "index": index, "total": total, "matrix": dict(values)},
                )
                for index, values in enumerate(self.matrix, start=1)
            ]
        total = self.count or 1
        return [
            (f"{name} {index}/{total}", {}, {"base": name, "index": index, "total": total})
            for index in range(1, total + 1)
        ]


def parallel(value: Any, scope: Scope) -> Parallel:
    if isinstance(value, dict):
        check_keys(value, {"matrix"}, "parallel", scope)
        if "matrix" not in value:
            raise Invalid("parallel as a mapping needs matrix: [..]")
        return Parallel(matrix=matrix(value["matrix"], "parallel:matrix"))
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARALLEL:
        raise Invalid(f"must be a number from 1 to {MAX_PARALLEL} or {{matrix: [..]}}; got {value!r}")
    return Parallel(count=value)


def matrix(value: Any, what: str) -> list[dict[str, str]]:
    """The cartesian product of each entry, entries one after the other."""
    if not isinstance(value, list) or not value:
        raise Invalid(f"{what} must be a non-empty list of {{VARIABLE: value or [values]}}")
    axes_per_entry: list[list[tuple[str, list[str]]]] = []
    total = 0
    for entry in flatten(value):
        if not isinstance(entry, dict) or not entry:
            raise Invalid(f"each entry of {what} must be a non-empty mapping of variables to values")
        axes: list[tuple[str, list[str]]] = []
        size = 1
        for name, raw in entry.items():
            if not isinstance(name, str) or not name:
                raise Invalid(f"{what}: variable names must be strings; got {name!r}")
            values = raw if isinstance(raw, list) else [raw]
            if not values:
                raise Invalid(f"{what}: {name} has no values")
            texts = [_matrix_value(name, item, what) for item in values]
            axes.append((name, texts))
            size *= len(texts)
            if total + size > MAX_PARALLEL:
                raise Invalid(f"{what} makes more than {MAX_PARALLEL} jobs")
        total += size
        axes_per_entry.append(axes)
    combos: list[dict[str, str]] = []
    for axes in axes_per_entry:
        names = [name for name, _values in axes]
        for product in itertools.product(*(values for _name, values in axes)):
            combos.append(dict(zip(names, product, strict=True)))
    return combos


def _matrix_value(name: str, item: Any, what: str) -> str:
    if isinstance(item, bool) or not isinstance(item, (str, int, float)):
        raise Invalid(f"{what}: values of {name} must be strings or numbers; got {item!r}")
    return str(item)


# --- inherit --------------------------------------------------------------------------


@dataclass
class Inherit:
    # True: all, False: none, or the names to inherit.
    default: bool | frozenset[str] = True
    variables: bool | frozenset[str] = True

    def takes_default(self, key: str) -> bool:
        return self.default if isinstance(self.default, bool) else key in self.default

    def takes_variable(self, name: str) -> bool:
        return self.variables if isinstance(self.variables, bool) else name in self.variables


def inherit(value: Any, scope: Scope) -> Inherit:
    mapping = as_mapping(value, "inherit")
    check_keys(mapping, {"default", "variables"}, "inherit", scope)
    result = Inherit()
    for key in ("default", "variables"):
        if key in mapping:
            raw = mapping[key]
            if isinstance(raw, bool):
                setattr(result, key, raw)
            else:
                setattr(result, key, frozenset(string_list(raw, f"inherit:{key}")))
    return result


# --- rules / only / except ------------------------------------------------------------


@dataclass
class Rule:
    condition: Expression | None = None
    when: str | None = None
    allow_failure: tuple[bool, list[int]] | None = None
    variables: dict[str, str] = field(default_factory=dict)
    start_in_s: int | None = None
    needs: list[NeedRef] | None = None
    interruptible: bool | None = None
    where: Where | None = None


_RULE_KEYS = {"if", "changes", "exists", "when", "allow_failure", "variables", "start_in", "needs", "interruptible"}
_WORKFLOW_RULE_KEYS = {"if", "changes", "exists", "when", "variables", "auto_cancel"}


def rules(value: Any, scope: Scope, *, workflow: bool = False) -> list[Rule]:
    if not isinstance(value, list):
        raise Invalid(f"must be a list of rules, not {type_name(value)}")
    result = []
    for entry in flatten(value):
        where = located(entry) or scope.where
        if not isinstance(entry, dict):
            scope.error(f"each rule must be a mapping (if/when/...), not {type_name(entry)}", where=where)
            continue
        result.append(_rule(entry, scope, where, workflow=workflow))
    return result


def _rule(entry: dict[Any, Any], scope: Scope, where: Where, *, workflow: bool) -> Rule:
    check_keys(entry, _WORKFLOW_RULE_KEYS if workflow else _RULE_KEYS, "a rule", scope)
    rule = Rule(where=where)
    for key, raw in entry.items():
        key_where = located(entry, key) or where
        try:
            if key == "if":
                rule.condition = expression(raw)
            elif key in ("changes", "exists"):
                _check_paths_condition(raw, key)
                scope.warn(f"rules:{key} is not evaluated here: it always counts as true", sub=key, where=key_where)
            elif key == "when":
                choices = ("always", "never") if workflow else RULE_WHEN
                rule.when = one_of(raw, choices, "rules:when")
            elif key == "allow_failure":
                rule.allow_failure = allow_failure(raw, scope)
            elif key == "variables":
                rule.variables, _descriptions = variables(raw, scope)
            elif key == "start_in":
                rule.start_in_s = start_in(raw)
            elif key == "needs":
                rule.needs = needs(raw, scope)
            elif key == "interruptible":
                rule.interruptible = as_bool(raw, "rules:interruptible")
            elif key == "auto_cancel":
                scope.warn("workflow:rules:auto_cancel is not supported (ignored)", sub=key, where=key_where)
        except Invalid as exc:
            scope.error(exc.message, sub=str(key), where=key_where)
    if rule.start_in_s is not None and rule.when != "delayed":
        scope.error("rules:start_in is only valid with when: delayed", sub="start_in", where=where)
    if rule.when == "delayed" and rule.start_in_s is None:
        scope.error("when: delayed needs start_in (e.g. start_in: 30 minutes)", sub="when", where=where)
    return rule


def expression(raw: Any) -> Expression:
    try:
        return parse_expression(raw)
    except ExpressionError as exc:
        raise Invalid(f"invalid expression {raw!r}: {exc}" if isinstance(raw, str) else str(exc)) from None


def _check_paths_condition(raw: Any, key: str) -> None:
    if isinstance(raw, dict):
        if "paths" not in raw:
            raise Invalid(f"rules:{key} as a mapping needs paths: [..]")
        string_list(raw["paths"], f"rules:{key}:paths")
    else:
        string_list(raw, f"rules:{key}")


@dataclass
class RefFilter:
    """`only:` or `except:`: each given part must match (GitLab ANDs the parts)."""

    refs: list[str] | None = None
    variables: list[Expression] | None = None
    # `changes` and `kubernetes` cannot be evaluated here; present means "matches".
    other: bool = False

    def matches(self, *, ref_matches: Any, env: dict[str, str]) -> bool:
        if self.refs is not None and not any(ref_matches(pattern) for pattern in self.refs):
            return False
        return self.variables is None or any(item.evaluate(env) for item in self.variables)


def only_except(value: Any, scope: Scope) -> RefFilter:
    if isinstance(value, (list, str)):
        return RefFilter(refs=_refs(value, scope))
    mapping = as_mapping(value, scope.key)
    check_keys(mapping, {"refs", "variables", "changes", "kubernetes"}, scope.key, scope)
    result = RefFilter()
    if "refs" in mapping:
        result.refs = _refs(mapping["refs"], scope)
    if "variables" in mapping:
        result.variables = []
        for raw in string_list(mapping["variables"], f"{scope.key}:variables", allow_string=True):
            try:
                result.variables.append(expression(raw))
            except Invalid as exc:
                scope.error(exc.message, sub="variables", where=located(mapping, "variables"))
    for key in ("changes", "kubernetes"):
        if key in mapping:
            result.other = True
            scope.warn(f"{scope.key}:{key} is not evaluated here: it always counts as matching", sub=key)
    return result


def _refs(value: Any, scope: Scope) -> list[str]:
    refs = string_list(value, f"{scope.key}:refs", allow_string=True)
    for ref in refs:
        if is_regex_literal(ref):
            try:
                compile_regex_literal(ref)
            except ExpressionError as exc:
                scope.error(f"{ref}: {exc}", sub="refs")
    return refs
