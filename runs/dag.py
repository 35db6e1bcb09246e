"""The DAG engine's rules, as pure functions over in-memory job states (no database).

`runs.services` loads a run's jobs and edges, hands them to `plan_promotion`, applies the
returned transitions with guarded updates, and derives the run's status with
`derive_run_status`. Keeping the rules here makes them testable without a database and
keeps the one place where they are decided small.

The rules (GitLab CI's, see ARCHITECTURE.md "Semantics to match"):

- A PENDING job with `needs` (uses_needs) waits until every needed job is terminal; one
  without `needs` waits until every job of all earlier stages is *settled*: terminal, or an
  optional (non-blocking) manual job nobody started, which counts as skipped.
- Then its `when` decides. `always` runs. `on_failure` runs iff something it waited for
  failed without being allowed to. `on_success`, `manual` and `delayed` run (become QUEUED,
  MANUAL, SCHEDULED) iff nothing it waited for failed unallowed or was cancelled, and, for
  `needs` only, no needed job was skipped: stage ordering treats skipped jobs as success,
  `needs` does not. Otherwise the job is SKIPPED with the reason.
- A blocking manual job waiting for a person is not settled: everything after it waits,
  and the run is BLOCKED while nothing else can move.
- An optional manual job nobody started is settled for stage ordering but unmet for
  `needs`: a job that needs it waits until it is played, or until the run has nothing else
  to do, when it becomes SKIPPED ("needed job 'x' was not run"). Playing the manual job
  later resets such skipped jobs (see runs.services.job_play).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from runs.models import JobStatus, RunStatus, When

# Statuses a job can be left in while the run still counts as finished.
_RUN_MOVING = JobStatus.ACTIVE | {JobStatus.SCHEDULED}


@dataclass(slots=True)
class Node:
    """One job as the engine sees it."""

    id: Hashable
    name: str
    stage_index: int
    status: str
    when: str = When.ON_SUCCESS
    uses_needs: bool = False
    needs: tuple[Hashable, ...] = ()
    allow_failure: bool = False
    allow_failure_exit_codes: tuple[int, ...] = ()
    blocking: bool = False
    exit_code: int | None = None
    start_in_s: int | None = None
    scheduled_at: datetime | None = None

    @property
    def failed_unallowed(self) -> bool:
        return self.status == JobStatus.FAILURE and not failure_allowed(
            allow_failure=self.allow_failure, exit_codes=self.allow_failure_exit_codes, exit_code=self.exit_code
        )

    @property
    def is_optional_manual(self) -> bool:
        """An optional manual job nobody has started (yet)."""
        return self.status == JobStatus.MANUAL and not self.blocking

    @property
    def is_blocking_manual(self) -> bool:
        return self.status == JobStatus.MANUAL and self.blocking


@dataclass(frozen=True, slots=True)
class Transition:
    job_id: Hashable
    old: str
    new: str
    reason: str = ""
    scheduled_at: datetime | None = None


def failure_allowed(*, allow_failure: bool, exit_codes: Iterable[int], exit_code: int | None) -> bool:
    """`allow_failure: {exit_codes: [...]}` allows only those codes; otherwise the boolean decides."""
    codes = tuple(exit_codes)
    if codes:
        return exit_code is not None and exit_code in codes
    return allow_failure


@dataclass(slots=True)
class _Upstream:
    settled: bool = True
    failed: str | None = None
    cancelled: str | None = None
    skipped: str | None = None  # `needs` only


@dataclass(slots=True)
class _StageSummary:
    unsettled: bool = False
    failed: str | None = None
    cancelled: str | None = None


def _stage_prefixes(nodes: Iterable[Node]) -> dict[int, _StageSummary]:
    """For each stage index s: the summary of all jobs in stages < s (what stage ordering waits for)."""
    per_stage: dict[int, _StageSummary] = {}
    for node in sorted(nodes, key=lambda n: (n.stage_index, n.name)):
        summary = per_stage.setdefault(node.stage_index, _StageSummary())
        if not (node.status in JobStatus.TERMINAL or node.is_optional_manual):
            summary.unsettled = True
        if node.failed_unallowed and summary.failed is None:
            summary.failed = node.name
        if node.status == JobStatus.CANCELLED and summary.cancelled is None:
            summary.cancelled = node.name
    prefixes: dict[int, _StageSummary] = {}
    running = _StageSummary()
    for index in sorted(per_stage):
        prefixes[index] = _StageSummary(running.unsettled, running.failed, running.cancelled)
        stage = per_stage[index]
        running.unsettled = running.unsettled or stage.unsettled
        running.failed = running.failed or stage.failed
        running.cancelled = running.cancelled or stage.cancelled
    return prefixes


def _needs_upstream(node: Node, nodes: dict[Hashable, Node]) -> _Upstream:
    up = _Upstream()
    for need_id in node.needs:
        needed = nodes[need_id]
        if needed.status not in JobStatus.TERMINAL:
            up.settled = False
            return up
        if needed.failed_unallowed and up.failed is None:
            up.failed = needed.name
        elif needed.status == JobStatus.CANCELLED and up.cancelled is None:
            up.cancelled = needed.name
        elif needed.status == JobStatus.SKIPPED and up.skipped is None:
            up.skipped = needed.name
    return up


def decide(node: Node, up: _Upstream) -> tuple[str, str] | None:
    """The new (status, reason) of a PENDING job whose upstream is known, or None to keep waiting."""
    if not up.settled:
        return None
    if node.when == When.ALWAYS:
        return JobStatus.QUEUED, ""
    if node.when == When.ON_FAILURE:
        if up.failed:
            return JobStatus.QUEUED, ""
        return JobStatus.SKIPPED, "when: on_failure, and no upstream job failed"
    if up.failed:
        return JobStatus.SKIPPED, f"upstream job '{up.failed}' failed"
    if up.cancelled:
        return JobStatus.SKIPPED, f"upstream job '{up.cancelled}' was cancelled"
    if up.skipped:
        return JobStatus.SKIPPED, f"needed job '{up.skipped}' was skipped"
    if node.when == When.MANUAL:
        return JobStatus.MANUAL, ""
    if node.when == When.DELAYED and node.start_in_s:
        return JobStatus.SCHEDULED, ""
    return JobStatus.QUEUED, ""


def _is_stalled(nodes: Iterable[Node]) -> bool:
    """Nothing can move any more except by a person playing an optional manual job."""
    pending = False
    for node in nodes:
        if node.status in _RUN_MOVING or node.is_blocking_manual:
            return False
        pending = pending or node.status == JobStatus.PENDING
    return pending


@dataclass(slots=True)
class _Planner:
    nodes: dict[Hashable, Node]
    now: datetime
    transitions: list[Transition] = field(default_factory=list)

    def move(self, node: Node, new: str, reason: str = "") -> None:
        scheduled_at = None
        if new == JobStatus.SCHEDULED:
            scheduled_at = self.now + timedelta(seconds=node.start_in_s or 0)
            node.scheduled_at = scheduled_at
        self.transitions.append(Transition(node.id, node.status, new, reason, scheduled_at))
        node.status = new

    def queue_due_scheduled(self) -> None:
        for node in self.nodes.values():
            if node.status == JobStatus.SCHEDULED and node.scheduled_at is not None and node.scheduled_at <= self.now:
                self.move(node, JobStatus.QUEUED)

    def one_pass(self) -> bool:
        """Decide every PENDING job against a snapshot; True if any moved."""
        prefixes = _stage_prefixes(self.nodes.values())
        decisions: list[tuple[Node, str, str]] = []
        for node in self.nodes.values():
            if node.status != JobStatus.PENDING:
                continue
            if node.uses_needs:
                up = _needs_upstream(node, self.nodes)
            else:
                prefix = prefixes[node.stage_index]
                up = _Upstream(settled=not prefix.unsettled, failed=prefix.failed, cancelled=prefix.cancelled)
            decision = decide(node, up)
            if decision is not None:
                decisions.append((node, *decision))
        for node, new, reason in decisions:
            self.move(node, new, reason)
        return bool(decisions)

    def skip_unmet_manual_needs(self) -> bool:
        moved = False
        for node in self.nodes.values():
            if node.status != JobStatus.PENDING or not node.uses_needs:
                continue
            manual = next((self.nodes[n] for n in node.needs if self.nodes[n].is_optional_manual), None)
            if manual is not None:
                self.move(node, JobStatus.SKIPPED, f"needed job '{manual.name}' was not run (manual)")
                moved = True
        return moved


def plan_promotion(nodes: dict[Hashable, Node], *, now: datetime) -> list[Transition]:
    """Every transition the run's jobs are due, in order; `nodes` are updated in place.

    Each job moves at most once (out of PENDING, or SCHEDULED -> QUEUED when due), so the
    caller can apply the transitions as guarded updates keyed on the old status.
    """
    planner = _Planner(nodes=nodes, now=now)
    planner.queue_due_scheduled()
    while True:
        if planner.one_pass():
            continue
        if _is_stalled(nodes.values()) and planner.skip_unmet_manual_needs():
            continue
        break
    return planner.transitions


def derive_run_status(*, current: str, nodes: Iterable[Node], started: bool) -> str:
    """The run's status from its jobs. One rule, used everywhere:

    CANCELLED stays CANCELLED (a person cancelled the run). Anything queued, running or
    scheduled: RUNNING (PENDING if no job has ever been queued). Otherwise a blocking manual
    job waiting for a person: BLOCKED. Otherwise (every job terminal, or an optional manual
    job nobody started) the run is finished: FAILURE if a job failed without being allowed
    to, else CANCELLED if a job was cancelled (its dependents did not run, so SUCCESS would
    be a lie), else SUCCESS.
    """
    if current == RunStatus.CANCELLED:
        return RunStatus.CANCELLED
    nodes = list(nodes)
    moving = RunStatus.RUNNING if started else RunStatus.PENDING
    if any(n.status in _RUN_MOVING for n in nodes):
        return moving
    if any(n.is_blocking_manual for n in nodes):
        return RunStatus.BLOCKED
    if any(n.status == JobStatus.PENDING for n in nodes):
        # Only reachable before promotion has run: promotion leaves no PENDING job behind
        # unless a blocking manual job holds it.
        return moving
    if any(n.failed_unallowed for n in nodes):
        return RunStatus.FAILURE
    if any(n.status == JobStatus.CANCELLED for n in nodes):
        return RunStatus.CANCELLED
    return RunStatus.SUCCESS


def skipped_descendants(nodes: dict[Hashable, Node], roots: Iterable[Hashable]) -> set[Hashable]:
    """SKIPPED jobs downstream of `roots` through SKIPPED jobs only: the jobs that may have been
    skipped because of the roots' outcome, and must be decided again when a root runs again."""
    dependents: dict[Hashable, list[Hashable]] = {}
    for node in nodes.values():
        for need in node.needs:
            dependents.setdefault(need, []).append(node.id)
    stage_ordered = [n for n in nodes.values() if not n.uses_needs]
    found: set[Hashable] = set()
    frontier = list(roots)
    while frontier:
        current = nodes[frontier.pop()]
        downstream = [nodes[d] for d in dependents.get(current.id, ())]
        downstream += [n for n in stage_ordered if n.stage_index > current.stage_index]
        for node in downstream:
            if node.status == JobStatus.SKIPPED and node.id not in found:
                found.add(node.id)
                frontier.append(node.id)
    return found


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A `needs` cycle as a list of names (first == last), or None.

    Iterative depth-first search: a `needs` chain thousands of jobs deep must not hit
    Python's recursion limit."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(edges, white)
    for root in edges:
        if color[root] != white:
            continue
        color[root] = grey
        path = [root]
        pending = [iter(edges.get(root, ()))]
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                pending.pop()
                color[path.pop()] = black
                continue
            state = color.get(nxt, white)
            if state == grey:
                return [*path[path.index(nxt) :], nxt]
            if state == white:
                color[nxt] = grey
                path.append(nxt)
                pending.append(iter(edges.get(nxt, ())))
    return None
