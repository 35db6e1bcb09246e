"""Secret masking of log text: every occurrence of a masked value becomes ``[MASKED]``.

Pure Python with no Django models, so the runner (before it sends a chunk) and the server
(at ingest, as defence in depth) use the same code.

Streams are masked exactly as the whole text would be: `Masker.feed` holds back the shortest
tail that could still be the start of a secret, so a secret split across two writes, two
flushes or two chunks is still caught. Formally, for any split of a text into pieces,
``"".join(m.feed(p) for p in pieces) + m.finish() == mask(text, values)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "[MASKED]"
# Shorter values would mask ordinary words all over the log (GitLab has the same rule).
MIN_MASKED_LENGTH = 8


def maskable(values: Iterable[str]) -> list[str]:
    """The values worth masking: at least MIN_MASKED_LENGTH characters, no duplicates, longest first
    (so that of two secrets starting at the same place the longer one wins)."""
    return sorted({v for v in values if isinstance(v, str) and len(v) >= MIN_MASKED_LENGTH}, key=lambda v: (-len(v), v))


def _pattern(values: list[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(re.escape(v) for v in values)) if values else None


def mask(text: str, values: Iterable[str]) -> str:
    """Mask a whole text at once (leftmost occurrence first, longest secret at a position)."""
    pattern = _pattern(maskable(values))
    return text if pattern is None else pattern.sub(MASK, text)


class Masker:
    """Masks a stream of text pieces. Not thread-safe: callers serialize feeds."""

    def __init__(self, values: Iterable[str]):
        self.values = maskable(values)
        self._pattern = _pattern(self.values)
        # Every proper prefix of every secret: a text ending in one of them must wait for more.
        self._prefixes = {v[:i] for v in self.values for i in range(1, len(v))}
        self._longest = max((len(v) for v in self.values), default=0)
        self._held = ""

    @property
    def held(self) -> str:
        """Text withheld because it may be the beginning of a secret."""
        return self._held

    def feed(self, text: str) -> str:
        """Returns the text that is now safe to ship; keeps back what might start a secret."""
        if self._pattern is None:
            return text
        buffer = self._held + text
        hold_from = self._hold_from(buffer)
        # Occurrences starting before hold_from are final: a longer secret starting there would
        # have to run past the end of the buffer, which makes its start a hold candidate.
        out: list[str] = []
        emitted = 0
        for match in self._pattern.finditer(buffer):
            if match.start() >= hold_from:
                break
            out.append(buffer[emitted : match.start()])
            out.append(MASK)
            emitted = match.end()
        cut = max(hold_from, emitted)
        out.append(buffer[emitted:cut])
        self._held = buffer[cut:]
        return "".join(out)

    def finish(self) -> str:
        """End of stream: what was held back cannot become a secret any more."""
        held, self._held = self._held, ""
        return held if self._pattern is None else self._pattern.sub(MASK, held)

    def _hold_from(self, buffer: str) -> int:
        """The smallest index from which the rest of the buffer is a proper prefix of a secret."""
        for start in range(max(0, len(buffer) - self._longest + 1), len(buffer)):
            if buffer[start:] in self._prefixes:
                return start
        return len(buffer)
