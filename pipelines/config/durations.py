"""Human durations as GitLab writes them: "1h 30m", "90 minutes", "1 hour and 30 min", "3600".

GitLab parses these with ChronicDuration; this covers the forms people use in `timeout`,
`start_in`, `artifacts:expire_in` and `environment:auto_stop_in`: a bare number of
seconds, `H:MM:SS` / `M:SS`, and any sequence of <number><unit> (decimals allowed),
optionally separated by spaces, commas or "and".
"""

from __future__ import annotations

import re

_MINUTE = 60
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), _MINUTE),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), _HOUR),
    **dict.fromkeys(("d", "day", "days"), _DAY),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), 7 * _DAY),
    **dict.fromkeys(("mo", "mon", "mos", "month", "months"), 30 * _DAY),
    **dict.fromkeys(("y", "yr", "yrs", "year", "years"), 365 * _DAY),
}
_PART = re.compile(r"(\d{1,9}(?:\.\d{1,9})?)\s*([a-z]+)")
_SEPARATOR = re.compile(r"(?:\s|,|\band\b)*")
_CLOCK = re.compile(r"(?:(\d{1,6}):)?(\d{1,6}):(\d{1,2})")
_MAX_TEXT = 200


class DurationError(ValueError):
    """Not a duration; the message says what was expected."""


def parse_duration(value: object, *, maximum: int | None = None) -> int:
    """Seconds (rounded, at least 1) for a duration; DurationError if it is not one."""
    seconds = _parse(value)
    if seconds < 1:
        raise DurationError(f"{value!r} is not a positive duration")
    if maximum is not None and seconds > maximum:
        raise DurationError(f"{value!r} is longer than the maximum of {describe(maximum)}")
    return seconds


def _parse(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DurationError(f"a duration must be a string like '1h 30m', not {type(value).__name__}")
    if isinstance(value, int):
        return value
    text = value.strip().lower()
    if len(text) > _MAX_TEXT:
        raise DurationError("a duration must be short text like '1h 30m'")
    if text.isdigit() and len(text) <= 12:
        return int(text)
    clock = _CLOCK.fullmatch(text)
    if clock:
        hours, minutes, seconds = (int(group or 0) for group in clock.groups())
        return hours * _HOUR + minutes * _MINUTE + seconds
    total = 0.0
    position = _SEPARATOR.match(text, 0).end()  # type: ignore[union-attr]
    if position == len(text):
        raise DurationError(f"{value!r} is not a duration like '1h 30m' or '90 minutes'")
    while position < len(text):
        part = _PART.match(text, position)
        if part is None or part.group(2) not in _UNITS:
            raise DurationError(
                f"{value!r} is not a duration like '1h 30m' or '90 minutes' "
                "(units: s, m/min, h/hour, d/day, w/week, mo/month, y/year)"
            )
        total += float(part.group(1)) * _UNITS[part.group(2)]
        position = _SEPARATOR.match(text, part.end()).end()  # type: ignore[union-attr]
    return round(total)


def describe(seconds: int) -> str:
    for unit, size in (("week", 7 * _DAY), ("day", _DAY), ("hour", _HOUR), ("minute", _MINUTE)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} seconds"
