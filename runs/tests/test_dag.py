"""The engine's pure rules: the run status derivation, cycles, skipped descendants."""

from __future__ import annotations

import pytest

from runs.dag import Node, derive_run_status, find_cycle, skipped_descendants
from runs.models import JobStatus, RunStatus


def node(name: str, status: str, stage: int = 0, **kw) -> Node:
    return Node(id=name, name=name, stage_index=stage, status=status, **kw)


@pytest.mark.parametrize(
    ("current", "nodes", "started", "expected"),
    [
        (RunStatus.PENDING, [node("a", JobStatus.SCHEDULED)], False, RunStatus.PENDING),
        (RunStatus.RUNNING, [node("a", JobStatus.QUEUED)], True, RunStatus.RUNNING),
        (
            RunStatus.RUNNING,
            [node("a", JobStatus.RUNNING), node("b", JobStatus.MANUAL, blocking=True)],
            True,
            RunStatus.RUNNING,
        ),
        (
            RunStatus.RUNNING,
            [node("a", JobStatus.SUCCESS), node("b", JobStatus.MANUAL, blocking=True)],
            True,
            RunStatus.BLOCKED,
        ),
        (RunStatus.RUNNING, [node("a", JobStatus.SUCCESS), node("b", JobStatus.MANUAL)], True, RunStatus.SUCCESS),
        (RunStatus.RUNNING, [node("a", JobStatus.FAILURE), node("b", JobStatus.SKIPPED)], True, RunStatus.FAILURE),
        (RunStatus.RUNNING, [node("a", JobStatus.FAILURE, allow_failure=True)], True, RunStatus.SUCCESS),
        (
            RunStatus.RUNNING,
            [node("a", JobStatus.FAILURE, allow_failure=True, allow_failure_exit_codes=(3,), exit_code=1)],
            True,
            RunStatus.FAILURE,
        ),
        (
            RunStatus.RUNNING,
            [node("a", JobStatus.FAILURE, allow_failure_exit_codes=(3,), exit_code=3)],
            True,
            RunStatus.SUCCESS,
        ),
        (RunStatus.RUNNING, [node("a", JobStatus.CANCELLED), node("b", JobStatus.SUCCESS)], True, RunStatus.CANCELLED),
        (RunStatus.RUNNING, [node("a", JobStatus.CANCELLED), node("b", JobStatus.FAILURE)], True, RunStatus.FAILURE),
        (RunStatus.CANCELLED, [node("a", JobStatus.QUEUED)], True, RunStatus.CANCELLED),
        (RunStatus.SUCCESS, [node("a", JobStatus.QUEUED)], True, RunStatus.RUNNING),
        (RunStatus.PENDING, [], False, RunStatus.SUCCESS),
    ],
)
def test_the_run_status_is_derived_from_its_jobs(current, nodes, started, expected) -> None:
    assert derive_run_status(current=current, nodes=nodes, started=started) == expected


def test_a_needs_cycle_is_found_and_named() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": [], "b": ["a"], "c": ["a", "b"]}) is None


def test_skipped_descendants_are_found_through_skipped_jobs_only() -> None:
    nodes = {
        n.id: n
        for n in [
            node("root", JobStatus.FAILURE, 0),
            node("needs_root", JobStatus.SKIPPED, 1, uses_needs=True, needs=("root",)),
            node("needs_that", JobStatus.SKIPPED, 1, uses_needs=True, needs=("needs_root",)),
            node("ran", JobStatus.SUCCESS, 1, uses_needs=True, needs=("root",)),
            node("after_ran", JobStatus.SKIPPED, 1, uses_needs=True, needs=("ran",)),
            node("later_stage", JobStatus.SKIPPED, 2),
            node("same_stage", JobStatus.SKIPPED, 0),
        ]
    }
    assert skipped_descendants(nodes, ["root"]) == {"needs_root", "needs_that", "later_stage"}
