"""parse_pipeline: config text + trigger context -> PipelineSpec, or ConfigError with every problem.

The steps, in GitLab's order:
  1. YAML (duplicate keys, alias bombs, line numbers: yaml_loader),
  2. include: local, extends, !reference (resolve),
  3. stages, global variables, default, workflow:rules,
  4. each visible job: keywords normalized (keywords, sections), `default:` inherited,
     parallel expanded, rules / only / except evaluated against this trigger,
  5. needs and dependencies matched to the jobs this run has, cycles found (dag).
Problems are collected all the way through and raised together at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.config import keywords as kw
from pipelines.config import sections
from pipelines.config.dag import Planned, effective_edges, link_jobs
from pipelines.config.expressions import ExpressionError, compile_regex_literal, is_regex_literal
from pipelines.config.report import Invalid, Report, Scope, located, suggest
from pipelines.config.resolve import (
    GLOBAL_KEYWORDS,
    UNRESOLVED,
    resolve_extends,
    resolve_includes,
    resolve_references,
)
from pipelines.config.spec import (
    DEFAULT_STAGE,
    DEFAULT_STAGES,
    ConfigError,
    ConfigProblem,
    JobSpec,
    PipelineSpec,
    TriggerContext,
)
from pipelines.config.yaml_loader import NodeBudget, Where, YamlMap, load_yaml, to_plain

__all__ = ["parse_pipeline", "effective_edges"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_JOBS = 2000
DEFAULT_MAX_CONFIG_BYTES = 1024 * 1024

Normalizer = Callable[[Any, Scope], Any]

# The job keywords this parser implements, each with its normalizer.
JOB_KEYWORDS: dict[str, Normalizer] = {
    "script": lambda value, scope: kw.script(value, scope, required=True),
    "before_script": kw.script,
    "after_script": kw.script,
    "stage": lambda value, scope: kw.as_str(value, "stage"),
    "needs": kw.needs,
    "dependencies": lambda value, scope: kw.dependencies(value),
    "rules": kw.rules,
    "only": kw.only_except,
    "except": kw.only_except,
    "when": lambda value, scope: kw.job_when(value),
    "start_in": lambda value, scope: kw.start_in(value),
    "allow_failure": kw.allow_failure,
    "environment": sections.environment,
    "artifacts": sections.artifacts,
    "cache": sections.cache,
    "image": sections.image,
    "services": sections.services,
    "tags": lambda value, scope: kw.tags(value),
    "timeout": lambda value, scope: kw.timeout(value),
    "retry": kw.retry,
    "parallel": kw.parallel,
    "interruptible": lambda value, scope: kw.as_bool(value, "interruptible"),
    "resource_group": lambda value, scope: kw.as_str(value, "resource_group"),
    "variables": lambda value, scope: kw.variables(value, scope)[0],
    "coverage": lambda value, scope: kw.coverage(value),
    "deploy": lambda value, scope: kw.deploy(value),
    "inherit": kw.inherit,
}
# GitLab job keywords this parser does not implement: reported as warnings, never silently dropped.
UNSUPPORTED_JOB_KEYWORDS = frozenset(
    {
        "trigger",
        "secrets",
        "id_tokens",
        "pages",
        "release",
        "hooks",
        "identity",
        "dast_configuration",
        "manual_confirmation",
        "run",
        "publish",
    }
)
DEFAULT_KEYWORDS = frozenset(
    {
        "image",
        "before_script",
        "after_script",
        "tags",
        "retry",
        "timeout",
        "interruptible",
        "cache",
        "services",
        "artifacts",
    }
)
UNSUPPORTED_DEFAULT_KEYWORDS = frozenset({"hooks", "id_tokens"})
# Top-level spellings of default: keywords GitLab still accepts (deprecated).
LEGACY_GLOBAL_DEFAULTS = ("image", "services", "cache", "before_script", "after_script")
ALL_JOB_KEYS = frozenset(JOB_KEYWORDS) | UNSUPPORTED_JOB_KEYWORDS | {"extends", "type"}

# only/except keywords, by what they match in the trigger.
_REF_KEYWORDS: dict[str, Callable[[TriggerContext], bool]] = {
    "branches": lambda ctx: not ctx.is_tag and ctx.source != "merge_request_event",
    "tags": lambda ctx: ctx.is_tag,
    "merge_requests": lambda ctx: ctx.source == "merge_request_event",
    "pushes": lambda ctx: ctx.source == "push",
    "schedules": lambda ctx: ctx.source == "schedule",
    "web": lambda ctx: ctx.source == "web",
    "api": lambda ctx: ctx.source == "api",
    "triggers": lambda ctx: ctx.source == "trigger",
    "pipelines": lambda ctx: ctx.source in ("pipeline", "parent_pipeline"),
    "external": lambda ctx: ctx.source == "external",
    "external_pull_requests": lambda ctx: ctx.source == "external_pull_request_event",
    "chat": lambda ctx: ctx.source == "chat",
}


def _setting(name: str, default: int) -> int:
    # Read lazily and defensively: the parser also runs without Django settings (lint, tests).
    try:
        from django.conf import settings

        if not settings.configured:
            return default
        value = getattr(settings, name, default)
    except Exception:  # ImportError, ImproperlyConfigured: no Django here
        return default
    return value if isinstance(value, int) and value > 0 else default


def parse_pipeline(
    text: str, *, context: TriggerContext, read_file: Callable[[str], str] | None = None
) -> PipelineSpec:
    """Parse and validate a pipeline config for one trigger.

    `read_file(path)` returns another file of the repository at the same commit (for
    `include: local`); it may raise ConfigError. Raises ConfigError listing every
    problem found, and nothing else, whatever the text.
    """
    try:
        return _Parser(context, read_file).parse(text)
    except ConfigError:
        raise
    except Exception as exc:
        # A bug here must not take the webhook worker down with an odd exception type:
        # the run fails with a config error that says what happened (and it is logged).
        logger.exception("pipeline config parser failed")
        raise ConfigError(
            [ConfigProblem(f"internal error in the config parser ({type(exc).__name__}); please report it")]
        ) from exc


@dataclass
class _Draft:
    """One job's normalized keywords, before parallel, rules and needs."""

    name: str
    where: Where
    stage: str
    values: dict[str, Any]
    inherit: kw.Inherit


@dataclass
class _Decision:
    """What rules / only / except made of one job for this trigger."""

    when: str
    allow_failure: tuple[bool, list[int]]
    start_in_s: int | None = None
    variables: dict[str, str] | None = None
    needs: list[kw.NeedRef] | None = None
    interruptible: bool | None = None


class _Parser:
    def __init__(self, context: TriggerContext, read_file: Callable[[str], str] | None) -> None:
        self.context = context
        self.read_file = read_file
        self.report = Report()
        self.max_jobs = _setting("CONVEYOR_MAX_JOBS_PER_RUN", DEFAULT_MAX_JOBS)
        self.max_bytes = _setting("CONVEYOR_MAX_CONFIG_BYTES", DEFAULT_MAX_CONFIG_BYTES)
        self.ci_variables = context.ci_variables()
        self.doc = YamlMap()
        self.stages: list[str] = []
        self.global_variables: dict[str, str] = {}
        self.extends_failed: set[str] = set()

    def fail(self, message: str, line: int | None = None) -> ConfigError:
        return ConfigError([*self.report.errors, ConfigProblem(message, line=line)])

    # --- document -----------------------------------------------------------------

    def parse(self, text: str) -> PipelineSpec:
        if not isinstance(text, str):
            raise self.fail(f"the config must be text, not {type(text).__name__}")
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.max_bytes:
            raise self.fail(f"the config is {size} bytes; the limit is {self.max_bytes}")
        budget = NodeBudget()
        doc = self.top_level(load_yaml(text, budget=budget))
        doc = resolve_includes(
            doc, read_file=self.read_file, report=self.report, budget=budget, max_bytes=self.max_bytes
        )
        doc, self.extends_failed = resolve_extends(doc, self.report)
        self.doc = resolve_references(doc, self.report)

        self.stages = self.read_stages()
        self.global_variables, descriptions = self.read_variables()
        defaults = self.read_defaults()
        workflow_skipped, name = self.read_workflow()
        planned, defined, broken = self.read_jobs(defaults)
        link_jobs(planned, stages=self.stages, defined=defined, broken=broken, report=self.report)
        if self.report.errors:
            raise ConfigError(self.report.errors)

        jobs = [item.spec for item in planned]
        skipped = workflow_skipped or self.nothing_to_run(jobs)
        return PipelineSpec(
            stages=self.stages,
            jobs=[] if workflow_skipped else jobs,
            variables=dict(self.global_variables),
            warnings=list(self.report.warnings),
            workflow_skipped=skipped,
            name=name,
            variable_descriptions=descriptions,
        )

    def top_level(self, data: Any) -> YamlMap:
        if data is None or data == {}:
            raise self.fail("the config is empty: it needs at least one job with a script")
        if not isinstance(data, YamlMap):
            raise self.fail(f"the config must be a mapping of jobs and keywords, not {kw.type_name(data)}", line=1)
        result = YamlMap.like(data)
        for key, value in data.items():
            if isinstance(key, str):
                result[key] = value
            else:
                self.report.error(
                    f"top-level keys must be strings (job names or keywords), not {key!r}", where=located(data, key)
                )
        return result

    def nothing_to_run(self, jobs: list[JobSpec]) -> str | None:
        trigger = f"source {self.context.source!r}, ref {self.context.ref!r}"
        if not jobs:
            return f"rules/only/except left no job in this pipeline ({trigger})"
        if all(job.stage in (".pre", ".post") for job in jobs):
            return f"only .pre/.post jobs are left in this pipeline ({trigger})"
        return None

    # --- globals ------------------------------------------------------------------

    def read_stages(self) -> list[str]:
        key = "stages" if "stages" in self.doc or "types" not in self.doc else "types"
        if "types" in self.doc:
            self.report.warn("types is deprecated; use stages", key="types", where=located(self.doc, "types"))
        if key not in self.doc:
            return list(DEFAULT_STAGES)
        where = located(self.doc, key)
        try:
            listed = kw.string_list(self.doc[key], key)
        except Invalid as exc:
            self.report.error(exc.message, key=key, where=where)
            return list(DEFAULT_STAGES)
        stages: list[str] = []
        for stage in listed:
            if stage in stages:
                self.report.warn(f"stage {stage!r} is listed twice", key=key, where=where)
            elif stage not in (".pre", ".post"):
                stages.append(stage)
        # .pre and .post are always first and last, wherever (or whether) they are listed.
        return [".pre", *stages, ".post"]

    def read_variables(self) -> tuple[dict[str, str], dict[str, str]]:
        if "variables" not in self.doc:
            return {}, {}
        scope = self.report.scope(job=None, key="variables", where=located(self.doc, "variables"))
        try:
            return kw.variables(self.doc["variables"], scope)
        except Invalid as exc:
            scope.invalid(exc)
            return {}, {}

    def read_defaults(self) -> dict[str, Any]:
        raw: dict[Any, Any] = {}
        if "default" in self.doc:
            value = self.doc["default"]
            if isinstance(value, dict):
                raw = dict(value)
            else:
                self.report.error("default must be a mapping", key="default", where=located(self.doc, "default"))
        container: Any = self.doc.get("default") if isinstance(self.doc.get("default"), dict) else self.doc
        for key in LEGACY_GLOBAL_DEFAULTS:
            if key in self.doc:
                self.report.warn(
                    f"top-level {key} is deprecated; use default:{key}", key=key, where=located(self.doc, key)
                )
                raw.setdefault(key, self.doc[key])
        defaults: dict[str, Any] = {}
        for key, value in raw.items():
            where = located(container, key) or located(self.doc, key) or located(self.doc, "default")
            if key in UNSUPPORTED_DEFAULT_KEYWORDS:
                self.report.warn(f"default:{key} is not supported (ignored)", key=f"default:{key}", where=where)
            elif key not in DEFAULT_KEYWORDS:
                self.report.error(
                    f"unknown key {key!r} in default{suggest(str(key), DEFAULT_KEYWORDS)}; "
                    f"default takes {', '.join(sorted(DEFAULT_KEYWORDS))}",
                    key="default",
                    where=where,
                )
            else:
                scope = self.report.scope(job=None, key=f"default:{key}", where=where)
                try:
                    defaults[key] = JOB_KEYWORDS[key](value, scope)
                except Invalid as exc:
                    scope.invalid(exc)
        return defaults

    def read_workflow(self) -> tuple[str | None, str | None]:
        """(why no run should be created, or None; the run's name). Applies workflow variables."""
        if "workflow" not in self.doc:
            return None, None
        where = located(self.doc, "workflow")
        workflow = self.doc["workflow"]
        if not isinstance(workflow, dict):
            self.report.error("workflow must be a mapping (rules, name)", key="workflow", where=where)
            return None, None
        scope = self.report.scope(job=None, key="workflow", where=where)
        kw.check_keys(workflow, {"rules", "name", "auto_cancel"}, "workflow", scope)
        name = None
        if "name" in workflow:
            try:
                name = kw.as_str(workflow["name"], "workflow:name")
            except Invalid as exc:
                scope.error(exc.message, sub="name", where=located(workflow, "name"))
        if "auto_cancel" in workflow:
            scope.warn("workflow:auto_cancel is not supported (ignored)", sub="auto_cancel")
        if "rules" not in workflow:
            return None, name
        rules_scope = self.report.scope(job=None, key="workflow:rules", where=located(workflow, "rules") or where)
        try:
            rules = kw.rules(workflow["rules"], rules_scope, workflow=True)
        except Invalid as exc:
            rules_scope.invalid(exc)
            return None, name
        env = {**self.ci_variables, **self.global_variables, **self.context.variables}
        for index, rule in enumerate(rules, start=1):
            if self.rule_matches(rule, env, rules_scope):
                if rule.when == "never":
                    shown = f"if: {rule.condition.source}" if rule.condition else "no condition"
                    return f"workflow:rules: rule {index} ({shown}) says when: never", name
                # workflow:rules:variables override the global ones (GitLab precedence).
                self.global_variables = {**self.global_variables, **rule.variables}
                return None, name
        return f"workflow:rules: no rule matches this pipeline ({self.describe_trigger()})", name

    def describe_trigger(self) -> str:
        kind = "tag" if self.context.is_tag else "branch"
        return f"source {self.context.source!r}, {kind} {self.context.ref!r}"

    def rule_matches(self, rule: kw.Rule, env: dict[str, str], scope: Scope) -> bool:
        if rule.condition is None:
            return True
        try:
            return rule.condition.evaluate(env)
        except ExpressionError as exc:
            scope.error(f"{rule.condition.source!r}: {exc}", sub="if", where=rule.where)
            return False

    # --- jobs ---------------------------------------------------------------------

    def read_jobs(self, defaults: dict[str, Any]) -> tuple[list[Planned], set[str], set[str]]:
        """(the jobs of this run, every visible job name in the config, jobs too broken to place)."""
        visible = [
            (name, value)
            for name, value in self.doc.items()
            if name not in GLOBAL_KEYWORDS and not name.startswith(".")
        ]
        if not visible:
            self.report.error("the config has no jobs (names starting with '.' are hidden templates, not jobs)")
            return [], set(), set()
        if len(visible) > self.max_jobs:
            self.report.error(f"the config defines {len(visible)} jobs; the limit is {self.max_jobs}")
            return [], set(), set()
        planned: list[Planned] = []
        defined: set[str] = set()
        broken: set[str] = set()
        for name, value in visible:
            defined.add(name)
            errors_before = len(self.report.errors)
            draft = self.read_job(name, value, defaults)
            if draft is None or len(self.report.errors) > errors_before:
                broken.add(name)
                continue
            planned.extend(self.plan(draft))
            if len(planned) > self.max_jobs:
                self.report.error(f"this pipeline would have more than {self.max_jobs} jobs (parallel included)")
                return planned, defined, broken
        return planned, defined, broken

    def read_job(self, name: str, raw: Any, defaults: dict[str, Any]) -> _Draft | None:
        where = located(self.doc, name)
        if not name.strip():
            self.report.error("job names must not be empty", where=where)
            return None
        if not isinstance(raw, dict):
            hint = suggest(name, GLOBAL_KEYWORDS)
            self.report.error(
                f"a job must be a mapping with at least script:, not {kw.type_name(raw)}{hint}", job=name, where=where
            )
            return None
        values: dict[str, Any] = {}
        for key, value in raw.items():
            key_where = located(raw, key) or where
            if key == "extends" or value is UNRESOLVED:
                continue  # resolved already, or failed and reported
            if key == "type":
                self.report.warn("type is deprecated; use stage", job=name, key="type", where=key_where)
                if "stage" not in raw:
                    key = "stage"
                else:
                    continue
            if key in UNSUPPORTED_JOB_KEYWORDS:
                self.report.warn(
                    f"{key} is not supported by Conveyor (ignored)", job=name, key=str(key), where=key_where
                )
                continue
            if key not in JOB_KEYWORDS:
                self.report.error(
                    f"unknown key {key!r}{suggest(str(key), ALL_JOB_KEYS)}", job=name, key=str(key), where=key_where
                )
                continue
            scope = self.report.scope(job=name, key=key, where=key_where)
            try:
                values[key] = JOB_KEYWORDS[key](value, scope)
            except Invalid as exc:
                scope.invalid(exc)
        inherit = values.get("inherit", kw.Inherit())
        for key, value in defaults.items():
            if key not in raw and inherit.takes_default(key):
                values[key] = value
        # Without its parents (already reported), a job's missing script is no news.
        if "script" not in raw and name not in self.extends_failed:
            hint = suggest(name, GLOBAL_KEYWORDS)
            message = "has no script (every job needs script:; trigger jobs are not supported)"
            if hint:
                message = f"has no script; is it a misspelt keyword{hint}"
            self.report.error(message, job=name, where=where)
        stage = values.get("stage", DEFAULT_STAGE)
        if stage not in self.stages:
            self.report.error(
                f"unknown stage {stage!r}{suggest(stage, self.stages)}; stages are {', '.join(self.stages)}",
                job=name,
                key="stage",
                where=located(raw, "stage") or where,
            )
        self.check_combinations(name, raw, values, where)
        return _Draft(name=name, where=where or (None, None), stage=stage, values=values, inherit=inherit)

    def check_combinations(self, name: str, raw: dict[Any, Any], values: dict[str, Any], where: Where | None) -> None:
        def error(message: str, key: str) -> None:
            self.report.error(message, job=name, key=key, where=located(raw, key) or where)

        if "rules" in raw:
            for key in ("only", "except"):
                if key in raw:
                    error(f"rules cannot be combined with {key} (use one or the other)", key)
            if "when" in raw:
                error("a job with rules cannot have a job-level when; put when: inside the rules", "when")
            if "start_in" in raw:
                error("a job with rules cannot have a job-level start_in; put it inside the rules", "start_in")
            return
        when = values.get("when")  # None when absent or itself invalid (already reported)
        if when == "delayed" and "start_in" not in raw:
            error("when: delayed needs start_in (e.g. start_in: 30 minutes)", "when")
        if "start_in" in raw and ("when" not in raw or (when is not None and when != "delayed")):
            error("start_in is only valid with when: delayed", "start_in")

    def plan(self, draft: _Draft) -> list[Planned]:
        values = draft.values
        parallel: kw.Parallel | None = values.get("parallel")
        instances = parallel.instances(draft.name) if parallel else [(draft.name, {}, None)]
        inherited = {k: v for k, v in self.global_variables.items() if draft.inherit.takes_variable(k)}
        job_variables: dict[str, str] = values.get("variables", {})
        planned = []
        for name, matrix_variables, parallel_meta in instances:
            variables = {**inherited, **job_variables, **matrix_variables}
            # Trigger variables beat the config's, which beat the predefined CI_* ones.
            env = {**self.ci_variables, **variables, **self.context.variables}
            decision = self.decide(draft, env)
            if decision is None:
                continue
            planned.append(self.build(draft, name, variables, parallel_meta, decision))
        return planned

    def decide(self, draft: _Draft, env: dict[str, str]) -> _Decision | None:
        values = draft.values
        job_allow: tuple[bool, list[int]] | None = values.get("allow_failure")
        rules: list[kw.Rule] | None = values.get("rules")
        if rules is not None:
            scope = self.report.scope(job=draft.name, key="rules", where=draft.where)
            for rule in rules:
                if not self.rule_matches(rule, env, scope):
                    continue
                if rule.when == "never":
                    return None
                # A manual job from rules blocks the run unless allow_failure says otherwise.
                allow = rule.allow_failure or job_allow or (False, [])
                return _Decision(
                    when=rule.when or "on_success",
                    allow_failure=allow,
                    start_in_s=rule.start_in_s,
                    variables=rule.variables,
                    needs=rule.needs,
                    interruptible=rule.interruptible,
                )
            return None
        for key, wanted in (("only", True), ("except", False)):
            ref_filter: kw.RefFilter | None = values.get(key)
            if ref_filter is None:
                continue
            scope = self.report.scope(job=draft.name, key=key, where=draft.where)
            try:
                matched = ref_filter.matches(ref_matches=self.ref_matches, env=env)
            except ExpressionError as exc:
                scope.error(str(exc), sub="variables")
                return None
            if matched != wanted:
                return None
        when = values.get("when", "on_success")
        # Job-level when: manual is optional by default: the pipeline does not wait for it.
        return _Decision(
            when=when,
            allow_failure=job_allow or (when == "manual", []),
            start_in_s=values.get("start_in") if when == "delayed" else None,
        )

    def ref_matches(self, pattern: str) -> bool:
        if pattern in _REF_KEYWORDS:
            return _REF_KEYWORDS[pattern](self.context)
        if is_regex_literal(pattern):
            try:
                return compile_regex_literal(pattern).search(self.context.ref) is not None
            except ExpressionError:
                return False  # reported when the job was read
        return pattern == self.context.ref

    def build(
        self,
        draft: _Draft,
        name: str,
        variables: dict[str, str],
        parallel_meta: dict[str, Any] | None,
        decision: _Decision,
    ) -> Planned:
        values = draft.values
        allow, exit_codes = decision.allow_failure
        retry_max, retry_when, retry_exit_codes = values.get("retry", (0, [], []))
        interruptible = values.get("interruptible", False) if decision.interruptible is None else decision.interruptible
        spec = JobSpec(
            name=name,
            stage=draft.stage,
            script=list(values.get("script", [])),
            before_script=list(values.get("before_script", [])),
            after_script=list(values.get("after_script", [])),
            when=decision.when,
            start_in_s=decision.start_in_s,
            allow_failure=allow,
            allow_failure_exit_codes=list(exit_codes),
            blocking=decision.when == "manual" and not allow,
            tags=list(values.get("tags", [])),
            timeout_s=values.get("timeout"),
            retry_max=retry_max,
            retry_when=list(retry_when),
            retry_exit_codes=list(retry_exit_codes),
            interruptible=interruptible,
            resource_group=values.get("resource_group"),
            environment=to_plain(values.get("environment")),
            artifacts=to_plain(values.get("artifacts")),
            cache=to_plain(values.get("cache", [])),
            image=to_plain(values.get("image")),
            services=to_plain(values.get("services", [])),
            variables={**variables, **(decision.variables or {})},
            parallel=parallel_meta,
            deploy=to_plain(values.get("deploy")),
            coverage=values.get("coverage"),
        )
        raw = self.doc[draft.name]
        return Planned(
            spec=spec,
            base=draft.name,
            need_refs=decision.needs if decision.needs is not None else values.get("needs"),
            dependency_names=values.get("dependencies"),
            needs_where=located(raw, "needs") or draft.where,
            dependencies_where=located(raw, "dependencies") or draft.where,
        )
