"""Log ingest (logs.services.log_chunk_append): offsets, idempotency, masking, the size limit."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from logs.masking import MASK
from logs.models import JobLog, LogChunkKind, StepLog
from logs.selectors import log_chunks_from, log_end_offset, log_text
from logs.services import LogGap, log_chunk_append
from runners.models import Runner
from runners.services import JobNotHeld, RunnerAuthError, StepNotFound, step_log

from .conftest import make_running_job

pytestmark = pytest.mark.django_db


def chunks(step) -> list[tuple[int, int, str, str]]:
    return list(StepLog.objects.filter(step=step).order_by("offset").values_list("offset", "size", "kind", "content"))


# --- Offsets and idempotency.


def test_offsets_count_utf8_bytes_so_the_next_chunk_starts_after_the_last_byte(running):
    step = running.step

    assert log_chunk_append(step=step, offset=0, content="héllo ✓\n") == len("héllo ✓\n".encode())
    assert log_chunk_append(step=step, offset=11, content="next\n") == 16
    assert log_text(step=step) == "héllo ✓\nnext\n"
    assert log_end_offset(step=step) == 16


def test_a_resent_chunk_is_accepted_and_not_stored_twice(running):
    step = running.step
    log_chunk_append(step=step, offset=0, content="one\n")
    log_chunk_append(step=step, offset=4, content="two\n")

    assert log_chunk_append(step=step, offset=0, content="one\n") == 8

    assert chunks(step) == [(0, 4, "OUTPUT", "one\n"), (4, 4, "OUTPUT", "two\n")]


def test_a_gap_is_refused_with_the_offset_to_resend_from(running):
    log_chunk_append(step=running.step, offset=0, content="one\n")

    with pytest.raises(LogGap) as refused:
        log_chunk_append(step=running.step, offset=10, content="late\n")

    assert refused.value.expected == 4
    assert log_text(step=running.step) == "one\n"


def test_an_overlap_with_other_boundaries_is_refused_with_the_offset_to_resend_from(running):
    log_chunk_append(step=running.step, offset=0, content="one\n")

    with pytest.raises(LogGap) as refused:
        log_chunk_append(step=running.step, offset=0, content="one\ntwo\n")  # a retry that merged more output

    assert refused.value.expected == 4
    assert log_text(step=running.step) == "one\n"


def test_each_step_has_its_own_offsets(running):
    first, second = running.steps

    log_chunk_append(step=first, offset=0, content="first\n")

    assert log_chunk_append(step=second, offset=0, content="second\n") == 7
    with pytest.raises(LogGap):
        log_chunk_append(step=second, offset=6, content="x")


def test_an_empty_chunk_changes_nothing(running):
    assert log_chunk_append(step=running.step, offset=0, content="") == 0
    assert chunks(running.step) == []


# --- Masking at ingest (defence in depth: the runner masks first).


def test_masked_values_are_replaced_before_the_chunk_is_stored(running):
    log_chunk_append(step=running.step, offset=0, content="token is s3cr3t-value\n", masked=["s3cr3t-value"])

    assert log_text(step=running.step) == f"token is {MASK}\n"
    # The offsets stay those of the runner's stream: the next chunk starts after what it sent.
    assert log_end_offset(step=running.step) == len("token is s3cr3t-value\n")


def test_a_secret_split_across_two_chunks_is_masked_and_the_first_chunk_is_cut_before_it(running):
    secret = "s3cr3t-value"
    log_chunk_append(step=running.step, offset=0, content="token is s3cr3", masked=[secret])
    log_chunk_append(step=running.step, offset=14, content="t-value and more\n", masked=[secret])

    assert log_text(step=running.step) == f"token is {MASK} and more\n"
    assert secret[:5] not in log_text(step=running.step)
    assert log_end_offset(step=running.step) == len("token is s3cr3t-value and more\n")


def test_the_job_token_is_masked_when_the_chunk_comes_with_it(running):
    log_chunk_append(step=running.step, offset=0, content=f"CI_JOB_TOKEN={running.token}\n", masked=[running.token])

    assert running.token not in log_text(step=running.step)


# --- The per-job size limit.


@pytest.fixture
def small_limit(settings):
    settings.CONVEYOR_MAX_LOG_BYTES_PER_JOB = 1000
    settings.CONVEYOR_LOG_TAIL_BYTES = 300
    return settings


def append_lines(step, count: int, *, start: int = 0, offset: int = 0) -> int:
    for n in range(start, start + count):
        offset = log_chunk_append(step=step, offset=offset, content=f"line {n:04d} {'x' * 89}\n")  # 100 bytes
    return offset


def test_past_the_limit_a_log_keeps_its_head_and_its_last_bytes_with_a_truncation_notice(running, small_limit):
    end = append_lines(running.step, 30)  # 3000 bytes against a limit of 1000

    text = log_text(step=running.step)
    lines = text.splitlines()
    assert lines[:7] == [f"line {n:04d} {'x' * 89}" for n in range(7)]  # the head: up to limit - tail
    assert lines[-3:] == [f"line {n:04d} {'x' * 89}" for n in range(27, 30)]  # the last 300 bytes
    assert "line 0007" not in text and "line 0026" not in text
    notice = StepLog.objects.get(step=running.step, kind=LogChunkKind.TRUNCATION)
    assert "Log truncated" in notice.content and "2000 bytes" in notice.content
    assert (notice.offset, notice.size) == (700, 2000)
    # The runner's offsets go on unaffected.
    assert end == 3000 == log_end_offset(step=running.step)
    assert JobLog.objects.get(job=running.job).omitted_bytes == 2000


def test_a_truncated_log_still_accepts_resends_and_refuses_gaps(running, small_limit):
    end = append_lines(running.step, 30)

    assert log_chunk_append(step=running.step, offset=end - 100, content=f"line 0029 {'x' * 89}\n") == end
    with pytest.raises(LogGap) as refused:
        log_chunk_append(step=running.step, offset=end + 5, content="x")
    assert refused.value.expected == end


def test_the_limit_is_per_job_and_the_tail_moves_across_its_steps(running, small_limit):
    first, second = running.steps
    append_lines(first, 8)  # 800 bytes: the head (700) is full
    append_lines(second, 5, start=100)  # 500 more: the oldest tail chunks go, step by step

    assert log_text(step=first).count("\n") == 7 + 1  # the head, then the notice of what went
    assert "line 0007" not in log_text(step=first)
    assert "Log truncated" in log_text(step=first)
    kept = log_text(step=second)
    assert "Log truncated" in kept
    assert kept.endswith("".join(f"line {n:04d} {'x' * 89}\n" for n in range(102, 105)))
    # Both steps still end where their runner's stream ended.
    assert (log_end_offset(step=first), log_end_offset(step=second)) == (800, 500)


def test_below_the_limit_nothing_is_dropped(running, small_limit):
    append_lines(running.step, 9)

    assert not StepLog.objects.filter(kind=LogChunkKind.TRUNCATION).exists()
    assert len(log_text(step=running.step)) == 900


# --- Reading from an offset.


def test_reading_from_an_offset_inside_a_chunk_returns_exactly_the_bytes_after_it(running):
    log_chunk_append(step=running.step, offset=0, content="ab✓cd\n")  # ✓ is 3 bytes: 2..4

    assert [c["content"] for c in log_chunks_from(step_id=running.step.pk, offset=1)] == ["b✓cd\n"]
    assert [c["content"] for c in log_chunks_from(step_id=running.step.pk, offset=5)] == ["cd\n"]
    assert [c["content"] for c in log_chunks_from(step_id=running.step.pk, offset=3)] == ["cd\n"]  # inside ✓
    assert log_chunks_from(step_id=running.step.pk, offset=8) == []


# --- Masking across a long chunk (only the end of the previous chunk is read and cut).


def test_a_secret_split_after_a_long_chunk_of_non_ascii_text_cuts_that_chunk_just_before_the_secret(running):
    secret = "s3cr3t-value"
    head = "héllo ✓ wörld\n" * 200
    log_chunk_append(step=running.step, offset=0, content=f"{head}token is s3cr3", masked=[secret])
    first_size = len(f"{head}token is s3cr3".encode())

    log_chunk_append(step=running.step, offset=first_size, content="t-value and more\n", masked=[secret])

    assert chunks(running.step)[0][3] == f"{head}token is "
    assert log_text(step=running.step) == f"{head}token is {MASK} and more\n"


# --- Through the runner service (runners.services.step_log), as the API calls it.


def test_the_runner_holding_the_job_appends_without_its_job_token(running):
    assert step_log(job_id=running.job.pk, step_id=running.step.pk, offset=0, text="hi\n", runner=running.runner) == 3
    assert log_text(step=running.step) == "hi\n"


def test_a_runner_that_does_not_hold_the_job_is_refused(running):
    other = Runner.objects.create(name="not-the-holder")

    with pytest.raises(JobNotHeld):
        step_log(job_id=running.job.pk, step_id=running.step.pk, offset=0, text="intrusion\n", runner=other)
    assert log_text(step=running.step) == ""


def test_the_holding_runner_cannot_write_to_a_step_of_another_job(running):
    other = make_running_job()

    with pytest.raises(StepNotFound):
        step_log(job_id=running.job.pk, step_id=other.step.pk, offset=0, text="intrusion\n", runner=running.runner)
    assert log_text(step=other.step) == ""


def test_a_job_token_never_reaches_the_step_check_of_another_job(running):
    other = make_running_job()

    with pytest.raises(RunnerAuthError):
        step_log(job_id=other.job.pk, step_id=other.step.pk, offset=0, text="intrusion\n", job_token=running.token)
    assert log_text(step=other.step) == ""


def test_a_chunk_costs_a_fixed_number_of_statements(running, django_assert_num_queries):
    def send(offset: int, text: str) -> int:
        return step_log(
            job_id=running.job.pk, step_id=running.step.pk, offset=offset, text=text, job_token=running.token
        )

    # The job and step check, the masked values, then in a savepoint (a transaction outside
    # tests): the step's end, the job's count and the insert.
    with django_assert_num_queries(2 + 2 + 3):
        offset = send(0, "one\n")
    with django_assert_num_queries(2 + 2 + 4):  # and the end of the previous chunk, for masking
        send(offset, "two\n")


# --- A resend racing the original.


@pytest.mark.django_db(transaction=True)
def test_a_chunk_sent_twice_at_once_is_stored_once_and_both_get_the_next_offset(running):
    log_chunk_append(step=running.step, offset=0, content="one\n")  # the job's count row exists
    answers: list[int | BaseException] = []

    def send() -> None:
        try:
            answers.append(log_chunk_append(step=running.step, offset=4, content="two\n"))
        except BaseException as exc:  # reported below
            answers.append(exc)
        finally:
            connection.close()

    # Both sends read the step's end while the job's count row is locked, so both go on to
    # insert at offset 4: the second one hits the unique (step, offset) and answers as a resend.
    with transaction.atomic():
        JobLog.objects.select_for_update().get(pk=running.job.pk)
        senders = [threading.Thread(target=send) for _ in range(2)]
        for sender in senders:
            sender.start()
        _wait_for_lock_waiters(2)
    for sender in senders:
        sender.join(timeout=10)

    assert answers == [8, 8]
    assert chunks(running.step) == [(0, 4, "OUTPUT", "one\n"), (4, 4, "OUTPUT", "two\n")]
    assert JobLog.objects.get(pk=running.job.pk).stored_bytes == 8


def _wait_for_lock_waiters(count: int) -> None:
    """Until `count` sessions of this test database wait for a lock (other tests may run on the
    same server). Read in a transaction, pg_stat_activity stays a snapshot unless cleared."""
    with connection.cursor() as cursor:
        for _ in range(500):
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0] >= count:
                return
            time.sleep(0.01)
    raise AssertionError(f"{count} sessions never waited for the lock")
