"""What executors share: the reporting interface and the result of a job."""

from __future__ import annotations

import codecs
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from logs.masking import Masker
from runners.services import ClaimedJob, ClaimedStep, StepEnd

logger = logging.getLogger(__name__)

# Log output is shipped when this much is buffered, or this long after the first unsent byte.
LOG_FLUSH_BYTES = 64 * 1024
LOG_FLUSH_S = 0.2
# The most sent in one request: JSON escapes can make a body several times its text, and the
# runner API takes at most 8 MB.
LOG_SEND_MAX_BYTES = 1024 * 1024
# While the server is unreachable output is kept and retried this often (and with every flush)...
LOG_RETRY_S = 2.0
# ...and the final flush of a step tries this many times before it gives up.
LOG_FINAL_ATTEMPTS = 5


class Reporter(Protocol):
    """How an executor tells the server what happens. Implemented over the ORM or HTTP."""

    def step_started(self, job: ClaimedJob, step: ClaimedStep) -> None: ...

    def step_log(self, job: ClaimedJob, step: ClaimedStep, offset: int, text: str) -> int | None:
        """Ship a chunk. Returns the offset the server expects next, or None if it does not say
        (then the chunk counts as stored)."""

    def step_finished(self, job: ClaimedJob, step: ClaimedStep, *, status: str, exit_code: int | None) -> None: ...


@dataclass
class JobResult:
    status: str  # SUCCESS | FAILURE | CANCELLED
    exit_code: int | None = None
    reason: str = ""
    # Ends of steps not reported yet: they go with the job's finish (the runner's last step,
    # when nothing follows it; see ShellExecutor).
    step_ends: list[StepEnd] = field(default_factory=list)


def job_masked_values(job: ClaimedJob) -> list[str]:
    """The values the runner masks in a job's log before sending it: those of the variables the
    server marks as masked. (`masked_variables` arrives with masked CI/CD variables; a server
    that does not send it masks nothing here, and the server masks again at ingest.)"""
    names = getattr(job, "masked_variables", None) or ()
    return [job.variables[name] for name in names if name in job.variables]


def _transient(exc: Exception) -> bool:
    import django.db
    import requests

    return isinstance(
        exc, (django.db.OperationalError, django.db.InterfaceError, requests.ConnectionError, requests.Timeout)
    )


class LogStream:
    """Buffers one step's output and ships it in chunks with byte offsets.

    Offsets count UTF-8 bytes of the text shipped (after masking); an incremental decoder keeps
    a multi-byte character split across reads intact. Secrets are masked before anything is
    buffered, also when one is split across writes. Output the server has not confirmed is
    kept: when the server answers with another offset than the chunk's end (a gap or an
    overlap, HTTP 409), shipping resumes from the offset it expects; while it is unreachable
    the output waits and is retried.
    """

    def __init__(self, reporter: Reporter, job: ClaimedJob, step: ClaimedStep, *, masked: Iterable[str] | None = None):
        self._reporter, self._job, self._step = reporter, job, step
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._masker = Masker(job_masked_values(job) if masked is None else masked)
        self._buffer: list[str] = []
        self._buffered = 0
        self._first_unsent_at: float | None = None
        # Taken from the buffer but not yet confirmed by the server; starts at `_confirmed`.
        self._pending = b""
        self._confirmed = 0
        self._retry_at: float | None = None
        self._lock = threading.Lock()  # the buffer
        self._send_lock = threading.Lock()  # one request at a time, in order

    @property
    def offset(self) -> int:
        """The offset the next byte written will have (what the next stream of the step continues from)."""
        with self._lock:
            return self._confirmed + len(self._pending) + sum(len(t.encode()) for t in self._buffer)

    @offset.setter
    def offset(self, value: int) -> None:
        with self._lock:
            self._confirmed = value

    def write_bytes(self, data: bytes) -> None:
        self.write(self._decoder.decode(data))

    def write(self, text: str) -> None:
        if not text:
            return
        # PostgreSQL text cannot hold NUL: show it as the replacement character.
        text = text.replace("\x00", "\ufffd")
        with self._lock:
            safe = self._masker.feed(text)
            if safe:
                self._buffer.append(safe)
                self._buffered += len(safe)
                if self._first_unsent_at is None:
                    self._first_unsent_at = time.monotonic()
        self.maybe_flush()

    def maybe_flush(self) -> None:
        now = time.monotonic()
        due = self._first_unsent_at is not None and now - self._first_unsent_at >= LOG_FLUSH_S
        retry = self._retry_at is not None and now >= self._retry_at
        if self._buffered >= LOG_FLUSH_BYTES or due or retry:
            self.flush()

    def flush(self, *, final: bool = False) -> None:
        with self._send_lock:
            with self._lock:
                if final:
                    tail = self._decoder.decode(b"", final=True).replace("\x00", "\ufffd")
                    rest = self._masker.feed(tail) + self._masker.finish()
                    if rest:
                        self._buffer.append(rest)
                if self._buffer:
                    self._pending += "".join(self._buffer).encode()
                    self._buffer.clear()
                self._buffered = 0
                self._first_unsent_at = None
            self._ship(final=final)

    def _ship(self, *, final: bool) -> None:
        failures = refusals = 0
        while self._pending:
            piece = _whole_characters(self._pending[:LOG_SEND_MAX_BYTES])
            start, end = self._confirmed, self._confirmed + len(piece)
            try:
                expected = self._reporter.step_log(self._job, self._step, start, piece.decode())
            except Exception as exc:
                if not _transient(exc):
                    logger.error("log of step %s: %d bytes refused (%s); dropped", self._step.name, len(piece), exc)
                    self._advance(len(piece))
                    continue
                failures += 1
                if not final:
                    logger.warning("log of step %s not sent yet (%s); retrying", self._step.name, exc)
                    self._retry_at = time.monotonic() + LOG_RETRY_S
                    return
                if failures >= LOG_FINAL_ATTEMPTS:
                    logger.error("log of step %s: giving up on %d bytes (%s)", self._step.name, len(self._pending), exc)
                    self._pending, self._retry_at = b"", None
                    return
                time.sleep(min(8.0, 0.5 * 2**failures))
                continue
            self._retry_at = None
            if expected is None or expected == end:
                self._advance(len(piece))
            elif start < expected < end:
                # The server has the first part already (a retry of a request whose answer got lost).
                self._advance(expected - start)
            elif expected > end:
                logger.warning(
                    "log of step %s: the server is ahead (%d > %d); skipping", self._step.name, expected, end
                )
                self._advance(len(piece))
                self._confirmed = expected
            elif refusals >= 3:
                logger.error("log of step %s: the server keeps refusing offset %d; dropped", self._step.name, start)
                self._pending = b""
            else:
                # The server lacks bytes it had confirmed (or never got): they are gone from here,
                # so say so in the log and go on from where the server is.
                refusals += 1
                lost = start - expected
                logger.warning(
                    "log of step %s: %d bytes lost on the server; resending from %d", self._step.name, lost, expected
                )
                notice = f"\n[conveyor] {lost} bytes of this log were lost on the way to the server.\n" if lost else ""
                self._pending = notice.encode() + self._pending
                self._confirmed = expected

    def _advance(self, count: int) -> None:
        self._pending = self._pending[count:]
        self._confirmed += count


def _whole_characters(data: bytes) -> bytes:
    """`data` without a UTF-8 character cut at its end."""
    if len(data) < 2 or data[-1] < 0x80:
        return data
    cut = len(data) - 1
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1  # back to the lead byte of the last character
    lead = data[cut]
    length = 2 if lead >= 0xC0 and lead < 0xE0 else 3 if lead < 0xF0 else 4
    return data if cut + length <= len(data) else data[:cut]
