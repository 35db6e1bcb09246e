"""Linking the jobs of one run: needs and dependencies matched to the jobs it really has.

Rules and only/except run first, so a `needs` entry can name a job that exists in the
config but not in this run; GitLab makes that an error unless the need is optional.
Cycles can only form through `needs` (implicit stage edges always point to earlier
stages, and needs may not point to a later one), so they are looked for there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipelines.config.keywords import NeedRef
from pipelines.config.report import Report
from pipelines.config.spec import JobSpec, Need, PipelineSpec
from pipelines.config.yaml_loader import Where

MAX_CYCLES_REPORTED = 10
MAX_CYCLE_SHOWN = 20  # jobs of one cycle named in its message


@dataclass
class Planned:
    """A job of this run whose needs/dependencies are still the names the config wrote."""

    spec: JobSpec
    base: str  # the config's job name (instances of a parallel job share it)
    need_refs: list[NeedRef] | None
    dependency_names: list[str] | None
    needs_where: Where | None
    dependencies_where: Where | None


class _Linker:
    def __init__(
        self, planned: list[Planned], stages: list[str], defined: set[str], broken: set[str], report: Report
    ) -> None:
        self.planned = planned
        self.report = report
        self.stage_index = {stage: index for index, stage in enumerate(stages)}
        self.defined = defined
        self.broken = broken
        self.by_base: dict[str, list[JobSpec]] = {}
        self.by_name: dict[str, JobSpec] = {}
        for item in planned:
            self.by_base.setdefault(item.base, []).append(item.spec)
            self.by_name[item.spec.name] = item.spec

    def targets(self, name: str) -> list[JobSpec] | str:
        """The jobs `name` stands for, or "left out" / "broken" / "unknown"."""
        if name in self.by_base:
            return self.by_base[name]
        if name in self.by_name:
            return [self.by_name[name]]
        if name in self.broken:
            return "broken"
        return "left out" if name in self.defined else "unknown"

    def link_needs(self, item: Planned) -> None:
        job = item.spec
        if item.need_refs is None:
            job.needs = None
            return
        needs: list[Need] = []
        seen: set[str] = set()
        for ref in item.need_refs:
            where = ref.where or item.needs_where
            found = self.targets(ref.job)
            if found == "broken":
                continue  # its own errors are reported; one more here would only be noise
            if found == "unknown":
                hidden = (
                    " (names starting with '.' are hidden templates, never jobs)" if ref.job.startswith(".") else ""
                )
                self.report.error(f"needs unknown job {ref.job!r}{hidden}", job=job.name, key="needs", where=where)
                continue
            if found == "left out":
                if not ref.optional:
                    self.report.error(
                        f"needs {ref.job!r}, which rules/only/except left out of this pipeline "
                        "(add optional: true if that is expected)",
                        job=job.name,
                        key="needs",
                        where=where,
                    )
                continue
            assert isinstance(found, list)
            if ref.matrix is not None:
                found = [target for target in found if (target.parallel or {}).get("matrix") in ref.matrix]
                if not found:
                    if not ref.optional:
                        self.report.error(
                            f"needs {ref.job!r} with parallel:matrix values that none of its jobs has",
                            job=job.name,
                            key="needs",
                            where=where,
                        )
                    continue
            for target in found:
                if self.stage_index[target.stage] > self.stage_index[job.stage]:
                    self.report.error(
                        f"needs {target.name!r} of the later stage {target.stage!r}; a job can only need "
                        "jobs of its own or earlier stages",
                        job=job.name,
                        key="needs",
                        where=where,
                    )
                elif target.name not in seen:
                    seen.add(target.name)
                    needs.append(Need(job=target.name, optional=ref.optional, artifacts=ref.artifacts))
        job.needs = needs

    def link_dependencies(self, item: Planned) -> None:
        job = item.spec
        if item.dependency_names is None:
            job.dependencies = None
            return
        where = item.dependencies_where
        dependencies: list[str] = []
        needed = {need.job for need in job.needs} if job.needs is not None else None
        for name in item.dependency_names:
            found = self.targets(name)
            if found == "broken":
                continue
            if found == "unknown":
                self.report.error(f"unknown job {name!r}", job=job.name, key="dependencies", where=where)
                continue
            if found == "left out":
                self.report.warn(
                    f"{name!r} is not in this pipeline (rules/only/except left it out); its artifacts are skipped",
                    job=job.name,
                    key="dependencies",
                    where=where,
                )
                continue
            assert isinstance(found, list)
            for target in found:
                if needed is not None and target.name not in needed:
                    self.report.error(
                        f"{target.name!r} must also be listed in needs", job=job.name, key="dependencies", where=where
                    )
                elif needed is None and self.stage_index[target.stage] >= self.stage_index[job.stage]:
                    self.report.error(
                        f"{target.name!r} is not in an earlier stage", job=job.name, key="dependencies", where=where
                    )
                elif target.name not in dependencies:
                    dependencies.append(target.name)
        job.dependencies = dependencies

    def find_cycles(self) -> None:
        graph = {item.spec.name: [need.job for need in item.spec.needs or []] for item in self.planned}
        where = {item.spec.name: item.needs_where for item in self.planned}
        for cycle in _cycles(graph):
            self.report.error(
                f"needs form a cycle: {_cycle_text(cycle)}", job=cycle[0], key="needs", where=where[cycle[0]]
            )


def _cycle_text(cycle: list[str]) -> str:
    """The cycle's path (first == last), its middle left out past MAX_CYCLE_SHOWN jobs: a
    cycle through thousands of jobs still makes a message a person can read."""
    if len(cycle) <= MAX_CYCLE_SHOWN + 1:
        return " -> ".join(cycle)
    jobs = len(cycle) - 1
    head, tail = cycle[: MAX_CYCLE_SHOWN // 2], cycle[-(MAX_CYCLE_SHOWN // 2) :]
    return f"{' -> '.join(head)} -> ... ({jobs} jobs) ... -> {' -> '.join(tail)}"


def _cycles(graph: dict[str, list[str]]) -> Iterable[list[str]]:
    """One cycle per back edge of an iterative depth-first search (a few at most)."""
    done: set[str] = set()
    reported = 0
    for start in graph:
        if start in done:
            continue
        path = [start]
        on_path = {start}
        stack = [iter(graph[start])]
        while stack:
            target = next(stack[-1], None)
            if target is None:
                stack.pop()
                node = path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            if target in on_path:
                yield [*path[path.index(target) :], target]
                reported += 1
                if reported >= MAX_CYCLES_REPORTED:
                    return
                continue
            if target in done or target not in graph:
                continue
            path.append(target)
            on_path.add(target)
            stack.append(iter(graph[target]))


def link_jobs(
    planned: list[Planned], *, stages: list[str], defined: set[str], broken: set[str], report: Report
) -> None:
    """Set each JobSpec's needs and dependencies to concrete job names; report what is wrong.

    `defined` holds every visible job name of the config (a name in it but not planned was
    left out by rules); `broken` the jobs whose own errors kept them out.
    """
    linker = _Linker(planned, stages, defined, broken, report)
    for item in planned:
        linker.link_needs(item)
    for item in planned:
        linker.link_dependencies(item)
    linker.find_cycles()


def effective_edges(spec: PipelineSpec) -> dict[str, list[str]]:
    """For each job, the jobs it waits for: its needs, or else every job of the earlier stages."""
    stage_index = {stage: index for index, stage in enumerate(spec.stages)}
    by_stage: dict[int, list[str]] = {}
    for job in spec.jobs:
        by_stage.setdefault(stage_index[job.stage], []).append(job.name)
    edges: dict[str, list[str]] = {}
    earlier_cache: dict[int, list[str]] = {}
    for job in spec.jobs:
        if job.needs is not None:
            edges[job.name] = [need.job for need in job.needs]
            continue
        index = stage_index[job.stage]
        if index not in earlier_cache:
            earlier_cache[index] = [name for i in sorted(by_stage) if i < index for name in by_stage[i]]
        edges[job.name] = list(earlier_cache[index])
    return edges
