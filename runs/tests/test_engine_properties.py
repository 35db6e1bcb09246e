"""Property-based tests of the engine: random DAGs, random outcomes, checked against an
independent reference of the rules (written here again, not imported from runs.dag)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.config.spec import JobSpec
from pipelines.models import Pipeline, Repository
from runs.models import Job, RunStatus
from runs.services import job_finish, job_play, job_start, run_promote
from runs.tests.factories import job, spec

TERMINAL = {"SUCCESS", "FAILURE", "CANCELLED", "SKIPPED"}
STAGES = ["s0", "s1", "s2", "s3"]
_repos = itertools.count(1)


@dataclass(frozen=True)
class Shape:
    """What the test knows about a job, independently of the engine's tables."""

    name: str
    stage: int
    needs: tuple[str, ...] | None
    when: str
    blocking: bool
    allow_failure: bool
    exit_codes: tuple[int, ...]

    @property
    def optional_manual(self) -> bool:
        return self.when == "manual" and not self.blocking

    def upstream(self, shapes: dict[str, Shape]) -> list[str]:
        if self.needs is not None:
            return list(self.needs)
        return [s.name for s in shapes.values() if s.stage < self.stage]

    def failed_unallowed(self, status: str, exit_code: int | None) -> bool:
        if status != "FAILURE":
            return False
        if self.exit_codes:
            return exit_code not in self.exit_codes
        # Optional manual jobs are allowed to fail (GitLab's default for `when: manual`).
        return not (self.allow_failure or self.optional_manual)


@st.composite
def pipelines(draw) -> list[Shape]:
    n_stages = draw(st.integers(1, len(STAGES)))
    stages = sorted(draw(st.lists(st.integers(0, n_stages - 1), min_size=1, max_size=8)))
    shapes: list[Shape] = []
    for i, stage in enumerate(stages):
        # Jobs earlier in this list are in an earlier or the same stage: needs among them
        # can never form a cycle.
        earlier = [s.name for s in shapes]
        needs = None
        if draw(st.integers(0, 2)):
            needs = tuple(draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3))) if earlier else ()
        when = draw(
            st.sampled_from(
                ["on_success", "on_success", "on_success", "on_failure", "on_failure", "always", "manual", "delayed"]
            )
        )
        shapes.append(
            Shape(
                name=f"j{i}",
                stage=stage,
                needs=needs,
                when=when,
                blocking=when == "manual" and draw(st.booleans()),
                allow_failure=draw(st.booleans()) and draw(st.booleans()),
                exit_codes=draw(st.sampled_from([(), (), (3,)])),
            )
        )
    return shapes


def _job_spec(shape: Shape, retry_max: int) -> JobSpec:
    return job(
        shape.name,
        STAGES[shape.stage],
        needs=None if shape.needs is None else list(shape.needs),
        when=shape.when,
        start_in_s=30 if shape.when == "delayed" else None,
        blocking=shape.blocking,
        allow_failure=shape.allow_failure,
        allow_failure_exit_codes=list(shape.exit_codes),
        retry_max=retry_max,
    )


def _snapshot(run) -> dict[str, Job]:
    return {j.name: j for j in Job.objects.filter(run=run, retried=False)}


def _settled_for(shape: Shape, shapes: dict[str, Shape], snap: dict[str, Job]) -> bool:
    """The reference readiness rule: needs wait for terminal jobs; stage ordering also
    accepts an optional manual job nobody started (it counts as skipped)."""
    for name in shape.upstream(shapes):
        status = snap[name].status
        if status in TERMINAL:
            continue
        if shape.needs is None and status == "MANUAL" and shapes[name].optional_manual:
            continue
        return False
    return True


def _reference_decision(shape: Shape, shapes: dict[str, Shape], snap: dict[str, Job]) -> str:
    upstream = [snap[n] for n in shape.upstream(shapes)]
    failed = any(shapes[u.name].failed_unallowed(u.status, u.exit_code) for u in upstream)
    cancelled = any(u.status == "CANCELLED" for u in upstream)
    skipped = shape.needs is not None and any(u.status == "SKIPPED" for u in upstream)
    if shape.when == "always":
        return "QUEUED"
    if shape.when == "on_failure":
        return "QUEUED" if failed else "SKIPPED"
    if failed or cancelled or skipped:
        return "SKIPPED"
    return {"manual": "MANUAL", "delayed": "SCHEDULED"}.get(shape.when, "QUEUED")


def _reference_run_status(shapes: dict[str, Shape], snap: dict[str, Job]) -> str:
    jobs = list(snap.values())
    if any(j.status in ("QUEUED", "RUNNING", "SCHEDULED") for j in jobs):
        return "RUNNING"
    if any(j.status == "MANUAL" and shapes[j.name].blocking for j in jobs):
        return "BLOCKED"
    if any(shapes[j.name].failed_unallowed(j.status, j.exit_code) for j in jobs):
        return "FAILURE"
    if any(j.status == "CANCELLED" for j in jobs):
        return "CANCELLED"
    return "SUCCESS"


def _check_new_decisions(shapes, before: dict[str, str], snap: dict[str, Job]) -> None:
    """Every job that left PENDING since the last snapshot did so by the reference rules."""
    for name, row in snap.items():
        if before.get(name, "PENDING") != "PENDING" or row.status == "PENDING":
            continue
        shape = shapes[name]
        if row.status == "SKIPPED" and "was not run (manual)" in row.status_reason:
            assert any(snap[n].status == "MANUAL" for n in shape.needs or ()), (name, row.status_reason)
            continue
        assert _settled_for(shape, shapes, snap), f"{name} left PENDING before its upstream was done"
        assert row.status == _reference_decision(shape, shapes, snap), (name, row.status, row.status_reason)
        if row.status == "SKIPPED":
            assert row.status_reason


def _tainted(shapes: dict[str, Shape], final: dict[str, Job], excused: dict[str, frozenset[str]]) -> set[str]:
    """Jobs that must not have run: on_success-like jobs downstream of an unallowed failure
    through on_success-like jobs only. `excused`: for a job, the upstream jobs a person reopened
    after it was decided; what they did does not count against it."""
    tainted: set[str] = set()
    changed = True
    while changed:
        changed = False
        for shape in shapes.values():
            if shape.name in tainted or shape.when not in ("on_success", "manual", "delayed"):
                continue
            for up in shape.upstream(shapes):
                if up in excused[shape.name]:
                    continue
                row = final[up]
                if up in tainted or shapes[up].failed_unallowed(row.status, row.exit_code):
                    tainted.add(shape.name)
                    changed = True
                    break
    return tainted


@pytest.mark.django_db
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(shape_list=pipelines(), data=st.data())
def test_random_pipelines_obey_the_rules(shape_list: list[Shape], data: st.DataObject) -> None:
    from runs.services import run_create

    shapes = {s.name: s for s in shape_list}
    retry = {s.name: data.draw(st.sampled_from([0, 0, 1]), label=f"retry {s.name}") for s in shape_list}
    repository = Repository.objects.create(name=f"prop-{next(_repos)}", clone_url="/nonexistent")
    pipeline = Pipeline.objects.create(repository=repository, name="p")
    run = run_create(
        pipeline=pipeline,
        spec=spec(*[_job_spec(s, retry[s.name]) for s in shape_list], stages=STAGES),
        commit_sha="abc",
        branch="main",
        trigger="PUSH",
    )

    before: dict[str, str] = {}
    # The snapshot (its number) in which each job was first seen out of PENDING (decided), and in
    # which each job was reopened by a person: played, or to be decided again after a play
    # (SKIPPED -> PENDING).
    decided_in: dict[str, int] = {}
    reopened_in: dict[str, int] = {}
    for step in range(200):
        snap = _snapshot(run)
        _check_new_decisions(shapes, before, snap)
        for name, row in snap.items():
            if row.status != "PENDING":
                decided_in.setdefault(name, step)
            if before.get(name) == "SKIPPED" and row.status != "SKIPPED":
                reopened_in[name] = step
        before = {name: row.status for name, row in snap.items()}
        queued = sorted(n for n, r in snap.items() if r.status == "QUEUED")
        running = sorted(n for n, r in snap.items() if r.status == "RUNNING")
        manual = sorted(n for n, r in snap.items() if r.status == "MANUAL")
        scheduled = [r for r in snap.values() if r.status == "SCHEDULED"]
        actions = [
            action
            for action, possible in (("start", queued), ("finish", running), ("play", manual), ("tick", scheduled))
            if possible
        ]
        if not queued and not running and not scheduled:
            actions.append("stop")  # leave manual jobs unplayed
        action = data.draw(st.sampled_from(actions), label="action")
        if action == "stop":
            break
        if action == "play":
            played = data.draw(st.sampled_from(manual), label="play")
            job_play(job=snap[played])
            reopened_in[played] = step + 1  # seen in the next snapshot
        elif action == "tick":
            Job.objects.filter(pk__in=[r.pk for r in scheduled]).update(
                scheduled_at=timezone.now() - timedelta(seconds=1)
            )
            run_promote(run_id=run.pk)
        elif action == "start":
            name = data.draw(st.sampled_from(queued), label="start")
            shape = shapes[name]
            # A job decided (queued, or scheduled and due since) stays decided, as in GitLab: jobs a
            # person reopened after that (a played manual job, the jobs that needed it) do not hold
            # it back, and their failures do not stop it.
            excused = {
                n: frozenset(u for u, when in reopened_in.items() if when > decided_in.get(n, step + 1)) for n in shapes
            }
            reopened = excused[name]
            # Nothing starts before every job it waits for is done.
            assert _settled_for(shape, shapes, snap) or all(
                snap[u].status in TERMINAL
                or u in reopened
                # A stage-ordered job queued while an optional manual job upstream was untouched
                # may start after somebody played that job.
                or (shape.needs is None and shapes[u].optional_manual)
                for u in shape.upstream(shapes)
            ), f"{name} started before its upstream was done"
            assert job_start(job=snap[name], runner=None, lease_seconds=60)
            # Judged on what was known as it started: a job a played manual job's dependents
            # fail after it ran had nothing to stop it.
            assert name not in _tainted(shapes, snap, excused), f"{name} started downstream of an unallowed failure"
        else:
            name = data.draw(st.sampled_from(running), label="finish")
            outcome = data.draw(st.sampled_from(["SUCCESS", "SUCCESS", "FAILURE", "FAILURE", "CANCELLED"]))
            exit_code = data.draw(st.sampled_from([1, 3])) if outcome == "FAILURE" else 0
            assert job_finish(job_id=snap[name].pk, status=outcome, exit_code=exit_code)
    else:
        pytest.fail("the run did not settle in 200 steps")

    final = _snapshot(run)
    run.refresh_from_db()
    expected = _reference_run_status(shapes, final)
    assert run.status == expected
    assert not any(r.status in ("QUEUED", "RUNNING", "SCHEDULED") for r in final.values())
    for name, row in final.items():
        if row.status == "PENDING":
            assert expected == "BLOCKED", f"{name} was left PENDING in a {expected} run"
        elif row.status == "MANUAL":
            assert shapes[name].optional_manual or expected == "BLOCKED"
        else:
            assert row.status in TERMINAL
        if row.status == "SKIPPED":
            assert row.status_reason, f"{name} was skipped without a reason"
    if expected in RunStatus.TERMINAL:
        assert run.finished_at is not None and run.duration_s is not None
    else:
        assert run.finished_at is None
