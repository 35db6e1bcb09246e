"""Cron expressions (pipelines.cron): parsing, the next matching time, time zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.cron import CronError, CronExpression, next_run


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/15 * * * *", "2026-03-02T10:07:00", "2026-03-02T10:15:00"),
        ("*/15 * * * *", "2026-03-02T10:15:00", "2026-03-02T10:30:00"),  # strictly after
        ("0 2 * * *", "2026-03-02T02:00:30", "2026-03-03T02:00:00"),
        ("30 9 * * 1-5", "2026-03-06T10:00:00", "2026-03-09T09:30:00"),  # Friday -> Monday
        ("0 0 1 * *", "2026-01-31T12:00:00", "2026-02-01T00:00:00"),
        ("0 12 29 2 *", "2026-03-01T00:00:00", "2028-02-29T12:00:00"),  # the next leap day
        ("0 8 * jan,jul mon", "2026-02-01T00:00:00", "2026-07-06T08:00:00"),
        ("0 0 * * 7", "2026-03-02T00:00:00", "2026-03-08T00:00:00"),  # 7 is Sunday
        ("5/20 * * * *", "2026-03-02T10:00:00", "2026-03-02T10:05:00"),
        ("@hourly", "2026-03-02T10:59:59", "2026-03-02T11:00:00"),
        ("@weekly", "2026-03-02T00:00:00", "2026-03-08T00:00:00"),
        ("@yearly", "2026-03-02T00:00:00", "2027-01-01T00:00:00"),
        # Both days restricted: either one matches (the 13th, or any Friday).
        ("0 0 13 * 5", "2026-03-01T00:00:00", "2026-03-06T00:00:00"),
    ],
)
def test_the_next_run_is_the_first_matching_minute_after(expression, after, expected) -> None:
    assert next_run(expression, "UTC", after=at(after)) == at(expected)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "five fields"),
        ("60 * * * *", "minute: 60 is out of range 0-59"),
        ("* 24 * * *", "hour: 24 is out of range"),
        ("* * 0 * *", "day of month: 0 is out of range"),
        ("* * * 13 *", "month: 13 is out of range"),
        ("* * * * 8", "day of week: 8 is out of range"),
        ("*/0 * * * *", "step '0' must be a positive number"),
        ("5-1 * * * *", "runs backwards"),
        ("a * * * *", "'a' is not a number"),
        ("1,,2 * * * *", "empty list item"),
        ("0 0 30 2 *", "never matches"),
        ("@sometimes", "five fields"),
    ],
)
def test_invalid_expressions_say_what_is_wrong(expression, message) -> None:
    with pytest.raises(CronError, match=message):
        CronExpression.parse(expression)


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(CronError, match="unknown time zone 'Mars/Olympus'"):
        next_run("* * * * *", "Mars/Olympus", after=at("2026-01-01T00:00:00"))


def test_times_are_read_in_the_schedules_time_zone() -> None:
    # 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
    assert next_run("0 9 * * *", "Europe/Berlin", after=at("2026-01-10T12:00:00")) == at("2026-01-11T08:00:00")
    assert next_run("0 9 * * *", "Europe/Berlin", after=at("2026-07-10T12:00:00")) == at("2026-07-11T07:00:00")


def test_a_time_skipped_by_daylight_saving_is_skipped_and_a_repeated_one_fires_once() -> None:
    berlin = "Europe/Berlin"
    # 2026-03-29: clocks jump from 02:00 to 03:00; 02:30 does not exist that day.
    assert next_run("30 2 * * *", berlin, after=at("2026-03-28T12:00:00")) == at("2026-03-30T00:30:00")
    # 2026-10-25: 02:30 happens twice; the schedule fires at the first one only.
    first = next_run("30 2 * * *", berlin, after=at("2026-10-24T12:00:00"))
    assert first == at("2026-10-25T00:30:00")
    assert next_run("30 2 * * *", berlin, after=first) == at("2026-10-26T01:30:00")


@given(
    minute=st.sets(st.integers(0, 59), min_size=1, max_size=5),
    hour=st.sets(st.integers(0, 23), min_size=1, max_size=3),
    weekday=st.none() | st.sets(st.integers(0, 6), min_size=1, max_size=3),
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)),
    zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]),
)
def test_the_next_run_matches_the_expression_and_nothing_earlier_does(minute, hour, weekday, start, zone) -> None:
    days = "*" if weekday is None else ",".join(map(str, sorted(weekday)))
    text = f"{','.join(map(str, sorted(minute)))} {','.join(map(str, sorted(hour)))} * * {days}"
    expression = CronExpression.parse(text)
    tz = ZoneInfo(zone)
    found = expression.next_after(start, tz)
    assert found is not None and found > start
    local = found.astimezone(tz)
    assert (local.minute, local.hour) in {(m, h) for m in minute for h in hour}
    assert expression.day_matches(local.date())
    # No matching minute lies between `start` and the one found (checked on a bounded window).
    probe = found - timedelta(minutes=1)
    for _ in range(200):
        if probe <= start:
            break
        wall = probe.astimezone(tz)
        # A wall time that happens twice (clocks turned back) fires at its first occurrence only.
        repeated = wall.utcoffset() != wall.replace(fold=1 - wall.fold).utcoffset()
        matches = wall.minute in minute and wall.hour in hour and expression.day_matches(wall.date())
        assert not matches or repeated, probe
        probe -= timedelta(minutes=1)
