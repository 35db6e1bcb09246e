"""What executors share: the reporting interface and the result of a job."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

from runners.services import ClaimedJob, ClaimedStep

# Log output is shipped when this much is buffered, or this long after the first unsent byte.
LOG_FLUSH_BYTES = 64 * 1024
LOG_FLUSH_S = 0.2


class Reporter(Protocol):
    """How an executor tells the server what happens. Implemented over the ORM or HTTP."""

    def step_started(self, job: ClaimedJob, step: ClaimedStep) -> None: ...

    def step_log(self, job: ClaimedJob, step: ClaimedStep, offset: int, text: str) -> None: ...

    def step_finished(self, job: ClaimedJob, step: ClaimedStep, *, status: str, exit_code: int | None) -> None: ...


@dataclass
class JobResult:
    status: str  # SUCCESS | FAILURE | CANCELLED
    exit_code: int | None = None
    reason: str = ""


class LogStream:
    """Buffers one step's output and ships it in chunks with byte offsets.

    Offsets count UTF-8 bytes of the text stored; an incremental decoder keeps a
    multi-byte character split across reads intact.
    """

    def __init__(self, reporter: Reporter, job: ClaimedJob, step: ClaimedStep):
        import codecs

        self._reporter, self._job, self._step = reporter, job, step
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer: list[str] = []
        self._buffered = 0
        self._first_unsent_at: float | None = None
        self.offset = 0
        self._lock = threading.Lock()

    def write_bytes(self, data: bytes) -> None:
        self.write(self._decoder.decode(data))

    def write(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            self._buffer.append(text)
            self._buffered += len(text)
            if self._first_unsent_at is None:
                self._first_unsent_at = time.monotonic()
        self.maybe_flush()

    def maybe_flush(self) -> None:
        due = self._first_unsent_at is not None and time.monotonic() - self._first_unsent_at >= LOG_FLUSH_S
        if self._buffered >= LOG_FLUSH_BYTES or due:
            self.flush()

    def flush(self, *, final: bool = False) -> None:
        with self._lock:
            if final:
                tail = self._decoder.decode(b"", final=True)
                if tail:
                    self._buffer.append(tail)
            if not self._buffer:
                return
            text = "".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            self._first_unsent_at = None
            offset = self.offset
            self.offset += len(text.encode())
        self._reporter.step_log(self._job, self._step, offset, text)
