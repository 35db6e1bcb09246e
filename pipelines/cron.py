"""Cron expressions for pipeline schedules: parse five fields, find the next time they match.

Vixie cron's dialect: `*`, `a`, `a-b`, `*/n`, `a-b/n`, lists, month and weekday names,
7 for Sunday, and the @yearly/@monthly/@weekly/@daily/@hourly macros. When both the
day of month and the day of week are restricted, a day matching either one matches.
Times are wall-clock times in the schedule's time zone; a local time that does not exist
(the hour skipped when daylight saving time starts) is skipped, a repeated one fires once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# How far ahead to look for a matching time. Expressions that never match (February 30th)
# are refused when parsed, so this bound is only reached by those.
_HORIZON_DAYS = 366 * 5

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {
    name: i
    for i, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1
    )
}
_WEEKDAYS = {name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}


class CronError(ValueError):
    """The expression or time zone is invalid; the message says what is wrong."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]


_FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day of month", 1, 31, {}),
    _Field("month", 1, 12, _MONTHS),
    # 7 is Sunday too; folded to 0 after parsing.
    _Field("day of week", 0, 7, _WEEKDAYS),
)


def _value(text: str, field: _Field) -> int:
    lowered = text.lower()
    if lowered in field.names:
        return field.names[lowered]
    if not text.isdigit():
        raise CronError(f"{field.name}: {text!r} is not a number")
    number = int(text)
    if not field.low <= number <= field.high:
        raise CronError(f"{field.name}: {number} is out of range {field.low}-{field.high}")
    return number


def _parse_field(text: str, field: _Field) -> tuple[frozenset[int], bool]:
    """The values a field allows, and whether it is unrestricted (`*`)."""
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{field.name}: empty list item in {text!r}")
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field.name}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            start, _, end = base.partition("-")
            low, high = _value(start, field), _value(end, field)
            if low > high:
                raise CronError(f"{field.name}: range {base!r} runs backwards")
        else:
            low = _value(base, field)
            # `5/15` means from 5 to the end in steps of 15, as in Vixie cron.
            high = field.high if step_text else low
        values.update(range(low, high + 1, step))
    return frozenset(values), text == "*"


@dataclass(frozen=True)
class CronExpression:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month is `*`
    any_weekday: bool  # day of week is `*`

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        source = _MACROS.get(text.strip().lower(), text)
        parts = source.split()
        if len(parts) != 5:
            raise CronError(f"{text!r}: a cron expression has five fields (minute hour day-of-month month day-of-week)")
        parsed = [_parse_field(part, field) for part, field in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(0 if day == 7 else day for day in parsed[4][0])
        expression = cls(
            minutes=parsed[0][0],
            hours=parsed[1][0],
            days=parsed[2][0],
            months=parsed[3][0],
            weekdays=weekdays,
            any_day=parsed[2][1],
            any_weekday=parsed[4][1],
        )
        if expression.next_after(datetime(2000, 1, 1, tzinfo=UTC), ZoneInfo("UTC")) is None:
            raise CronError(f"{text!r} never matches a date")
        return expression

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_day = day.day in self.days
        by_weekday = (day.isoweekday() % 7) in self.weekdays
        if self.any_day and self.any_weekday:
            return True
        if self.any_day:
            return by_weekday
        if self.any_weekday:
            return by_day
        return by_day or by_weekday

    def next_after(self, after: datetime, tz: ZoneInfo) -> datetime | None:
        """The first matching time strictly after `after` (aware), in UTC; None within five years."""
        start = (after.astimezone(tz).replace(tzinfo=None) + timedelta(minutes=1)).replace(second=0, microsecond=0)
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        for offset in range(_HORIZON_DAYS):
            day = start.date() + timedelta(days=offset)
            if not self.day_matches(day):
                continue
            for hour in hours:
                for minute in minutes:
                    wall = datetime.combine(day, time(hour, minute))
                    if wall < start:
                        continue
                    moment = wall.replace(tzinfo=tz)
                    utc = moment.astimezone(UTC)
                    # A wall time in a DST gap does not round-trip: it never happens there.
                    if utc.astimezone(tz).replace(tzinfo=None) != wall:
                        continue
                    if utc > after:
                        return utc
        return None


def parse_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise CronError(f"unknown time zone {name!r}") from None


def next_run(cron: str, timezone: str, *, after: datetime) -> datetime:
    """When a schedule with this cron and time zone fires next after `after`. Raises CronError."""
    when = CronExpression.parse(cron).next_after(after, parse_timezone(timezone))
    if when is None:
        raise CronError(f"{cron!r} does not match any time in the next five years")
    return when
