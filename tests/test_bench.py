"""The benchmarks' own arithmetic, and the property the growth benchmark watches: the claim's
candidate scan reads the partial queue index and the same few pages however much finished
history the Job table holds. The benchmarks themselves run with `make bench`, not here."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from bench import claims, e2e, growth
from bench.logs import mismatched
from pipelines.models import Pipeline, Repository
from runs.models import Job, JobDependency, JobStatus, PipelineRun, RunStatus, Step, StepStatus


def test_mismatched_counts_wrong_missing_and_extra_bytes():
    expected = b"abcdef" * 20_000

    assert mismatched(expected, expected) == 0
    assert mismatched(expected[:-5], expected) == 5
    assert mismatched(expected + b"xy", expected) == 2
    wrong = bytearray(expected)
    wrong[3], wrong[70_000] = ord("X"), ord("Y")
    assert mismatched(bytes(wrong), expected) == 2


@pytest.mark.django_db(transaction=True)
def test_the_claim_scan_reads_the_queue_index_and_no_more_pages_with_finished_history():
    claims.seed_queue(50)
    before = growth.candidate_plan()
    pipeline = growth.history_pipeline()

    growth.add_history(pipeline, jobs=20_000)
    growth.vacuum()
    after = growth.candidate_plan()

    assert Job.objects.filter(run__pipeline=pipeline, status=JobStatus.SUCCESS).count() == 20_000
    assert before["scan"] == after["scan"] == "job_queue_idx"
    # A page or two of slack: a concurrent test session's snapshot can keep VACUUM from
    # clearing a dead entry. A scan over the finished rows would read hundreds of pages.
    assert after["buffers"] <= before["buffers"] + 2
    growth.drop_history(pipeline)
    assert not Job.objects.filter(run__pipeline=pipeline).exists()


@pytest.mark.django_db
def test_e2e_figures_come_from_the_stored_timestamps():
    repository = Repository.objects.create(name="bench-figures", clone_url="/nonexistent")
    pipeline = Pipeline.objects.create(repository=repository, name="default")
    t0 = timezone.now() - timedelta(minutes=5)

    def ms(n: float):
        return t0 + timedelta(milliseconds=n)

    run = PipelineRun.objects.create(
        pipeline=pipeline, number=1, branch="bench-0001", status=RunStatus.SUCCESS, started_at=t0, finished_at=ms(400)
    )
    build = Job.objects.create(
        run=run, name="build", stage="build", stage_index=0, status=JobStatus.SUCCESS,
        queued_at=ms(0), started_at=ms(10), finished_at=ms(170),
    )  # fmt: skip
    test = Job.objects.create(
        run=run, name="test", stage="test", stage_index=1, status=JobStatus.SUCCESS,
        queued_at=ms(175), started_at=ms(190), finished_at=ms(300),
    )  # fmt: skip
    JobDependency.objects.create(job=test, depends_on=build)
    Step.objects.create(
        job=build, index=0, name="a", command="true", status=StepStatus.SUCCESS, started_at=ms(50), finished_at=ms(100)
    )
    Step.objects.create(
        job=build, index=1, name="b", command="true", status=StepStatus.SUCCESS, started_at=ms(110), finished_at=ms(160)
    )
    Step.objects.create(
        job=test, index=0, name="c", command="true", status=StepStatus.SUCCESS, started_at=ms(200), finished_at=ms(290)
    )

    figures = e2e.measure(pipeline, ["bench-0001"])

    # build: 160 ms claimed -> finished, 100 ms in steps; test: 110 ms, 90 ms in its step.
    assert (figures["runs"], figures["jobs"], figures["failed"]) == (1, 2, 0)
    assert sorted([figures["overhead_ms_p50"], figures["overhead_ms_p99"]]) == [20.0, 60.0]
    assert figures["scheduling_ms_p50"] == figures["scheduling_ms_p99"] == 20.0  # test claimed 20 ms after build ended
    assert sorted([figures["dispatch_ms_p50"], figures["dispatch_ms_p99"]]) == [10.0, 15.0]
    assert figures["last_finished_at"] == ms(400)


def _half(*, rate: int, seconds: float, double: int, latency_s: float) -> dict:
    figures = {"jobs": 10, "claimed": 10, "double_claims": double, "claims_per_s": rate}
    return {**figures, "_elapsed": seconds, "_latencies": [latency_s] * 10}


def test_a_claim_sides_figures_are_over_both_its_halves_and_each_halfs_rate_is_kept():
    halves = [
        _half(rate=10, seconds=1.0, double=0, latency_s=0.001),
        _half(rate=5, seconds=2.0, double=1, latency_s=0.003),
    ]

    side = claims._combined(halves)

    assert side["claims_per_s"] == 7  # 20 claims in 3 s, not the mean of the two rates
    assert side["rounds_per_s"] == [10, 5]
    assert (side["jobs"], side["claimed"], side["double_claims"]) == (20, 20, 1)
    assert (side["mean_ms"], side["p99_ms"]) == (2.0, 3.0)
