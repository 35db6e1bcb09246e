"""Whole-document rewrites done before jobs are read: include, extends, !reference.

Order matters and follows GitLab: included files are merged under the main file first,
then `extends` is resolved (deep merge, parents first, later parents win), then every
`!reference` is replaced by the value it points at in the extended document.

Nothing here mutates its input: YAML aliases make one object appear in many places,
and a template is shared by every job that extends it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

from pipelines.config.report import Report, located, suggest
from pipelines.config.spec import ConfigError
from pipelines.config.yaml_loader import MAX_DEPTH, NodeBudget, Reference, YamlMap, load_yaml

MAX_INCLUDES = 150
MAX_EXTENDS_DEPTH = 11
MAX_REFERENCE_DEPTH = 10
# Nodes a full walk of the document may produce (references can multiply a template).
MAX_RESOLVED_NODES = 1_000_000

GLOBAL_KEYWORDS = frozenset(
    {
        "stages",
        "variables",
        "default",
        "workflow",
        "include",
        "image",
        "services",
        "cache",
        "before_script",
        "after_script",
        "types",
        "spec",
    }
)


def deep_merge(base: dict[Any, Any], override: dict[Any, Any]) -> YamlMap:
    """GitLab's merge: mappings merge key by key, anything else (lists too) is replaced."""
    return _merge(base, override, 0)


def _merge(base: dict[Any, Any], override: dict[Any, Any], depth: int) -> YamlMap:
    result = YamlMap.like(override)
    if isinstance(base, YamlMap):
        result.key_lines = {**base.key_lines, **result.key_lines}
        if result.line is None:
            result.file, result.line = base.file, base.line
    result.update(base)
    for key, value in override.items():
        current = result.get(key)
        if isinstance(current, dict) and isinstance(value, dict) and depth < MAX_DEPTH:
            result[key] = _merge(current, value, depth + 1)
        else:
            result[key] = value
    return result


def without(mapping: dict[Any, Any], key: str) -> YamlMap:
    result = YamlMap.like(mapping)
    result.update((k, v) for k, v in mapping.items() if k != key)
    return result


# --- include --------------------------------------------------------------------------


class _Includes:
    def __init__(
        self, read_file: Callable[[str], str] | None, report: Report, budget: NodeBudget, max_bytes: int
    ) -> None:
        self.read_file = read_file
        self.report = report
        self.budget = budget
        self.max_bytes = max_bytes
        self.done: set[str] = set()
        self.count = 0
        self.missing_reader_reported = False

    def expand(self, doc: YamlMap, chain: tuple[str, ...]) -> YamlMap:
        if "include" not in doc:
            return doc
        merged = YamlMap()
        for path, where in self.entries(doc["include"], located(doc, "include")):
            included = self.load(path, where, chain)
            if included is not None:
                merged = deep_merge(merged, self.expand(included, (*chain, path)))
        return deep_merge(merged, without(doc, "include"))

    def entries(self, value: Any, where: Any) -> list[tuple[str, Any]]:
        """Local paths to include, in order; other include types are reported."""
        items = value if isinstance(value, list) else [value]
        paths = []
        for item in items:
            item_where = located(item) or where
            local = self.local_path(item, item_where)
            if local is None:
                continue
            try:
                paths.append((_normalize(local), item_where))
            except ValueError as exc:
                self.report.error(f"include {local!r}: {exc}", key="include", where=item_where)
        return paths

    def local_path(self, item: Any, where: Any) -> str | None:
        if isinstance(item, str):
            if item.startswith(("http://", "https://")):
                self.report.warn(
                    f"include of a remote URL ({item}) is not supported; skipped", key="include", where=where
                )
                return None
            return item
        if not isinstance(item, dict):
            self.report.error(
                f"include entries must be paths or {{local: path}}, not {type(item).__name__}",
                key="include",
                where=where,
            )
            return None
        for kind in ("remote", "template", "project", "component"):
            if kind in item:
                self.report.warn(
                    f"include:{kind} is not supported (only include:local); skipped", key="include", where=where
                )
                return None
        for extra in ("rules", "inputs"):
            if extra in item:
                self.report.warn(
                    f"include:{extra} is not supported; the file is included as is", key="include", where=where
                )
        unknown = sorted(str(key) for key in item if key not in {"local", "rules", "inputs"})
        if unknown:
            self.report.error(
                f"unknown include key(s) {', '.join(unknown)}{suggest(unknown[0], ['local'])}",
                key="include",
                where=where,
            )
        if "local" not in item:
            if not unknown:
                self.report.error("include entry needs local: <path>", key="include", where=where)
            return None
        local = item["local"]
        if not isinstance(local, str) or not local.strip():
            self.report.error("include:local must be a path", key="include", where=where)
            return None
        return local

    def load(self, path: str, where: Any, chain: tuple[str, ...]) -> YamlMap | None:
        if path in chain:
            cycle = " -> ".join((*chain, path))
            self.report.error(f"include cycle: {cycle}", key="include", where=where)
            return None
        if path in self.done:
            # Including the same file twice merges the same content twice: a no-op.
            return None
        if self.read_file is None:
            if not self.missing_reader_reported:
                self.report.error(
                    "include: local needs the repository's files, which are not available here",
                    key="include",
                    where=where,
                )
                self.missing_reader_reported = True
            return None
        self.count += 1
        if self.count > MAX_INCLUDES:
            if self.count == MAX_INCLUDES + 1:
                self.report.error(f"more than {MAX_INCLUDES} included files", key="include", where=where)
            return None
        self.done.add(path)
        try:
            text = self.read_file(path)
        except ConfigError as exc:
            self.report.extend(exc.problems)
            return None
        except Exception as exc:  # noqa: BLE001 - any failure of the reader means "cannot include"
            self.report.error(f"include {path!r}: cannot read the file ({exc})", key="include", where=where)
            return None
        if not isinstance(text, str):
            self.report.error(f"include {path!r}: the file is not text", key="include", where=where)
            return None
        if len(text.encode("utf-8", "surrogatepass")) > self.max_bytes:
            self.report.error(f"include {path!r}: larger than {self.max_bytes} bytes", key="include", where=where)
            return None
        try:
            data = load_yaml(text, file=path, budget=self.budget)
        except ConfigError as exc:
            self.report.extend(exc.problems)
            return None
        if data is None:
            return YamlMap()
        if not isinstance(data, YamlMap):
            self.report.error(
                f"include {path!r}: the file must be a mapping of jobs and keywords", key="include", where=where
            )
            return None
        bad = [key for key in data if not isinstance(key, str)]
        for key in bad:
            self.report.error(f"keys must be strings, not {key!r}", where=located(data, key))
        return YamlMap({k: v for k, v in data.items() if k not in bad}) if bad else data


def _normalize(path: str) -> str:
    if any(char in path for char in "*?["):
        raise ValueError("wildcard includes are not supported; list the files")
    if "$" in path:
        raise ValueError("variables in include paths are not supported")
    # GitLab reads local includes from the repository root, with or without a leading '/'.
    normalized = posixpath.normpath(path.strip().lstrip("/"))
    if normalized in (".", "") or normalized == ".." or normalized.startswith("../"):
        raise ValueError("the path must stay inside the repository")
    if not normalized.endswith((".yml", ".yaml")):
        raise ValueError("included files must end in .yml or .yaml")
    return normalized


def resolve_includes(
    doc: YamlMap, *, read_file: Callable[[str], str] | None, report: Report, budget: NodeBudget, max_bytes: int
) -> YamlMap:
    return _Includes(read_file, report, budget, max_bytes).expand(doc, ())


# --- extends --------------------------------------------------------------------------


def is_job_like(key: Any, value: Any) -> bool:
    return isinstance(key, str) and key not in GLOBAL_KEYWORDS and isinstance(value, dict)


class _Extends:
    """Heights first (iteratively: a chain of thousands of templates must not recurse), then merges.

    A job's height is how many levels of `extends` sit above it (0 without extends). Edges
    that close a cycle are reported and cut, so the rest still resolves.
    """

    def __init__(self, doc: YamlMap, report: Report) -> None:
        self.doc = doc
        self.report = report
        # Jobs whose extends could not be fully resolved (their own error is reported).
        self.failed: set[str] = set()
        self.parents_of: dict[str, list[str]] = {}
        for key, value in doc.items():
            if is_job_like(key, value):
                where = located(value, "extends") or located(doc, key)
                self.parents_of[key] = self.parents(key, value["extends"], where) if "extends" in value else []
        self.cut: set[tuple[str, str]] = set()
        self.height: dict[str, int] = {}
        self.compute_heights()
        self.resolved: dict[str, YamlMap] = {}

    def parents(self, name: str, value: Any, where: Any) -> list[str]:
        names = value if isinstance(value, list) else [value]
        if not names or not all(isinstance(item, str) and item for item in names):
            self.report.error("extends must be a job name or a list of job names", job=name, key="extends", where=where)
            self.failed.add(name)
            return []
        known = []
        for parent in names:
            if parent in self.doc and is_job_like(parent, self.doc[parent]):
                known.append(parent)
            else:
                self.failed.add(name)
                hint = suggest(parent, [k for k, v in self.doc.items() if is_job_like(k, v)])
                self.report.error(f"extends unknown job {parent!r}{hint}", job=name, key="extends", where=where)
        return known

    def compute_heights(self) -> None:
        for start in self.parents_of:
            if start in self.height:
                continue
            path = [start]
            stack = [(start, iter(self.parents_of[start]))]
            while stack:
                node, parents = stack[-1]
                parent = next(parents, None)
                if parent is not None:
                    if parent in self.height:
                        continue
                    if parent in path:
                        self.cut.add((node, parent))
                        self.failed.add(node)
                        cycle = " -> ".join([*path[path.index(parent) :], parent])
                        where = located(self.doc[node], "extends")
                        self.report.error(f"extends cycle: {cycle}", job=node, key="extends", where=where)
                        continue
                    path.append(parent)
                    stack.append((parent, iter(self.parents_of[parent])))
                    continue
                stack.pop()
                path.pop()
                heights = [self.height[p] for p in self.parents_of[node] if (node, p) not in self.cut]
                self.height[node] = 1 + max(heights) if heights else 0

    def resolve(self, name: str) -> YamlMap:
        if name in self.resolved:
            return self.resolved[name]
        job = self.doc[name]
        if "extends" not in job:
            result = job
        elif self.height[name] > MAX_EXTENDS_DEPTH:
            self.failed.add(name)
            # Reported once per chain, where it first goes past the limit.
            if self.height[name] == MAX_EXTENDS_DEPTH + 1:
                self.report.error(
                    f"extends nested more than {MAX_EXTENDS_DEPTH} levels deep",
                    job=name,
                    key="extends",
                    where=located(job, "extends"),
                )
            result = without(job, "extends")
        else:
            merged = YamlMap()
            for parent in self.parents_of[name]:
                if (name, parent) not in self.cut:
                    merged = deep_merge(merged, self.resolve(parent))
                    if parent in self.failed:
                        self.failed.add(name)
            result = deep_merge(merged, without(job, "extends"))
        self.resolved[name] = result
        return result


def resolve_extends(doc: YamlMap, report: Report) -> tuple[YamlMap, set[str]]:
    """(the document with every job's extends merged in, the jobs whose extends failed)."""
    resolver = _Extends(doc, report)
    result = YamlMap.like(doc)
    for key, value in doc.items():
        result[key] = resolver.resolve(key) if is_job_like(key, value) else value
    return result, resolver.failed


# --- !reference -----------------------------------------------------------------------


class _TooBig(Exception):
    pass


class _Unresolved:
    """Stands where a !reference failed (already reported), so nothing else complains about it."""

    def __repr__(self) -> str:
        return "<unresolved !reference>"


UNRESOLVED = _Unresolved()


class _References:
    def __init__(self, doc: YamlMap, report: Report) -> None:
        self.doc = doc
        self.report = report
        self.nodes = 0
        self.reported_cycles: set[frozenset[tuple[str, ...]]] = set()

    def walk(
        self, value: Any, owner: str | None, chain: tuple[tuple[str, ...], ...], *, keep_unresolved: bool = False
    ) -> Any:
        self.nodes += 1
        if self.nodes > MAX_RESOLVED_NODES:
            raise _TooBig
        if isinstance(value, Reference):
            return self.follow(value, owner, chain)
        if isinstance(value, list):
            out: list[Any] = []
            for item in value:
                resolved = self.walk(item, owner, chain)
                if resolved is UNRESOLVED:
                    return UNRESOLVED
                # A reference to a list inside a list splices it in: script, rules, needs, ...
                if isinstance(item, Reference) and isinstance(resolved, list):
                    out.extend(resolved)
                else:
                    out.append(resolved)
            return out
        if isinstance(value, dict):
            result = YamlMap.like(value)
            for key, item in value.items():
                resolved = self.walk(item, owner, chain)
                # A failed reference (already reported) makes its whole key unusable, so
                # nothing downstream complains about a half-built value. A job keeps the
                # marker, so a missing `script` is not reported on top of it either.
                if resolved is UNRESOLVED and not keep_unresolved:
                    return UNRESOLVED
                result[key] = resolved
            return result
        return value

    def follow(self, reference: Reference, owner: str | None, chain: tuple[tuple[str, ...], ...]) -> Any:
        where = (reference.file, reference.line)
        if reference.path in chain:
            loop = (*chain[chain.index(reference.path) :], reference.path)
            if frozenset(loop) not in self.reported_cycles:
                self.reported_cycles.add(frozenset(loop))
                cycle = " -> ".join(f"[{', '.join(path)}]" for path in loop)
                self.report.error(f"!reference cycle: {cycle}", job=owner, key="!reference", where=where)
            return UNRESOLVED
        if len(chain) >= MAX_REFERENCE_DEPTH:
            self.report.error(
                f"{reference} nests references more than {MAX_REFERENCE_DEPTH} levels deep",
                job=owner,
                key="!reference",
                where=where,
            )
            return UNRESOLVED
        target: Any = self.doc
        for depth, part in enumerate(reference.path):
            if not isinstance(target, dict) or part not in target:
                found = "" if depth == 0 else f" in [{', '.join(reference.path[:depth])}]"
                self.report.error(f"{reference}: {part!r} not found{found}", job=owner, key="!reference", where=where)
                return UNRESOLVED
            target = target[part]
        return self.walk(target, owner, (*chain, reference.path))


def resolve_references(doc: YamlMap, report: Report) -> YamlMap:
    resolver = _References(doc, report)
    result = YamlMap.like(doc)
    try:
        for key, value in doc.items():
            job_like = is_job_like(key, value)
            resolved = resolver.walk(value, key if job_like else None, (), keep_unresolved=job_like)
            if resolved is not UNRESOLVED:
                result[key] = resolved
    except _TooBig:
        report.error(f"!reference and extends expand the config to more than {MAX_RESOLVED_NODES} nodes")
        raise ConfigError(report.errors) from None
    return result
